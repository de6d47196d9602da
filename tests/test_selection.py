"""Which tensors are saved, and under which names."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

from adapter_store.errors import InvalidAdapterError
from adapter_store.selection import canonical_key, collect_tensors, select_tensors


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("module.layers.0.w", "layers.0.w"),
        ("_orig_mod.layers.0.w", "layers.0.w"),
        ("module._orig_mod.head.w", "head.w"),
        ("_orig_mod.module.head.w", "head.w"),
        ("layers.0._orig_mod.w", "layers.0.w"),
        ("my.module.w", "my.module.w"),
    ],
)
def test_canonical_key_strips_wrapper_prefixes(name, canonical):
    assert canonical_key(name) == canonical


def test_default_selection_is_requires_grad():
    selection = select_tensors(collect_tensors(make_model()))
    assert set(selection.tensors) == {"head.weight", "head.bias"} | {
        f"layers.{i}.q.lora_{x}" for i in range(3) for x in "AB"
    }
    assert "embed.weight" in selection.frozen and "steps_seen" in selection.frozen


def test_meta_tensors_cannot_be_saved():
    model = make_model()
    model.head.to("meta")
    with pytest.raises(InvalidAdapterError, match="'head.weight': it is on the meta device"):
        select_tensors(collect_tensors(model))


def test_unsupported_dtypes_are_refused():
    model = make_model()
    model.head.weight = torch.nn.Parameter(torch.zeros(4, 16, dtype=torch.complex64))
    with pytest.raises(InvalidAdapterError, match="dtype torch.complex64"):
        select_tensors(collect_tensors(model))


class _WithExtraState(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    def get_extra_state(self):
        return {"note": "not a tensor"}

    def set_extra_state(self, state):
        """Nothing to restore: these tests only collect tensors."""


def _drop_bias(module, state, prefix, local_metadata) -> None:
    del state[prefix + "mlp.bias"]


def _hooked() -> torch.nn.Module:
    model = make_model()
    model.layers[0].register_state_dict_post_hook(_drop_bias)
    return model


def _varied() -> torch.nn.Module:
    """Depth, None parameters, non-persistent buffers, ModuleDicts: the walk's cases."""
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList(
        torch.nn.ModuleDict({"a": torch.nn.Linear(3, 3, bias=False), "b": torch.nn.LayerNorm(3)})
        for _ in range(3)
    )
    model.blocks[1].register_buffer("scratch", torch.zeros(2), persistent=False)
    model.blocks[1].register_buffer("kept", torch.ones(2))
    model.blocks[2].register_buffer("unset", None)
    model.empty = torch.nn.ModuleDict()
    model.head = torch.nn.Linear(3, 2)
    return model


@pytest.mark.parametrize(
    "build",
    [
        make_model,
        _hooked,
        lambda: torch.nn.Sequential(make_model(), _WithExtraState()),
        _varied,
    ],
    ids=["plain", "state-dict-hook", "extra-state", "varied"],
)
def test_collected_tensors_are_exactly_the_state_dict_tensors(build):
    model = build()
    expected = {
        k: v for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)
    }
    collected = collect_tensors(model)
    assert list(collected.tensors) == list(expected)
    assert all(collected.tensors[k] is v for k, v in expected.items())


def test_one_pattern_given_as_a_string_is_one_pattern():
    """Was: "lora*" taken as the patterns 'l', 'o', 'r', 'a', '*', which match all."""
    model = torch.nn.Module()
    model.lora = torch.nn.Linear(2, 2)
    model.base = torch.nn.Linear(2, 2).requires_grad_(False)
    model.lora.requires_grad_(False)
    selection = select_tensors(collect_tensors(model), include="lora*")
    assert sorted(selection.tensors) == ["lora.bias", "lora.weight"]
    model.lora.requires_grad_(True)
    selection = select_tensors(collect_tensors(model), exclude="lora.bias")
    assert sorted(selection.tensors) == ["lora.weight"]


class _DDPLike(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.module = inner


def test_patterns_match_the_wrapped_names_too():
    inner = torch.nn.Module()
    inner.body = torch.nn.Linear(2, 2)
    inner.head = torch.nn.Linear(2, 2)
    tensors = collect_tensors(_DDPLike(inner))
    selection = select_tensors(tensors, exclude=["module.body.*"])
    assert sorted(selection.tensors) == ["head.bias", "head.weight"]
    assert sorted(select_tensors(tensors, exclude=["body.*"]).tensors) == sorted(selection.tensors)
