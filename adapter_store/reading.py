"""Loading a version into a model: planning against it, checking, and applying the plan.

The order is the promise: parse the manifest, plan against the model, open and verify
every shard the plan needs (size, checksum, header), and only then copy. Any failure
before the copy leaves the model untouched.
"""

from __future__ import annotations

import fnmatch
import os
import warnings
from collections.abc import Collection, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .compat import CHECK_BASE_MODES, LoadPlan, check_plan, plan_load
from .errors import (
    AdapterNotFoundError,
    IncompatibleAdapterError,
    IntegrityError,
    ManifestError,
    PartialLoadError,
)
from .fingerprint import BaseDifference, compare_base
from .manifest import (
    Manifest,
    TensorEntry,
)
from .optim import build_optimizer_state
from .results import LoadReport
from .selection import ModelTensors, collect_tensors, describe_collisions, parameter_names
from .shard_reader import ShardReader, ShardStream, can_stream
from .sharding import group_of
from .version_files import (
    open_optimizer,
    open_shard,
    open_stream,
    pinned_version_dir,
    read_manifest,
    unlisted_files,
)


class BaseModelMismatchWarning(UserWarning):
    """Emitted instead of an error when ``check_base="warn"``."""


class SharedTargetWarning(UserWarning):
    """Two stored tensors load into one tensor of the model: tied there, but saved from a
    model where they were not. The later one's values stay (as ``load_state_dict``)."""


def resolve_groups(
    manifest: Manifest, modules: Sequence[str] | str | None, where: str
) -> set[str] | None:
    """The module groups ``modules`` names (exact names or glob patterns)."""
    if modules is None:
        return None
    if isinstance(modules, str):
        modules = [modules]
    known = manifest.groups
    chosen: set[str] = set()
    for pattern in modules:
        hits = [g for g in known if fnmatch.fnmatchcase(g, pattern)]
        if not hits:
            raise AdapterNotFoundError(
                f"{where}: no module group {pattern!r}; the adapter "
                f"has {known[:8]}{' ...' if len(known) > 8 else ''}"
            )
        chosen.update(hits)
    return chosen


def tensors_by_shard(manifest: Manifest) -> dict[str, dict[str, TensorEntry]]:
    by_shard: dict[str, dict[str, TensorEntry]] = {s.path: {} for s in manifest.shards}
    for key, entry in manifest.tensors.items():
        by_shard.setdefault(entry.shard, {})[key] = entry
    return by_shard


@dataclass(frozen=True)
class PlannedLoad:
    """What a load of one version into one model would do (nothing copied yet)."""

    tensors: ModelTensors
    plan: LoadPlan
    base: BaseDifference | None  # None when check_base="ignore"


def plan_version(
    manifest: Manifest,
    model: nn.Module,
    *,
    title: str,
    modules: Sequence[str] | str | None,
    check_base: str,
) -> PlannedLoad:
    """Map a version onto ``model`` and compare the base; the loader and ``check`` share it."""
    if check_base not in CHECK_BASE_MODES:
        raise ValueError(f"check_base must be one of {CHECK_BASE_MODES}, got {check_base!r}")
    tensors = collect_tensors(model)
    # Ambiguous only where the adapter names the tensor: to load it, or to compare it
    # as part of the base. Colliding tensors it never mentions do not matter here.
    ambiguous = [
        collision
        for collision in tensors.collisions
        if collision[0] in manifest.tensors
        or collision[0] in manifest.aliases
        or collision[0] in manifest.base.tensors
    ]
    if ambiguous:
        raise IncompatibleAdapterError(
            f"{title} cannot be loaded: {describe_collisions(tensors, ambiguous)}"
        )
    groups = resolve_groups(manifest, modules, title)
    base = None if check_base == "ignore" else compare_base(manifest.base, tensors.tensors)
    # Only a partial load asks which group a model key is in.
    group_of_key: dict[str, str] = {}
    if groups is not None:
        shard_group = {shard.path: shard.group for shard in manifest.shards}
        group_of_key = {k: shard_group[t.shard] for k, t in manifest.tensors.items()}
        group_of_key.update({k: group_of(k) for k in tensors.tensors if k not in group_of_key})
    plan = plan_load(manifest, tensors, groups=groups, group_of_key=group_of_key)
    return PlannedLoad(tensors, plan, base)


def load_version(
    model: nn.Module,
    version_dir: Path,
    *,
    name: str,
    version: int,
    manifest: Manifest | None = None,
    strict: bool = True,
    modules: Sequence[str] | str | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    check_base: str = "error",
    verify: bool = True,
) -> LoadReport:
    """Load one version directory into ``model``: all of it, or nothing."""
    with pinned_version_dir(version_dir) as dir_fd:
        return _load_pinned(
            model,
            version_dir,
            dir_fd,
            name=name,
            version=version,
            manifest=manifest or read_manifest(version_dir, dir_fd=dir_fd),
            strict=strict,
            modules=modules,
            optimizer=optimizer,
            check_base=check_base,
            verify=verify,
        )


def _load_pinned(
    model: nn.Module,
    version_dir: Path,
    dir_fd: int | None,
    *,
    name: str,
    version: int,
    manifest: Manifest,
    strict: bool,
    modules: Sequence[str] | str | None,
    optimizer: torch.optim.Optimizer | None,
    check_base: str,
    verify: bool,
) -> LoadReport:
    title = f"Adapter {name!r} v{version}"
    planned = plan_version(manifest, model, title=title, modules=modules, check_base=check_base)
    tensors, plan, base = planned.tensors, planned.plan, planned.base
    messages = check_plan(
        plan, base, title=title, strict=strict, check_base=check_base, model=tensors
    )
    if verify:
        extra = unlisted_files(version_dir, manifest)
        if extra:
            raise IntegrityError(
                f"{version_dir / extra[0]}: file is not listed in the "
                "manifest (injected, or left by another tool)",
                path=str(version_dir / extra[0]),
            )
    by_shard = tensors_by_shard(manifest)
    root = os.path.realpath(version_dir)
    # Without a checksum to compute, nothing needs the file mapped: read straight into
    # the parameters where every copy of a shard is a plain byte copy.
    streamed = set() if verify else _streamable(plan, manifest, tensors)
    with ExitStack() as stack:
        readers: dict[str, ShardReader | ShardStream] = {}
        for path in plan.shards:
            if path in streamed:
                readers[path] = stack.enter_context(
                    open_stream(
                        version_dir,
                        manifest,
                        path,
                        expected=by_shard[path],
                        root=root,
                        dir_fd=dir_fd,
                    )
                )
            else:
                readers[path] = stack.enter_context(
                    open_shard(
                        version_dir,
                        manifest,
                        path,
                        verify=verify,
                        expected=by_shard[path],
                        root=root,
                        dir_fd=dir_fd,
                    )
                )
        optimizer_state = None
        if optimizer is not None:
            optimizer_state = _read_optimizer(
                version_dir,
                manifest,
                optimizer,
                parameter_names(model, tensors),
                verify=verify,
                dir_fd=dir_fd,
                # Moments belong to the values they were trained with: only parameters
                # this load fills get theirs back (not those of groups not asked for).
                loaded=set(plan.loaded),
            )
        # Everything is checked: from here on we only copy.
        _copy_all(plan, readers, tensors, title=title, version_dir=version_dir)
    if optimizer is not None:
        optimizer.load_state_dict(optimizer_state)  # type: ignore[arg-type]
    for message in messages:
        warnings.warn(message, BaseModelMismatchWarning, stacklevel=4)
    shared = [
        f"{title}: stored {earlier!r} (into {earlier_target!r}) and {later!r} (into "
        f"{later_target!r}) load into one tensor of this model (tied here, not when "
        f"saved); {later!r} was copied last and its values stay"
        for earlier, earlier_target, later, later_target in plan.shared_targets
    ]
    for message in shared:
        warnings.warn(message, SharedTargetWarning, stacklevel=4)
    return _report(
        plan,
        name=name,
        version=version,
        path=version_dir,
        base=base,
        verified=verify,
        messages=[*messages, *shared],
        optimizer=optimizer is not None,
    )


def _copy_all(
    plan: LoadPlan,
    readers: Mapping[str, ShardReader | ShardStream],
    model: ModelTensors,
    *,
    title: str,
    version_dir: Path,
) -> None:
    done = 0
    try:
        for step in plan.steps:
            reader = readers[step.shard]
            target = model.tensors[step.target]
            if isinstance(reader, ShardStream):
                reader.copy_into(step.key, target)
            else:
                reader.copy_into(step.key, target, direct=step.direct)
            done += 1
    except PartialLoadError:
        raise
    except Exception as exc:
        # Not foreseen by the checks (a tensor subclass whose copy_ refuses, say): the
        # copies before this one have landed, so say so in the library's own terms.
        step = plan.steps[done]
        raise PartialLoadError(
            f"{title}: copying {step.key!r} into {step.target!r} failed after {done} of "
            f"{len(plan.steps)} tensors were loaded ({type(exc).__name__}: {exc}). The "
            "model is partly loaded; fix the cause and load again.",
            path=str(version_dir / step.shard),
            key=step.key,
        ) from exc


def _streamable(plan: LoadPlan, manifest: Manifest, model: ModelTensors) -> set[str]:
    """Shards whose every copy is a byte copy into a contiguous CPU tensor."""
    blocked = {
        step.shard
        for step in plan.steps
        if not step.direct
        or not can_stream(manifest.tensors[step.key].dtype, model.tensors[step.target])
    }
    return {path for path in plan.shards if path not in blocked}


def _read_optimizer(
    version_dir: Path,
    manifest: Manifest,
    optimizer: torch.optim.Optimizer,
    names: dict[int, str],
    *,
    verify: bool,
    loaded: Collection[str],
    dir_fd: int | None,
) -> dict[str, Any]:
    with open_optimizer(version_dir, manifest, verify=verify, dir_fd=dir_fd) as reader:
        # Copies: the optimizer keeps these, and the map closes with the reader.
        state = {key: reader.tensor(key).clone() for key in reader.entries}
    section = manifest.optimizer
    if section is None:  # open_optimizer has refused this already; keeps mypy informed
        raise ManifestError("optimizer section vanished", field="optimizer")
    return build_optimizer_state(section, optimizer, names, state, loaded=loaded)


def _report(
    plan: LoadPlan,
    *,
    name: str,
    version: int,
    path: Path,
    base: Any,
    verified: bool,
    messages: Collection[str],
    optimizer: bool,
) -> LoadReport:
    base_check = "not checked" if base is None else "match" if base.matches else "mismatch"
    return LoadReport(
        name=name,
        version=version,
        path=path,
        loaded=plan.loaded,
        missing=list(plan.missing),
        unexpected=list(plan.unexpected),
        frozen=list(plan.frozen),
        other_adapters=list(plan.other_adapters),
        skipped=list(plan.skipped),
        cast=dict(plan.casts),
        base_check=base_check,
        verified=verified,
        warnings=list(messages),
        optimizer_restored=optimizer,
    )
