"""Timing: every contender of one workload and operation, median of N, in two orders.

``interleaved``: each round runs every case once, in an order rotated by one per round,
so drift on a shared machine (page cache, writeback, frequency) spreads over all
contenders alike. ``back-to-back``: each case runs all its repetitions in a row, which is
kinder to contenders that allocate fresh memory per call (their freed pages are reused
at once instead of going back to the host through the VM balloon). The first ``warmup``
calls of each case are not recorded. A case that saves gets a fresh, empty
directory every time (made and removed outside the timed region, then ``os.sync()``, so
no call pays for the cleanup of the one before). The cyclic garbage
collector is kept off during the timed call, so no contender pays for another's garbage
(a full ``gc.collect()`` per call would cost more than many of the calls it times).
"""

from __future__ import annotations

import gc
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Case:
    """One contender's timed call; ``before``/``after`` run untimed around it."""

    contender: str
    run: Callable[[Path], object]
    fresh_dir: bool = False
    before: Callable[[], object] | None = None
    after: Callable[[], object] | None = None


INTERLEAVED = "interleaved"
BACK_TO_BACK = "back-to-back"
ORDERS = (INTERLEAVED, BACK_TO_BACK)


@dataclass(frozen=True)
class Timing:
    workload: str
    op: str
    contender: str
    samples: tuple[float, ...]  # seconds, in the order they were taken
    order: str = INTERLEAVED

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "op": self.op,
            "contender": self.contender,
            "order": self.order,
            "median_s": self.median,
            "min_s": min(self.samples),
            "max_s": max(self.samples),
            "samples_s": list(self.samples),
        }


def _timed(case: Case, scratch: Path) -> float:
    directory = Path(tempfile.mkdtemp(dir=scratch)) if case.fresh_dir else scratch
    try:
        if case.before is not None:
            case.before()
        gc.disable()
        try:
            start = time.perf_counter()
            case.run(directory)
            elapsed = time.perf_counter() - start
        finally:
            gc.enable()
        if case.after is not None:
            case.after()
    finally:
        if case.fresh_dir:
            shutil.rmtree(directory)
            # Commit the removal now, untimed: otherwise the next contender that fsyncs
            # pays for it (the journal commit, and on a disk mounted with ``discard``
            # the discards of every freed block), and a writer pays for the writeback of
            # data another left dirty.
            os.sync()
    return elapsed


def _schedule(cases: Sequence[Case], rounds: int, order: str) -> list[tuple[int, Case]]:
    if order == BACK_TO_BACK:
        return [(number, case) for case in cases for number in range(rounds)]
    schedule = []
    for number in range(rounds):
        shift = number % len(cases)
        schedule += [(number, case) for case in [*cases[shift:], *cases[:shift]]]
    return schedule


def measure(
    workload: str,
    op: str,
    cases: Sequence[Case],
    *,
    reps: int,
    warmup: int,
    scratch: Path,
    order: str = INTERLEAVED,
) -> list[Timing]:
    """Samples of every case: ``warmup`` unrecorded calls each, then ``reps`` recorded."""
    if reps < 1 or warmup < 0 or order not in ORDERS:
        raise ValueError(
            f"need reps >= 1, warmup >= 0 and an order in {ORDERS}, got {reps}, {warmup}, {order!r}"
        )
    samples: dict[str, list[float]] = {case.contender: [] for case in cases}
    for number, case in _schedule(cases, warmup + reps, order):
        elapsed = _timed(case, scratch)
        if number >= warmup:
            samples[case.contender].append(elapsed)
    return [Timing(workload, op, name, tuple(values), order) for name, values in samples.items()]
