"""Deciding what a save writes (no I/O): selection, fingerprint, shards, manifest.

``plan_save`` looks at a model and returns a frozen :class:`SavePlan`; the store then
writes the planned shards and, once it knows the version number, turns the plan and what
was written into the manifest with ``build_manifest``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import safetensors
import torch
from pydantic import JsonValue, TypeAdapter, ValidationError
from torch import nn

from . import __version__
from .errors import InvalidAdapterError
from .fingerprint import FINGERPRINT_MODES, fingerprint_base, key_set_digest
from .manifest import (
    BaseFingerprint,
    FingerprintMode,
    LibraryVersions,
    Manifest,
    OptimizerSection,
)
from .optim import OptimizerParts, split_optimizer_state
from .selection import (
    ModelTensors,
    Selection,
    collect_tensors,
    other_adapter_keys,
    parameter_names,
    select_tensors,
)
from .sharding import PlannedShard, group_of, plan_shards
from .writing import WrittenFiles

_METADATA = TypeAdapter(dict[str, JsonValue])


@dataclass(frozen=True)
class SavePlan:
    """Everything a save will write, decided before a file is touched."""

    selection: Selection
    #: Every tensor of the model: ``fingerprint_save`` finds the base in it.
    model: ModelTensors
    fingerprint: FingerprintMode
    shards: tuple[PlannedShard, ...]
    optimizer: OptimizerParts | None
    metadata: dict[str, JsonValue]


def plan_save(
    model: nn.Module,
    *,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    metadata: Mapping[str, Any] | None,
    optimizer: torch.optim.Optimizer | None,
    group_by: Callable[[str], str] | None,
    max_shard_bytes: int,
    fingerprint: FingerprintMode,
) -> SavePlan:
    """Select the tensors and group them into shards (the base fingerprint is
    ``fingerprint_save``); raises :class:`InvalidAdapterError` for anything that cannot
    be saved."""
    tensors = collect_tensors(model)
    selection = select_tensors(tensors, include=include, exclude=exclude)
    user_metadata = check_metadata(metadata)
    if fingerprint not in FINGERPRINT_MODES:
        raise ValueError(
            f"fingerprint mode must be one of {FINGERPRINT_MODES}, got {fingerprint!r}"
        )
    optimizer_parts = None
    if optimizer is not None:
        optimizer_parts = split_optimizer_state(optimizer, parameter_names(model, tensors))
    shards = plan_shards(
        {k: t.numel() * t.element_size() for k, t in selection.tensors.items()},
        max_shard_bytes=max_shard_bytes,
        group_by=group_by or group_of,
    )
    return SavePlan(selection, tensors, fingerprint, tuple(shards), optimizer_parts, user_metadata)


def fingerprint_save(plan: SavePlan) -> BaseFingerprint:
    """The base fingerprint of a planned save: the frozen tensors, minus other named
    adapters beside the saved one. Separate from ``plan_save`` (which decides only what
    the writes need) so that a save computes it while the disk writes the shards."""
    selection = plan.selection
    ignored = other_adapter_keys(plan.model, [*selection.tensors, *selection.aliases])
    base = {k: t for k, t in selection.frozen.items() if k not in ignored}
    return fingerprint_base(base, mode=plan.fingerprint)


def build_manifest(
    plan: SavePlan,
    base: BaseFingerprint,
    written: WrittenFiles,
    optimizer: OptimizerSection | None,
    *,
    name: str,
    version: int,
    step: int | None,
) -> Manifest:
    """The manifest of a planned save once its files are written and its number known."""
    selection = plan.selection
    return Manifest(
        name=name,
        version=version,
        step=step,
        created_at=datetime.now(timezone.utc),
        library=library_versions(),
        tensors=dict(written.tensors),
        aliases=dict(selection.aliases),
        shards=list(written.shards),
        base=base,
        frozen_keys=key_set_digest(set(selection.frozen) | set(selection.excluded)),
        excluded=list(selection.excluded),
        optimizer=optimizer,
        metadata=plan.metadata,
    )


def check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, JsonValue]:
    if metadata is None:
        return {}
    try:
        return _METADATA.validate_python(dict(metadata))
    except (ValidationError, TypeError) as exc:
        raise InvalidAdapterError(f"metadata must be JSON-serialisable: {exc}") from exc


def library_versions() -> LibraryVersions:
    return LibraryVersions(
        adapter_store=__version__, torch=torch.__version__, safetensors=safetensors.__version__
    )
