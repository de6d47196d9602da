"""``python -m benchmarks``: the command line. Parsed before torch is imported, so a
usage error or ``--help`` answers at once."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

SUITES = ("w1", "w2", "w3", "memory", "w4", "fingerprint", "scale")
MIN_REPS = 5
DESCRIPTION = (
    "Time adapter-store against safetensors, torch.save and PEFT on the same tensors "
    "(workloads W1-W4), check the targets of issue 4, print Markdown tables and write JSON."
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=DESCRIPTION)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (for the test suite)")
    parser.add_argument(
        "--json",
        type=Path,
        help="where to write the results (default: benchmarks/results.json, or results-smoke.json)",
    )
    parser.add_argument(
        "--reps",
        type=int,
        help=f"timed repetitions (default 9; smoke 2; at least {MIN_REPS} unless --smoke)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument(
        "--only", default=",".join(SUITES), help=f"comma-separated suites among {','.join(SUITES)}"
    )
    parser.add_argument("--scratch", type=Path, help="where to write (default: a temp dir)")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads for every contender (default 1: with 2 threads, a busy "
        "neighbour on a 2-core machine stalls copy_ at its barriers for up to seconds)",
    )
    args = parser.parse_args(argv)
    args.reps = args.reps or (2 if args.smoke else 9)
    if args.reps < MIN_REPS and not args.smoke:
        parser.error(f"--reps must be at least {MIN_REPS} (medians of fewer mean little)")
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SUITES)
    if unknown:
        parser.error(f"unknown suites {sorted(unknown)}; choose among {list(SUITES)}")
    default = "results-smoke.json" if args.smoke else "results.json"
    args.json = args.json or Path(__file__).resolve().parent / default
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from .run import main as run_main

    return run_main(args)
