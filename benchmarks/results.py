"""Everything one run measured, looked up by (workload, operation, contender)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .memory import MemoryResult
from .timing import INTERLEAVED, Timing


@dataclass
class Results:
    timings: list[Timing] = field(default_factory=list)
    memory: list[MemoryResult] = field(default_factory=list)
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)

    def timing(
        self, workload: str, op: str, contender: str, order: str = INTERLEAVED
    ) -> Timing | None:
        for t in self.timings:
            if (t.workload, t.op, t.contender, t.order) == (workload, op, contender, order):
                return t
        return None

    def median(
        self, workload: str, op: str, contender: str, order: str = INTERLEAVED
    ) -> float | None:
        timing = self.timing(workload, op, contender, order)
        return None if timing is None else timing.median

    def round_ratios(
        self, workload: str, op: str, contender: str, reference: str
    ) -> list[float] | None:
        """``contender / reference`` within each interleaved round: the k-th recorded
        sample of every case comes from round k, so slow drift of the machine cancels and
        the spread shows how firmly a ratio of medians sits on one side of a bound."""
        ours = self.timing(workload, op, contender, INTERLEAVED)
        theirs = self.timing(workload, op, reference, INTERLEAVED)
        if ours is None or theirs is None or len(ours.samples) != len(theirs.samples):
            return None
        if not all(theirs.samples):
            return None
        return [a / b for a, b in zip(ours.samples, theirs.samples, strict=True)]

    def ratio(
        self, workload: str, op: str, contender: str, reference: str, order: str = INTERLEAVED
    ) -> float | None:
        value = self.median(workload, op, contender, order)
        base = self.median(workload, op, reference, order)
        if value is None or not base:
            return None
        return value / base

    def difference(
        self, workload: str, op: str, contender: str, reference: str, order: str = INTERLEAVED
    ) -> float | None:
        value = self.median(workload, op, contender, order)
        base = self.median(workload, op, reference, order)
        if value is None or base is None:
            return None
        return value - base

    def memory_median(self, contender: str) -> float | None:
        return next((m.median for m in self.memory if m.contender == contender), None)

    def ops(self) -> list[tuple[str, str, str]]:
        """(workload, op, order) in the order they were measured."""
        return list(dict.fromkeys((t.workload, t.op, t.order) for t in self.timings))

    def for_op(self, workload: str, op: str, order: str) -> list[Timing]:
        return [t for t in self.timings if (t.workload, t.op, t.order) == (workload, op, order)]
