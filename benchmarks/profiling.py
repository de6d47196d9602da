"""``python -m benchmarks.profiling W1 save``: where one adapter-store call spends its time.

Runs the public API (``AdapterStore.save`` / ``load``) on a benchmark workload under
cProfile and prints the functions with the most own time, after printing the plain
(unprofiled) median, so a missed target can be traced to a function. Operations:
``save``, ``save-fast`` (durable off), ``incremental`` (one layer group changed),
``load``, ``load-fast`` (verify off), ``partial`` (one layer group).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from adapter_store import AdapterStore

from .workloads import FULL, build_w1, build_w2, build_w3, build_w4, touch_layer

BUILDERS = {"W1": build_w1, "W2": build_w2, "W3": build_w3, "W4": build_w4}
OPERATIONS = ("save", "save-fast", "incremental", "load", "load-fast", "partial")


def _operation(
    workload: str, op: str, scratch: Path
) -> tuple[Callable[[int], object], Callable[[int], object]]:
    """The call to time, and what to do after it (untimed)."""
    built = BUILDERS[workload](FULL)
    model = built.model
    if op in ("save", "save-fast"):
        durable = op == "save"

        def save(i: int) -> None:
            AdapterStore(scratch / f"save-{i}", durable=durable).save(model, "bench")

        return save, lambda i: shutil.rmtree(scratch / f"save-{i}")
    store = AdapterStore(scratch / "store")
    store.save(model, "bench")
    if op == "incremental":
        if workload not in ("W1", "W3"):
            raise SystemExit("incremental needs the layered LoRA of W1 or W3")

        def incremental(i: int) -> None:
            store.save(model, "bench")

        return incremental, lambda i: touch_layer(built, i % FULL.layers)
    verify = op != "load-fast"
    groups = store.manifest("bench").groups

    def load(i: int) -> None:
        modules = [groups[i % len(groups)]] if op == "partial" else None
        store.load(model, "bench", verify=verify, modules=modules)

    return load, lambda i: None


def profile(workload: str, op: str, *, calls: int, rows: int, sort: str) -> str:
    scratch = Path(tempfile.mkdtemp(prefix="adapter-store-profile-"))
    try:
        call, after = _operation(workload, op, scratch)
        call(-1)  # warm-up
        after(-1)
        plain = []
        for i in range(calls):
            start = time.perf_counter()
            call(i)
            plain.append(time.perf_counter() - start)
            after(i)
        profiler = cProfile.Profile()
        for i in range(calls, 2 * calls):
            profiler.runcall(call, i)
            after(i)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats(sort).print_stats(rows)
    header = (
        f"{workload} {op}: median {statistics.median(plain) * 1000:.2f} ms, min "
        f"{min(plain) * 1000:.2f} ms over {calls} calls (unprofiled); profile of {calls} calls:"
    )
    return header + "\n" + out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling", description=__doc__)
    parser.add_argument("workload", choices=sorted(BUILDERS))
    parser.add_argument("op", choices=OPERATIONS)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--sort", default="tottime", choices=("tottime", "cumulative"))
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    print(profile(args.workload, args.op, calls=args.calls, rows=args.rows, sort=args.sort))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
