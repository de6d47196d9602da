"""Comparing two adapter versions: modules and tensors added, removed and changed.

Planning is pure (which keys exist on which side, with which dtype and shape); only the
tensors present on both sides with the same shape are read, through the verified shard
reader, to measure the largest absolute difference. Tensors in shard files whose checksums
agree are known to be identical without reading them (incremental saves hard-link such
files).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .inspection import format_shape, module_of
from .manifest import Manifest
from .shard_reader import ShardReader
from .version_files import open_shard, read_manifest

#: Elements compared at a time, so that a large head is never held twice in float64.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class TensorChange:
    """One stored key: ``(dtype, shape)`` before and after (``None`` where absent) and,
    when both sides exist with the same shape, the largest absolute difference."""

    key: str
    module: str
    before: tuple[str, tuple[int, ...]] | None
    after: tuple[str, tuple[int, ...]] | None
    max_abs_diff: float | None = None
    identical: bool = False

    @property
    def kind(self) -> str:
        if self.before is None:
            return "added"
        if self.after is None:
            return "removed"
        return "identical" if self.identical else "changed"


@dataclass(frozen=True)
class AdapterDiff:
    """Everything ``diff A B`` reports; ``before`` is A, ``after`` is B."""

    before: Path
    after: Path
    steps: tuple[int | None, int | None]
    same_base_structure: bool
    same_base_content: bool
    tensors: tuple[TensorChange, ...]
    modules: dict[str, str]  # module group -> added / removed / changed / identical

    @property
    def differs(self) -> bool:
        return any(change.kind != "identical" for change in self.tensors)

    def as_dict(self) -> dict[str, Any]:
        def side(value: tuple[str, tuple[int, ...]] | None) -> dict[str, Any] | None:
            return None if value is None else {"dtype": value[0], "shape": list(value[1])}

        diff = self.max_abs_diff_json
        return {
            "before": str(self.before),
            "after": str(self.after),
            "steps": list(self.steps),
            "same_base": {"structure": self.same_base_structure, "content": self.same_base_content},
            "modules": self.modules,
            "tensors": [
                {
                    "key": c.key,
                    "module": c.module,
                    "kind": c.kind,
                    "before": side(c.before),
                    "after": side(c.after),
                    "max_abs_diff": diff(c.max_abs_diff),
                }
                for c in self.tensors
            ],
        }

    @staticmethod
    def max_abs_diff_json(value: float | None) -> float | str | None:
        # JSON has no NaN or infinity; keep them readable instead of emitting invalid JSON.
        if value is None or math.isfinite(value):
            return value
        return str(value)


def plan_diff(before: Manifest, after: Manifest) -> list[TensorChange]:
    """Every key of either side, classified without reading tensor data (pure).

    Keys on both sides come back as "changed" with no difference measured yet; keys whose
    shard files have the same checksum come back identical.
    """
    module_a, module_b = module_of(before), module_of(after)
    changes = []
    for key in list(after.tensors) + [k for k in before.tensors if k not in after.tensors]:
        a, b = before.tensors.get(key), after.tensors.get(key)
        side_a = None if a is None else (a.dtype, tuple(a.shape))
        side_b = None if b is None else (b.dtype, tuple(b.shape))
        same_file = (
            a is not None
            and b is not None
            and before.shard(a.shard).checksum == after.shard(b.shard).checksum
        )
        module = module_b[key] if b is not None else module_a[key]
        changes.append(
            TensorChange(key, module, side_a, side_b, 0.0 if same_file else None, same_file)
        )
    return changes


def diff_versions(
    before_dir: Path,
    after_dir: Path,
    *,
    on_tensor: Callable[[str], None] | None = None,
) -> AdapterDiff:
    """Compare two version directories; tensors are read (and their shards verified)
    only where both sides hold the same shape. ``on_tensor`` is called per tensor read."""
    before, after = read_manifest(before_dir), read_manifest(after_dir)
    planned = plan_diff(before, after)
    measured = []
    with ExitStack() as stack:
        readers: dict[tuple[int, str], ShardReader] = {}

        def reader(side: int, directory: Path, manifest: Manifest, shard: str) -> ShardReader:
            if (side, shard) not in readers:
                opened = open_shard(directory, manifest, shard, verify=True)
                readers[(side, shard)] = stack.enter_context(opened)
            return readers[(side, shard)]

        for change in planned:
            if not _same_shape(change):
                measured.append(change)
                continue
            a = reader(0, before_dir, before, before.tensors[change.key].shard).tensor(change.key)
            b = reader(1, after_dir, after, after.tensors[change.key].shard).tensor(change.key)
            diff, identical = _compare(a, b)
            del a, b  # the views must die before their shard maps close
            measured.append(
                TensorChange(
                    change.key, change.module, change.before, change.after, diff, identical
                )
            )
            if on_tensor is not None:
                on_tensor(change.key)
    return AdapterDiff(
        before_dir,
        after_dir,
        (before.step, after.step),
        before.base.structure_digest == after.base.structure_digest,
        before.base.content_digest == after.base.content_digest,
        tuple(measured),
        _module_changes(measured),
    )


def _same_shape(change: TensorChange) -> bool:
    if change.kind != "changed" or change.before is None or change.after is None:
        return False
    return change.before[1] == change.after[1]


def _compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, bool]:
    """Largest absolute difference, and whether the bytes are identical (NaN included)."""
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    if a.dtype == b.dtype and torch.equal(flat_a.view(torch.uint8), flat_b.view(torch.uint8)):
        return 0.0, True
    largest = 0.0
    for start in range(0, flat_a.numel(), _CHUNK_ELEMENTS):
        part_a = flat_a[start : start + _CHUNK_ELEMENTS].double()
        part_b = flat_b[start : start + _CHUNK_ELEMENTS].double()
        value = float((part_a - part_b).abs().max())
        if math.isnan(value):
            return value, False
        largest = max(largest, value)
    return largest, False


def _module_changes(changes: list[TensorChange]) -> dict[str, str]:
    kinds: dict[str, set[str]] = {}
    for change in changes:
        kinds.setdefault(change.module, set()).add(change.kind)
    result = {}
    for module, seen in kinds.items():
        if len(seen) == 1 and next(iter(seen)) in ("added", "removed", "identical"):
            result[module] = next(iter(seen))
        else:
            result[module] = "changed"
    return result


_MARKS = {"added": "+", "removed": "-", "changed": "~"}


def _side(value: tuple[str, tuple[int, ...]] | None) -> str:
    return "-" if value is None else f"{value[0]} {format_shape(value[1])}"


def render_diff(diff: AdapterDiff) -> str:
    """The readable form: a header, then modules and tensors that are not identical."""
    step_a, step_b = diff.steps
    lines = [f"--- {diff.before} (step {step_a})", f"+++ {diff.after} (step {step_b})"]
    if diff.same_base_structure and diff.same_base_content:
        lines.append("base model: same fingerprint")
    else:
        which = "structure" if not diff.same_base_structure else "weights"
        lines.append(f"base model: DIFFERENT ({which} fingerprint differs)")
    counts = {kind: 0 for kind in ("added", "removed", "changed", "identical")}
    for kind in diff.modules.values():
        counts[kind] += 1
    lines.append("modules: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    lines += [f"  {_MARKS[k]} {m}" for m, k in diff.modules.items() if k != "identical"]
    counts = {kind: 0 for kind in counts}
    for change in diff.tensors:
        counts[change.kind] += 1
    lines.append("tensors: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    width = max((len(c.key) for c in diff.tensors if c.kind != "identical"), default=0)
    for change in diff.tensors:
        if change.kind == "identical":
            continue
        text = _side(change.after if change.kind == "added" else change.before)
        if change.kind == "changed":
            if change.before != change.after:
                text = f"{_side(change.before)} -> {_side(change.after)}"
            if change.max_abs_diff is not None:
                text += f"  max |a-b| {change.max_abs_diff:.3g}"
        lines.append(f"  {_MARKS[change.kind]} {change.key.ljust(width)}  {text}")
    return "\n".join(lines)
