"""Which of a model's tensors are stored, under which names.

Names are *canonical* state-dict names: the wrapper prefixes that DDP (``module.``) and
``torch.compile`` (``_orig_mod.``) add are removed, so an adapter saved from a wrapped
model loads into the bare one and back.
"""

from __future__ import annotations

import fnmatch
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .dtypes import is_supported
from .errors import InvalidAdapterError
from .safetensors_io import owns_memory

_DDP_PREFIX = "module."
_COMPILE_SEGMENT = "_orig_mod"


def canonical_key(name: str) -> str:
    """``name`` without DDP's leading ``module.`` and torch.compile's ``_orig_mod.``."""
    while name.startswith(_DDP_PREFIX):
        name = name[len(_DDP_PREFIX) :]
    if _COMPILE_SEGMENT in name:
        name = ".".join(part for part in name.split(".") if part != _COMPILE_SEGMENT)
        while name.startswith(_DDP_PREFIX):
            name = name[len(_DDP_PREFIX) :]
    return name


@dataclass(frozen=True)
class ModelTensors:
    """A model's state-dict tensors under canonical names."""

    model_class: str
    tensors: Mapping[str, torch.Tensor]
    #: Canonical name -> the name in the model's own state dict.
    original: Mapping[str, str]
    trainable: frozenset[str]
    #: Keys that live in another entry of an ``nn.ModuleDict`` than a given key's; used to
    #: recognise other named adapters beside the saved one (see ``other_adapter_keys``).
    module_dicts: tuple[tuple[str, tuple[str, ...]], ...]
    #: (canonical name, first name, second name): two different tensors whose names are
    #: one once the wrapper prefixes are removed (``scale`` and ``module.scale``). Saves
    #: and loads refuse such a model (``describe_collisions``): one tensor would be
    #: saved, or loaded, in place of the other.
    collisions: tuple[tuple[str, str, str], ...] = ()


_DEFAULT_SAVE = nn.Module._save_to_state_dict
_DEFAULT_EXTRA_STATE = nn.Module.get_extra_state


class _NotPlain(Exception):
    """A module customises its state dict: only ``state_dict()`` itself knows the keys."""


def _walk(
    model: nn.Module,
    items: list[tuple[str, torch.Tensor]],
    module_dicts: list[tuple[str, tuple[str, ...]]],
) -> None:
    # Depth first with an explicit stack, children pushed in reverse: the same order as
    # ``state_dict``. Plain loops rather than generators: this runs at every save and
    # load over every module (W1: 774 modules, 0.91 -> 0.49 ms).
    stack: list[tuple[str, nn.Module]] = [("", model)]
    append = items.append
    while stack:
        prefix, module = stack.pop()
        if (
            type(module)._save_to_state_dict is not _DEFAULT_SAVE
            or type(module).get_extra_state is not _DEFAULT_EXTRA_STATE
            or module._state_dict_hooks
            or module._state_dict_pre_hooks
        ):
            raise _NotPlain
        for name, parameter in module._parameters.items():
            if parameter is not None:
                append((prefix + name, parameter))
        if module._buffers:
            skip = module._non_persistent_buffers_set
            for name, buffer in module._buffers.items():
                if buffer is not None and name not in skip:
                    append((prefix + name, buffer))
        children = module._modules
        if isinstance(module, nn.ModuleDict):
            module_dicts.append((canonical_key(prefix[:-1]), tuple(children)))
        if children:
            stack += [
                (f"{prefix}{name}.", child)
                for name, child in reversed(children.items())
                if child is not None
            ]


def _state_dict_items(
    model: nn.Module,
) -> tuple[list[tuple[str, torch.Tensor]], tuple[tuple[str, tuple[str, ...]], ...]]:
    """What ``model.state_dict(keep_vars=True)`` holds, in its order, and the ModuleDicts.

    For plain modules (no state-dict hooks or overrides: nearly always) one walk of the
    tree gives the same keys as ``state_dict`` at a sixth of the cost (W1: 2.0 -> 0.5 ms,
    paid at every save and load); anything else goes through ``state_dict`` itself.
    """
    items: list[tuple[str, torch.Tensor]] = []
    module_dicts: list[tuple[str, tuple[str, ...]]] = []
    try:
        _walk(model, items, module_dicts)
    except _NotPlain:
        items = [
            (name, value)
            for name, value in model.state_dict(keep_vars=True).items()
            # "extra state" of a module can be any object; only tensors are stored
            if isinstance(value, torch.Tensor)
        ]
        module_dicts = [
            (canonical_key(path), tuple(module.keys()))
            for path, module in model.named_modules()
            if isinstance(module, nn.ModuleDict)
        ]
    return items, tuple(module_dicts)


def collect_tensors(model: nn.Module) -> ModelTensors:
    """Gather parameters and persistent buffers of ``model`` under canonical names."""
    items, module_dicts = _state_dict_items(model)
    tensors = dict(items)
    collisions = []
    if len(tensors) == len(items) and not any(
        key.startswith(_DDP_PREFIX) or _COMPILE_SEGMENT in key for key in tensors
    ):  # a bare model, nearly always: names are canonical already
        original = {key: key for key in tensors}
    else:
        tensors, original = {}, {}
        for name, tensor in items:
            key = canonical_key(name)
            if key in tensors:
                if tensors[key] is not tensor:  # the same tensor twice is a tie, not this
                    collisions.append((key, original[key], name))
                continue
            tensors[key] = tensor
            original[key] = name
    return ModelTensors(
        type(model).__name__,
        tensors,
        original,
        frozenset(
            [
                key
                for key, tensor in tensors.items()
                if tensor.requires_grad and isinstance(tensor, nn.Parameter)
            ]
        ),
        module_dicts,
        tuple(collisions),
    )


def describe_collisions(
    model: ModelTensors, collisions: Sequence[tuple[str, str, str]] | None = None
) -> str:
    """What is wrong with a model whose names collide (``ModelTensors.collisions``, or
    those of them given)."""
    collisions = model.collisions if collisions is None else collisions
    key, first, second = collisions[0]
    more = len(collisions) - 1
    return (
        f"{model.model_class} has two different tensors named {key!r} once the wrapper "
        f"prefixes ('module.', '_orig_mod.') are removed: {first!r} and {second!r}"
        + (f" (and {more} more such pairs)" if more else "")
        + ". Rename one of them: adapter-store stores tensors under those names, so one "
        "would be saved or loaded in place of the other."
    )


def parameter_names(model: nn.Module, tensors: ModelTensors) -> dict[int, str]:
    """``id(parameter)`` -> canonical name, for mapping optimizer state by name."""
    canonical = {original: key for key, original in tensors.original.items()}
    return {
        id(p): canonical.get(n, canonical_key(n))
        for n, p in model.named_parameters(remove_duplicate=False)
    }


def other_adapter_keys(model: ModelTensors, saved: Iterable[str]) -> frozenset[str]:
    """Keys of the *other* adapters beside the saved one, which are not part of its base.

    PEFT keeps named adapters side by side in ModuleDicts (``q_proj.lora_A.<adapter>``).
    An entry is this adapter's slot when every tensor in it is saved. Another entry with
    none saved is another adapter when it has the layout (the same relative keys) of a
    slot in a ModuleDict of the same role (attribute name: ``lora_A``, ``lora_B``, ...):
    beside a slot, or alone where only the other adapter was applied (adapter "b" on
    ``down_proj`` while the saved "a" is on ``q_proj``). Any other entry, such as a frozen
    ``image`` tower beside a trained ``text`` tower of another shape, stays in the
    fingerprint.
    """
    if len({child for _, children in model.module_dicts for child in children}) < 2:
        return frozenset()  # one name in every ModuleDict (PEFT with one adapter): no other
    saved = set(saved)
    keys = sorted(model.tensors)
    dicts = []
    layouts: dict[str, set[tuple[str, ...]]] = {}  # role -> layouts of its slots
    for path, children in model.module_dicts:
        prefix = f"{path}." if path else ""
        entries = {child: _keys_under(keys, f"{prefix}{child}.") for child in children}
        slots = {c for c, found in entries.items() if found and saved.issuperset(found)}
        role = path.rpartition(".")[2]
        for child in slots:
            layouts.setdefault(role, set()).add(_relative(entries[child], f"{prefix}{child}."))
        dicts.append((prefix, role, entries, slots))
    others: set[str] = set()
    for prefix, role, entries, slots in dicts:
        known = layouts.get(role)
        if not known:
            continue
        for child, found in entries.items():
            if (
                child not in slots
                and found
                and saved.isdisjoint(found)
                and _relative(found, f"{prefix}{child}.") in known
            ):
                others.update(found)
    return frozenset(others)


def _keys_under(sorted_keys: list[str], start: str) -> list[str]:
    # Every key with this prefix, from a sorted list: two bisections, not a scan.
    return sorted_keys[
        bisect_left(sorted_keys, start) : bisect_left(sorted_keys, start + "\U0010ffff")
    ]


def _relative(keys: list[str], start: str) -> tuple[str, ...]:
    return tuple(key[len(start) :] for key in keys)


@dataclass(frozen=True)
class Selection:
    """The tensors to store (first name of each), other names of the same tensor, the
    frozen rest, and the trainable tensors excluded on purpose."""

    tensors: Mapping[str, torch.Tensor]
    aliases: Mapping[str, str]
    frozen: Mapping[str, torch.Tensor]
    #: Trainable tensors that ``exclude`` patterns left out.
    excluded: tuple[str, ...] = ()


def _matches(key: str, patterns: Sequence[str] | None) -> bool:
    return bool(patterns) and any(fnmatch.fnmatchcase(key, p) for p in patterns or ())


def _as_patterns(patterns: Sequence[str] | str | None) -> list[str] | None:
    # A lone string is one pattern (a str is also a Sequence[str]: its characters, and
    # "lora*" would become "l", "o", "r", "a", "*", which selects everything).
    if patterns is None:
        return None
    return [patterns] if isinstance(patterns, str) else list(patterns)


def tensor_identity(tensor: torch.Tensor) -> tuple[object, ...]:
    # data_ptr() is the storage's address plus the offset: the same bytes, viewed the same
    # way, are one tensor (tied weights). A third of the cost of asking for the storage.
    return (
        tensor.device,
        tensor.data_ptr(),
        tuple(tensor.shape),
        tensor.stride(),
        tensor.dtype,
    )


def select_tensors(
    model: ModelTensors,
    *,
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
) -> Selection:
    """Trainable parameters, plus ``include`` matches, minus ``exclude`` matches.

    Patterns (a list, or one string) match the canonical name or the model's own name
    (``module.head.*`` on a DDP-wrapped model matches as ``head.*`` does). Raises
    :class:`InvalidAdapterError` when nothing is selected, or a selected tensor is empty
    (as ZeRO-3 leaves behind), on the meta device, or of an unsupported dtype.
    """
    if model.collisions:
        raise InvalidAdapterError(f"cannot save: {describe_collisions(model)}")
    include, exclude = _as_patterns(include), _as_patterns(exclude)
    trainable = model.trainable
    original = model.original

    def matches(key: str, patterns: Sequence[str] | None) -> bool:
        return _matches(key, patterns) or (
            original.get(key, key) != key and _matches(original[key], patterns)
        )

    if include or exclude:
        chosen = [
            key
            for key in model.tensors
            if (key in trainable or matches(key, include)) and not matches(key, exclude)
        ]
    else:  # the default: no pattern to match (W1: 547 keys, 0.2 ms less)
        chosen = [key for key in model.tensors if key in trainable]
    if not chosen:
        raise InvalidAdapterError(
            f"nothing to save from {model.model_class}: no parameter requires grad"
            + (f" or matches include={list(include)}" if include else "")
            + (f" (exclude={list(exclude)} removed the rest)" if exclude else "")
            + ". Unfreeze the trained parameters or pass include=[...] patterns."
        )
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_name: dict[tuple[object, ...], str] = {}
    for key in chosen:
        tensor = _check_savable(key, model.tensors[key])
        identity = tensor_identity(tensor)
        if identity in first_name:
            aliases[key] = first_name[identity]
        else:
            first_name[identity] = key
            stored[key] = tensor
    # Other names of a stored tensor (tied weights) are recorded, not stored again.
    for key, tensor in model.tensors.items():
        if key in stored or key in aliases or tensor.is_meta or matches(key, exclude):
            continue
        identity = tensor_identity(tensor)
        if identity in first_name:
            aliases[key] = first_name[identity]
    rest = [k for k in model.tensors if k not in stored and k not in aliases]
    # Trainable but excluded: left out on purpose, yet not part of the frozen base (its
    # values change with training, so fingerprinting them would be a false alarm later).
    excluded = tuple(k for k in rest if k in model.trainable)
    frozen = {k: model.tensors[k] for k in rest if k not in model.trainable}
    return Selection(stored, aliases, frozen, excluded)


def _check_savable(key: str, tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_meta:
        raise InvalidAdapterError(
            f"cannot save {key!r}: it is on the meta device and has "
            "no data. Materialise it first, or exclude it."
        )
    if tensor.numel() == 0:
        raise InvalidAdapterError(
            f"cannot save {key!r}: it has zero elements (shape {tuple(tensor.shape)}). Under "
            "DeepSpeed ZeRO-3 gather the parameters first; otherwise exclude it."
        )
    if not is_supported(tensor.dtype):
        raise InvalidAdapterError(
            f"cannot save {key!r}: dtype {tensor.dtype} has no safetensors equivalent"
        )
    if not owns_memory(tensor):
        raise InvalidAdapterError(
            f"cannot save {key!r}: it is a {type(tensor).__name__} without memory of its "
            "own (a wrapper subclass such as DTensor, or storage freed as FSDP leaves "
            "sharded parameters). Save plain tensors (DTensor: full_tensor(); FSDP: "
            "inside summon_full_params), or exclude it."
        )
    return tensor
