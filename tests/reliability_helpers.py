"""Shared helpers for the reliability tests: a small model whose adapter content is a
pure function of a seed, store checks, and a "zygote" process that forks savers.

Importing torch costs ~1.5 s per process, and the crash and concurrency tests need many
short-lived writer processes (one per SIGKILL). The zygote imports torch once, then forks
a fresh writer per command; forking takes milliseconds. Run as a script it serves
line-delimited JSON commands on stdin::

    {"op": "fork", "job": {...}}  -> {"pid": 1234}        (see ``run_job`` for the job)
    {"op": "wait", "pid": 1234}   -> {"signal": 9, "exit": null}
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapter_store import AdapterStore
from adapter_store.validation import validate_version

NAME = "crashy"


class LoRALayer(nn.Module):
    def __init__(self, size: int, rank: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(size, size), requires_grad=False)
        self.lora_A = nn.Parameter(torch.zeros(rank, size))
        self.lora_B = nn.Parameter(torch.zeros(size, rank))


class ReliabilityModel(nn.Module):
    """A frozen base (``embed``, ``layers.*.weight``) with LoRA per layer and a head."""

    def __init__(self, size: int = 16, layers: int = 3, rank: int = 2) -> None:
        super().__init__()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(0)  # the same frozen base in every process
        self.embed = nn.Parameter(torch.randn(8, size), requires_grad=False)
        self.layers = nn.ModuleList(LoRALayer(size, rank) for _ in range(layers))
        self.head = nn.Linear(size, 3)
        torch.random.set_rng_state(generator_state)


def tensor_seed(name: str, seed: int) -> int:
    """Per-tensor seed: ``layers.0`` changes every save, ``layers.1`` every other save,
    the rest never, so incremental saves hard-link some shards and rewrite others."""
    if name.startswith("layers.0."):
        step = seed
    elif name.startswith("layers.1."):
        step = seed // 2
    else:
        step = 0
    return zlib.crc32(name.encode()) * 1_000_003 + step


def fill_trainable(model: nn.Module, seed: int) -> nn.Module:
    """Set every trainable tensor to values that depend only on (name, seed)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                generator = torch.Generator().manual_seed(tensor_seed(name, seed))
                param.copy_(torch.randn(param.shape, generator=generator))
    return model


def build_model(seed: int, **sizes: int) -> ReliabilityModel:
    return fill_trainable(ReliabilityModel(**sizes), seed)  # type: ignore[return-value]


def state_bytes(model: nn.Module) -> dict[str, bytes]:
    """Every state-dict tensor as raw bytes (NaN-proof, bit-exact comparison)."""
    return {
        k: v.detach().contiguous().view(torch.uint8).numpy().tobytes()
        for k, v in model.state_dict().items()
    }


def trainable_bytes(model: nn.Module) -> dict[str, bytes]:
    return {
        k: v.detach().contiguous().view(torch.uint8).numpy().tobytes()
        for k, v in model.named_parameters()
        if v.requires_grad
    }


def check_version(store: AdapterStore, name: str, version: int, **sizes: int) -> int:
    """A committed version validates and loads bit-exactly as the save of its seed."""
    path = store.path(name, version)
    _, problems = validate_version(path)
    assert problems == [], f"{path}: {[str(p) for p in problems]}"
    seed = store.manifest(name, version).metadata["seed"]
    assert isinstance(seed, int)
    target = build_model(-1, **sizes)
    store.load(target, name, version=version)
    assert trainable_bytes(target) == trainable_bytes(build_model(seed, **sizes)), (
        f"{path}: loaded tensors are not those of seed {seed} (a mix of versions?)"
    )
    return seed


class Hang(BaseException):
    """Raised by :func:`no_hang`; a BaseException, so no ``except OSError`` can hide it."""


@contextlib.contextmanager
def no_hang(seconds: float) -> Iterator[None]:
    """Turn a hang (e.g. a blocking open of a FIFO) into :class:`Hang`, not a stuck run."""

    def fail(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def leftovers(name_dir: Path) -> list[str]:
    """Temporary and being-deleted directories in a name directory."""
    if not name_dir.is_dir():
        return []
    return sorted(
        e.name
        for e in os.scandir(name_dir)
        if e.is_dir() and e.name.startswith((".tmp-", ".deleting-"))
    )


# --- the zygote: fork writers from a process that has imported torch once --------------

#: Calls that change the file system (or open files to): a deterministic kill point
#: before each. ``open`` covers the manifest, ``os.open`` shards, locks and fsyncs.
HOOKED_OS_CALLS = (
    "open",
    "writev",
    "write",
    "fsync",
    "rename",
    "replace",
    "link",
    "mkdir",
    "unlink",
    "rmdir",
)


def _install_kill_points(kill_at: int, counter: list[int]) -> None:
    """SIGKILL this process right before the ``kill_at``-th file-system call."""

    def hook(original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            counter[0] += 1
            if counter[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)

        return call

    for attribute in HOOKED_OS_CALLS:
        setattr(os, attribute, hook(getattr(os, attribute)))
    builtins.open = hook(builtins.open)


def run_job(job: dict[str, Any]) -> None:
    """In a forked writer: save ``count`` times (forever when None), then exit.

    Job keys: ``root``, ``name``, ``count``, ``keep_last``, ``seed_base`` (None: the seed
    is the version the save will get, for a single writer), ``results`` (a file; one JSON
    line per committed save), ``go`` (wait for this file before starting), ``kill_at``
    (deterministic SIGKILL before that file-system call), ``sizes`` (model sizes),
    ``durable`` (default True).
    """
    write, fsync = os.write, os.fsync
    results = os.open(job["results"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    store = AdapterStore(job["root"])
    name = job["name"]
    model = ReliabilityModel(**job.get("sizes", {}))
    if job.get("go"):
        while not os.path.exists(job["go"]):
            time.sleep(0.001)
    counter = [0]
    if job.get("kill_at") is not None:
        _install_kill_points(job["kill_at"], counter)
    done = 0
    while job["count"] is None or done < job["count"]:
        known = store.versions(name)
        seed = (
            (known[-1] if known else 0) + 1
            if job["seed_base"] is None
            else (job["seed_base"] + done)
        )
        fill_trainable(model, seed)
        saved = store.save(
            model,
            name,
            metadata={"seed": seed},
            keep_last=job["keep_last"],
            durable=job.get("durable", True),
        )
        line = json.dumps({"version": saved.version, "seed": seed, "steps": counter[0]})
        write(results, (line + "\n").encode())
        fsync(results)
        done += 1


def _serve() -> None:
    torch.set_num_threads(1)  # no thread pool exists at fork time
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "fork":
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    run_job(command["job"])
                except BaseException:  # report, and never return into the serve loop
                    import traceback

                    traceback.print_exc()
                    code = 1
                finally:
                    os._exit(code)
            reply: dict[str, Any] = {"pid": pid}
        elif command["op"] == "wait":
            _, status = os.waitpid(command["pid"], 0)
            reply = {
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            }
        else:
            reply = {"error": f"unknown op {command['op']!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


class Zygote:
    """Client side: ``fork(job) -> pid``, ``kill(pid)``, ``wait(pid) -> status``."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(__file__),
        )

    def _ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"zygote exited with {self._process.wait()}")
        return json.loads(line)

    def fork(self, job: dict[str, Any]) -> int:
        return int(self._ask({"op": "fork", "job": job})["pid"])

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

    def wait(self, pid: int) -> dict[str, Any]:
        return self._ask({"op": "wait", "pid": pid})

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@contextlib.contextmanager
def zygote() -> Iterator[Zygote]:
    server = Zygote()
    try:
        yield server
    finally:
        server.close()


def read_results(path: Path) -> list[dict[str, Any]]:
    """The complete lines a writer has reported (a line still being written is not)."""
    if not path.exists():
        return []
    *complete, _ = path.read_text().split("\n")
    return [json.loads(line) for line in complete if line.strip()]


if __name__ == "__main__":
    _serve()
