"""A save lands whole or not at all, even when the writer is SIGKILLed at any moment.

Writers are forked from one long-lived process that has imported torch (see
``reliability_helpers``), so each kill costs milliseconds, not a new interpreter.
After every kill: the store opens, every listed version validates and loads bit-exactly
as the save of its recorded seed (never a mix of two saves), the newest version is the
last one the writer reported or the one it was committing, and ``gc`` removes the
leftovers without touching a committed version.
"""

from __future__ import annotations

import random
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import (
    NAME,
    Zygote,
    build_model,
    check_version,
    leftovers,
    read_results,
    trainable_bytes,
    zygote,
)

from adapter_store import AdapterStore
from adapter_store.validation import find_version_dirs, validate_version

SIZES = {"size": 64, "layers": 4, "rank": 4}
KEEP_LAST = 2
RANDOM_KILLS = 36


@pytest.fixture(scope="module")
def writers() -> Iterator[Zygote]:
    with zygote() as server:
        yield server


def _job(
    root: Path,
    results: Path,
    *,
    count: int | None,
    kill_at: int | None = None,
    keep_last: int = KEEP_LAST,
    durable: bool = True,
) -> dict[str, Any]:
    return {
        "root": str(root),
        "name": NAME,
        "count": count,
        "keep_last": keep_last,
        "seed_base": None,
        "results": str(results),
        "kill_at": kill_at,
        "sizes": SIZES,
        "durable": durable,
    }


def _check_store(root: Path, *, reported: int) -> list[int]:
    """Every invariant a kill must not break; returns the committed versions."""
    store = AdapterStore(root)  # a fresh handle, as after a restart
    versions = store.versions(NAME)
    assert versions, "a kill removed every committed version"
    newest = versions[-1]
    # The save being committed at the kill is either all there or not there at all.
    assert newest in (reported, reported + 1), (versions, reported)
    assert versions == list(range(versions[0], newest + 1)), "retention left a hole"
    # A kill during retention may leave more than keep_last versions (the next save's
    # retention deletes them), but each one left is complete: checked below.
    for version in versions:
        assert check_version(store, NAME, version, **SIZES) == version
    # What `adapter-store validate <root>` sees: no numbered directory but complete ones.
    for version_dir in find_version_dirs(root):
        _, problems = validate_version(version_dir)
        assert problems == [], [str(p) for p in problems]
    assert sorted(int(d.name) for d in find_version_dirs(root)) == versions
    target = build_model(-1, **SIZES)
    store.load(target, NAME)  # the default load: newest version, verified
    assert trainable_bytes(target) == trainable_bytes(build_model(newest, **SIZES))
    return versions


def _collect_garbage(root: Path, versions: list[int]) -> None:
    store = AdapterStore(root)
    store.gc()
    assert leftovers(root / NAME) == []
    assert store.versions(NAME) == versions


def _seed_store(writers: Zygote, root: Path, results: Path, count: int) -> None:
    pid = writers.fork(_job(root, results, count=count))
    assert writers.wait(pid) == {"signal": None, "exit": 0}


def test_sigkill_at_random_moments_never_leaves_a_partial_version(tmp_path, writers):
    root = tmp_path / "store"
    _seed_store(writers, root, tmp_path / "seed.jsonl", 1)
    rng = random.Random(20240613)
    reported = 1
    kinds_seen: set[str] = set()
    for round_number in range(RANDOM_KILLS):
        results = tmp_path / f"round-{round_number}.jsonl"
        pid = writers.fork(_job(root, results, count=None))
        # A save takes ~15 ms here: delays up to 60 ms land at every phase of one.
        time.sleep(rng.uniform(0.0, 0.06))
        writers.kill(pid)
        assert writers.wait(pid) == {"signal": signal.SIGKILL, "exit": None}
        committed = read_results(results)
        reported = committed[-1]["version"] if committed else reported
        kinds_seen.update(name.split("-")[0] for name in leftovers(root / NAME))
        versions = _check_store(root, reported=reported)
        _collect_garbage(root, versions)
        reported = versions[-1]
    # Not an assertion about timing: only reported, to show where the kills landed.
    print(f"leftover kinds seen after kills: {sorted(kinds_seen)}")


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "not-durable"])
def test_sigkill_before_every_file_system_call_of_a_save_and_its_retention(
    tmp_path, writers, durable
):
    """Deterministic: kill the writer right before its k-th file-system call, for every k.

    Each round starts from the same store (two versions, so the save hard-links
    unchanged shards and ``keep_last=2`` then deletes version 1) and saves version 3.
    ``durable=False`` skips the fsyncs, which only matter for power loss: a killed
    process never corrupts the store either way.
    """
    template = tmp_path / "template"
    _seed_store(writers, template, tmp_path / "seed.jsonl", 2)
    states_seen: set[tuple[int, ...]] = set()
    kill_at = 1
    while True:
        root = tmp_path / f"k{kill_at}"
        shutil.copytree(template, root)
        results = tmp_path / f"k{kill_at}.jsonl"
        pid = writers.fork(_job(root, results, count=1, kill_at=kill_at, durable=durable))
        status = writers.wait(pid)
        committed = read_results(results)
        if status["signal"] is None:
            assert status["exit"] == 0
            assert committed[0]["steps"] == kill_at - 1  # the save made exactly k-1 calls
            break
        assert status["signal"] == signal.SIGKILL and committed == []
        versions = _check_store(root, reported=2)
        states_seen.add(tuple(versions))
        _collect_garbage(root, versions)
        shutil.rmtree(root)
        kill_at += 1
    assert kill_at > 15, f"a save made only {kill_at - 1} file-system calls?"
    print(f"durable={durable}: killed before each of {kill_at - 1} file-system calls")
    # Kills landed before the commit, between commit and retention, and after it.
    assert states_seen == {(1, 2), (1, 2, 3), (2, 3)}
