"""Model factories for ``adapter-store check --model cli_models:<factory>`` in the tests.

Each factory builds a tiny model from fixed seeds, so two calls give the same base and the
same adapter weights. The variants differ from ``build_model`` in exactly one way.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from adapter_store import AdapterStore


class LoRALayer(nn.Module):
    def __init__(self, size: int, rank: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size, size), requires_grad=False)
        self.lora_A = nn.Parameter(torch.zeros(rank, size))
        self.lora_B = nn.Parameter(torch.zeros(size, rank))


class CliModel(nn.Module):
    """A frozen base (``embed``, ``layers.*.weight``), LoRA in two layers, a new head."""

    def __init__(self, size: int = 8, rank: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.zeros(4, size), requires_grad=False)
        self.layers = nn.ModuleList(LoRALayer(size, rank) for _ in range(layers))
        self.head = nn.Linear(size, 3)


def _filled(model: CliModel, *, base_seed: int, adapter_seed: int = 7) -> CliModel:
    base = torch.Generator().manual_seed(base_seed)
    adapter = torch.Generator().manual_seed(adapter_seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            source = adapter if param.requires_grad else base
            param.copy_(torch.randn(param.shape, generator=source))
    return model


def build_model() -> CliModel:
    """The base the test adapters are saved on."""
    return _filled(CliModel(), base_seed=0)


def build_other_base() -> CliModel:
    """Same structure, different base weights: a different base model."""
    return _filled(CliModel(), base_seed=1)


def build_wider_base() -> CliModel:
    """Hidden size 12 instead of 8: every shape differs."""
    return _filled(CliModel(size=12), base_seed=0)


def build_rank_4() -> CliModel:
    """Same base weights (the base generator draws only base tensors), LoRA rank 4."""
    return _filled(CliModel(rank=4), base_seed=0)


def build_on_meta() -> CliModel:
    """No weights at all: the check compares structure only."""
    with torch.device("meta"):
        return CliModel()


def build_nothing() -> str:
    return "not a model"


def build_broken() -> CliModel:
    raise RuntimeError("the base checkpoint is not downloaded")


def make_store(root: Path) -> Path:
    """A store with 'tiny' v1 (with optimizer state) and v2 (layers.0.lora_A + 0.5),
    'wide' v1 (rank 4) and 'headless' v1 (no head): the CLI tests' fixture."""
    store = AdapterStore(root, durable=False)
    model = build_model()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=0.1)
    sum(p.pow(2).sum() for p in trainable).backward()  # type: ignore[union-attr]
    optimizer.step()
    store.save(model, "tiny", optimizer=optimizer, step=1, metadata={"run": "cli-test"})
    with torch.no_grad():
        model.layers[0].lora_A.add_(0.5)
    store.save(model, "tiny", step=2)
    store.save(build_rank_4(), "wide")
    store.save(build_model(), "headless", exclude=["head.*"])
    return root
