"""The safetensors format: encoding shards without an extra copy, parsing headers.

Encoding builds the header ourselves and keeps views of the tensors' own buffers, which
``file_writing.write_file`` hands to ``os.writev``. It follows the format exactly (8-byte
little-endian header length, JSON header padded with spaces to 8 bytes, tensor bytes
back to back), so ``safetensors.safe_open`` reads every file we write. Headers from
untrusted files are checked before use: bounded size, valid JSON, known dtypes, sizes
that agree with shapes, contiguous in-bounds offsets. Reading tensors out of a checked
file is ``shard_reader.ShardReader``.
"""

from __future__ import annotations

import ctypes
import json
import math
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any, NamedTuple

import torch

from .checksum import new_hasher
from .dtypes import DTYPE_NAMES, dtype_name, itemsize
from .errors import IntegrityError
from .manifest import MAX_DIM, MAX_DIMS, TensorEntry

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the same bound safetensors itself enforces


class HeaderEntry(NamedTuple):
    """One tensor of a safetensors header. A named tuple: every open of a shard builds
    one per tensor, at a quarter of a frozen dataclass's cost."""

    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets relative to the start of the data section, as in the format
    end: int


@dataclass(frozen=True)
class EncodedShard:
    """A shard ready to be written: header bytes and the tensors' raw buffers."""

    header: bytes
    buffers: tuple[memoryview, ...]
    entries: Mapping[str, HeaderEntry]
    #: The storages the buffers point into, kept alive as long as the buffers are.
    owners: tuple[torch.UntypedStorage, ...] = ()

    @property
    def nbytes(self) -> int:
        return len(self.header) + sum(buf.nbytes for buf in self.buffers)

    def chunks(self) -> Iterator[memoryview]:
        yield memoryview(self.header)
        yield from self.buffers

    def digest(self, algorithm: str) -> str:
        hasher = new_hasher(algorithm)
        for chunk in self.chunks():
            hasher.update(chunk)
        return hasher.hexdigest()


#: What ``memory_state`` finds behind a tensor.
OWNED, FREED, WRAPPED = "owned", "freed", "wrapped"


def memory_state(tensor: torch.Tensor) -> str:
    """Whether the tensor's values are bytes in memory of its own that can be read
    (``OWNED``); or it has a storage of its own too small to hold them (``FREED``: freed
    with ``untyped_storage().resize_(0)``, as FSDP and offloading do with sharded
    parameters, whatever the tensor's class; and meta tensors); or it has no storage at
    all (``WRAPPED``: DTensor, quantized and other ``__torch_dispatch__`` wrappers keep
    their values in inner tensors). Reading or writing the last two by address crashes
    the process; only a wrapper's own ``copy_`` reaches its values."""
    try:
        if tensor.numel() == 0:
            return OWNED
        storage = tensor.untyped_storage()
        if storage.data_ptr() == 0:
            return FREED
        if tensor.is_contiguous():
            end = tensor.storage_offset() + tensor.numel()
        else:
            spans = zip(tensor.shape, tensor.stride(), strict=True)
            end = tensor.storage_offset() + 1 + sum((n - 1) * step for n, step in spans)
        return OWNED if end * tensor.element_size() <= storage.nbytes() else FREED
    except (RuntimeError, NotImplementedError):  # no storage at all (wrappers, fakes)
        return WRAPPED


def owns_memory(tensor: torch.Tensor) -> bool:
    """Whether the tensor's values are bytes in memory of its own (``memory_state``)."""
    return memory_state(tensor) == OWNED


def raw_buffer(tensor: torch.Tensor) -> memoryview | None:
    """A view of a contiguous CPU tensor's bytes without torch/numpy calls per tensor
    (4 us -> 1 us; W2's 2,000 tensors pay it 2,000 times). The caller keeps the tensor's
    storage alive while the view is used. ``None`` when no such view exists."""
    # ``is_cpu`` rather than ``device.type``: no device object per call (W2: 2,000 calls).
    if not tensor.is_cpu or not tensor.is_contiguous():
        return None
    if tensor.is_neg() or tensor.is_conj():  # lazy views: memory is not their value
        return None
    itemsize = tensor.element_size()
    size = tensor.numel() * itemsize
    if size == 0:
        return memoryview(b"")
    # ``owns_memory`` for a contiguous tensor, inlined (paid per saved tensor).
    try:
        storage = tensor.untyped_storage()
        base, capacity = storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # wrappers, fakes, freed: no storage
        return None
    start = int(tensor.storage_offset()) * itemsize
    if not base or start + size > capacity:  # freed (resized to 0) under a view
        return None
    return memoryview((ctypes.c_ubyte * size).from_address(base + start)).cast("B")


def tensor_buffer(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes in C order; a copy only when it is not contiguous or not on CPU."""
    data = tensor.detach().resolve_neg().resolve_conj()  # values, not lazy views
    if data.device.type != "cpu":
        data = data.cpu()
    if not data.is_contiguous():
        data = data.contiguous()
    # numpy keeps the tensor alive for as long as the view exists.
    array = data.reshape(-1).view(torch.uint8).numpy()
    return memoryview(array).cast("B")  # type: ignore[arg-type]


def layout_entries(
    specs: Iterable[tuple[str, str, tuple[int, ...], int]],
) -> dict[str, HeaderEntry]:
    """Back-to-back offsets for ``(key, dtype, shape, nbytes)`` in order."""
    entries: dict[str, HeaderEntry] = {}
    offset = 0
    for key, dtype, shape, nbytes in specs:
        entries[key] = HeaderEntry(dtype, shape, offset, offset + nbytes)
        offset += nbytes
    return entries


def encode_header(
    entries: Mapping[str, HeaderEntry], metadata: Mapping[str, str] | None = None
) -> bytes:
    """The 8-byte length and the space-padded JSON header, exactly as we write them.

    For the string keys and int shapes and offsets we write, the same bytes as
    ``json.dumps(header, separators=(",", ":"))`` (a hypothesis test holds it to that),
    built directly: half the cost, paid for every shard at every save and load."""
    parts = (
        [f'"__metadata__":{json.dumps(dict(metadata), separators=(",", ":"))}'] if metadata else []
    )
    for key, (dtype, shape, begin, end) in entries.items():
        parts.append(
            f'{_json_string(key)}:{{"dtype":{_json_string(dtype)},'
            f'"shape":[{",".join(map(str, shape))}],"data_offsets":[{begin},{end}]}}'
        )
    text = ("{" + ",".join(parts) + "}").encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def encode_shard(
    tensors: Sequence[tuple[str, torch.Tensor]], metadata: Mapping[str, str] | None = None
) -> EncodedShard:
    """Lay out ``tensors`` in order as one safetensors file."""
    buffers = []
    owners = []
    for _, tensor in tensors:
        # The raw bytes need no ``detach()`` (a third of this loop's cost for W2);
        # ``tensor_buffer`` detaches for the copy it makes.
        buffer = raw_buffer(tensor)
        if buffer is None:
            buffer = tensor_buffer(tensor)
        else:
            # The storage itself, not the tensor: it stays alive even if the parameter
            # is pointed at other memory meanwhile (``p.data = ...``).
            owners.append(tensor.untyped_storage())
        buffers.append(buffer)
    entries = layout_entries(
        (key, dtype_name(tensor.dtype), tuple(tensor.shape), buffer.nbytes)
        for (key, tensor), buffer in zip(tensors, buffers, strict=True)
    )
    return EncodedShard(encode_header(entries, metadata), tuple(buffers), entries, tuple(owners))


# --- parsing (untrusted input) ------------------------------------------------------


def parse_header(
    buffer: memoryview | bytes, file_size: int, *, path: str
) -> dict[str, HeaderEntry]:
    """Validate a safetensors header from the start of ``buffer`` (untrusted input)."""
    if file_size < 8:
        raise IntegrityError(
            f"{path}: file is {file_size} bytes, too short for a safetensors header", path=path
        )
    (length,) = struct.unpack("<Q", bytes(buffer[:8]))
    if length > min(file_size - 8, MAX_HEADER_BYTES):
        raise IntegrityError(
            f"{path}: header length {length} is larger than the file "
            f"({file_size} bytes) allows; not a safetensors file, or "
            "truncated (a pickle renamed to .safetensors looks like this)",
            path=path,
        )
    try:
        raw = json.loads(bytes(buffer[8 : 8 + length]), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise IntegrityError(f"{path}: header is not valid JSON ({exc})", path=path) from exc
    if not isinstance(raw, dict):
        raise IntegrityError(f"{path}: header is not a JSON object", path=path)
    raw.pop("__metadata__", None)
    entries = {key: _parse_entry(key, value, path) for key, value in raw.items()}
    _check_offsets(entries, file_size - 8 - length, path)
    return entries


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a key appears twice")
    return result


def _parse_entry(key: str, value: Any, path: str) -> HeaderEntry:
    def fail(why: str) -> IntegrityError:
        return IntegrityError(f"{path}: header entry {key!r}: {why}", path=path, key=key)

    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise fail("expected exactly 'dtype', 'shape' and 'data_offsets'")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_NAMES:
        raise fail(f"unknown dtype {dtype!r}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise fail(f"shape is not a list of at most {MAX_DIMS} dimensions")
    if not all(_is_count(d) for d in shape):
        raise fail(f"shape {shape!r} is not a list of integers in [0, {MAX_DIM}]")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise fail(f"data_offsets {offsets!r} are not [begin, end] with begin <= end")
    size = math.prod(shape) * itemsize(dtype)
    if offsets[1] - offsets[0] != size:
        raise fail(
            f"data_offsets {offsets} span {offsets[1] - offsets[0]} bytes but "
            f"{dtype} {shape} takes {size}"
        )
    return HeaderEntry(dtype, tuple(shape), offsets[0], offsets[1])


def _is_count(value: Any) -> bool:
    # Bounded like safetensors' own u64/usize fields; keeps every product printable.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_DIM


def _check_offsets(entries: Mapping[str, HeaderEntry], data_size: int, path: str) -> None:
    position, last = 0, None
    for key, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != position:
            kind = "overlaps the previous tensor" if entry.begin < position else "leaves a gap"
            raise IntegrityError(
                f"{path}: header entry {key!r}: data_offsets "
                f"[{entry.begin}, {entry.end}] {kind} (expected to begin "
                f"at {position})",
                path=path,
                key=key,
            )
        position, last = entry.end, key
    if position != data_size:
        where = f" (the last, {last!r}, ends there)" if last is not None else ""
        raise IntegrityError(
            f"{path}: header data_offsets cover {position} bytes{where} but the data section "
            f"is {data_size} bytes",
            path=path,
            key=last,
        )


def check_header_against(
    entries: Mapping[str, HeaderEntry], expected: Mapping[str, TensorEntry], *, path: str
) -> None:
    """The header must hold exactly the manifest's tensors, with the same dtype and shape."""
    for key in expected.keys() - entries.keys():
        raise IntegrityError(
            f"{path}: tensor {key!r} is listed in the manifest but absent from the shard",
            path=path,
            key=key,
        )
    for key in entries.keys() - expected.keys():
        raise IntegrityError(
            f"{path}: tensor {key!r} is in the shard but not listed in the manifest",
            path=path,
            key=key,
        )
    for key, want in expected.items():
        got = entries[key]
        if (got.dtype, got.shape) != (want.dtype, tuple(want.shape)):
            raise IntegrityError(
                f"{path}: tensor {key!r} is {got.dtype} {list(got.shape)} in "
                f"the shard but {want.dtype} {list(want.shape)} in the "
                "manifest",
                path=path,
                key=key,
            )
