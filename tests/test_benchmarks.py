"""The benchmark's smoke run: ``python -m benchmarks --smoke`` runs every suite end to end
at tiny sizes and writes well-formed JSON and Markdown. No time is ever asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAVE_CONTENDERS = {
    "adapter-store",
    "adapter-store, durable/verify off",
    "save_file",
    "save_file + fsync",
    "torch.save",
    "floor: one os.write",
    "floor: one os.write + fsync",
    "floor: one os.write per shard file",
}
LOAD_CONTENDERS = {
    "adapter-store",
    "adapter-store, durable/verify off",
    "load_file + load_state_dict",
    "torch.load + load_state_dict",
    "floor: memcpy",
}
TARGETS = {
    "save.W1.default",
    "save.W1.fast",
    "save.W2.default",
    "save.W2.fast",
    "save.W3.default",
    "save.W3.fast",
    "load.W1.default",
    "load.W1.fast",
    "load.W2.default",
    "save.W4.peft",
    "load.W4.peft",
    "incremental",
    "partial",
    "memory",
    "fingerprint",
    "scale.load",
    "scale.versions",
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    path = tmp_path_factory.mktemp("bench") / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--json", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(path.read_text()), done.stdout


def _contenders(document: dict[str, Any], workload: str, op: str, order: str) -> set[str]:
    return {
        t["contender"]
        for t in document["timings"]
        if (t["workload"], t["op"], t["order"]) == (workload, op, order)
    }


@pytest.mark.parametrize("order", ["interleaved", "back-to-back"])
@pytest.mark.parametrize("workload", ["W1", "W2", "W3", "W4"])
def test_every_contender_is_timed_in_both_orders(
    smoke: tuple[dict[str, Any], str], workload: str, order: str
) -> None:
    document, _ = smoke
    saves = _contenders(document, workload, "save", order)
    loads = _contenders(document, workload, "load", order)
    assert saves >= SAVE_CONTENDERS
    assert loads >= LOAD_CONTENDERS
    if workload == "W4":
        assert "PEFT save_pretrained" in saves
        assert {"PEFT load_adapter", "PEFT load_adapter, new adapter name"} <= loads
    if workload == "W1":
        assert {"adapter-store, 1 group changed", "adapter-store, modules=[1 group]"} <= (
            saves | loads
        )


def test_samples_are_counted_positive_and_summarised(smoke: tuple[dict[str, Any], str]) -> None:
    document, _ = smoke
    reps = document["config"]["reps"]
    assert document["schema"] == "adapter-store-benchmark/1"
    assert document["config"]["smoke"] is True
    assert {"fingerprint", "scale"} <= {t["workload"] for t in document["timings"]}
    for timing in document["timings"]:
        samples = timing["samples_s"]
        assert len(samples) == reps, timing["contender"]
        assert all(math.isfinite(s) and s > 0 for s in samples), timing["contender"]
        assert timing["min_s"] <= timing["median_s"] <= timing["max_s"]


def test_every_target_of_the_issue_is_reported_with_a_consistent_verdict(
    smoke: tuple[dict[str, Any], str],
) -> None:
    document, _ = smoke
    targets = {t["id"]: t for t in document["targets"]}
    assert set(targets) == TARGETS
    for target in targets.values():
        for value, met in (
            (target["value"], target["met"]),
            (target["back_to_back_value"], target["back_to_back_met"]),
        ):
            if value is None:
                assert met is None
            else:
                assert met == (value <= target["bound"]), target["id"]
    # At smoke sizes the memory growth can be zero pages (no ratio); every timed target
    # has a value.
    assert all(t["value"] is not None for k, t in targets.items() if k != "memory")
    # Ratios of timings carry the spread of their per-round ratios; the rest do not.
    for key, target in targets.items():
        quartiles = target["round_ratio_quartiles"]
        if key in ("memory", "fingerprint", "scale.load", "scale.versions"):
            assert quartiles is None, key
        else:
            first, third = quartiles
            assert 0 < first <= third and math.isfinite(third), key


def test_round_ratios_pair_the_samples_of_each_round(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # the benchmarks are not an installed package
    from benchmarks.results import Results
    from benchmarks.targets import _quartiles
    from benchmarks.timing import BACK_TO_BACK, Timing

    results = Results(
        timings=[
            Timing("W1", "save", "ours", (1.0, 4.0, 3.0, 8.0)),
            # A reference that drifts with the machine: every round's ratio is 0.5,
            # although the ratio of medians is not.
            Timing("W1", "save", "theirs", (2.0, 8.0, 6.0, 16.0)),
            Timing("W1", "save", "theirs", (1.0, 1.0, 1.0, 1.0), BACK_TO_BACK),
            Timing("W1", "save", "short", (1.0, 2.0)),
        ]
    )
    assert results.round_ratios("W1", "save", "ours", "theirs") == [0.5, 0.5, 0.5, 0.5]
    assert _quartiles(results.round_ratios("W1", "save", "ours", "theirs")) == (0.5, 0.5)
    # Unpaired sample counts, or a missing contender: no per-round ratio.
    assert results.round_ratios("W1", "save", "short", "theirs") is None
    assert results.round_ratios("W1", "save", "ours", "absent") is None
    assert _quartiles([0.1, 0.2, 0.3, 0.4, 0.5]) == (0.2, 0.4)


def test_memory_probe_and_sanity_checks_ran(smoke: tuple[dict[str, Any], str]) -> None:
    document, _ = smoke
    probes = {m["contender"]: m for m in document["memory"]}
    assert {"adapter-store", "load_file + load_state_dict"} <= set(probes)
    for probe in probes.values():
        assert len(probe["samples_bytes"]) == document["config"]["reps"]
        assert probe["baseline_rss_bytes"] > 0
        assert probe["method"] in ("proc-hwm", "psutil-sampler")
    incremental = document["checks"]["incremental"]
    assert incremental["reused"] == incremental["shards"] - 1
    assert document["checks"]["scale"]["versions"] == document["config"]["sizes"]["scale_versions"]


def test_markdown_tables_are_well_formed(smoke: tuple[dict[str, Any], str]) -> None:
    _, stdout = smoke
    tables: list[list[str]] = []
    previous = ""
    for line in stdout.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(line)
        previous = line
    assert len(tables) >= 20
    for table in tables:
        header, separator, *rows = table
        width = header.count("|")
        assert separator == "|" + "---|" * (width - 1)
        assert rows and all(row.count("|") == width for row in rows), header
    target_rows = {row.split("|")[1].strip() for row in tables[-1][2:]}
    assert target_rows == TARGETS


def test_too_few_repetitions_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--reps", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "--reps must be at least 5" in done.stderr
