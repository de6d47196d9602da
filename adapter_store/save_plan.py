"""Deciding what a save writes (no I/O): selection, fingerprint, shards, manifest.

``plan_save`` looks at a model and returns a frozen :class:`SavePlan`; the store then
writes the planned shards and, once it knows the version number, turns the plan and what
was written into the manifest with ``build_manifest``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import safetensors
import torch
from pydantic import JsonValue
from torch import nn

from . import __version__
from .errors import InvalidAdapterError
from .fingerprint import FINGERPRINT_MODES, fingerprint_base, key_set_digest
from .json_values import json_value
from .manifest import (
    MAX_KEY_LENGTH,
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
    step: int | None = None,
) -> SavePlan:
    """Select the tensors and group them into shards (the base fingerprint is
    ``fingerprint_save``); raises :class:`InvalidAdapterError` for anything that cannot
    be saved, ``step`` and ``metadata`` included, before a file is written."""
    check_step(step)
    user_metadata = check_metadata(metadata)
    tensors = collect_tensors(model)
    selection = select_tensors(tensors, include=include, exclude=exclude)
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
    _check_key_lengths(tensors, shards, optimizer_parts)
    return SavePlan(selection, tensors, fingerprint, tuple(shards), optimizer_parts, user_metadata)


def _check_key_lengths(
    model: ModelTensors,
    shards: Sequence[PlannedShard],
    optimizer: OptimizerParts | None,
) -> None:
    """The manifest holds keys of at most MAX_KEY_LENGTH characters: every key of the
    model (stored ones, and frozen ones in the base fingerprint), every group, every
    optimizer state key. Refused here, not by the manifest after the files are written."""
    named = [("tensor", key) for key in model.tensors]
    named += [("module group", shard.group) for shard in shards]
    if optimizer is not None:
        named += [("optimizer state key", key) for key, _ in optimizer.tensors]
    for kind, key in named:
        if len(key) > MAX_KEY_LENGTH:
            raise InvalidAdapterError(
                f"cannot save: {kind} {key[:60]!r}... is {len(key)} characters long, more "
                f"than the {MAX_KEY_LENGTH} a manifest holds. Give the module a shorter "
                "name, or pass group_by= returning shorter groups."
            )


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
        step=check_step(step),
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


def check_step(step: object) -> int | None:
    """``step`` as an int >= 0 (or None); anything else is refused naming the field."""
    if step is None:
        return None
    try:
        # operator.index takes numpy and 0-d torch integers, refuses 2.5; bool is an int
        # to Python but never a training step. A whole float (5.0) was always stored as
        # its int: callers that count steps in floats keep working.
        number = None if isinstance(step, bool) else operator.index(step)  # type: ignore[arg-type]
    except TypeError:
        number = _whole_number(step)
    if number is None or not 0 <= number < 2**63:
        raise InvalidAdapterError(
            f"step must be an integer >= 0 (the training step), got {step!r} "
            f"({type(step).__name__}); pass step=None to record none"
        )
    return number


def _whole_number(value: object) -> int | None:
    """A float-like ``value`` (5.0, numpy's or torch's) that is a whole number of steps."""
    if isinstance(value, str | bytes | bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() and 0 <= number < 2**63 else None


def check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, JsonValue]:
    """``metadata`` as JSON values, refusing (naming the entry) what the manifest could
    not store and read back: non-string keys, other types, strings that are not valid
    Unicode (lone surrogates), integers and nesting past what JSON readers take."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidAdapterError(
            "metadata must be JSON-serialisable: a mapping of str to JSON values, got "
            f"{type(metadata).__name__}"
        )
    try:
        value = json_value(metadata, "metadata", depth=0)
    except InvalidAdapterError as exc:
        raise InvalidAdapterError(f"metadata must be JSON-serialisable: {exc}") from None
    if not isinstance(value, dict):  # json_value maps a Mapping to a dict; for mypy
        raise InvalidAdapterError("metadata must be a mapping")
    return value


def library_versions() -> LibraryVersions:
    return LibraryVersions(
        adapter_store=__version__, torch=torch.__version__, safetensors=safetensors.__version__
    )
