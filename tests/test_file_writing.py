"""Writing a new file: the bytes on disk are exactly the chunks given, however they are
split, short-written or preallocated."""

from __future__ import annotations

import errno
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter_store import file_writing
from adapter_store.file_writing import write_file


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), max_size=12),
    piece=st.integers(1, 16),
    durable=st.booleans(),
    preallocated=st.booleans(),
)
def test_write_file_writes_exactly_the_chunks_in_any_pieces(
    tmp_path_factory, sizes, piece, durable, preallocated
):
    """Durable writes go out in pieces (writeback started per piece); the bytes on disk
    are the chunks, concatenated, whatever the piece size, preallocated or not."""
    chunks = [memoryview(bytes((i * 7 + j) % 256 for j in range(n))) for i, n in enumerate(sizes)]
    path = tmp_path_factory.mktemp("w") / "f"
    original = (file_writing.WRITEBACK_PIECE_BYTES, file_writing.PREALLOCATE_MIN_BYTES)
    file_writing.WRITEBACK_PIECE_BYTES = piece
    file_writing.PREALLOCATE_MIN_BYTES = 1 if preallocated else original[1]
    try:
        owed = write_file(path, chunks, durable=durable, defer_sync=True)
    finally:
        file_writing.WRITEBACK_PIECE_BYTES, file_writing.PREALLOCATE_MIN_BYTES = original
    assert path.read_bytes() == b"".join(bytes(c) for c in chunks)
    # Writeback started: the caller owes the fsync (without sync_file_range it is done).
    assert owed == (durable and file_writing._SYNC_FILE_RANGE is not None)


@given(
    sizes=st.lists(st.integers(1, 50), max_size=20),
    limit=st.none() | st.integers(1, 30),
)
def test_pieces_cover_the_chunks_in_bounded_batches(sizes, limit):
    chunks = [memoryview(bytes([i % 256]) * n) for i, n in enumerate(sizes)]
    original = file_writing._IOV_MAX
    file_writing._IOV_MAX = 3  # the real 1024 buffers per writev, made reachable
    try:
        batches = list(file_writing._pieces(chunks, limit))
    finally:
        file_writing._IOV_MAX = original
    assert b"".join(bytes(p) for batch in batches for p in batch) == b"".join(map(bytes, chunks))
    for batch in batches:
        assert batch and len(batch) <= 3
        if limit:
            assert sum(p.nbytes for p in batch) <= limit


def test_write_file_counts_bytes_for_any_view_format(tmp_path, monkeypatch):
    """A 2-D float view is written byte for byte, in pieces of bytes and resumed by bytes
    after a short write (here every writev stops after 7 bytes)."""
    real_writev = os.writev

    def short_writev(fd, buffers):
        return real_writev(fd, [memoryview(buffers[0]).cast("B")[:7]])

    monkeypatch.setattr(file_writing, "WRITEBACK_PIECE_BYTES", 24)
    monkeypatch.setattr(file_writing, "PREALLOCATE_MIN_BYTES", 1)
    monkeypatch.setattr(os, "writev", short_writev)
    array = torch.arange(100, dtype=torch.float32).reshape(10, 10).numpy()
    write_file(tmp_path / "f", [memoryview(array)], durable=True, defer_sync=True)
    assert (tmp_path / "f").read_bytes() == array.tobytes()


needs_fallocate = pytest.mark.skipif(
    file_writing._FALLOCATE is None, reason="no fallocate(2) here (not Linux)"
)


class _RecordingFallocate:
    """The real fallocate (or a refusal), recording the sizes asked for."""

    def __init__(self, result: int | None = None) -> None:
        self.real = file_writing._FALLOCATE
        self.result = result
        self.sizes: list[int] = []

    def __call__(self, fd: int, mode: int, offset: int, nbytes: int) -> int:
        self.sizes.append(nbytes)
        if self.result is not None:
            return self.result
        assert self.real is not None
        return int(self.real(fd, mode, offset, nbytes))


@needs_fallocate
@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), max_size=8), durable=st.booleans())
def test_a_preallocated_file_holds_exactly_the_chunks(tmp_path_factory, sizes, durable):
    """Preallocation asks for the file's exact size: no trailing zeros, no short file."""
    chunks = [memoryview(bytes((i * 5 + j) % 251 for j in range(n))) for i, n in enumerate(sizes)]
    path = tmp_path_factory.mktemp("p") / "f"
    recorder = _RecordingFallocate()
    original = (file_writing._FALLOCATE, file_writing.PREALLOCATE_MIN_BYTES)
    file_writing._FALLOCATE, file_writing.PREALLOCATE_MIN_BYTES = recorder, 1
    try:
        write_file(path, chunks, durable=durable)
    finally:
        file_writing._FALLOCATE, file_writing.PREALLOCATE_MIN_BYTES = original
    expected = b"".join(bytes(c) for c in chunks)
    assert path.read_bytes() == expected
    assert recorder.sizes == ([len(expected)] if expected else [])


@needs_fallocate
def test_large_files_are_preallocated_and_small_ones_are_not(tmp_path, monkeypatch):
    recorder = _RecordingFallocate()
    monkeypatch.setattr(file_writing, "_FALLOCATE", recorder)
    large = file_writing.PREALLOCATE_MIN_BYTES
    write_file(tmp_path / "large", [memoryview(b"\1" * large)], durable=False)
    write_file(tmp_path / "small", [memoryview(b"\2" * (large - 1))], durable=False)
    assert recorder.sizes == [large]
    assert (tmp_path / "large").stat().st_size == large


def test_a_refused_or_missing_preallocation_still_writes_the_file(tmp_path, monkeypatch):
    """fallocate is only an optimisation: where it fails (no space reserved, a file
    system without it) or does not exist, the write goes on and reports its own errors."""
    data = os.urandom(file_writing.PREALLOCATE_MIN_BYTES + 3)
    refusing = _RecordingFallocate(result=-1)
    monkeypatch.setattr(file_writing, "_FALLOCATE", refusing)
    write_file(tmp_path / "refused", [memoryview(data)], durable=True)
    monkeypatch.setattr(file_writing, "_FALLOCATE", None)
    write_file(tmp_path / "missing", [memoryview(data)], durable=True)
    assert refusing.sizes == [len(data)]
    assert (tmp_path / "refused").read_bytes() == data
    assert (tmp_path / "missing").read_bytes() == data


@needs_fallocate
def test_a_write_failing_part_way_leaves_a_short_file_not_a_full_size_one(tmp_path, monkeypatch):
    """Preallocation reserves space but keeps the size: a file whose write fails (or
    whose data never reaches the disk) is as short as without it, and even an
    unverified load refuses it by its size. A full-size file with a zeroed tail would
    pass that check."""
    piece = file_writing.PREALLOCATE_MIN_BYTES
    data = os.urandom(3 * piece)
    real_writev = os.writev
    calls = []

    def disk_fails_after_one_piece(fd, buffers):  # type: ignore[no-untyped-def]
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(errno.EIO, "I/O error")
        return real_writev(fd, [memoryview(buffers[0]).cast("B")[:piece]])

    recorder = _RecordingFallocate()
    results = []

    def recorded(fd: int, mode: int, offset: int, nbytes: int) -> int:
        results.append(recorder(fd, mode, offset, nbytes))
        return results[-1]

    monkeypatch.setattr(file_writing, "_FALLOCATE", recorded)
    monkeypatch.setattr(os, "writev", disk_fails_after_one_piece)
    path = tmp_path / "f"
    with pytest.raises(OSError, match="I/O error"):
        write_file(path, [memoryview(data)], durable=False)
    if results != [0]:
        pytest.skip("this file system refused the preallocation: nothing to check")
    assert path.stat().st_size == piece
    assert path.read_bytes() == data[:piece]


def test_a_refusal_after_part_of_the_space_still_gives_exact_bytes(tmp_path, monkeypatch):
    """Whatever a refused preallocation leaves behind (here a file extended part-way,
    as a file system that ignores KEEP_SIZE might), the write starts at offset 0 and
    the file ends up exactly the chunks."""
    data = os.urandom(file_writing.PREALLOCATE_MIN_BYTES + 5)

    def partly_then_refused(fd: int, mode: int, offset: int, nbytes: int) -> int:
        os.ftruncate(fd, nbytes // 2)
        return -1

    monkeypatch.setattr(file_writing, "_FALLOCATE", partly_then_refused)
    write_file(tmp_path / "f", [memoryview(data)], durable=False)
    assert (tmp_path / "f").read_bytes() == data
