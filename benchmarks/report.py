"""Reporting: Markdown tables of medians and ratios, and the JSON record of a run."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .contenders import LOAD_FILE, PEFT_LOAD, PEFT_SAVE, SAVE_FILE, SAVE_FILE_FSYNC
from .results import Results
from .targets import Outcome
from .timing import Timing

SCHEMA = "adapter-store-benchmark/1"
#: Per operation, the contenders every row is divided by (when they ran).
REFERENCES = {"save": (SAVE_FILE, SAVE_FILE_FSYNC, PEFT_SAVE), "load": (LOAD_FILE, PEFT_LOAD)}
_MB = 1e6


def machine() -> dict[str, Any]:
    import os

    import safetensors
    import torch

    import adapter_store

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "safetensors": safetensors.__version__,
        "adapter_store": adapter_store.__version__,
    }
    for optional in ("peft", "transformers"):
        try:  # the installed version, without importing the package (peft takes seconds)
            info[optional] = importlib.metadata.version(optional)
        except importlib.metadata.PackageNotFoundError:
            info[optional] = None
    return info


def _ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def timing_table(timings: Sequence[Timing]) -> list[str]:
    present = {t.contender: t.median for t in timings}
    references = [r for r in REFERENCES.get(timings[0].op, ()) if r in present]
    header = ["contender", "median ms", "min-max ms", *(f"x {r}" for r in references)]
    rows = []
    for timing in timings:
        ratios = [f"{timing.median / present[r]:.2f}" for r in references]
        rows.append(
            [
                timing.contender,
                _ms(timing.median),
                f"{_ms(min(timing.samples))}-{_ms(max(timing.samples))}",
                *ratios,
            ]
        )
    return _table(header, rows)


def memory_table(results: Results) -> list[str]:
    reference = results.memory_median(LOAD_FILE)
    rows = []
    for result in results.memory:
        ratio = f"{result.median / reference:.2f}" if reference else "-"
        rows.append(
            [
                result.contender,
                f"{result.median / _MB:.1f}",
                f"{min(result.samples_bytes) / _MB:.1f}-{max(result.samples_bytes) / _MB:.1f}",
                ratio,
            ]
        )
    return _table(["contender", "median MB", "min-max MB", f"x {LOAD_FILE}"], rows)


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"  # not run (--only, or only interleaved), or a zero reference (smoke)
    return f"{value:.3f} s" if unit == "s" else f"{value:.2f} {unit}"


def target_table(outcomes: Sequence[Outcome]) -> list[str]:
    verdicts = {True: "yes", False: "**NO**", None: "-"}
    rows = []
    for outcome in outcomes:
        rows.append(
            [
                outcome.target.id,
                outcome.target.text,
                _value(outcome.value, outcome.target.unit),
                _spread(outcome.quartiles),
                f"<= {outcome.target.bound:g} {outcome.target.unit}",
                verdicts[outcome.met],
                _value(outcome.back_to_back, outcome.target.unit),
                verdicts[outcome.met_back_to_back],
            ]
        )
    return _table(
        ["target", "what", "measured", "per round", "bound", "met", "back-to-back", "met b2b"],
        rows,
    )


def _spread(quartiles: tuple[float, float] | None) -> str:
    """The middle half of the per-round ratios: a bound inside it is within the noise."""
    return "-" if quartiles is None else f"{quartiles[0]:.2f}-{quartiles[1]:.2f}"


def render(results: Results, outcomes: Sequence[Outcome], config: dict[str, Any]) -> str:
    """The whole report as Markdown: workloads, one table per operation, memory, targets."""
    lines = [
        f"Median of {config['reps']} repetitions after {config['warmup']} warm-up "
        f"call(s) per contender; ratios are of medians in this run. Verdicts use the "
        f"interleaved order; 'per round' is the middle half (quartiles) of the ratios "
        f"within each interleaved round, so a bound inside it is within the noise. "
        f"torch threads: {config['torch_threads']}; 1-minute load "
        f"average before/after: {config['load_average'][0]}/{config['load_average'][1]}."
        + (" SMOKE SIZES: these numbers mean nothing." if config["smoke"] else ""),
        "",
    ]
    lines += _table(
        ["workload", "tensors", "MB", "what"],
        [
            [name, str(w["tensors"]), f"{w['nbytes'] / _MB:.1f}", w["description"]]
            for name, w in results.workloads.items()
        ],
    )
    for workload, op, order in results.ops():
        lines += ["", f"**{workload} {op}** ({order})", ""]
        lines += timing_table(results.for_op(workload, op, order))
    if results.memory:
        lines += ["", "**W3 load: peak RSS growth (one process per contender)**", ""]
        lines += memory_table(results)
    lines += ["", "**Targets**", ""]
    lines += target_table(outcomes)
    return "\n".join(lines) + "\n"


def to_json(
    results: Results, outcomes: Sequence[Outcome], config: dict[str, Any], info: dict[str, Any]
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "config": config,
        "machine": info,
        "workloads": results.workloads,
        "timings": [t.to_json() for t in results.timings],
        "memory": [m.to_json() for m in results.memory],
        "checks": results.checks,
        "targets": [o.to_json() for o in outcomes],
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
