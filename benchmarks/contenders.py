"""The contenders: every way a user could save and load the same trainable tensors.

adapter-store with its defaults (atomic, durable, verified) and with durability and
verification off; ``safetensors.torch.save_file`` (with and without ``os.fsync``) and
``load_file`` + ``load_state_dict(strict=False)``; ``torch.save`` / ``torch.load
(weights_only=True)`` + ``load_state_dict``; PEFT's ``save_pretrained`` / ``load_adapter``
(W4); and the floor: the same bytes written with one ``os.write``, or copied by memcpy.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from adapter_store import AdapterStore
from adapter_store.file_writing import preallocate
from adapter_store.writing import fsync_path

from .timing import Case
from .workloads import Workload, layer_group, touch_layer

ADAPTER = "bench"
STORE = "adapter-store"
STORE_FAST = "adapter-store, durable/verify off"
SAVE_FILE = "save_file"
SAVE_FILE_FSYNC = "save_file + fsync"
LOAD_FILE = "load_file + load_state_dict"
TORCH_SAVE = "torch.save"
TORCH_LOAD = "torch.load + load_state_dict"
PEFT_SAVE = "PEFT save_pretrained"
PEFT_LOAD = "PEFT load_adapter"
PEFT_LOAD_NEW = "PEFT load_adapter, new adapter name"
FLOOR_WRITE = "floor: one os.write"
FLOOR_WRITE_FSYNC = "floor: one os.write + fsync"
FLOOR_WRITE_SHARDS = "floor: one os.write per shard file"
FLOOR_MEMCPY = "floor: memcpy"
INCREMENTAL = "adapter-store, 1 group changed"
INCREMENTAL_FAST = "adapter-store, 1 group changed, durable off"
PARTIAL = "adapter-store, modules=[1 group]"
PARTIAL_FAST = "adapter-store, modules=[1 group], verify off"


@dataclass(frozen=True)
class Artifacts:
    """One saved copy of a workload per format, for the load contenders."""

    store_root: Path
    safetensors_file: Path
    torch_file: Path
    peft_dir: Path | None


def flat_bytes(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """All tensors' bytes back to back in one buffer (what the floor writes / copies)."""
    return torch.cat([t.contiguous().reshape(-1).view(torch.uint8) for t in state.values()])


def _write_all(path: Path, blob: torch.Tensor, *, durable: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(blob.numpy()).cast("B")  # type: ignore[arg-type]
        # Preallocated like adapter-store's own files: the floor is the fastest write here.
        preallocate(fd, view.nbytes)
        while view.nbytes:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def _save_file_fsync(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file(state, path)
    fsync_path(path)


def shard_sizes(model: nn.Module) -> list[int]:
    """Bytes of each shard file adapter-store writes for ``model`` (one throwaway save)."""
    with tempfile.TemporaryDirectory() as scratch:
        saved = AdapterStore(scratch, durable=False).save(model, ADAPTER)
        return [shard.nbytes for shard in saved.manifest.shards]


def _write_shards_floor(blob: torch.Tensor, sizes: list[int], directory: Path) -> None:
    """The same number of bytes as adapter-store's shards, one file and one write each."""
    start = 0
    for number, size in enumerate(sizes):
        _write_all(directory / f"{number}.bin", blob[start : start + size], durable=False)
        start += size


def _store_save(model: nn.Module, directory: Path, *, durable: bool) -> None:
    AdapterStore(directory, durable=durable).save(model, ADAPTER)


def save_cases(workload: Workload, *, peft: bool = False) -> list[Case]:
    """Every save contender; each writes into the fresh directory it is given."""
    model, state, blob = workload.model, workload.state, flat_bytes(workload.state)
    sizes = shard_sizes(model)
    # The shard files also hold their headers: pad the bytes to their total size.
    padded = torch.cat([blob, torch.zeros(max(0, sum(sizes) - blob.numel()), dtype=torch.uint8)])
    peft_model: Any = model
    cases = [
        Case(STORE, partial(_store_save, model, durable=True), fresh_dir=True),
        Case(STORE_FAST, partial(_store_save, model, durable=False), fresh_dir=True),
        Case(SAVE_FILE, lambda d: save_file(state, d / "a.safetensors"), fresh_dir=True),
        Case(SAVE_FILE_FSYNC, lambda d: _save_file_fsync(state, d / "a.safetensors"), True),
        Case(TORCH_SAVE, lambda d: torch.save(state, d / "a.pt"), fresh_dir=True),
        Case(FLOOR_WRITE, lambda d: _write_all(d / "a.bin", blob, durable=False), True),
        Case(FLOOR_WRITE_FSYNC, lambda d: _write_all(d / "a.bin", blob, durable=True), True),
        Case(FLOOR_WRITE_SHARDS, partial(_write_shards_floor, padded, sizes), fresh_dir=True),
    ]
    if peft:
        cases.append(Case(PEFT_SAVE, lambda d: peft_model.save_pretrained(str(d)), True))
    return cases


def prepare_artifacts(workload: Workload, directory: Path, *, peft: bool = False) -> Artifacts:
    """Save the workload once in every format the load contenders read."""
    directory.mkdir(parents=True, exist_ok=True)
    artifacts = Artifacts(
        directory / "store",
        directory / "a.safetensors",
        directory / "a.pt",
        directory / "peft" if peft else None,
    )
    AdapterStore(artifacts.store_root).save(workload.model, ADAPTER)
    save_file(workload.state, artifacts.safetensors_file)
    torch.save(workload.state, artifacts.torch_file)
    if artifacts.peft_dir is not None:
        peft_model: Any = workload.model
        peft_model.save_pretrained(str(artifacts.peft_dir))
    return artifacts


def load_store(model: nn.Module, artifacts: Artifacts) -> None:
    AdapterStore(artifacts.store_root).load(model, ADAPTER)


def load_store_fast(model: nn.Module, artifacts: Artifacts) -> None:
    AdapterStore(artifacts.store_root).load(model, ADAPTER, verify=False)


def load_safetensors(model: nn.Module, artifacts: Artifacts) -> None:
    model.load_state_dict(load_file(artifacts.safetensors_file), strict=False)


def load_torch(model: nn.Module, artifacts: Artifacts) -> None:
    model.load_state_dict(torch.load(artifacts.torch_file, weights_only=True), strict=False)


#: The loaders the memory probe runs, each in a process of its own.
LOADERS: dict[str, Callable[[nn.Module, Artifacts], None]] = {
    STORE: load_store,
    STORE_FAST: load_store_fast,
    LOAD_FILE: load_safetensors,
    TORCH_LOAD: load_torch,
}


def _memcpy(source: torch.Tensor, target: torch.Tensor, _directory: Path) -> None:
    ctypes.memmove(target.data_ptr(), source.data_ptr(), source.numel())


def _call_loader(
    loader: Callable[[nn.Module, Artifacts], None],
    model: nn.Module,
    artifacts: Artifacts,
    _directory: Path,
) -> None:
    loader(model, artifacts)


def load_cases(workload: Workload, artifacts: Artifacts) -> list[Case]:
    """Every load contender, each reading what ``prepare_artifacts`` wrote."""
    model = workload.model
    cases = [
        Case(name, partial(_call_loader, loader, model, artifacts))
        for name, loader in LOADERS.items()
    ]
    source = flat_bytes(workload.state)
    target = torch.empty_like(source).fill_(1)  # resident before the first copy
    cases.append(Case(FLOOR_MEMCPY, partial(_memcpy, source, target)))
    if artifacts.peft_dir is not None:
        peft_model: Any = model
        peft_dir = str(artifacts.peft_dir)
        # Into the existing adapter: the same work as the other loaders (copy weights).
        cases.append(Case(PEFT_LOAD, lambda _d: peft_model.load_adapter(peft_dir, "default")))
        # As a server adding an adapter would: PEFT builds the LoRA modules, then loads.
        cases.append(
            Case(
                PEFT_LOAD_NEW,
                lambda _d: peft_model.load_adapter(peft_dir, "other"),
                after=lambda: peft_model.delete_adapter("other"),
            )
        )
    return cases


def _incremental_save(store: AdapterStore, model: nn.Module, _directory: Path) -> None:
    store.save(model, ADAPTER)


def incremental_cases(workload: Workload, directory: Path, layers: int) -> list[Case]:
    """Saves after one layer group changed, into stores that hold the previous version."""
    turn = itertools.count()

    def sync_then_touch(store: AdapterStore) -> None:
        # Untimed: bring this store's newest version up to the model (the other case's
        # timed save may have seen a change since), then change exactly one layer group.
        store.save(workload.model, ADAPTER)
        touch_layer(workload, next(turn) % layers)

    cases = []
    for name, durable in ((INCREMENTAL, True), (INCREMENTAL_FAST, False)):
        store = AdapterStore(directory / f"incremental-{int(durable)}", durable=durable)
        cases.append(
            Case(
                name,
                partial(_incremental_save, store, workload.model),
                before=partial(sync_then_touch, store),
            )
        )
    return cases


def check_incremental(workload: Workload, directory: Path, layers: int) -> dict[str, int]:
    """How many shards one incremental save actually reused (a sanity check, untimed)."""
    store = AdapterStore(directory / "incremental-check", durable=False)
    store.save(workload.model, ADAPTER)
    touch_layer(workload, 0)
    saved = store.save(workload.model, ADAPTER)
    return {
        "shards": len(saved.manifest.shards),
        "reused": len(saved.reused_shards),
        "layers": layers,
    }


def partial_cases(workload: Workload, artifacts: Artifacts, layers: int) -> list[Case]:
    """Loads of one layer group (a different one each call)."""
    model, turn = workload.model, itertools.count()

    def load_one(verify: bool) -> None:
        modules = [layer_group(next(turn) % layers)]
        AdapterStore(artifacts.store_root).load(model, ADAPTER, modules=modules, verify=verify)

    return [
        Case(PARTIAL, lambda _d: load_one(True)),
        Case(PARTIAL_FAST, lambda _d: load_one(False)),
    ]
