"""Reading a shard: a memory map checked against the manifest, then copies out of it.

Opening checks the file's size, (optionally) its checksum and its header before anything
is handed out; copies then go straight from the map into the target tensors, in windows
so that a large tensor is never resident twice.
"""

from __future__ import annotations

import contextlib
import errno
import math
import mmap
import os
import stat
import struct
import warnings
from collections.abc import Callable, Mapping

import torch

from .checksum import new_hasher
from .dtypes import torch_dtype
from .errors import IntegrityError, PartialLoadError
from .manifest import TensorEntry
from .safetensors_io import (
    MAX_HEADER_BYTES,
    HeaderEntry,
    check_header_against,
    encode_header,
    owns_memory,
    parse_header,
    raw_buffer,
)

#: Work in windows of this size so that hashing and copying a large file never keeps
#: more than one window of it resident (bounded RSS when loading a big head).
WINDOW_BYTES = 64 * 1024 * 1024


# A FIFO planted under a shard's name would block a plain open() forever; with O_NONBLOCK
# it opens at once and the regular-file check refuses it.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)


#: Errors that say the process ran out of something, not that the file is damaged.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def _unreadable(exc: OSError, display: str, step: str) -> Exception:
    """The error for a shard that could not be opened or mapped: a limit of this process
    (descriptors, memory) is an ``OSError`` saying so, anything else damage."""
    if exc.errno in _RESOURCE_ERRNOS:
        return OSError(
            exc.errno,
            f"{display}: cannot {step} shard ({exc.strerror}; each open shard holds a file "
            "descriptor: raise the limit, e.g. ulimit -n)",
        )
    return IntegrityError(f"{display}: cannot read shard ({exc})", path=display)


def _open_shard_file(
    path: str | os.PathLike[str], display: str, nbytes: int, dir_fd: int | None = None
) -> tuple[int, int]:
    """Open a shard read-only (``path`` relative to ``dir_fd`` when given); refuse anything
    but a regular file of ``nbytes`` bytes. Returns the descriptor (the caller closes it)
    and the size."""
    try:
        # os.open, not open(): no buffered file object for a file we map or pread.
        fd = os.open(path, _OPEN_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError as exc:
        raise IntegrityError(
            f"{display}: shard file listed in the manifest is missing", path=display
        ) from exc
    except OSError as exc:
        raise _unreadable(exc, display, "open") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IntegrityError(
                f"{display}: not a regular file (a FIFO or device cannot be a shard)",
                path=display,
            )
        if info.st_size != nbytes:
            raise IntegrityError(
                f"{display}: file is {info.st_size} bytes but the manifest's nbytes is "
                f"{nbytes} ({'truncated' if info.st_size < nbytes else 'bytes appended'})",
                path=display,
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def _check_header(
    read_at: Callable[[int, int], bytes],
    size: int,
    expected: Mapping[str, TensorEntry],
    display: str,
) -> tuple[dict[str, HeaderEntry], int]:
    """The header's entries, checked against the manifest's, and where the data begins.

    Fast path: the header we would write for the manifest's tensors, byte for byte. Equal
    bytes parse to exactly those entries, so the JSON parse and the checks can be
    skipped; anything else (another writer's layout, damage) gets the full check."""
    layout = {}
    data_size = 0
    for key, tensor in expected.items():  # layout_entries inline: once per shard opened
        layout[key] = HeaderEntry(tensor.dtype, tensor.shape, data_size, data_size + tensor.nbytes)
        data_size += tensor.nbytes
    header = encode_header(layout)
    if len(header) + data_size == size and read_at(0, len(header)) == header:
        return layout, len(header)
    (length,) = struct.unpack("<Q", read_at(0, 8)) if size >= 8 else (0,)
    # A length past the file or the format's bound: parse_header refuses it from the
    # first 8 bytes alone, so read nothing more (up to 100 MB for nothing otherwise).
    fits = length <= min(size - 8, MAX_HEADER_BYTES)
    prefix = read_at(0, 8 + length if fits else min(size, 8))
    entries = parse_header(prefix, size, path=display)
    check_header_against(entries, expected, path=display)
    return entries, 8 + length


class ShardReader:
    """A read-only memory map of one shard file, checked against the manifest before use.

    Opening checks the size, (optionally) the checksum and the header; ``copy_into``
    then copies a tensor's bytes straight from the map into a target tensor.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        display: str,
        nbytes: int,
        checksum: tuple[str, str] | None,
        expected: Mapping[str, TensorEntry],
        dir_fd: int | None = None,
    ) -> None:
        self.display = display
        fd, size = _open_shard_file(path, display, nbytes, dir_fd)
        try:
            # A shared read-only map: faulting its pages in is much cheaper here than
            # for a private (copy-on-write) one, and nothing can write through it.
            self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except OSError as exc:  # the map holds a descriptor of its own, too
            raise _unreadable(exc, display, "map") from exc
        except ValueError as exc:
            raise IntegrityError(f"{display}: cannot read shard ({exc})", path=display) from exc
        finally:
            os.close(fd)
        try:
            if checksum is not None:
                self._verify(*checksum)
            self.entries, self._data_start = _check_header(
                lambda offset, length: self._map[offset : offset + length], size, expected, display
            )
        except BaseException:
            self.close()
            raise

    def _verify(self, algorithm: str, digest: str) -> None:
        hasher = new_hasher(algorithm)
        view = memoryview(self._map)
        large = len(view) > WINDOW_BYTES
        try:
            for start in range(0, len(view), WINDOW_BYTES):
                hasher.update(view[start : start + WINDOW_BYTES])
                if large:
                    self._release(start, WINDOW_BYTES)
        finally:
            view.release()
        if hasher.hexdigest() != digest:
            raise IntegrityError(
                f"{self.display}: {algorithm} checksum {hasher.hexdigest()} "
                f"does not match the manifest's {digest}; the file is "
                "corrupt or was modified",
                path=self.display,
            )

    def _release(self, start: int, length: int) -> None:
        # Drop mapped pages we are done with from this process's resident set; the
        # page cache keeps them, so a later read is still cheap.
        page = mmap.PAGESIZE
        aligned = start - start % page
        end = min(start + length, len(self._map))
        if end > aligned and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED, aligned, end - aligned)

    def tensor(self, key: str) -> torch.Tensor:
        """A read-only tensor viewing the mapped bytes of ``key`` (valid until ``close``)."""
        entry = self.entries[key]
        count = math.prod(entry.shape)
        if not count:  # frombuffer refuses count=0; no bytes to view anyway
            return torch.empty(entry.shape, dtype=torch_dtype(entry.dtype))
        with warnings.catch_warnings():
            # torch warns that the buffer is not writable; we never write through it.
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(
                self._map,
                dtype=torch_dtype(entry.dtype),
                count=count,
                offset=self._data_start + entry.begin,
            )
        return flat.reshape(entry.shape)

    def copy_into(self, key: str, target: torch.Tensor, *, direct: bool | None = None) -> None:
        """Copy ``key`` into ``target`` (same shape; dtype cast if it differs), in
        windows so that a large tensor is never resident twice. ``direct``: whether the
        target owns its memory, so that a plain byte copy may write it (the loader knows
        it from its plan, ``CopyStep.direct``; ``None`` asks the target)."""
        entry = self.entries[key]
        if direct is None:
            direct = owns_memory(target)
        if (
            direct
            and target.device.type == "cpu"
            and target.is_contiguous()
            and target.dtype == torch_dtype(entry.dtype)
            and not target.is_neg()  # a lazily negated view: copy_ writes its value
        ):
            self._copy_bytes(entry, target)
            return
        source = self.tensor(key)
        rows = entry.shape[0] if entry.shape else 1
        row_bytes = (entry.end - entry.begin) // rows if rows else 0
        step = max(1, WINDOW_BYTES // row_bytes) if row_bytes else rows
        # A model built under inference_mode has inference tensors, which only accept
        # in-place writes inside it (the byte copy above writes them regardless).
        with torch.inference_mode() if target.is_inference() else torch.no_grad():
            if not entry.shape or step >= rows:
                target.copy_(source)
            else:
                for first in range(0, rows, step):
                    target[first : first + step].copy_(source[first : first + step])
                    self._release(
                        self._data_start + entry.begin + first * row_bytes, step * row_bytes
                    )
        del source

    def _copy_bytes(self, entry: HeaderEntry, target: torch.Tensor) -> None:
        # The common case (same dtype, contiguous, CPU) is a plain memcpy between two
        # byte views: the target's through ctypes, not four torch calls and numpy (W1's
        # 256 copies: 5.5 instead of 6.3 ms).
        size = entry.end - entry.begin
        start = self._data_start + entry.begin
        dest = raw_buffer(target)
        if dest is None or dest.nbytes != size:  # not expected after the caller's checks
            dest = memoryview(target.detach().reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
        with memoryview(self._map) as source:
            for first in range(0, size, WINDOW_BYTES):
                end = min(first + WINDOW_BYTES, size)
                dest[first:end] = source[start + first : start + end]
                if size > WINDOW_BYTES:
                    self._release(start + first, WINDOW_BYTES)

    def close(self) -> None:
        mapped = getattr(self, "_map", None)
        if mapped is not None:
            # A tensor may still view the map; it is then unmapped when that tensor dies.
            with contextlib.suppress(BufferError):
                mapped.close()
            self._map = None  # type: ignore[assignment]

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShardStream:
    """One shard read with ``pread`` straight into the target tensors: no map, so no page
    faults and nothing resident but the targets (an unverified W1 load: ~1.5 ms less).

    For loads without checksum verification whose copies all go to contiguous CPU tensors
    of the stored dtype (``can_stream``); anything else uses :class:`ShardReader`. Opening
    checks the size and the header exactly as ``ShardReader`` does."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        display: str,
        nbytes: int,
        expected: Mapping[str, TensorEntry],
        dir_fd: int | None = None,
    ) -> None:
        self.display = display
        self._fd, size = _open_shard_file(path, display, nbytes, dir_fd)
        try:
            self.entries, self._data_start = _check_header(self._read_at, size, expected, display)
        except BaseException:
            self.close()
            raise

    def _read_at(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) < length:  # sized at open; shrunk since
            raise IntegrityError(
                f"{self.display}: file shrank while its header was read", path=self.display
            )
        return data

    def copy_into(self, key: str, target: torch.Tensor) -> None:
        """Read ``key``'s bytes into ``target`` (see ``can_stream``)."""
        entry = self.entries[key]
        size = entry.end - entry.begin
        view = raw_buffer(target) if can_stream(entry.dtype, target) else None
        if view is None or view.nbytes != size:  # the loader asks can_stream first
            raise TypeError(f"{self.display}: {key!r} cannot be read straight into {target.dtype}")
        offset = self._data_start + entry.begin
        done = 0
        while done < size:  # pread may stop short (signals, > 2 GB): continue from there
            count = os.preadv(self._fd, [view[done:]], offset + done)
            if count <= 0:
                # Checked at open, cut short since: earlier copies have landed already.
                raise PartialLoadError(
                    f"{self.display}: file ended at {offset + done} bytes while copying "
                    f"{key!r}: another program truncated it during the load. The model "
                    "is partly loaded; load it again.",
                    path=self.display,
                    key=key,
                )
            done += count

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ShardStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def can_stream(stored_dtype: str, target: torch.Tensor) -> bool:
    """Whether a stored tensor can be read byte for byte into ``target``."""
    return (
        hasattr(os, "preadv")  # not on Windows
        and target.device.type == "cpu"
        and target.dtype == torch_dtype(stored_dtype)
        and target.is_contiguous()
        and not target.is_neg()  # a lazily negated view's memory is not its value
    )
