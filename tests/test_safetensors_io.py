"""Our shard writer and reader agree with safetensors itself, for every dtype."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from adapter_store.dtypes import dtype_name
from adapter_store.errors import IntegrityError, PartialLoadError
from adapter_store.file_writing import write_file
from adapter_store.manifest import TensorEntry
from adapter_store.safetensors_io import (
    encode_header,
    encode_shard,
    layout_entries,
    parse_header,
)
from adapter_store.shard_reader import ShardReader, ShardStream, can_stream

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]


def _sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, dtype=dtype)


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)


def _write(path, tensors):
    encoded = encode_shard(list(tensors.items()))
    write_file(path, list(encoded.chunks()), durable=False)
    return encoded


def _entries(tensors, shard="s"):
    return {
        k: TensorEntry(
            shard=shard,
            dtype=dtype_name(t.dtype),
            shape=tuple(t.shape),
            nbytes=t.numel() * t.element_size(),
        )
        for k, t in tensors.items()
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=[str(d).removeprefix("torch.") for d in DTYPES])
def test_every_dtype_reads_back_identically_with_safe_open(tmp_path, dtype):
    tensors = {
        "a": _sample(dtype, (3, 5)),
        "scalar": _sample(dtype, ()),
        "odd": _sample(dtype, (7,)),
    }
    path = tmp_path / "x.safetensors"
    _write(path, tensors)
    with safe_open(str(path), framework="pt") as file:
        assert set(file.keys()) == set(tensors)
        for key, tensor in tensors.items():
            got = file.get_tensor(key)
            assert got.dtype == tensor.dtype and got.shape == tensor.shape
            assert torch.equal(_bytes(got), _bytes(tensor))


def test_our_bytes_equal_safetensors_own_for_the_same_tensors(tmp_path):
    tensors = {"w": torch.randn(4, 4), "b": torch.randn(4)}
    ours = tmp_path / "ours.safetensors"
    _write(ours, tensors)
    with safe_open(str(ours), framework="pt") as file:
        assert torch.equal(file.get_tensor("w"), tensors["w"])
    theirs = tmp_path / "theirs.safetensors"
    save_file(tensors, str(theirs))
    # Both are valid files that our reader accepts.
    for path in (ours, theirs):
        data = path.read_bytes()
        assert set(parse_header(data, len(data), path=str(path))) == {"w", "b"}


def test_non_contiguous_tensors_are_written_in_c_order(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    tensors = {"t": base.t(), "slice": base[:, 1]}
    path = tmp_path / "x.safetensors"
    _write(path, tensors)
    with safe_open(str(path), framework="pt") as file:
        assert torch.equal(file.get_tensor("t"), base.t())
        assert torch.equal(file.get_tensor("slice"), base[:, 1])


def _open(path, tensors, algorithm="xxh3-128", display="x"):
    """Write ``tensors`` to ``path`` and open the file with our checked reader."""
    encoded = _write(path, tensors)
    return ShardReader(
        path,
        display=display,
        nbytes=encoded.nbytes,
        checksum=(algorithm, encoded.digest(algorithm)),
        expected=_entries(tensors),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["same-dtype", "cast"])
@pytest.mark.parametrize("window", [4096, 64 * 2**20], ids=["windows", "whole"])
def test_reader_copies_into_targets(tmp_path, monkeypatch, dtype, window):
    import adapter_store.shard_reader as reader_module

    monkeypatch.setattr(reader_module, "WINDOW_BYTES", window)  # 4096 forces many windows
    tensors = {"w": torch.randn(1000, 10)}
    target = torch.zeros(1000, 10, dtype=dtype)
    with _open(tmp_path / "x.safetensors", tensors, algorithm="sha256") as reader:
        reader.copy_into("w", target)
    assert torch.equal(target, tensors["w"].to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["same-dtype", "cast"])
def test_reader_copies_a_zero_element_tensor(tmp_path, dtype):
    """The format allows them (other writers store them); was: a bare ValueError from
    torch.frombuffer(count=0) in the copy phase, after earlier tensors had landed."""
    tensors = {"w": torch.randn(3), "empty": torch.zeros(0, 4)}
    target = torch.zeros(0, 4, dtype=dtype)
    with _open(tmp_path / "x.safetensors", tensors) as reader:
        assert reader.tensor("empty").shape == (0, 4)
        reader.copy_into("empty", target)


@pytest.mark.parametrize("dtype", DTYPES, ids=[dtype_name(d) for d in DTYPES])
def test_stream_reads_every_dtype_straight_into_targets(tmp_path, dtype):
    tensors = {"a": _sample(dtype, (7, 3)), "b": _sample(dtype, (5,))}
    encoded = _write(tmp_path / "x.safetensors", tensors)
    targets = {k: torch.zeros_like(t) for k, t in tensors.items()}
    with ShardStream(
        tmp_path / "x.safetensors", display="x", nbytes=encoded.nbytes, expected=_entries(tensors)
    ) as stream:
        for key, target in targets.items():
            stream.copy_into(key, target)
    assert all(_bytes(targets[k]).equal(_bytes(t)) for k, t in tensors.items())


def test_stream_refuses_a_copy_that_is_not_a_plain_byte_copy(tmp_path):
    tensors = {"w": torch.randn(4, 4)}
    encoded = _write(tmp_path / "x.safetensors", tensors)
    with ShardStream(
        tmp_path / "x.safetensors", display="x", nbytes=encoded.nbytes, expected=_entries(tensors)
    ) as stream:
        for target in (torch.zeros(4, 4, dtype=torch.float64), torch.zeros(4, 4).t()):
            assert not can_stream("F32", target)
            with pytest.raises(TypeError, match="cannot be read straight"):
                stream.copy_into("w", target)


def test_a_shard_truncated_while_streaming_is_a_partial_load_error(tmp_path):
    """A file cut short after its checks (by another program) fails cleanly, not with
    SIGBUS, and not as an IntegrityError, which promises an untouched model."""
    tensors = {"w": torch.randn(1000)}
    path = tmp_path / "x.safetensors"
    encoded = _write(path, tensors)
    expected = _entries(tensors)
    with ShardStream(path, display="x", nbytes=encoded.nbytes, expected=expected) as stream:
        os.truncate(path, encoded.nbytes - 100)
        with pytest.raises(PartialLoadError, match="x: file ended at .* while copying 'w'") as err:
            stream.copy_into("w", torch.zeros(1000))
    assert not isinstance(err.value, IntegrityError) and err.value.key == "w"


def test_checksum_mismatch_names_the_file(tmp_path):
    tensors = {"w": torch.randn(10)}
    path = tmp_path / "x.safetensors"
    encoded = _write(path, tensors)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="shards/x: xxh3-128 checksum .* does not match"):
        ShardReader(
            path,
            display="shards/x",
            nbytes=encoded.nbytes,
            checksum=("xxh3-128", encoded.digest("xxh3-128")),
            expected=_entries(tensors),
        )


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', "span 4 bytes"),
        (b'{"w":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}', "unknown dtype 'Q9'"),
        (b'{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', "not a list of integers in"),
        (b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', "leaves a gap"),
        (b'{"w":{"dtype":"F32","shape":[1]}}', "expected exactly"),
        (b'{"w":1,"w":2}', "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
    ],
    ids=[
        "size-vs-shape",
        "dtype",
        "negative-dim",
        "gap",
        "missing-offsets",
        "duplicate-key",
        "not-object",
    ],
)
def test_hostile_headers_are_refused(header, match):
    header += b" " * (-len(header) % 8)
    data = struct.pack("<Q", len(header)) + header + b"\0" * 8
    with pytest.raises(IntegrityError, match=match):
        parse_header(data, len(data), path="shard")


def test_absurd_header_length_is_refused_without_allocating():
    data = struct.pack("<Q", 2**63) + b"{}"
    with pytest.raises(IntegrityError, match="header length .* larger than the file"):
        parse_header(data, len(data), path="shard")


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(1, 4), min_size=0, max_size=3)),
        min_size=1,
        max_size=5,
    )
)
def test_round_trip_property(tmp_path_factory, specs):
    tensors = {f"t{i}": _sample(dtype, tuple(shape)) for i, (dtype, shape) in enumerate(specs)}
    path = tmp_path_factory.mktemp("rt") / "x.safetensors"
    with _open(path, tensors) as reader:
        for key, tensor in tensors.items():
            target = torch.empty_like(tensor)
            reader.copy_into(key, target)
            assert torch.equal(_bytes(target), _bytes(tensor))


def _reference_header(entries, metadata) -> bytes:
    header = {"__metadata__": dict(metadata)} if metadata else {}
    for key, entry in entries.items():
        header[key] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [entry.begin, entry.end],
        }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(
        st.text(min_size=1, max_size=20).filter(lambda k: k != "__metadata__"),
        unique=True,
        max_size=6,
    ),
    shapes=st.lists(st.lists(st.integers(0, 10**12), max_size=4), min_size=6, max_size=6),
    metadata=st.none() | st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)
def test_header_bytes_are_exactly_those_of_json_dumps(keys, shapes, metadata):
    """Headers are built by hand for speed; they must stay byte-identical to json.dumps
    (files written before, and the reader's header fast path, rely on it)."""
    entries = layout_entries(
        (key, "BF16", tuple(shapes[index]), 2 * index) for index, key in enumerate(keys)
    )
    assert encode_header(entries, metadata) == _reference_header(entries, metadata)
