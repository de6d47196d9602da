"""The full cycle on a real PEFT LoRA model around a tiny random transformers Llama."""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402

from adapter_store import BaseModelMismatchError  # noqa: E402


def _llama(seed: int):
    """A tiny random Llama; the same seed, the same base weights."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(config)


def build(seed: int = 0, rank: int = 4):
    base = _llama(seed)
    lora = peft.LoraConfig(
        r=rank,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
        init_lora_weights=False,
    )
    torch.manual_seed(seed + 100)  # the adapter's own init
    return peft.get_peft_model(base, lora)


def _train(model, steps: int = 3):
    tokens = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = model(input_ids=tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return tokens


def test_peft_lora_round_trip(store, tmp_path):
    model = build()
    tokens = _train(model)
    saved = store.save(model, "llama-lora")
    keys = list(saved.manifest.tensors)
    assert len(keys) == 8 and all(".lora_" in k for k in keys)
    assert saved.manifest.groups == [
        "base_model.model.model.layers.0",
        "base_model.model.model.layers.1",
    ]

    fresh = build()  # same base, the adapter freshly initialised (not trained)
    before_base = {k: v.clone() for k, v in fresh.state_dict().items() if "lora_" not in k}
    report = store.load(fresh, "llama-lora")
    assert sorted(report.loaded) == sorted(keys) and report.missing == []

    model.eval()
    fresh.eval()
    with torch.no_grad():
        expected = model(input_ids=tokens).logits
        got = fresh(input_ids=tokens).logits
    assert got.shape == (2, 8, 64) and torch.isfinite(got).all()
    assert torch.equal(expected, got)
    trained = model.state_dict()
    for key, value in fresh.state_dict().items():
        if "lora_" in key:
            assert torch.equal(value, trained[key]), key
        else:
            assert torch.equal(value, before_base[key]), key

    full = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(full))
    assert saved.nbytes < full.stat().st_size / 10


def test_peft_adapter_refuses_another_base(store):
    model = build()
    _train(model)
    store.save(model)
    other = build(seed=5)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(BaseModelMismatchError, match="weights differ in .* e.g. 'base_model"):
        store.load(other)
    after = other.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def _two_adapters(adapters: list[tuple[str, list[str]]], seed: int, base_seed: int = 0):
    """A PeftModel over the same base (``base_seed``) holding the named adapters, each on
    its target modules; the first is active and trainable."""
    base = _llama(base_seed)
    torch.manual_seed(seed)
    (first, targets), *rest = adapters
    model = peft.get_peft_model(
        base, peft.LoraConfig(r=4, target_modules=targets, init_lora_weights=False), first
    )
    for name, more in rest:
        model.add_adapter(name, peft.LoraConfig(r=4, target_modules=more, init_lora_weights=False))
    model.set_adapter(first)
    return model


_QV, _DOWN = ["q_proj", "v_proj"], ["down_proj"]


@pytest.mark.parametrize(
    ("saved_from", "loaded_into"),
    [
        ([("one", _QV), ("two", _DOWN)], [("one", _QV), ("two", _DOWN)]),
        ([("one", _QV), ("two", _DOWN)], [("one", _QV)]),
        ([("one", _QV)], [("one", _QV), ("two", _DOWN)]),
    ],
    ids=["other-adapter-both-sides", "other-adapter-only-when-saved", "other-adapter-only-here"],
)
def test_another_adapter_on_other_modules_is_no_other_base(store, saved_from, loaded_into):
    """Adapter "two" on modules "one" does not touch: its weights are no base (they were
    fingerprinted, a ModuleDict with one entry not being taken for an adapter's), and
    PEFT's wrapping of the modules it touches (``down_proj.base_layer.weight``) names the
    same base tensor as ``down_proj.weight``. Each case raised BaseModelMismatchError."""
    source = _two_adapters(saved_from, seed=1)
    store.save(source, "one")
    target = _two_adapters(loaded_into, seed=2)
    report = store.load(target, "one")
    assert report.base_check == "match"
    trained = source.state_dict()
    for key, value in target.state_dict().items():
        if ".lora_A.one." in key or ".lora_B.one." in key:
            assert torch.equal(value, trained[key]), key
    # The base is still checked through the wrapper: another base is refused.
    other = _two_adapters(loaded_into, seed=2, base_seed=5)
    with pytest.raises(BaseModelMismatchError):
        store.load(other, "one")


def test_another_trainable_adapter_in_the_target_is_not_missing(store):
    """A server holds adapters "one" and "two", "two" active (so trainable), and loads
    new weights for "one". Was: "two"'s tensors were truly missing to a strict load."""
    source = _two_adapters([("one", _QV), ("two", _DOWN)], seed=1)
    store.save(source, "one")
    target = _two_adapters([("one", _QV), ("two", _DOWN)], seed=2)
    target.set_adapter("two")  # its tensors now require grad, "one"'s do not
    before = {k: v.clone() for k, v in target.state_dict().items() if ".two." in k}
    report = store.load(target, "one")
    assert report.missing == []
    assert sorted(report.other_adapters) == sorted(before)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in before.items())
    assert f"other adapters' (left alone): {len(before)} (" in report.summary()
