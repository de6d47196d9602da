"""The benchmark's workloads: the models and tensors every contender works on.

W1-W3 are built from plain ``nn.Module``s shaped like a Llama-7B decoder whose frozen
base lives on the meta device (no memory), so only the trainable tensors cost RAM. W4 is
a real PEFT LoRA on a small ``transformers`` Llama built from a config with random
weights (no download). ``Sizes`` holds every dimension, so ``--smoke`` can shrink them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Sizes:
    """Every dimension of every workload (the defaults are the issue's sizes)."""

    hidden: int = 4096
    intermediate: int = 11008
    layers: int = 32
    vocab: int = 32000
    rank: int = 16
    small_count: int = 2000
    small_side: int = 32
    w4_hidden: int = 1024
    w4_intermediate: int = 2816
    w4_layers: int = 8
    w4_heads: int = 16
    w4_vocab: int = 32000
    fingerprint_real_bytes: int = 10**9
    scale_versions: int = 1000
    scale_hidden: int = 256
    scale_layers: int = 2


FULL = Sizes()
SMOKE = replace(
    FULL,
    hidden=64,
    intermediate=96,
    layers=2,
    vocab=128,
    rank=4,
    small_count=20,
    small_side=4,
    w4_hidden=32,
    w4_intermediate=48,
    w4_layers=2,
    w4_heads=4,
    w4_vocab=64,
    fingerprint_real_bytes=64 * 1024,
    scale_versions=4,
    scale_hidden=32,
    scale_layers=1,
)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class Workload:
    """A model plus the trainable tensors a plain state-dict saver would write."""

    name: str
    description: str
    model: nn.Module
    state: dict[str, torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())

    def summary(self) -> dict[str, Any]:
        return {"description": self.description, "tensors": len(self.state), "nbytes": self.nbytes}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a user of ``save_file`` / ``torch.save`` would pass: the trainable tensors."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def _meta_weight(*shape: int) -> nn.Module:
    """A module holding one frozen bf16 ``weight`` on meta. Built by hand: the meta
    ``normal_`` that ``nn.Linear``/``nn.Embedding`` init would run imports torch._dynamo
    (over a second per process, and 100 MB of RSS in the memory probe)."""
    module = nn.Module()
    module.weight = nn.Parameter(
        torch.empty(shape, device="meta", dtype=torch.bfloat16), requires_grad=False
    )
    return module


def _meta_linear(inputs: int, outputs: int) -> nn.Module:
    return _meta_weight(outputs, inputs)


def _meta_norm(size: int) -> nn.Module:
    return _meta_weight(size)


class LoraLinear(nn.Module):
    """A frozen projection (on meta) with a trainable fp32 LoRA pair, PEFT's key layout."""

    def __init__(self, inputs: int, outputs: int, rank: int) -> None:
        super().__init__()
        self.base_layer = _meta_linear(inputs, outputs)
        # Random B as well as A: a trained adapter, not a fresh one.
        self.lora_A = nn.Module()
        self.lora_A.weight = nn.Parameter(torch.empty(rank, inputs).normal_(std=0.02))
        self.lora_B = nn.Module()
        self.lora_B.weight = nn.Parameter(torch.empty(outputs, rank).normal_(std=0.02))


class DecoderLayer(nn.Module):
    def __init__(self, sizes: Sizes) -> None:
        super().__init__()
        h, i, r = sizes.hidden, sizes.intermediate, sizes.rank
        self.self_attn = nn.Module()
        for name in PROJECTIONS:
            self.self_attn.add_module(name, LoraLinear(h, h, r))
        self.mlp = nn.Module()
        self.mlp.gate_proj = _meta_linear(h, i)
        self.mlp.up_proj = _meta_linear(h, i)
        self.mlp.down_proj = _meta_linear(i, h)
        self.input_layernorm = _meta_norm(h)
        self.post_attention_layernorm = _meta_norm(h)


class LoraLlama(nn.Module):
    """A Llama-shaped decoder, base on meta, LoRA on q/k/v/o; ``head`` adds a new head."""

    def __init__(self, sizes: Sizes, *, head: bool = False) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = _meta_weight(sizes.vocab, sizes.hidden)
        self.model.layers = nn.ModuleList(DecoderLayer(sizes) for _ in range(sizes.layers))
        self.model.norm = _meta_norm(sizes.hidden)
        if head:
            weight = torch.empty(sizes.vocab, sizes.hidden, dtype=torch.bfloat16)
            self.lm_head = nn.Module()
            self.lm_head.weight = nn.Parameter(weight.normal_(std=0.02))
        else:
            self.lm_head = _meta_linear(sizes.hidden, sizes.vocab)


def build_w1(sizes: Sizes) -> Workload:
    model = LoraLlama(sizes)
    return Workload(
        "W1",
        f"LoRA r={sizes.rank} on q/k/v/o, {sizes.layers} layers x "
        f"{sizes.hidden} hidden, fp32, base on meta",
        model,
        trainable_state(model),
    )


def layer_group(index: int) -> str:
    """The adapter-store module group of W1's layer ``index``."""
    return f"model.layers.{index}"


def touch_layer(workload: Workload, index: int) -> None:
    """Change one layer group's bytes, as one optimiser step on that layer would."""
    model: Any = workload.model
    layer = model.model.layers[index]
    with torch.no_grad():
        layer.self_attn.q_proj.lora_A.weight.add_(1e-3)


class ManySmall(nn.Module):
    def __init__(self, count: int, side: int) -> None:
        super().__init__()
        self.params = nn.ParameterList(nn.Parameter(torch.randn(side, side)) for _ in range(count))


def build_w2(sizes: Sizes) -> Workload:
    model = ManySmall(sizes.small_count, sizes.small_side)
    return Workload(
        "W2",
        f"{sizes.small_count} tensors of {sizes.small_side}x{sizes.small_side} fp32, one module",
        model,
        trainable_state(model),
    )


def build_w3(sizes: Sizes) -> Workload:
    model = LoraLlama(sizes, head=True)
    return Workload(
        "W3",
        f"new head {sizes.vocab}x{sizes.hidden} bf16 plus W1's LoRA",
        model,
        trainable_state(model),
    )


def build_scale_model(sizes: Sizes) -> nn.Module:
    """A small adapter for the many-versions store: the cost there is the store, not I/O."""
    return LoraLlama(
        replace(
            sizes,
            hidden=sizes.scale_hidden,
            intermediate=2 * sizes.scale_hidden,
            layers=sizes.scale_layers,
            vocab=1000,
        )
    )


def build_w4(sizes: Sizes) -> Workload:
    """A real PEFT LoRA (r=16 on q/k/v/o) on a random-weight ``transformers`` Llama."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=sizes.w4_hidden,
        intermediate_size=sizes.w4_intermediate,
        num_hidden_layers=sizes.w4_layers,
        num_attention_heads=sizes.w4_heads,
        num_key_value_heads=sizes.w4_heads,
        vocab_size=sizes.w4_vocab,
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    lora = LoraConfig(
        r=sizes.rank, lora_alpha=2 * sizes.rank, lora_dropout=0.0, target_modules=list(PROJECTIONS)
    )
    with warnings.catch_warnings():
        # transformers 5 deprecates an attribute PEFT still reads; noise in the report.
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)  # trained, not freshly initialised (zeros)
    return Workload(
        "W4",
        f"PEFT LoRA r={sizes.rank} on q/k/v/o of a transformers Llama, "
        f"{sizes.w4_layers} layers x {sizes.w4_hidden} hidden, random weights",
        model,
        trainable_state(model),
    )


def fingerprint_input(sizes: Sizes) -> dict[str, torch.Tensor]:
    """The frozen tensors of a 7B-shaped model: structure on meta, and the first tensors
    (embedding, then whole layers) made real in bf16 until ``fingerprint_real_bytes``."""
    model = LoraLlama(sizes)
    frozen = {
        name: t for name, t in model.state_dict(keep_vars=True).items() if not t.requires_grad
    }
    real = 0
    for name, tensor in frozen.items():
        if real >= sizes.fingerprint_real_bytes:
            break
        frozen[name] = torch.empty(tensor.shape, dtype=tensor.dtype).normal_()
        real += tensor.numel() * tensor.element_size()
    return frozen


def real_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values() if t.device.type != "meta")
