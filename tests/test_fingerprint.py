"""The base fingerprint: catches another base, ignores unrelated extras, costs little."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import xxhash
from conftest import assert_unchanged, make_model, snapshot
from torch import nn

from adapter_store import (
    AdapterStore,
    BaseModelMismatchError,
    BaseModelMismatchWarning,
    IncompatibleAdapterError,
)
from adapter_store.fingerprint import compare_base, content_digest, fingerprint_base


def test_same_base_matches(store, trained):
    store.save(trained)
    assert store.load(make_model()).base_check == "match"


def test_different_weights_are_a_content_mismatch_naming_keys(store, trained):
    store.save(trained)
    target = make_model()
    with torch.no_grad():
        target.layers[1].mlp.weight[3, 3] += 1.0  # one value in one base tensor
    before = snapshot(target)
    with pytest.raises(
        BaseModelMismatchError,
        match=r"weights differ in 1 of 17 recorded "
        r"tensors, e.g. 'layers.1.mlp.weight'",
    ) as caught:
        store.load(target)
    assert caught.value.content_differs and not caught.value.structure_differs
    assert caught.value.differing_keys == ["layers.1.mlp.weight"]
    assert_unchanged(target, before)


def test_different_structure_is_reported_as_structure(store, trained):
    store.save(trained)
    target = make_model()
    target.layers[0].norm = nn.LayerNorm(16, elementwise_affine=False)
    before = snapshot(target)
    with pytest.raises(
        BaseModelMismatchError,
        match=r"structure differs .* e.g. "
        r"'layers.0.norm.bias' was F32\[16\] but is "
        r"absent here",
    ) as caught:
        store.load(target)
    assert caught.value.structure_differs
    assert_unchanged(target, before)


def test_warn_loads_anyway_and_says_so(store, trained):
    store.save(trained)
    target = make_model(seed=5)
    with pytest.warns(BaseModelMismatchWarning, match="different base model") as caught:
        report = store.load(target, check_base="warn")
    assert report.base_check == "mismatch" and report.warnings
    assert {Path(w.filename).name for w in caught} == {"test_fingerprint.py"}  # the caller
    assert torch.equal(target.head.weight, trained.head.weight)


def test_warn_with_another_problem_still_names_the_base_difference(store, trained):
    """The load is refused for another reason; the accepted base difference is a clue to
    it, and was lost (the warning is never emitted when the load raises)."""
    store.save(trained)
    target = make_model(seed=5)
    target.extra = torch.nn.Parameter(torch.zeros(3))  # trainable, not in the adapter
    with pytest.raises(
        IncompatibleAdapterError,
        match=r"not in the adapter: 'extra'.*accepted by check_base='warn': it was saved on "
        r"a different base",
    ):
        store.load(target, check_base="warn")


def test_ignore_skips_the_check(store, trained):
    store.save(trained)
    report = store.load(make_model(seed=5), check_base="ignore")
    assert report.base_check == "not checked"


def test_extra_unrelated_modules_in_the_target_are_no_mismatch(store, trained):
    store.save(trained)
    target = make_model()
    target.second_adapter = nn.Linear(16, 16)  # e.g. another adapter or a probe
    target.second_adapter.requires_grad_(False)
    assert store.load(target).base_check == "match"


class Slot(nn.Module):
    """PEFT-style named adapters side by side in a ModuleDict."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.base = nn.Linear(8, 8)
        self.lora = nn.ModuleDict({n: nn.Linear(8, 2, bias=False) for n in names})


def _slots(names: list[str], active: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # the adapters' initialisation
    model = nn.Sequential(Slot(names), Slot(names))
    with torch.no_grad():
        for index, slot in enumerate(model):  # the same base whatever the adapters are
            slot.base.weight.copy_(torch.arange(64.0).reshape(8, 8) + index)
            slot.base.bias.fill_(index)
    for name, param in model.named_parameters():
        param.requires_grad = f"lora.{active}." in name
    return model


def test_a_second_named_adapter_is_not_part_of_the_base(tmp_path):
    store = AdapterStore(tmp_path)
    saved = store.save(_slots(["a", "b"], active="a"))
    assert not any(".lora.b." in key for key in saved.manifest.base.tensors)
    assert "0.base.weight" in saved.manifest.base.tensors
    # Loading into a model without adapter "b", or with a different "b", is no mismatch.
    assert store.load(_slots(["a"], active="a")).base_check == "match"
    assert store.load(_slots(["a", "b"], active="a", seed=9)).base_check == "match"
    with pytest.raises(BaseModelMismatchError):  # while the base itself is still checked
        target = _slots(["a"], active="a")
        with torch.no_grad():
            target[1].base.bias.add_(1)
        store.load(target)


def test_meta_tensors_contribute_structure_only():
    real = {"w": torch.randn(64, 64)}
    meta = {"w": torch.empty(64, 64, device="meta")}
    recorded = fingerprint_base(meta)
    assert recorded.tensors["w"].content is None
    assert compare_base(recorded, real).matches
    assert not compare_base(recorded, {"w": torch.randn(64, 65)}).matches
    assert compare_base(fingerprint_base(real), meta).matches  # no data to compare


def test_sample_digest_sees_a_change_in_sampled_bytes_and_full_sees_any_change():
    base = torch.zeros(1000, 1000)
    changed = base.clone()
    changed[0, 0] = 1.0  # the first window is always sampled
    assert content_digest(base) != content_digest(changed)
    hidden = base.clone()
    hidden[500, 123] = 1.0  # between windows: only the full mode sees it
    assert content_digest(base) == content_digest(hidden)
    assert content_digest(base, "full") != content_digest(hidden, "full")


def test_full_mode_can_be_chosen_per_store(tmp_path, trained):
    store = AdapterStore(tmp_path, fingerprint="full")
    store.save(trained)
    assert store.manifest("default").base.content_mode == "full"
    target = make_model()
    with torch.no_grad():
        target.layers[0].mlp.weight[7, 7] += 1e-3
    with pytest.raises(BaseModelMismatchError):
        store.load(target)


def test_non_contiguous_and_bf16_tensors_have_stable_digests():
    tensor = torch.randn(40, 30).to(torch.bfloat16)
    assert content_digest(tensor.t()) == content_digest(tensor.t().contiguous())


class Towers(nn.Module):
    """Two towers in a ModuleDict: a trained LoRA on one, the other frozen base."""

    def __init__(self) -> None:
        super().__init__()
        self.towers = nn.ModuleDict({"text": nn.Linear(8, 8), "image": nn.Linear(8, 8)})
        self.towers["text"].lora = nn.Parameter(torch.zeros(2, 8))
        for name, param in self.named_parameters():
            param.requires_grad = name.endswith(".lora")


def test_a_frozen_sibling_that_is_not_an_adapter_stays_in_the_fingerprint(tmp_path):
    torch.manual_seed(0)
    store = AdapterStore(tmp_path)
    saved = store.save(Towers())
    assert "towers.image.weight" in saved.manifest.base.tensors
    torch.manual_seed(0)
    other = Towers()
    with torch.no_grad():
        other.towers["image"].weight.mul_(-1)  # a different image tower: a different base
    before = snapshot(other)
    with pytest.raises(BaseModelMismatchError, match="'towers.image.weight'"):
        store.load(other)
    assert_unchanged(other, before)


def test_excluding_a_trained_tensor_is_no_base_mismatch(store, trained):
    saved = store.save(trained, exclude=["head.bias"])
    assert saved.manifest.excluded == ["head.bias"]
    assert "head.bias" not in saved.manifest.base.tensors
    report = store.load(make_model())  # a fresh head.bias differs from the trained one
    assert report.base_check == "match"
    assert "head.bias" in report.frozen and report.missing == []


def test_summary_digests_follow_the_format_spec():
    """docs/format.md: sha256 of "<key>\\t<dtype>[<d0>, <d1>]\\n" (and of "<key>\\t<content>\\n"
    over real tensors), sorted by key; adapters saved earlier must keep matching."""
    frozen = {
        "b.weight": torch.ones(3, 2),
        "a.bias": torch.zeros(5, dtype=torch.bfloat16),
        "c.weight": torch.empty(4, 4, device="meta"),
    }
    recorded = fingerprint_base(frozen)
    lines = ["a.bias\tBF16[5]\n", "b.weight\tF32[3, 2]\n", "c.weight\tF32[4, 4]\n"]
    assert recorded.structure_digest == hashlib.sha256("".join(lines).encode()).hexdigest()
    contents = [
        f"a.bias\t{content_digest(frozen['a.bias'])}\n",
        f"b.weight\t{content_digest(frozen['b.weight'])}\n",
    ]
    assert recorded.content_digest == hashlib.sha256("".join(contents).encode()).hexdigest()
    assert recorded.tensors["c.weight"].content is None


def _spec_content_digest(tensor: torch.Tensor) -> str:
    """docs/format.md's sampling, written out independently of the library."""
    data = bytes(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
    hasher = xxhash.xxh3_64()
    if len(data) <= 1024:
        hasher.update(data)
    else:
        step = (len(data) - 64) // 15
        for i in range(16):
            hasher.update(data[i * step : i * step + 64])
    hasher.update(str(len(data)).encode())
    return hasher.hexdigest()


@pytest.mark.parametrize(
    "tensor",
    [
        torch.randn(1000, 37),
        torch.randn(5).to(torch.bfloat16),
        torch.arange(256, dtype=torch.int32),  # exactly 1024 bytes: hashed whole
        torch.arange(300, dtype=torch.int64),
        torch.randn(64, 64).t(),  # not contiguous: C order of the values
    ],
    ids=["f32", "bf16-small", "1024-bytes", "i64", "transposed"],
)
def test_content_digest_follows_the_format_spec(tensor):
    assert content_digest(tensor) == _spec_content_digest(tensor)


@pytest.mark.parametrize(
    ("recorded", "present"),
    [
        ("layers.0.q.weight", "layers.0.q.base_layer.weight"),
        ("layers.0.q.base_layer.weight", "layers.0.q.weight"),
        ("lm_head.weight", "lm_head.original_module.weight"),
        ("lm_head.original_module.weight", "lm_head.weight"),
    ],
    ids=["wrapped-here", "wrapped-when-saved", "modules-to-save-here", "modules-to-save-saved"],
)
def test_a_base_tensor_is_found_through_peft_wrappers_either_way(recorded, present):
    """PEFT wraps a base module only where some adapter is applied: the same tensor."""
    weight = torch.randn(4, 4)
    fingerprint = fingerprint_base({recorded: weight})
    assert compare_base(fingerprint, {present: weight}).matches
    assert not compare_base(fingerprint, {present: weight + 1}).matches  # still compared
    assert not compare_base(fingerprint, {"layers.0.k.weight": weight}).matches


def test_a_base_in_another_precision_is_named_as_such(store, trained):
    """Training on an fp32 base and serving on a bf16 one is common: still a mismatch
    (the weights cannot be compared), but the message says it is the dtype alone."""
    store.save(trained)
    target = make_model()
    for module in target.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                setattr(module, name, torch.nn.Parameter(param.detach().bfloat16(), False))
    with pytest.raises(
        BaseModelMismatchError, match=r"was F32\[.*\] but is BF16\[.*\] here \(the dtype alone"
    ):
        store.load(target)
    other = make_model()
    other.layers[0].mlp = torch.nn.Linear(8, 8)  # a shape differs too: no such remark
    other.layers[0].mlp.requires_grad_(False)
    with pytest.raises(BaseModelMismatchError) as caught:
        store.load(other, strict=False)
    assert "the dtype alone" not in str(caught.value)
