"""``adapter-store demo``: the whole cycle on a small model, with checks and timings.

Builds a model with a frozen base, LoRA adapters and a new head, trains a few steps on
synthetic data, saves the adapter, rebuilds the model from the same base weights, loads,
runs inference and checks the result. Exits non-zero if any check fails.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .store import AdapterStore


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update (B @ A), as in LoRA."""

    def __init__(self, size: int, rank: int = 4) -> None:
        super().__init__()
        self.base = nn.Linear(size, size)
        self.lora_A = nn.Parameter(torch.randn(rank, size) / math.sqrt(size))
        self.lora_B = nn.Parameter(torch.zeros(size, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + x @ self.lora_A.T @ self.lora_B.T


class Block(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(size)
        self.proj = LoRALinear(size)
        self.mlp = nn.Sequential(nn.Linear(size, 4 * size), nn.GELU(), nn.Linear(4 * size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.proj(self.norm(x))
        return x + self.mlp(x)


class DemoModel(nn.Module):
    """A small 'pretrained' base (seeded) with LoRA in every block and a new head."""

    def __init__(self, size: int = 128, layers: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Linear(16, size)
        self.layers = nn.ModuleList(Block(size) for _ in range(layers))
        self.head = nn.Linear(size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def build_model(seed: int = 0) -> DemoModel:
    """The same base weights for the same seed; only LoRA and the head are trainable."""
    torch.manual_seed(seed)
    model = DemoModel()
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name or name.startswith("head.")
    return model


def _check(ok: bool, what: str, failures: list[str]) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        failures.append(what)


def run_demo(root: Path, *, steps: int = 20) -> int:
    """Run the cycle against the store at ``root``; returns the process exit code."""
    failures: list[str] = []
    torch.manual_seed(1)
    inputs, labels = torch.randn(256, 16), torch.randint(0, 5, (256,))
    model = build_model()
    base_before = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if "lora_" not in k and not k.startswith("head.")
    }
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first_loss = loss = torch.tensor(0.0)
    for step in range(steps):
        loss = nn.functional.cross_entropy(model(inputs), labels)
        first_loss = loss if step == 0 else first_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"trained {steps} steps: loss {first_loss.item():.3f} -> {loss.item():.3f}")

    store = AdapterStore(root)
    started = time.perf_counter()
    saved = store.save(
        model,
        "demo-lora",
        optimizer=optimizer,
        step=steps,
        metadata={"task": "synthetic 5-way classification"},
    )
    save_ms = (time.perf_counter() - started) * 1000
    with tempfile.TemporaryDirectory() as scratch:
        full = Path(scratch) / "full.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(full))
        full_bytes = full.stat().st_size
    adapter_bytes = sum(shard.nbytes for shard in saved.manifest.shards)
    print(
        f"saved {saved.name!r} v{saved.version} to {saved.path} in {save_ms:.1f} ms: "
        f"{len(saved.manifest.tensors)} tensors in {len(saved.manifest.shards)} shards, "
        f"{adapter_bytes / 1e3:.1f} kB of adapter ({adapter_bytes / full_bytes:.1%} of the "
        f"{full_bytes / 1e6:.2f} MB full state dict) + {(saved.nbytes - adapter_bytes) / 1e3:.1f}"
        " kB of optimizer state"
    )

    fresh = build_model()
    started = time.perf_counter()
    report = store.load(fresh, "demo-lora")
    load_ms = (time.perf_counter() - started) * 1000
    print(f"loaded into a fresh model in {load_ms:.1f} ms")
    print(report.summary())

    model.eval()
    fresh.eval()
    with torch.no_grad():
        expected, got = model(inputs), fresh(inputs)
    print("checks:")
    _check(got.shape == (256, 5), "output shape is (256, 5)", failures)
    _check(
        bool(torch.isfinite(got).all()) and bool(got.abs().sum() > 0),
        "outputs finite and not all zero",
        failures,
    )
    _check(torch.equal(expected, got), "fresh model gives the trained model's outputs", failures)
    trained = dict(model.named_parameters())
    _check(
        all(torch.equal(trained[k], p) for k, p in fresh.named_parameters() if p.requires_grad),
        "adapter tensors equal the trained ones bit for bit",
        failures,
    )
    _check(
        all(
            torch.equal(base_before[k], v)
            for k, v in fresh.state_dict().items()
            if k in base_before
        ),
        "base weights untouched",
        failures,
    )
    _check(adapter_bytes < full_bytes, "adapter smaller than the full state dict", failures)
    _check(not report.missing and not report.unexpected, "nothing missing or unexpected", failures)
    print(
        f"demo {'FAILED: ' + ', '.join(failures) if failures else 'passed'}; store at {root} "
        f"(versions of 'demo-lora': {store.versions('demo-lora')})"
    )
    return 1 if failures else 0
