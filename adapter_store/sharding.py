"""Grouping stored tensors into per-module shard files (pure planning, no I/O)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import InvalidAdapterError
from .layout import shard_filename

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
# PEFT wraps the model twice; grouping looks past that wrapper so that `lm_head` is its
# own group rather than everything outside the layers falling into `base_model`.
_WRAPPER_PREFIXES = ("base_model.model.",)


# Pure, and asked again for the same keys at every save and partial load of a model.
@functools.lru_cache(maxsize=1 << 16)
def group_of(key: str) -> str:
    """The module group of a state-dict key.

    The name up to and including the first numeric index (``model.layers.7``), else the
    top-level child (``lm_head``, ``classifier``), looking past PEFT's wrapper prefix.
    """
    prefix = next((p for p in _WRAPPER_PREFIXES if key.startswith(p)), "")
    parts = key[len(prefix) :].split(".")
    for index, part in enumerate(parts[:-1]):
        if part.isdigit():
            return prefix + ".".join(parts[: index + 1])
    return prefix + parts[0]


@dataclass(frozen=True)
class PlannedShard:
    path: str
    group: str
    keys: tuple[str, ...]


def plan_shards(
    sizes: Mapping[str, int],
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    group_by: Callable[[str], str] = group_of,
) -> list[PlannedShard]:
    """One shard per group, in the order groups first appear; a group is split into
    parts only when its tensors exceed ``max_shard_bytes`` (one tensor never splits)."""
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    groups: dict[str, list[str]] = {}
    for key in sizes:
        group = group_by(key)
        if not isinstance(group, str) or not group:  # a user's group_by, and a file name
            raise InvalidAdapterError(
                f"group_by returned {group!r} for {key!r}: it must return a non-empty string "
                "(the module group, such as 'model.layers.7')"
            )
        groups.setdefault(group, []).append(key)
    planned: list[PlannedShard] = []
    owners: dict[str, str] = {}  # case-folded path -> the group whose file it is
    for group, keys in groups.items():
        parts = _split(keys, sizes, max_shard_bytes)
        paths = _unique_paths(group, len(parts), owners)
        planned.extend(
            PlannedShard(path, group, tuple(part)) for path, part in zip(paths, parts, strict=True)
        )
    return planned


def _split(keys: list[str], sizes: Mapping[str, int], max_shard_bytes: int) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    filled = 0
    for key in keys:
        if parts[-1] and filled + sizes[key] > max_shard_bytes:
            parts.append([])
            filled = 0
        parts[-1].append(key)
        filled += sizes[key]
    return parts


def _unique_paths(group: str, parts: int, owners: dict[str, str]) -> list[str]:
    """The file names of ``group``'s parts, none already another group's in ``owners``.

    Distinct groups can clean to one name: ``a`` in two parts and a group called
    ``a-00001-of-00002``, or ``a b`` and ``a_b-<its digest>``; and ``A`` and ``a`` are one
    file on a case-insensitive disk the version may be copied to. The later group then
    gets its digest in all its names (the common case keeps its plain name).
    """
    clash = ""
    for hashed in (False, True):
        paths = [shard_filename(group, n, parts, hashed=hashed) for n in range(1, parts + 1)]
        clash = next((p for p in paths if p.casefold() in owners), "")
        if not clash:
            owners.update((p.casefold(), group) for p in paths)
            return paths
    raise InvalidAdapterError(
        f"module groups {owners[clash.casefold()]!r} and {group!r} would both be stored in "
        f"{clash}; give one of them another name (group_by=...)"
    )
