"""Optimizer state is stored by parameter name and restores into a fresh optimizer."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from conftest import assert_unchanged, make_model, snapshot, train
from safetensors.torch import load_file

from adapter_store import AdapterStore, IncompatibleAdapterError, InvalidAdapterError, ManifestError
from adapter_store.optim import build_optimizer_state
from adapter_store.selection import collect_tensors, parameter_names

BATCH = torch.randint(0, 32, (8, 5), generator=torch.Generator().manual_seed(3))
LABELS = torch.randint(0, 4, (8,), generator=torch.Generator().manual_seed(4))


def _steps(model, optimizer, count):
    for _ in range(count):
        loss = torch.nn.functional.cross_entropy(model(BATCH), LABELS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _adam(model):
    return torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=0.01, betas=(0.8, 0.95)
    )


def test_resuming_from_a_save_is_bit_identical_to_training_straight(store):
    straight = make_model()
    _steps(straight, _adam(straight), 4)

    first = make_model()
    optimizer = _adam(first)
    _steps(first, optimizer, 2)
    store.save(first, optimizer=optimizer, step=2)

    resumed = make_model()
    fresh_optimizer = _adam(resumed)
    report = store.load(resumed, optimizer=fresh_optimizer)
    assert report.optimizer_restored
    assert fresh_optimizer.param_groups[0]["betas"] == (0.8, 0.95)
    _steps(resumed, fresh_optimizer, 2)

    for (key, expected), got in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(expected, got), key


def test_state_is_keyed_by_name_in_the_manifest(store, trained):
    optimizer = _adam(trained)
    _steps(trained, optimizer, 1)
    saved = store.save(trained, optimizer=optimizer)
    section = saved.manifest.optimizer
    assert section is not None and section.class_name == "Adam"
    assert "head.weight/exp_avg" in section.tensors
    assert "head.weight" in section.param_groups[0]["params"]


def test_a_parameter_order_change_still_restores_by_name(store):
    model = make_model()
    optimizer = _adam(model)
    _steps(model, optimizer, 2)
    store.save(model, optimizer=optimizer)
    fresh = make_model()
    reversed_params = [p for p in fresh.parameters() if p.requires_grad][::-1]
    fresh_optimizer = torch.optim.Adam(reversed_params, lr=0.01, betas=(0.8, 0.95))
    store.load(fresh, optimizer=fresh_optimizer)
    state = fresh_optimizer.state[fresh.head.weight]
    assert torch.equal(state["exp_avg"], optimizer.state[model.head.weight]["exp_avg"])


def _saved_with_adam_state(store) -> None:
    """Save a model together with the Adam state of one training step."""
    model = make_model()
    optimizer = _adam(model)
    _steps(model, optimizer, 1)
    store.save(model, optimizer=optimizer)


def test_other_param_groups_are_refused_before_the_model_changes(store):
    _saved_with_adam_state(store)
    fresh = make_model()
    before = snapshot(fresh)
    wrong = torch.optim.Adam([fresh.head.weight], lr=0.01)
    with pytest.raises(IncompatibleAdapterError, match="param group 0 holds other parameters"):
        store.load(fresh, optimizer=wrong)
    assert_unchanged(fresh, before)


def test_another_optimizer_class_is_refused(store):
    _saved_with_adam_state(store)
    fresh = make_model()
    before = snapshot(fresh)
    sgd = torch.optim.SGD([p for p in fresh.parameters() if p.requires_grad], lr=0.1)
    with pytest.raises(
        IncompatibleAdapterError, match="saved from Adam but the given optimizer is SGD"
    ):
        store.load(fresh, optimizer=sgd)
    assert_unchanged(fresh, before)


def test_asking_for_optimizer_state_that_was_not_saved(store, trained):
    store.save(trained)
    fresh = make_model()
    before = snapshot(fresh)
    with pytest.raises(ManifestError, match="saved without optimizer state"):
        store.load(fresh, optimizer=_adam(fresh))
    assert_unchanged(fresh, before)


def test_sgd_with_momentum_round_trips(store):
    model = make_model()
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9
    )
    train(model, steps=0)
    _steps(model, optimizer, 2)
    store.save(model, optimizer=optimizer)
    fresh = make_model()
    fresh_optimizer = torch.optim.SGD(
        [p for p in fresh.parameters() if p.requires_grad], lr=0.1, momentum=0.9
    )
    store.load(fresh, optimizer=fresh_optimizer)
    assert torch.equal(
        fresh_optimizer.state[fresh.head.weight]["momentum_buffer"],
        optimizer.state[model.head.weight]["momentum_buffer"],
    )


def test_non_finite_hyper_parameters_and_state_restore_in_a_fresh_process(store, tmp_path):
    model = make_model()
    optimizer = _adam(model)
    optimizer.param_groups[0]["max_grad_norm"] = math.inf
    _steps(model, optimizer, 1)
    optimizer.state[model.head.weight]["best"] = -math.inf
    store.save(model, optimizer=optimizer)
    # A copy elsewhere is read from its bytes, as another process would read it.
    copy = AdapterStore(shutil.copytree(store.root, tmp_path / "copy"))
    fresh = make_model()
    fresh_optimizer = _adam(fresh)
    fresh_optimizer.param_groups[0]["max_grad_norm"] = 1.0
    copy.load(fresh, optimizer=fresh_optimizer)
    assert fresh_optimizer.param_groups[0]["max_grad_norm"] == math.inf
    assert fresh_optimizer.state[fresh.head.weight]["best"] == -math.inf


@pytest.mark.parametrize(
    "dtype", [torch.complex64, torch.complex128], ids=["complex64", "complex128"]
)
def test_state_of_a_dtype_safetensors_lacks_is_refused_naming_it(store, trained, dtype):
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.1)
    optimizer.state[trained.head.weight]["phase"] = torch.zeros(2, dtype=dtype)
    with pytest.raises(
        InvalidAdapterError,
        match=rf"optimizer state head.weight/phase: dtype {dtype} has no safetensors",
    ):
        store.save(trained, optimizer=optimizer)
    assert store.names() == []


@pytest.mark.parametrize("fresh_named", [True, False], ids=["fresh-named", "fresh-unnamed"])
def test_param_names_stay_paired_with_their_params(store, fresh_named):
    model = make_model()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(named, lr=0.01)
    if "param_names" not in optimizer.param_groups[0]:
        pytest.skip("this torch does not keep param_names (torch < 2.6)")
    _steps(model, optimizer, 1)
    store.save(model, optimizer=optimizer)
    fresh = make_model()
    others = [(n, p) for n, p in fresh.named_parameters() if p.requires_grad][::-1]
    fresh_optimizer = torch.optim.Adam(others if fresh_named else [p for _, p in others], lr=0.01)
    store.load(fresh, optimizer=fresh_optimizer)
    group = fresh_optimizer.param_groups[0]
    name_of = {id(p): n for n, p in fresh.named_parameters()}
    if fresh_named:
        assert group["param_names"] == [name_of[id(p)] for p in group["params"]]
    else:
        assert "param_names" not in group


_SGD_ON_HEAD = lambda m: torch.optim.SGD(m.head.parameters(), lr=0.1, momentum=0.9)  # noqa: E731


@pytest.mark.parametrize("make_optimizer", [_adam, _SGD_ON_HEAD], ids=["adam", "sgd-momentum"])
def test_state_of_parameters_the_load_did_not_fill_starts_fresh(store, make_optimizer):
    """exclude= leaves the head's weights out but its moments in the optimizer file; the
    fresh model's head is rebuilt wider. Was: the old moments restored, and the first
    optimizer.step() crashed on their shape."""
    model = make_model()
    optimizer = make_optimizer(model)
    _steps(model, optimizer, 1)
    store.save(model, optimizer=optimizer, exclude=["head.*"])
    fresh = make_model(classes=6)
    fresh_optimizer = make_optimizer(fresh)
    report = store.load(fresh, optimizer=fresh_optimizer)
    assert report.optimizer_restored
    assert fresh.head.weight not in fresh_optimizer.state
    _steps(fresh, fresh_optimizer, 1)  # runs: no stale moments of another shape


def _saved_state(store, make_optimizer):
    """One step of training saved with its optimizer; the stored state as tensors, and a
    fresh model's optimizer with its parameter names, for build_optimizer_state."""
    model = make_model()
    optimizer = make_optimizer(model)
    _steps(model, optimizer, 1)
    saved = store.save(model, optimizer=optimizer)
    section = saved.manifest.optimizer
    assert section is not None
    fresh = make_model()
    fresh_optimizer = make_optimizer(fresh)
    names = parameter_names(fresh, collect_tensors(fresh))
    return section, load_file(saved.path / section.path), fresh_optimizer, names


@pytest.mark.parametrize("make_optimizer", [_adam, _SGD_ON_HEAD], ids=["adam", "sgd-momentum"])
def test_state_shaped_unlike_its_parameter_is_refused_before_anything_changes(
    store, make_optimizer
):
    section, tensors, fresh_optimizer, names = _saved_state(store, make_optimizer)
    for key in [k for k in tensors if k.startswith("head.weight/")]:
        if tensors[key].dim():  # a file whose moments another head left (4 -> 6 rows)
            tensors[key] = torch.zeros(6, *tensors[key].shape[1:])
    with pytest.raises(
        IncompatibleAdapterError,
        match=r"optimizer state 'head.weight/.*' has shape \(6, 16\) but its parameter is "
        r"\(4, 16\)",
    ) as caught:
        build_optimizer_state(section, fresh_optimizer, names, tensors, loaded=None)
    assert {key.partition("/")[0] for key, _, _ in caught.value.mismatched} == {"head.weight"}
    assert fresh_optimizer.state_dict()["state"] == {}


def test_factored_state_of_adafactor_is_not_taken_for_a_mismatch(store):
    model = make_model()
    optimizer = torch.optim.Adafactor([p for p in model.parameters() if p.requires_grad])
    _steps(model, optimizer, 1)
    assert optimizer.state[model.head.weight]["row_var"].shape != model.head.weight.shape
    store.save(model, optimizer=optimizer)
    fresh = make_model()
    fresh_optimizer = torch.optim.Adafactor([p for p in fresh.parameters() if p.requires_grad])
    store.load(fresh, optimizer=fresh_optimizer)
    assert torch.equal(
        fresh_optimizer.state[fresh.head.weight]["row_var"],
        optimizer.state[model.head.weight]["row_var"],
    )


@pytest.mark.parametrize(
    "loaded",
    [None, {"head.weight", "head.bias"}, set()],
    ids=["all", "head-only", "nothing"],
)
def test_only_the_state_of_loaded_parameters_is_restored(store, loaded):
    section, tensors, fresh_optimizer, names = _saved_state(store, _adam)
    state = build_optimizer_state(section, fresh_optimizer, names, tensors, loaded=loaded)
    params = fresh_optimizer.param_groups[0]["params"]
    restored = {names[id(params[index])] for index in state["state"]}
    trainable = {names[id(p)] for p in params}
    assert restored == (trainable if loaded is None else loaded)


def test_a_partial_load_restores_the_state_of_the_loaded_groups_only(store):
    model = make_model()
    optimizer = _adam(model)
    _steps(model, optimizer, 1)
    store.save(model, optimizer=optimizer)
    fresh = make_model()
    fresh_optimizer = _adam(fresh)
    report = store.load(fresh, modules=["head"], optimizer=fresh_optimizer, strict=False)
    restored = {n for n, p in fresh.named_parameters() if p in fresh_optimizer.state}
    assert restored == set(report.loaded) == {"head.weight", "head.bias"}


def _nested_list(depth: int) -> list:
    nested: list = []
    for _ in range(depth):
        nested = [nested]
    return nested


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("note", "bad \udc80 byte", r"optimizer param_groups\.0\.note: .* not valid Unicode"),
        ("note", object(), r"optimizer param_groups\.0\.note is a object, which JSON cannot"),
        ("bad \udc80", 1, r"optimizer param_groups\.0 key .* not valid Unicode"),
        (3, 1, r"optimizer param_groups\.0: key 3 is a int; JSON keys are strings"),
        ("deep", _nested_list(300), r"nested more than 100 levels deep"),
        ("lr", np.longdouble(0.1), r"is a numpy\.longdouble"),
    ],
    ids=["surrogate", "object", "surrogate-key", "int-key", "deep", "longdouble"],
)
def test_param_group_values_json_cannot_hold_are_refused_up_front(
    store, trained, key, value, match
):
    """Was: a surrogate passed the check and failed inside the commit, after every shard
    had been written, with pydantic's own error (and a surrogate key was changed on the
    way back)."""
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.1)
    optimizer.param_groups[0][key] = value
    with pytest.raises(InvalidAdapterError, match=match):
        store.save(trained, optimizer=optimizer)
    assert not store.root.exists()


def test_a_state_entry_name_json_cannot_hold_is_refused_up_front(store, trained):
    optimizer = _adam(trained)
    _steps(trained, optimizer, 1)
    optimizer.state[trained.head.weight]["e\udc80"] = 1.0  # was: saved, read back changed
    with pytest.raises(InvalidAdapterError, match=r"optimizer state of head\.weight key"):
        store.save(trained, optimizer=optimizer)
