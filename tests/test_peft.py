"""The full cycle on a real PEFT LoRA model around a tiny random transformers Llama."""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

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

    fresh = build()  # same base (seed), different adapter init
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

    peft_dir = tmp_path / "peft"
    model.save_pretrained(peft_dir)
    assert saved.nbytes < sum(p.stat().st_size for p in peft_dir.iterdir()) * 2


def test_peft_adapter_refuses_another_base(store):
    model = build()
    _train(model)
    store.save(model)
    other = build(seed=5)
    with pytest.raises(BaseModelMismatchError, match="weights differ"):
        store.load(other)
