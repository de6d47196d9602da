"""Several processes on one store: writers of the same name, a polling reader, a mapped
reader, and ``gc`` running during saves.

Writers are forked from one process that has imported torch (see ``reliability_helpers``).
Each save's tensors are a function of its recorded seed, so a reader can tell a whole
version from a mix of two.
"""

from __future__ import annotations

import os
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
    read_results,
    trainable_bytes,
    zygote,
)

from adapter_store import AdapterStore
from adapter_store.validation import validate_version
from adapter_store.version_files import open_shard

SAVES_PER_WRITER = 8
#: Only a guard against a crashed writer; the saves take well under a second.
GIVE_UP_SECONDS = 120


@pytest.fixture(scope="module")
def writers() -> Iterator[Zygote]:
    with zygote() as server:
        yield server


def _job(
    root: Path,
    results: Path,
    *,
    seed_base: int,
    count: int,
    go: Path | None = None,
    keep_last: int | None = None,
) -> dict[str, Any]:
    return {
        "root": str(root),
        "name": NAME,
        "count": count,
        "keep_last": keep_last,
        "seed_base": seed_base,
        "results": str(results),
        "go": str(go) if go else None,
    }


def _poll_once(store: AdapterStore, validated: set[int]) -> int | None:
    """One reader step: list, validate what is new, load the newest and check it whole."""
    versions = store.versions(NAME)
    for version in versions:
        if version not in validated:
            _, problems = validate_version(store.path(NAME, version))
            assert problems == [], f"v{version} listed while partial: {problems}"
            validated.add(version)
    if not versions:
        return None
    target = build_model(-1)
    report = store.load(target, NAME)  # the newest at this moment, verified
    seed = store.manifest(NAME, report.version).metadata["seed"]
    assert isinstance(seed, int)
    assert trainable_bytes(target) == trainable_bytes(build_model(seed)), (
        f"v{report.version} loaded as a mix of saves"
    )
    store.gc()  # must never remove the temporary directory of a save in progress
    return report.version


def test_two_writers_of_one_name_and_a_polling_reader(tmp_path, writers):
    root, go = tmp_path / "store", tmp_path / "go"
    results = [tmp_path / "writer-a.jsonl", tmp_path / "writer-b.jsonl"]
    pids = [
        writers.fork(_job(root, out, seed_base=base, count=SAVES_PER_WRITER, go=go))
        for out, base in zip(results, (1000, 2000), strict=True)
    ]
    store = AdapterStore(root)
    validated: set[int] = set()
    loaded: set[int] = set()
    go.touch()  # both writers start at once
    deadline = time.monotonic() + GIVE_UP_SECONDS
    while time.monotonic() < deadline:
        version = _poll_once(store, validated)
        if version is not None:
            loaded.add(version)
        if all(len(read_results(out)) == SAVES_PER_WRITER for out in results):
            break
    for pid in pids:
        assert writers.wait(pid) == {"signal": None, "exit": 0}

    records = [read_results(out) for out in results]
    got = [[r["version"] for r in rows] for rows in records]
    total = 2 * SAVES_PER_WRITER
    assert sorted(got[0] + got[1]) == list(range(1, total + 1)), got  # distinct, no gaps
    assert got[0] == sorted(got[0]) and got[1] == sorted(got[1])
    assert store.versions(NAME) == list(range(1, total + 1))
    for row in records[0] + records[1]:
        assert check_version(store, NAME, row["version"]) == row["seed"]
    _poll_once(store, validated)
    assert validated == set(range(1, total + 1))
    print(f"reader loaded {len(loaded)} distinct versions while the writers ran")


def test_a_mapped_older_version_survives_new_saves_and_its_deletion(tmp_path, writers):
    """A reader holding version 1's shards mapped sees the same bytes after another
    process saved three versions (hard-linking unchanged shards to the very same
    inodes) and ``keep_last=1`` deleted version 1."""
    store = AdapterStore(tmp_path / "store")
    first = store.save(build_model(1), NAME, metadata={"seed": 1})
    head = first.path / "shards/head.safetensors"
    head_inode = head.stat().st_ino
    readers = [
        open_shard(first.path, first.manifest, shard.path, verify=True)
        for shard in first.manifest.shards
    ]
    views = {}
    try:
        views = {key: reader.tensor(key) for reader in readers for key in reader.entries}
        before = {key: bytes(view.numpy().tobytes()) for key, view in views.items()}

        pid = writers.fork(
            _job(store.root, tmp_path / "writer.jsonl", seed_base=2, count=3, keep_last=1)
        )
        assert writers.wait(pid) == {"signal": None, "exit": 0}
        assert store.versions(NAME) == [4] and not first.path.exists()
        newest = store.path(NAME) / "shards/head.safetensors"
        assert os.stat(newest).st_ino == head_inode  # the mapped inode itself was reused

        after = {key: bytes(view.numpy().tobytes()) for key, view in views.items()}
        assert after == before
        assert check_version(store, NAME, 4) == 4
    finally:
        views.clear()  # tensors view the maps: drop them before unmapping
        for reader in readers:
            reader.close()
