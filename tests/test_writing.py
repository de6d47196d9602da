"""Writing a version's shards: hashing on a helper thread for large saves, linking of
unchanged shards, and what a failure leaves behind."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import make_model, train

from adapter_store import AdapterStore, writing
from adapter_store.checksum import digest_file
from adapter_store.safetensors_io import EncodedShard


@pytest.fixture
def hashing_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread on which each shard digest was computed."""
    names: list[str] = []
    real = EncodedShard.digest

    def digest(self: EncodedShard, algorithm: str) -> str:
        names.append(threading.current_thread().name)
        return real(self, algorithm)

    monkeypatch.setattr(EncodedShard, "digest", digest)
    return names


def _checksums(saved):  # type: ignore[no-untyped-def]
    return {s.path: (s.checksum.algorithm, s.checksum.digest) for s in saved.manifest.shards}


def test_large_saves_hash_on_a_helper_thread_that_never_outlives_the_save(
    tmp_path, trained, hashing_threads, monkeypatch
):
    inline = AdapterStore(tmp_path / "inline").save(trained)
    monkeypatch.setattr(writing, "BACKGROUND_HASH_MIN_BYTES", 0)
    threads_before = threading.active_count()
    hashing_threads.clear()
    background = AdapterStore(tmp_path / "background").save(trained)
    assert hashing_threads and all(n.startswith("adapter-store-hash") for n in hashing_threads)
    assert threading.active_count() == threads_before  # joined before save returned
    # The same digests, each in its own shard's entry, and true of the files written.
    assert _checksums(background) == _checksums(inline)
    for shard in background.manifest.shards:
        assert digest_file(background.path / shard.path, shard.checksum.algorithm) == (
            shard.checksum.digest
        )
    fresh = make_model()
    AdapterStore(tmp_path / "background").load(fresh)  # verified by default
    assert torch.equal(fresh.head.weight, trained.head.weight)


def test_small_saves_hash_inline(store, trained, hashing_threads):
    """Below the measured threshold a thread costs more than it hides."""
    store.save(trained)
    assert hashing_threads and set(hashing_threads) == {threading.current_thread().name}


def test_a_failed_write_joins_the_hashing_thread_and_keeps_the_previous_version(
    store, trained, monkeypatch
):
    store.save(trained)
    before = {p: p.read_bytes() for p in (store.root / "default" / "1").rglob("*") if p.is_file()}
    monkeypatch.setattr(writing, "BACKGROUND_HASH_MIN_BYTES", 0)

    def disk_full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writing, "write_file", disk_full)
    threads_before = threading.active_count()
    with torch.no_grad():
        trained.head.weight.add_(1.0)  # the head's shard must be written, not linked
    with pytest.raises(OSError, match="No space left"):
        store.save(trained)
    assert threading.active_count() == threads_before
    assert store.versions("default") == [1]
    assert [p.name for p in (store.root / "default").iterdir() if p.is_dir()] == ["1"]
    assert before == {p: p.read_bytes() for p in before}


def test_unchanged_shards_are_linked_and_changed_ones_written_with_a_helper_thread(
    store, trained, hashing_threads, monkeypatch
):
    """Shards that may be linked are hashed first, to decide; the others meanwhile."""
    monkeypatch.setattr(writing, "BACKGROUND_HASH_MIN_BYTES", 0)
    first = store.save(trained)
    with torch.no_grad():
        trained.layers[1].q.lora_A.add_(1.0)
    hashing_threads.clear()
    second = store.save(trained)
    changed = "shards/layers.1.safetensors"
    assert set(second.reused_shards) == {s.path for s in first.manifest.shards} - {changed}
    assert _checksums(second)[changed] != _checksums(first)[changed]
    assert {p: c for p, c in _checksums(second).items() if p != changed} == {
        p: c for p, c in _checksums(first).items() if p != changed
    }
    # Every shard had a link candidate, so all were hashed here, before deciding.
    assert set(hashing_threads) == {threading.current_thread().name}


def test_a_new_checksum_algorithm_writes_every_shard_again(tmp_path):
    model = make_model()
    train(model)
    AdapterStore(tmp_path).save(model)
    saved = AdapterStore(tmp_path, checksum="sha256").save(model)
    assert saved.reused_shards == ()
    for shard in saved.manifest.shards:
        assert shard.checksum.algorithm == "sha256"
        assert digest_file(saved.path / shard.path, "sha256") == shard.checksum.digest
