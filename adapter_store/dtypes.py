"""Mapping between torch dtypes and the dtype names of the safetensors format."""

from __future__ import annotations

import torch

# The names are the ones safetensors writes in its JSON header; the manifest uses them
# too, so a manifest is readable without torch.
_TORCH_TO_NAME: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
for _name, _st in (("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64")):
    if hasattr(torch, _name):
        _TORCH_TO_NAME[getattr(torch, _name)] = _st

_NAME_TO_TORCH = {name: dtype for dtype, name in _TORCH_TO_NAME.items()}

#: Every dtype name a shard may use.
DTYPE_NAMES: frozenset[str] = frozenset(_NAME_TO_TORCH)


def dtype_name(dtype: torch.dtype) -> str:
    """Return the safetensors name of a torch dtype; ``KeyError`` if it has none."""
    return _TORCH_TO_NAME[dtype]


def torch_dtype(name: str) -> torch.dtype:
    """Return the torch dtype of a safetensors dtype name; ``KeyError`` if unknown."""
    return _NAME_TO_TORCH[name]


def itemsize(name: str) -> int:
    """Bytes per element of a safetensors dtype name."""
    return _NAME_TO_TORCH[name].itemsize


def is_supported(dtype: torch.dtype) -> bool:
    return dtype in _TORCH_TO_NAME
