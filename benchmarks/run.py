"""Running the suites: build each workload, time its contenders, print, write the JSON.

Suites run in one process, one after another; each keeps its files in its own scratch
directory and removes it when done. Only the memory probe starts other processes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch

from adapter_store import AdapterStore
from adapter_store.fingerprint import fingerprint_base

from . import contenders as c
from .memory import measure_memory
from .report import machine, render, to_json, write_json
from .results import Results
from .targets import (
    FINGERPRINT,
    FINGERPRINT_FULL,
    FINGERPRINT_OP,
    FINGERPRINT_SAMPLE,
    ONE_VERSION,
    SCALE,
    SCALE_LOAD,
    SCALE_VERSIONS,
    evaluate,
    many_versions,
)
from .timing import INTERLEAVED, ORDERS, Case, measure
from .workloads import (
    FULL,
    SMOKE,
    Sizes,
    build_scale_model,
    build_w1,
    build_w2,
    build_w3,
    build_w4,
    fingerprint_input,
    real_bytes,
)


class Run:
    """The settings and the growing results of one benchmark run."""

    def __init__(
        self, sizes: Sizes, *, reps: int, warmup: int, scratch: Path, smoke: bool = False
    ) -> None:
        self.sizes, self.reps, self.warmup, self.scratch = sizes, reps, warmup, scratch
        self.smoke = smoke
        self.results = Results()

    def measure(
        self, workload: str, op: str, cases: Sequence[Case], *, orders: Sequence[str] = ORDERS
    ) -> None:
        for order in orders:
            started = time.perf_counter()
            self.results.timings += measure(
                workload,
                op,
                cases,
                reps=self.reps,
                warmup=self.warmup,
                scratch=self.scratch,
                order=order,
            )
            print(
                f"  {workload} {op} ({order}): {len(cases)} contenders, "
                f"{time.perf_counter() - started:.1f} s",
                file=sys.stderr,
            )

    def directory(self, name: str) -> Path:
        path = self.scratch / name
        path.mkdir()
        return path


def suite_w1(run: Run) -> None:
    workload = build_w1(run.sizes)
    run.results.workloads["W1"] = workload.summary()
    layers, directory = run.sizes.layers, run.directory("w1")
    run.measure(
        "W1", "save", c.save_cases(workload) + c.incremental_cases(workload, directory, layers)
    )
    run.results.checks["incremental"] = c.check_incremental(workload, directory, layers)
    artifacts = c.prepare_artifacts(workload, directory / "artifacts")
    run.measure(
        "W1",
        "load",
        c.load_cases(workload, artifacts) + c.partial_cases(workload, artifacts, layers),
    )


def suite_simple(
    build: Callable[[Sizes], c.Workload], name: str, *, peft: bool = False
) -> Callable[[Run], c.Artifacts]:
    def suite(run: Run) -> c.Artifacts:
        workload = build(run.sizes)
        run.results.workloads[name] = workload.summary()
        run.measure(name, "save", c.save_cases(workload, peft=peft))
        artifacts = c.prepare_artifacts(workload, run.directory(name.lower()), peft=peft)
        run.measure(name, "load", c.load_cases(workload, artifacts))
        return artifacts

    return suite


def suite_memory(run: Run, artifacts: c.Artifacts) -> None:
    started = time.perf_counter()
    # A smoke run probes only the two loaders the target compares: each probe is a new
    # interpreter that imports torch, seconds the test suite cannot spare.
    loaders = [c.STORE, c.LOAD_FILE] if run.smoke else list(c.LOADERS)
    run.results.memory += measure_memory(loaders, artifacts, run.sizes, reps=run.reps)
    print(f"  W3 memory: {time.perf_counter() - started:.1f} s", file=sys.stderr)


def suite_fingerprint(run: Run) -> None:
    frozen = fingerprint_input(run.sizes)
    run.results.checks["fingerprint"] = {"tensors": len(frozen), "real_bytes": real_bytes(frozen)}
    run.measure(
        FINGERPRINT,
        FINGERPRINT_OP,
        [
            Case(FINGERPRINT_SAMPLE, lambda _d: fingerprint_base(frozen)),
            Case(FINGERPRINT_FULL, lambda _d: fingerprint_base(frozen, mode="full")),
        ],
        orders=[INTERLEAVED],
    )


def suite_scale(run: Run) -> None:
    model, count = build_scale_model(run.sizes), run.sizes.scale_versions
    one = AdapterStore(run.directory("scale-one"), durable=False)
    many = AdapterStore(run.directory("scale-many"), durable=False)
    one.save(model, c.ADAPTER)
    for _ in range(count):
        many.save(model, c.ADAPTER)
    run.results.checks["scale"] = {"versions": len(many.versions(c.ADAPTER))}
    labels = (ONE_VERSION, many_versions(count))

    def load(store: AdapterStore, _directory: Path) -> None:
        store.load(model, c.ADAPTER)

    def versions(store: AdapterStore, _directory: Path) -> None:
        store.versions(c.ADAPTER)

    for op, call in ((SCALE_LOAD, load), (SCALE_VERSIONS, versions)):
        cases = [
            Case(label, partial(call, store))
            for label, store in zip(labels, (one, many), strict=True)
        ]
        run.measure(SCALE, op, cases, orders=[INTERLEAVED])


def run_suites(run: Run, chosen: Sequence[str]) -> None:
    if "w1" in chosen:
        suite_w1(run)
    if "w2" in chosen:
        suite_simple(build_w2, "W2")(run)
    if "w3" in chosen or "memory" in chosen:
        artifacts = suite_simple(build_w3, "W3")(run)
        if "memory" in chosen:
            suite_memory(run, artifacts)
    if "w4" in chosen:
        suite_simple(build_w4, "W4", peft=True)(run)
    if "fingerprint" in chosen:
        suite_fingerprint(run)
    if "scale" in chosen:
        suite_scale(run)


def main(args: argparse.Namespace) -> int:
    """Run the suites ``args`` chose (see ``benchmarks.cli``), print, write the JSON."""
    sizes = SMOKE if args.smoke else FULL
    torch.set_num_threads(args.torch_threads)
    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="adapter-store-bench-", dir=args.scratch))
    run = Run(sizes, reps=args.reps, warmup=args.warmup, scratch=scratch, smoke=args.smoke)
    started = time.perf_counter()
    try:
        run_suites(run, args.only)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    config: dict[str, Any] = {
        "smoke": args.smoke,
        "reps": args.reps,
        "warmup": args.warmup,
        "suites": args.only,
        "sizes": asdict(sizes),
        "torch_threads": args.torch_threads,
        "seconds": round(time.perf_counter() - started, 1),
        # Other processes share this machine: the 1-minute load average before and after.
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    outcomes = evaluate(run.results, sizes.scale_versions)
    print(render(run.results, outcomes, config))
    write_json(args.json, to_json(run.results, outcomes, config, machine()))
    print(f"results written to {args.json}", file=sys.stderr)
    return 0
