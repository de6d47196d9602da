"""The targets of issue 4, point 2, as ratios (or differences) of medians of one run."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .contenders import (
    INCREMENTAL,
    LOAD_FILE,
    PARTIAL,
    PEFT_LOAD,
    PEFT_SAVE,
    SAVE_FILE,
    SAVE_FILE_FSYNC,
    STORE,
    STORE_FAST,
)
from .results import Results
from .timing import BACK_TO_BACK, INTERLEAVED

FINGERPRINT = "fingerprint"
FINGERPRINT_OP = "fingerprint_base"
FINGERPRINT_SAMPLE = "sample (default)"
FINGERPRINT_FULL = "full (every byte, for reference)"
SCALE = "scale"
SCALE_LOAD = "load newest"
SCALE_VERSIONS = "versions()"
ONE_VERSION = "store with 1 version"


def many_versions(count: int) -> str:
    return f"store with {count} versions"


@dataclass(frozen=True)
class Target:
    id: str
    text: str
    bound: float
    unit: str  # "x" (ratio), "s" or "ms" (absolute)
    #: The measured value from the timings taken in the given order.
    value: Callable[[Results, str], float | None]
    #: For a ratio: the per-round ratios of the interleaved timings.
    rounds: Callable[[Results], list[float] | None] | None = None


@dataclass(frozen=True)
class Outcome:
    """A target's value from the interleaved timings (the verdict) and, where those were
    taken, from the back-to-back ones (shown beside it)."""

    target: Target
    value: float | None
    back_to_back: float | None = None
    #: First and third quartile of the per-round ratios (``Results.round_ratios``).
    quartiles: tuple[float, float] | None = None

    def _met(self, value: float | None) -> bool | None:
        return None if value is None else value <= self.target.bound

    @property
    def met(self) -> bool | None:
        return self._met(self.value)

    @property
    def met_back_to_back(self) -> bool | None:
        return self._met(self.back_to_back)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.target.id,
            "text": self.target.text,
            "bound": self.target.bound,
            "unit": self.target.unit,
            "value": self.value,
            "met": self.met,
            "back_to_back_value": self.back_to_back,
            "back_to_back_met": self.met_back_to_back,
            "round_ratio_quartiles": list(self.quartiles) if self.quartiles else None,
        }


def _ratio_target(
    id: str, text: str, bound: float, workload: str, op: str, contender: str, reference: str
) -> Target:
    return Target(
        id,
        text,
        bound,
        "x",
        lambda r, order: r.ratio(workload, op, contender, reference, order),
        lambda r: r.round_ratios(workload, op, contender, reference),
    )


def _save(workload: str, contender: str, reference: str, bound: float, label: str) -> Target:
    return _ratio_target(
        f"save.{workload}.{label}",
        f"save {workload}: {contender} / {reference}",
        bound,
        workload,
        "save",
        contender,
        reference,
    )


def _load(workload: str, contender: str, bound: float, label: str) -> Target:
    return _ratio_target(
        f"load.{workload}.{label}",
        f"load {workload}: {contender} / {LOAD_FILE}",
        bound,
        workload,
        "load",
        contender,
        LOAD_FILE,
    )


def _memory(results: Results, order: str) -> float | None:
    ours, theirs = results.memory_median(STORE), results.memory_median(LOAD_FILE)
    if order != INTERLEAVED or ours is None or not theirs:
        return None
    return ours / theirs


def _milliseconds(value: float | None) -> float | None:
    return None if value is None else value * 1000


def build_targets(versions: int) -> list[Target]:
    many = many_versions(versions)
    return [
        _save("W1", STORE, SAVE_FILE_FSYNC, 1.0, "default"),
        _save("W1", STORE_FAST, SAVE_FILE, 0.7, "fast"),
        _save("W2", STORE, SAVE_FILE_FSYNC, 1.0, "default"),
        _save("W2", STORE_FAST, SAVE_FILE, 1.0, "fast"),
        _save("W3", STORE, SAVE_FILE_FSYNC, 0.8, "default"),
        _save("W3", STORE_FAST, SAVE_FILE, 0.8, "fast"),
        _load("W1", STORE, 1.0, "default"),
        _load("W1", STORE_FAST, 0.8, "fast"),
        _load("W2", STORE, 1.0, "default"),
        _save("W4", STORE, PEFT_SAVE, 0.5, "peft"),
        _ratio_target(
            "load.W4.peft", f"load W4: {STORE} / {PEFT_LOAD}", 0.8, "W4", "load", STORE, PEFT_LOAD
        ),
        _ratio_target(
            "incremental",
            f"save W1, 1 of the layer groups changed / full save ({STORE})",
            0.2,
            "W1",
            "save",
            INCREMENTAL,
            STORE,
        ),
        _ratio_target(
            "partial",
            f"load W1 modules=[1 group] / full load ({STORE})",
            0.1,
            "W1",
            "load",
            PARTIAL,
            STORE,
        ),
        Target("memory", f"peak RSS growth loading W3: {STORE} / {LOAD_FILE}", 0.5, "x", _memory),
        Target(
            "fingerprint",
            "fingerprint_base, 7B-shaped meta model + 1 GB real weights",
            0.1,
            "s",
            lambda r, o: r.median(FINGERPRINT, FINGERPRINT_OP, FINGERPRINT_SAMPLE, o),
        ),
        Target(
            "scale.load",
            f"load newest: {many} minus 1 version",
            20.0,
            "ms",
            lambda r, o: _milliseconds(r.difference(SCALE, SCALE_LOAD, many, ONE_VERSION, o)),
        ),
        Target(
            "scale.versions",
            f"versions(): {many} minus 1 version",
            20.0,
            "ms",
            lambda r, o: _milliseconds(r.difference(SCALE, SCALE_VERSIONS, many, ONE_VERSION, o)),
        ),
    ]


def evaluate(results: Results, versions: int) -> list[Outcome]:
    return [
        Outcome(
            t,
            t.value(results, INTERLEAVED),
            t.value(results, BACK_TO_BACK),
            _quartiles(t.rounds(results)) if t.rounds else None,
        )
        for t in build_targets(versions)
    ]


def _quartiles(values: list[float] | None) -> tuple[float, float] | None:
    if not values or len(values) < 2:
        return None
    first, _, third = statistics.quantiles(values, n=4, method="inclusive")
    return first, third
