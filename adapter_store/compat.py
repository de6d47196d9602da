"""Does an adapter fit a model? Planning a load, and the one error that explains why not.

Everything here is pure: it looks at the manifest and the model's tensors and returns a
:class:`LoadPlan`, or gathers every problem into a single error. Nothing is copied.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch

from .dtypes import dtype_name, torch_dtype
from .errors import BaseModelMismatchError, IncompatibleAdapterError
from .fingerprint import BaseDifference
from .manifest import Manifest
from .safetensors_io import FREED, OWNED, memory_state
from .selection import ModelTensors, other_adapter_keys, tensor_identity

CHECK_BASE_MODES = ("error", "warn", "ignore")
#: Tensor types whose values can only live in their own memory (subclasses may wrap).
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_EXAMPLES = 3


@dataclass(frozen=True)
class CopyStep:
    """Copy stored tensor ``key`` (in ``shard``) into the model's tensor ``target``."""

    key: str
    shard: str
    target: str
    #: The target owns its memory, so its bytes may be written by address; otherwise (a
    #: wrapper subclass such as DTensor) only ``copy_`` reaches its values.
    direct: bool = True


@dataclass(frozen=True)
class LoadPlan:
    steps: tuple[CopyStep, ...]
    missing: tuple[str, ...]  # trainable in the model, never saved: truly missing
    unexpected: tuple[str, ...]  # stored, but the model has no such tensor
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    frozen: tuple[str, ...]  # not in the adapter on purpose (recorded frozen, or frozen)
    skipped: tuple[str, ...]  # stored, in module groups not asked for
    casts: Mapping[str, tuple[str, str]]  # key -> (stored dtype, model dtype)
    #: Targets (also in ``steps``) that cannot hold values: on the meta device, or their
    #: storage was freed. A load refuses them; a dry run need not.
    no_memory: tuple[str, ...] = ()
    #: (earlier key, its target, later key, its target): two stored keys whose targets
    #: are one tensor of the model (tied there, not when saved). Both are copied, in
    #: manifest order, so the later key's values stay, as ``load_state_dict`` leaves
    #: them; the loader warns. Only exact ties are seen, not partial overlaps.
    shared_targets: tuple[tuple[str, str, str, str], ...] = ()
    #: Targets that receive their values through a tie in the model (an alias stored
    #: with its key, or a key whose tensor another step fills): loaded, with no copy.
    tied: tuple[str, ...] = ()
    #: Tensors of other named adapters beside this one in the model (PEFT's
    #: ``lora_A.<name>``): trainable, perhaps, but neither this adapter's nor missing.
    other_adapters: tuple[str, ...] = ()

    @property
    def loaded(self) -> list[str]:
        """Every model name that receives values: copy targets, then names tied to them."""
        return list(dict.fromkeys([*(step.target for step in self.steps), *self.tied]))

    @property
    def shards(self) -> list[str]:
        return list(dict.fromkeys(step.shard for step in self.steps))


def plan_load(
    manifest: Manifest,
    model: ModelTensors,
    *,
    groups: Collection[str] | None,
    group_of_key: Mapping[str, str],
) -> LoadPlan:
    """Map every requested stored tensor onto the model; classify everything else."""
    shard_group = {shard.path: shard.group for shard in manifest.shards}
    names_of: dict[str, list[str]] = {}
    for alias, key in manifest.aliases.items():
        names_of.setdefault(key, [key]).append(alias)
    present = model.tensors
    steps, unexpected, mismatched, skipped, no_memory, tied = [], [], [], [], [], []
    casts: dict[str, tuple[str, str]] = {}
    covered: set[str] = set()
    at_address: dict[int, tuple[str, str, torch.Tensor]] = {}  # -> (key, target, tensor)
    shared: list[tuple[str, str, str, str]] = []
    for key, entry in manifest.tensors.items():
        names = names_of.get(key) or [key]
        if groups is not None and shard_group[entry.shard] not in groups:
            skipped.append(key)
            covered.update(names)
            continue
        targets = [name for name in names if name in present]
        if not targets:
            unexpected.append(key)
            continue
        stored_dtype = torch_dtype(entry.dtype)
        seen: set[int] = set()
        for name in targets:
            covered.add(name)
            tensor = present[name]
            if tensor.shape != entry.shape:  # torch.Size compares equal to a tuple
                mismatched.append((name, entry.shape, tuple(tensor.shape)))
                continue
            if tensor.dtype != stored_dtype:
                casts[name] = (entry.dtype, _dtype_label(tensor.dtype))
            state = memory_state(tensor)
            owned = state == OWNED
            # A freed storage is no memory whatever the tensor's class (FSDP's
            # FlatParameter, Params4bit subclass Parameter): copy_ into it crashes too.
            if state == FREED or (not owned and (tensor.is_meta or type(tensor) in _PLAIN)):
                no_memory.append(name)  # a load would copy nothing, or crash the process
            # data_ptr() is the storage's address plus the offset: a tie in the model.
            pointer = tensor.data_ptr() if owned else None
            if pointer is None or pointer not in seen:  # tied in the model: copy once
                steps.append(CopyStep(key, entry.shard, name, owned))
            else:
                tied.append(name)
            if pointer is not None:
                seen.add(pointer)
            if pointer is not None and tensor.numel():  # empty tensors share address 0
                # A shared address is rare (ties, views): only then compare the identity a
                # save uses for ties (shape, stride, dtype too). Had these been tied when
                # saved, they would be one key with an alias.
                earlier = at_address.get(pointer)
                if (
                    earlier is not None
                    and earlier[0] != key
                    and tensor_identity(earlier[2]) == tensor_identity(tensor)
                ):
                    shared.append((earlier[0], earlier[1], key, name))
                at_address[pointer] = (key, name, tensor)  # the last copied there
    missing, frozen, others = [], [], []
    recorded = manifest.base.tensors.keys() | set(manifest.excluded)
    trainable = model.trainable
    other_adapters = other_adapter_keys(model, covered)
    for name in present:
        if name in covered:
            continue
        if groups is not None and group_of_key.get(name) not in groups:
            continue
        if name in other_adapters:
            others.append(name)
        elif name in trainable and name not in recorded:
            missing.append(name)
        else:
            frozen.append(name)
    return LoadPlan(
        tuple(steps),
        tuple(missing),
        tuple(unexpected),
        tuple(mismatched),
        tuple(frozen),
        tuple(skipped),
        casts,
        tuple(no_memory),
        tuple(shared),
        tuple(tied),
        tuple(others),
    )


def _dtype_label(dtype: torch.dtype) -> str:
    try:
        return dtype_name(dtype)
    except KeyError:
        return str(dtype)


def check_plan(
    plan: LoadPlan,
    base: BaseDifference | None,
    *,
    title: str,
    strict: bool,
    check_base: str,
    model: ModelTensors,
    copying: bool = True,
) -> list[str]:
    """Raise one error naming every problem; return warnings for ``check_base="warn"``.
    ``copying=False`` (a dry run, such as ``adapter-store check`` on a model built on the
    meta device) does not ask the targets for memory."""
    problems: list[str] = []
    if plan.mismatched:
        key, stored, found = plan.mismatched[0]
        problems.append(
            f"{_count(plan.mismatched, 'tensor')} differ in shape, e.g. {key!r} is "
            f"{stored} in the adapter but {found} in the model. Was it trained "
            "with another rank or hidden size?"
        )
    if plan.unexpected and strict:
        problems.append(
            f"{_count(plan.unexpected, 'stored tensor')} have no place in the "
            f"model: {_examples(plan.unexpected)}{_prefix_hint(plan, model)}"
        )
    if plan.no_memory and copying:
        problems.append(
            f"{_count(plan.no_memory, 'tensor')} of the model cannot receive values, "
            "having no memory (on the meta device, or with its storage freed, as FSDP "
            f"and offloading leave sharded parameters): {_examples(plan.no_memory)}. "
            "Load into a materialised model (for FSDP: inside summon_full_params)."
        )
    if plan.missing and strict:
        problems.append(
            f"{_count(plan.missing, 'trainable tensor')} of the model are not in "
            f"the adapter: {_examples(plan.missing)}. Pass strict=False to load "
            "the rest, or check which parameters you unfroze."
        )
    if not plan.steps and not plan.mismatched:
        problems.append(
            "nothing would be loaded: no stored tensor matches a model tensor"
            f"{_prefix_hint(plan, model)}"
        )
    warnings: list[str] = []
    base_problem = _describe_base(base) if base is not None and not base.matches else None
    accepted: list[str] = []
    if base_problem and check_base == "warn":
        warnings.append(f"{title}: {base_problem} (loading anyway: check_base='warn')")
        # Still a clue should something else refuse the load (a model of another base
        # often has other keys and shapes too): the error says it as well.
        accepted.append(f"(Also, accepted by check_base='warn': {base_problem})")
        base_problem = None
    if base_problem:
        problems.insert(
            0,
            base_problem + " Pass check_base='warn' or 'ignore' if you "
            "mean to load it onto this base.",
        )
    if not problems:
        return warnings
    message = (
        f"{title} does not fit {model.model_class}: "
        + " ".join([*problems, *accepted])
        + (" `adapter-store inspect <path>` lists every stored tensor.")
    )
    if base_problem and base is not None:
        error: IncompatibleAdapterError = BaseModelMismatchError(
            message,
            structure_differs=bool(base.structure),
            content_differs=bool(base.content),
            differing_keys=[k for k, *_ in base.structure] + list(base.content),
        )
        error.missing, error.unexpected = list(plan.missing), list(plan.unexpected)
        error.mismatched = list(plan.mismatched)
    else:
        error = IncompatibleAdapterError(
            message, missing=plan.missing, unexpected=plan.unexpected, mismatched=plan.mismatched
        )
    raise error


def _shape_part(structure: str) -> str:
    # "F32[64, 32]" -> "[64, 32]"; "absent" has none.
    return structure[structure.find("[") :] if "[" in structure else structure


def _describe_base(base: BaseDifference) -> str:
    parts = []
    if base.structure:
        key, recorded, found = base.structure[0]
        parts.append(
            f"the base model's structure differs in {len(base.structure)} of "
            f"{base.checked} recorded tensors, e.g. {key!r} was {recorded} but is "
            f"{found} here"
            + (
                " (the dtype alone, in every one: expected if this is the same base "
                "in another precision, whose weights cannot be compared with the "
                "recorded ones)"
                if all(_shape_part(r) == _shape_part(f) for _, r, f in base.structure)
                else ""
            )
        )
    if base.content:
        parts.append(
            f"the base model's weights differ in {len(base.content)} of "
            f"{base.checked} recorded tensors, e.g. {_examples(base.content)}"
        )
    return "it was saved on a different base model: " + "; ".join(parts) + "."


def _count(items: Collection[object], noun: str) -> str:
    return f"{len(items)} {noun}{'s' if len(items) != 1 else ''}"


def _examples(keys: Collection[str]) -> str:
    shown = ", ".join(repr(k) for k in list(keys)[:_EXAMPLES])
    return shown + (f" and {len(keys) - _EXAMPLES} more" if len(keys) > _EXAMPLES else "")


def _prefix_hint(plan: LoadPlan, model: ModelTensors) -> str:
    """Explain a key-prefix mismatch, the classic cause of an adapter loading nothing."""
    for key in plan.unexpected[:_EXAMPLES]:
        for name in model.tensors:
            if name.endswith("." + key):
                return (
                    f". The model's keys carry an extra prefix "
                    f"{name[: -len(key)]!r} (e.g. {name!r}); was the adapter saved from "
                    "the inner model?"
                )
            if key.endswith("." + name):
                return (
                    f". The adapter's keys carry an extra prefix {key[: -len(name)]!r} "
                    f"(e.g. {key!r} vs {name!r}); was it saved from a wrapped model?"
                )
    return ""
