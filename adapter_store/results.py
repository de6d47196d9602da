"""What ``save`` and ``load`` return."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from .manifest import Manifest


def detached_manifest(manifest: Manifest) -> Manifest:
    """A copy of ``manifest`` for a caller to keep: its dicts and lists are its own.

    The loader shares one parsed manifest per file (``version_files.read_manifest``); pydantic's
    ``frozen`` stops attribute assignment but not ``manifest.metadata[...] = ...``, which
    would change what every later load of that version sees. The entries inside (shards,
    tensors, checksums) are frozen models with tuple shapes, so they are shared; a deep
    copy would cost ~2.5 ms for W1's manifest."""
    optimizer = manifest.optimizer
    if optimizer is not None:
        optimizer = optimizer.model_copy(
            update={
                "param_groups": copy.deepcopy(optimizer.param_groups),
                "tensors": dict(optimizer.tensors),
                "scalars": copy.deepcopy(optimizer.scalars),
            }
        )
    return manifest.model_copy(
        update={
            "tensors": dict(manifest.tensors),
            "aliases": dict(manifest.aliases),
            "shards": list(manifest.shards),
            "base": manifest.base.model_copy(update={"tensors": dict(manifest.base.tensors)}),
            "excluded": list(manifest.excluded),
            "optimizer": optimizer,
            "metadata": copy.deepcopy(manifest.metadata),
        }
    )


@dataclass(frozen=True)
class SavedAdapter:
    """One committed version: its name, number, directory and manifest."""

    name: str
    version: int
    path: Path
    manifest: Manifest
    #: Shards hard-linked from the previous version because their bytes were unchanged.
    reused_shards: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # The caller's own copy: the store keeps the manifest it wrote for later loads.
        object.__setattr__(self, "manifest", detached_manifest(self.manifest))

    @property
    def nbytes(self) -> int:
        """Bytes of the version's shard and optimizer files (the manifest aside)."""
        return self.manifest.nbytes


@dataclass(frozen=True)
class LoadReport:
    """Exactly what a load did. Keys are the model's (canonical) state-dict names."""

    name: str
    version: int
    path: Path
    loaded: list[str]
    #: Trainable in the model but absent from the adapter (only reported when strict=False).
    missing: list[str]
    #: Stored in the adapter but absent from the model (only reported when strict=False).
    unexpected: list[str]
    #: Not in the adapter on purpose: recorded as frozen base at save, or frozen here.
    frozen: list[str] = field(default_factory=list)
    #: Tensors of other named adapters beside this one in the model (PEFT keeps them in
    #: ``lora_A.<name>``): left alone, and not missing even when trainable.
    other_adapters: list[str] = field(default_factory=list)
    #: Stored tensors of module groups that were not asked for (``modules=[...]``).
    skipped: list[str] = field(default_factory=list)
    #: Keys whose dtype was converted: key -> (stored dtype, model dtype).
    cast: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: "match", "mismatch" (check_base="warn"), or "not checked" (check_base="ignore").
    base_check: str = "match"
    verified: bool = True
    warnings: list[str] = field(default_factory=list)
    optimizer_restored: bool = False

    def summary(self) -> str:
        """A few human lines: counts, and the first names of anything not loaded."""
        lines = [
            f"adapter {self.name!r} v{self.version}: loaded {len(self.loaded)} tensors "
            f"(checksums {'verified' if self.verified else 'not verified'}, base "
            f"{self.base_check})"
        ]
        for label, keys in (
            ("frozen (not saved on purpose)", self.frozen),
            ("other adapters' (left alone)", self.other_adapters),
            ("truly missing", self.missing),
            ("unexpected", self.unexpected),
            ("skipped (modules not requested)", self.skipped),
        ):
            if keys:
                shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
                lines.append(f"  {label}: {len(keys)} ({shown})")
        if self.cast:
            lines.append(f"  dtype converted: {len(self.cast)}")
        if self.optimizer_restored:
            lines.append("  optimizer state restored")
        return "\n".join(lines)
