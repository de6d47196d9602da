"""Check before copy: every kind of misfit is one error, and the model stays byte-identical."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_unchanged, make_model, snapshot

from adapter_store import BaseModelMismatchError, IncompatibleAdapterError


def _prefixed(model: torch.nn.Module) -> torch.nn.Module:
    outer = torch.nn.Module()
    outer.inner = model
    return outer


CASES = {
    # name: (how the target differs, extra load kwargs, error class, message pattern)
    "shape-mismatch-rank": (
        lambda: make_model(rank=3),
        {},
        IncompatibleAdapterError,
        r"6 tensors differ in shape, e.g. 'layers.0.q.lora_A' is \(2, 16\) "
        r"in the adapter but \(3, 16\) in the model",
    ),
    "missing-trainable": (
        lambda: make_model(layers=4),
        {"check_base": "ignore"},
        IncompatibleAdapterError,
        r"2 trainable tensors of the model are not in the adapter: "
        r"'layers.3.q.lora_A', 'layers.3.q.lora_B'",
    ),
    "unexpected-stored": (
        lambda: make_model(layers=2),
        {"check_base": "ignore"},
        IncompatibleAdapterError,
        r"2 stored tensors have no place in the model: 'layers.2.q.lora_A'",
    ),
    "prefix-loads-nothing": (
        lambda: _prefixed(make_model()),
        {"strict": False},
        IncompatibleAdapterError,
        r"nothing would be loaded.*extra prefix 'inner.'",
    ),
    "different-base-content": (
        lambda: make_model(seed=7),
        {},
        BaseModelMismatchError,
        r"saved on a different base model: the base model's weights "
        r"differ in 10 of 17 recorded tensors, e.g. 'embed.weight'",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_a_misfit_raises_one_error_and_leaves_the_model_untouched(store, trained, case):
    build, kwargs, error, pattern = CASES[case]
    store.save(trained)
    target = build()
    before = snapshot(target)
    with pytest.raises(error, match=pattern):
        store.load(target, **kwargs)
    assert_unchanged(target, before)


def test_error_carries_missing_unexpected_and_mismatched(store, trained):
    store.save(trained)
    target = make_model(rank=3, layers=4)
    with pytest.raises(IncompatibleAdapterError) as caught:
        store.load(target, check_base="ignore")
    error = caught.value
    assert ("layers.0.q.lora_A", (2, 16), (3, 16)) in error.mismatched
    assert "layers.3.q.lora_B" in error.missing
    assert error.unexpected == []


def test_all_problems_are_gathered_into_one_message(store, trained):
    store.save(trained)
    target = make_model(seed=3, rank=3, layers=4)
    before = snapshot(target)
    with pytest.raises(BaseModelMismatchError, match="does not fit TinyModel") as caught:
        store.load(target)
    assert_unchanged(target, before)
    message = str(caught.value)
    assert "different base model" in message
    assert "differ in shape" in message
    assert "not in the adapter" in message
    assert caught.value.missing and caught.value.mismatched


def test_strict_false_still_refuses_an_adapter_that_would_load_nothing(store, trained):
    store.save(trained, include=["head.*"], exclude=["layers.*"])
    target = torch.nn.Linear(3, 3)
    before = snapshot(target)
    with pytest.raises(IncompatibleAdapterError, match="nothing would be loaded"):
        store.load(target, strict=False, check_base="ignore")
    assert_unchanged(target, before)


def test_adapter_saved_from_the_inner_model_hints_at_the_prefix(store, trained):
    store.save(_prefixed(trained))
    with pytest.raises(
        IncompatibleAdapterError,
        match=r"adapter's keys carry an extra prefix "
        r"'inner.'",
    ):
        store.load(make_model(), strict=False, check_base="ignore")
