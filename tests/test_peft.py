"""The full cycle on a real PEFT LoRA model around a tiny random transformers Llama."""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402

from adapter_store import BaseModelMismatchError  # noqa: E402


def build(seed: int = 0, rank: int = 4):
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
    base = transformers.LlamaForCausalLM(config)
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
