"""Optimizer state by parameter *name*, so it restores into a freshly built optimizer.

``torch.optim`` numbers parameters by position; a fresh optimizer over a fresh model has
new positions, so the state is stored keyed by state-dict names and mapped back.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import JsonValue

from .dtypes import is_supported
from .errors import IncompatibleAdapterError, InvalidAdapterError
from .json_values import MAX_DEPTH, json_key, json_value
from .manifest import OptimizerSection
from .safetensors_io import owns_memory


@dataclass(frozen=True)
class OptimizerParts:
    """What ``split_optimizer_state`` produces: tensors for the file, the rest as JSON."""

    class_name: str
    tensors: tuple[tuple[str, torch.Tensor], ...]
    scalars: Mapping[str, Mapping[str, JsonValue]]
    param_groups: tuple[dict[str, JsonValue], ...]


def _index_names(optimizer: torch.optim.Optimizer, names: Mapping[int, str]) -> list[str]:
    """Parameter names in the optimizer's own numbering order."""
    ordered = []
    for group_number, group in enumerate(optimizer.param_groups):
        for param in group["params"]:
            if id(param) not in names:
                raise InvalidAdapterError(
                    f"optimizer param group {group_number} holds a parameter of shape "
                    f"{tuple(param.shape)} that is not a parameter of the model"
                )
            ordered.append(names[id(param)])
    return ordered


def _json_value(value: Any, field: str, depth: int = 0) -> JsonValue:
    # One-element tensors (a scheduler's lr, say) are stored as their number; the rest is
    # held to what the manifest can write and read back (json_values).
    if isinstance(value, tuple | list) and depth <= MAX_DEPTH:
        return [_json_value(v, f"{field}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return json_value(value, f"optimizer {field}", depth=depth)


def split_optimizer_state(
    optimizer: torch.optim.Optimizer, names: Mapping[int, str]
) -> OptimizerParts:
    """Tensors (keyed ``"<param>/<entry>"``), JSON scalars and named param groups."""
    ordered = _index_names(optimizer, names)
    state = optimizer.state_dict()
    tensors: list[tuple[str, torch.Tensor]] = []
    scalars: dict[str, dict[str, JsonValue]] = {}
    for index, entries in state["state"].items():
        name = ordered[index]
        for entry, value in entries.items():
            # Entry names become JSON keys (scalars) and parts of safetensors keys.
            json_key(entry, f"optimizer state of {name}")
            if isinstance(value, torch.Tensor):
                if not owns_memory(value):
                    raise InvalidAdapterError(
                        f"cannot save optimizer state {name}/{entry}: it is a "
                        f"{type(value).__name__} without memory of its own (a wrapper "
                        "subclass such as DTensor, or freed). Save plain tensors, or "
                        "save without optimizer=."
                    )
                if not is_supported(value.dtype):
                    raise InvalidAdapterError(
                        f"cannot save optimizer state {name}/{entry}: dtype {value.dtype} "
                        "has no safetensors equivalent. Save the optimizer's state in a "
                        "supported dtype (for complex, torch.view_as_real), or save "
                        "without optimizer=."
                    )
                tensors.append((f"{name}/{entry}", value))
            else:
                scalars.setdefault(name, {})[entry] = _json_value(value, f"state {entry!r}")
    groups = []
    for number, group in enumerate(state["param_groups"]):
        hyper = {
            json_key(k, f"optimizer param_groups.{number}"): _json_value(
                v, f"param_groups.{number}.{k}"
            )
            for k, v in group.items()
            if k != "params"
        }
        hyper["params"] = [ordered[i] for i in group["params"]]
        groups.append(hyper)
    return OptimizerParts(type(optimizer).__name__, tuple(tensors), scalars, tuple(groups))


#: torch.optim's optimizers whose every state tensor is element-wise: shaped like its
#: parameter, or a 0-d scalar (``step``). Factored ones (Adafactor's row and column
#: variances), LBFGS, subclasses and third-party classes may keep other shapes: unchecked.
_ELEMENTWISE_NAMES = (
    "SGD Adam AdamW Adamax NAdam RAdam RMSprop Rprop Adagrad Adadelta ASGD SparseAdam"
)
_ELEMENTWISE = frozenset(
    getattr(torch.optim, name) for name in _ELEMENTWISE_NAMES.split() if hasattr(torch.optim, name)
)


def build_optimizer_state(
    section: OptimizerSection,
    optimizer: torch.optim.Optimizer,
    names: Mapping[int, str],
    tensors: Mapping[str, torch.Tensor],
    *,
    loaded: Collection[str] | None = None,
) -> dict[str, Any]:
    """A ``state_dict`` for the fresh ``optimizer``; raises before anything is changed
    if the groups do not hold the same parameter names, or (for torch.optim's
    element-wise optimizers) a state tensor is shaped neither like its parameter nor
    as a scalar.

    ``loaded``: the names of the parameters whose values this load copied. Only their
    state is restored; the others start fresh, as a new parameter would, because their
    stored moments belong to values the model does not hold (``exclude=``, ``modules=``).
    ``None`` restores the state of every parameter.
    """
    ordered = _index_names(optimizer, names)
    if type(optimizer).__name__ != section.class_name:
        raise IncompatibleAdapterError(
            f"optimizer state was saved from {section.class_name} "
            f"but the given optimizer is {type(optimizer).__name__}"
        )
    fresh = optimizer.state_dict()["param_groups"]
    if len(fresh) != len(section.param_groups):
        raise IncompatibleAdapterError(
            f"optimizer has {len(fresh)} param groups but the "
            f"saved state has {len(section.param_groups)}"
        )
    index_of = {name: i for i, name in enumerate(ordered)}
    groups = []
    for number, (saved, now) in enumerate(zip(section.param_groups, fresh, strict=True)):
        raw_names = saved.get("params")
        saved_names = [str(n) for n in raw_names] if isinstance(raw_names, list) else []
        now_names = [ordered[i] for i in now["params"]]
        if sorted(saved_names) != sorted(now_names):
            raise IncompatibleAdapterError(
                f"optimizer param group {number} holds other parameters than when it was "
                f"saved: {sorted(set(saved_names) ^ set(now_names))[:3]}",
                missing=sorted(set(now_names) - set(saved_names)),
            )
        group = {
            k: tuple(v) if isinstance(now.get(k), tuple) and isinstance(v, list) else v
            for k, v in saved.items()
            if k not in ("params", "param_names")
        }
        # torch >= 2.6 keeps the names an optimizer was built with beside its params and
        # pairs them by position: the saved list follows the saved order, so only the
        # fresh optimizer's own names (or none) stay in step with its params.
        if "param_names" in now:
            group["param_names"] = list(now["param_names"])
        # torch pairs these indices with the live parameters by position, so they must be
        # the fresh optimizer's own order; the state below is keyed by the same numbering.
        group["params"] = list(now["params"])
        groups.append(group)
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        name, _, entry = key.rpartition("/")
        index = _index(index_of, name)
        if loaded is None or name in loaded:
            state.setdefault(index, {})[entry] = tensor
    for name, entries in section.scalars.items():
        index = _index(index_of, name)
        if loaded is None or name in loaded:
            state.setdefault(index, {}).update(entries)
    if type(optimizer) in _ELEMENTWISE:
        _check_shapes(state, optimizer, ordered)
    return {"state": state, "param_groups": groups}


def _check_shapes(
    state: Mapping[int, Mapping[str, Any]], optimizer: torch.optim.Optimizer, ordered: list[str]
) -> None:
    """Refuse state an element-wise optimizer would fail on (or broadcast) at its first
    step: a moment of another shape than its parameter, such as a rebuilt head's."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    mismatched = [
        (f"{ordered[index]}/{entry}", tuple(value.shape), tuple(params[index].shape))
        for index, entries in state.items()
        for entry, value in entries.items()
        if isinstance(value, torch.Tensor)
        and value.dim() != 0
        and value.shape != params[index].shape
    ]
    if mismatched:
        key, stored, now = mismatched[0]
        raise IncompatibleAdapterError(
            f"optimizer state {key!r} has shape {stored} but its parameter is {now} in "
            f"the model ({len(mismatched)} state tensors differ); the state belongs to "
            "other values than the model holds. Load without optimizer= to start "
            "with fresh state, or into a model built with the saved shapes.",
            mismatched=mismatched,
        )


def _index(index_of: Mapping[str, int], name: str) -> int:
    if name not in index_of:
        raise IncompatibleAdapterError(
            f"optimizer state names parameter {name!r}, which the given optimizer does not hold",
            unexpected=[name],
        )
    return index_of[name]
