"""Tiny CPU models shared by the tests."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from adapter_store import AdapterStore


class LoRALinear(nn.Module):
    def __init__(self, size: int, rank: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(size, size) / math.sqrt(size))
        self.lora_A = nn.Parameter(torch.randn(rank, size) / math.sqrt(size))
        self.lora_B = nn.Parameter(torch.zeros(size, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T + x @ self.lora_A.T @ self.lora_B.T


class Block(nn.Module):
    def __init__(self, size: int, rank: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(size)
        self.q = LoRALinear(size, rank)
        self.mlp = nn.Linear(size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(torch.relu(self.q(self.norm(x))))


class TinyModel(nn.Module):
    """A frozen base (embedding, blocks) with LoRA in every block and a new head."""

    def __init__(self, size: int = 16, layers: int = 3, rank: int = 2, classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(32, size)
        self.layers = nn.ModuleList(Block(size, rank) for _ in range(layers))
        self.head = nn.Linear(size, classes)
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.int64))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(x.mean(dim=1))


def freeze_base(model: nn.Module) -> nn.Module:
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name or name.startswith("head.")
    return model


def make_model(seed: int = 0, **sizes: int) -> TinyModel:
    """Same seed, same base weights; LoRA and the head trainable."""
    torch.manual_seed(seed)
    return freeze_base(TinyModel(**sizes))  # type: ignore[return-value]


def train(model: nn.Module, steps: int = 3, seed: int = 1) -> torch.optim.Optimizer:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 32, (8, 5), generator=generator)
    labels = torch.randint(0, 4, (8,), generator=generator)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(tokens), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return optimizer


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of every state-dict tensor, to prove a model was left untouched."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed"


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    return AdapterStore(tmp_path / "store")


@pytest.fixture
def trained() -> TinyModel:
    model = make_model()
    train(model)
    return model


@pytest.fixture
def model_factory() -> Callable[..., TinyModel]:
    return make_model


class FsyncRecorder:
    """Records what a save makes durable, in order: the (device, inode) of every fsynced
    file or directory, and each rename of a temporary directory into a version."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.synced: list[tuple[int, int]] = []
        self.committed: list[tuple[Path, set[tuple[int, int]], int]] = []
        real_fsync, real_rename = os.fsync, os.rename

        def fsync(fd: int) -> None:
            info = os.fstat(fd)
            self.synced.append((info.st_dev, info.st_ino))
            real_fsync(fd)

        def rename(source, target, *args, **kwargs):  # type: ignore[no-untyped-def]
            inside = {_identity(p) for p in [Path(source), *Path(source).rglob("*")]}
            self.committed.append((Path(target), inside, len(self.synced)))
            return real_rename(source, target, *args, **kwargs)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", rename)

    def assert_durable_commit(self) -> None:
        """Everything in the last committed directory was fsynced before its rename (a
        hard-linked file by an earlier save); the directory receiving it was fsynced after."""
        assert self.committed
        target, inside, position = self.committed[-1]
        missing = inside - set(self.synced[:position])
        assert not missing, f"{len(missing)} files or directories not fsynced before the rename"
        assert _identity(target.parent) in self.synced[position:]

    def assert_synced(self, *paths: Path) -> None:
        """Each of ``paths`` (a directory holding a new entry) was fsynced."""
        for path in paths:
            assert _identity(path) in self.synced, f"{path} was not fsynced"


def _identity(path: Path) -> tuple[int, int]:
    info = path.stat()
    return (info.st_dev, info.st_ino)
