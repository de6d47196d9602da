"""The full cycle and the store's rules: versions, selection, partial loads, retention."""

from __future__ import annotations

import errno
import json
import mmap
import os
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import FsyncRecorder, assert_unchanged, make_model, snapshot, train
from safetensors import safe_open
from safetensors.torch import save_file
from torch.testing._internal.two_tensor import TwoTensor

from adapter_store import (
    AdapterNotFoundError,
    AdapterStore,
    IncompatibleAdapterError,
    IntegrityError,
    InvalidAdapterError,
    PartialLoadError,
    SharedTargetWarning,
    file_writing,
    writing,
)
from adapter_store.checksum import digest_file
from adapter_store.fingerprint import content_digest
from adapter_store.layout import temp_dir_name


def test_full_cycle_restores_the_trained_model_exactly(store, tmp_path):
    model = make_model()
    base = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    train(model, steps=4)
    saved = store.save(model, "rna-lora", step=4)

    fresh = make_model()  # same base weights, adapter freshly initialised
    report = store.load(fresh, "rna-lora")

    tokens = torch.randint(0, 32, (6, 5))
    model.eval()
    fresh.eval()
    with torch.no_grad():
        expected, got = model(tokens), fresh(tokens)
    assert got.shape == (6, 4)
    assert torch.isfinite(got).all() and got.abs().sum() > 0
    assert torch.equal(expected, got)
    trained = dict(model.named_parameters())
    for key, param in fresh.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, trained[key]), key
        elif not key.startswith("head."):
            assert torch.equal(param, base[key]), f"base tensor {key} changed"
    assert sorted(report.loaded) == sorted(saved.manifest.tensors)
    assert report.missing == [] and report.unexpected == []
    assert "embed.weight" in report.frozen and "steps_seen" in report.frozen

    full = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(full))
    assert saved.nbytes < full.stat().st_size


def test_saves_only_trainable_tensors_one_shard_per_module_group(store, trained):
    saved = store.save(trained)
    manifest = saved.manifest
    assert set(manifest.tensors) == {k for k, p in trained.named_parameters() if p.requires_grad}
    assert manifest.groups == ["layers.0", "layers.1", "layers.2", "head"]
    assert sorted(p.name for p in (saved.path / "shards").iterdir()) == [
        "head.safetensors",
        "layers.0.safetensors",
        "layers.1.safetensors",
        "layers.2.safetensors",
    ]
    on_disk = json.loads((saved.path / "manifest.json").read_text())
    assert on_disk["name"] == "default" and on_disk["version"] == 1


def test_every_shard_reads_back_identically_with_safe_open(store, trained):
    saved = store.save(trained)
    params = dict(trained.named_parameters())
    for shard in saved.manifest.shards:
        with safe_open(str(saved.path / shard.path), framework="pt") as file:
            for key in file.keys():  # noqa: SIM118 (safe_open is not a mapping)
                assert torch.equal(file.get_tensor(key), params[key])


def test_versions_grow_by_one_and_load_takes_the_newest(store):
    model = make_model()
    first = snapshot(model)
    store.save(model, "a")
    train(model)
    store.save(model, "a")
    store.save(make_model(), "b")
    assert store.versions("a") == [1, 2]
    assert store.names() == ["a", "b"]
    assert store.manifest("a").version == 2

    fresh = make_model()
    assert store.load(fresh, "a").version == 2
    assert torch.equal(fresh.head.weight, model.head.weight)
    store.load(fresh, "a", version=1)
    assert torch.equal(fresh.head.weight, first["head.weight"])


def test_a_version_directory_is_self_contained(store, trained, tmp_path):
    saved = store.save(trained)
    copy = AdapterStore(tmp_path / "elsewhere")
    target = copy.root / "moved" / "1"
    target.parent.mkdir(parents=True)
    os.rename(saved.path, target)
    fresh = make_model()
    copy.load(fresh, "moved")
    assert torch.equal(fresh.head.weight, trained.head.weight)


@pytest.mark.parametrize(
    ("name", "version", "match"),
    [("nope", None, "no adapter named 'nope'"), ("default", 7, "has no version 7")],
    ids=["unknown-name", "unknown-version"],
)
def test_unknown_name_or_version_is_not_found(store, trained, name, version, match):
    store.save(trained)
    with pytest.raises(AdapterNotFoundError, match=match):
        store.load(make_model(), name, version=version)


def test_saving_nothing_is_an_error(store):
    model = make_model()
    model.requires_grad_(False)
    with pytest.raises(InvalidAdapterError, match="nothing to save from TinyModel"):
        store.save(model)
    assert store.versions("default") == []


def test_saving_a_zero_element_tensor_is_an_error(store):
    model = make_model()
    model.head.weight = torch.nn.Parameter(torch.empty(0))  # what ZeRO-3 leaves behind
    with pytest.raises(InvalidAdapterError, match="'head.weight': it has zero elements"):
        store.save(model)
    assert not any((store.root / "default").glob("*/manifest.json"))


def test_include_adds_buffers_and_frozen_tensors_exclude_removes(store, trained):
    saved = store.save(trained, include=["steps_seen", "embed.*"], exclude=["head.bias"])
    keys = set(saved.manifest.tensors)
    assert {"steps_seen", "embed.weight", "head.weight"} <= keys
    assert "head.bias" not in keys
    assert "embed.weight" not in saved.manifest.base.tensors


def test_tied_tensors_are_stored_once_and_loaded_into_both_names(store):
    model = make_model()
    model.extra = torch.nn.Linear(16, 4)  # a second name for the head's weight
    model.extra.weight = model.head.weight
    train(model)
    saved = store.save(model)
    assert saved.manifest.aliases == {"extra.weight": "head.weight"}
    fresh = make_model()
    fresh.extra = torch.nn.Linear(16, 4)
    fresh.extra.weight = fresh.head.weight
    report = store.load(fresh)
    assert torch.equal(fresh.extra.weight, model.head.weight)
    assert fresh.extra.weight is fresh.head.weight
    # Both names received the values (one copy): the report lists both, as loaded.
    assert {"head.weight", "extra.weight"} <= set(report.loaded)
    assert "extra.weight" not in report.frozen + report.missing + report.unexpected


def test_invalid_metadata_is_refused_before_anything_is_written(store, trained):
    with pytest.raises(InvalidAdapterError, match="metadata must be JSON-serialisable"):
        store.save(trained, metadata={"when": object()})
    assert store.versions("default") == []


def test_metadata_and_step_are_recorded(store, trained):
    store.save(trained, step=12, metadata={"dataset": "synthetic", "lr": 0.05})
    manifest = store.manifest("default")
    assert manifest.step == 12
    assert manifest.metadata == {"dataset": "synthetic", "lr": 0.05}


def test_loading_some_modules_opens_only_their_files(store, trained):
    saved = store.save(trained)
    for other in ("layers.0", "layers.2", "head"):
        (saved.path / "shards" / f"{other}.safetensors").unlink()
    fresh = make_model()
    report = store.load(fresh, modules=["layers.1"])
    assert sorted(report.loaded) == ["layers.1.q.lora_A", "layers.1.q.lora_B"]
    assert "head.weight" in report.skipped
    assert torch.equal(fresh.layers[1].q.lora_A, trained.layers[1].q.lora_A)
    assert not torch.equal(fresh.head.weight, trained.head.weight)


def test_modules_accept_glob_patterns(store, trained):
    store.save(trained)
    report = store.load(make_model(), modules=["layers.*"])
    assert len(report.loaded) == 6 and len(report.skipped) == 2


def test_unknown_module_is_not_found_and_changes_nothing(store, trained):
    store.save(trained)
    fresh = make_model()
    before = snapshot(fresh)
    with pytest.raises(AdapterNotFoundError, match="no module group 'layers.9'"):
        store.load(fresh, modules=["layers.9"])
    assert_unchanged(fresh, before)


def test_groups_above_the_size_limit_are_split(tmp_path):
    store = AdapterStore(tmp_path, max_shard_bytes=100)
    model = make_model()
    saved = store.save(model)
    paths = [s.path for s in saved.manifest.shards if s.group == "head"]
    assert paths == [
        "shards/head-00001-of-00002.safetensors",
        "shards/head-00002-of-00002.safetensors",
    ]
    fresh = make_model(seed=0)
    store.load(fresh)
    assert torch.equal(fresh.head.bias, model.head.bias)


def test_unchanged_shards_are_hard_linked_from_the_previous_version(store, trained):
    first = store.save(trained)
    with torch.no_grad():
        trained.head.weight.add_(1.0)
    second = store.save(trained)
    assert set(second.reused_shards) == {
        "shards/layers.0.safetensors",
        "shards/layers.1.safetensors",
        "shards/layers.2.safetensors",
    }
    linked = second.path / "shards/layers.0.safetensors"
    assert linked.stat().st_ino == (first.path / "shards/layers.0.safetensors").stat().st_ino
    store.delete("default", 1)  # the second version keeps its own link
    fresh = make_model()
    store.load(fresh)
    assert torch.equal(fresh.layers[0].q.lora_A, trained.layers[0].q.lora_A)


def test_keep_last_deletes_old_versions_after_commit(store, trained):
    for _ in range(4):
        store.save(trained, keep_last=2)
    assert store.versions("default") == [3, 4]
    assert sorted(
        p.name for p in (store.root / "default").iterdir() if not p.name.startswith(".")
    ) == ["3", "4"]


def test_a_failed_save_leaves_the_previous_version_intact(store, trained, monkeypatch):
    store.save(trained)
    before = {p: p.read_bytes() for p in (store.root / "default" / "1").rglob("*") if p.is_file()}

    import adapter_store.writing as writing

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writing, "write_file", disk_full)
    with torch.no_grad():
        trained.head.weight.add_(1.0)  # forces a real write of the head shard
    with pytest.raises(OSError, match="No space left"):
        store.save(trained)
    assert store.versions("default") == [1]
    assert [p.name for p in (store.root / "default").iterdir() if p.is_dir()] == ["1"]
    assert before == {p: p.read_bytes() for p in before}


def test_a_write_failing_part_way_leaves_no_trace_and_the_previous_version_intact(
    store, trained, monkeypatch
):
    """The disk fills up in the middle of a preallocated shard: the save fails with the
    write's own error, its temporary directory goes, and version 1 is untouched."""
    store.save(trained)
    before = {p: p.read_bytes() for p in (store.root / "default" / "1").rglob("*") if p.is_file()}
    monkeypatch.setattr(file_writing, "PREALLOCATE_MIN_BYTES", 1)
    real_writev = os.writev

    def full_after_a_few_bytes(fd, buffers):  # type: ignore[no-untyped-def]
        real_writev(fd, [memoryview(buffers[0]).cast("B")[:5]])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", full_after_a_few_bytes)
    with torch.no_grad():
        trained.head.weight.add_(1.0)  # the head's shard must be written, not linked
    with pytest.raises(OSError, match="No space left"):
        store.save(trained)
    assert store.versions("default") == [1]
    assert [p.name for p in (store.root / "default").iterdir() if p.is_dir()] == ["1"]
    assert before == {p: p.read_bytes() for p in before}


class _TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(4, 4, bias=False)
        self.second = torch.nn.Linear(4, 4, bias=False)


@pytest.mark.parametrize("verify", [True, False], ids=["verified", "unverified"])
def test_two_stored_keys_tied_in_the_target_end_as_load_state_dict_leaves_them(tmp_path, verify):
    """Saved untied with different values, loaded into a model where both names share
    one tensor: the memory ends up as torch's load_state_dict leaves it (the last key),
    and the load says so, since one stored tensor's values are lost."""
    source = _TwoHeads()
    with torch.no_grad():
        source.first.weight.fill_(1.0)
        source.second.weight.fill_(2.0)
    AdapterStore(tmp_path).save(source)

    def tied() -> _TwoHeads:
        model = _TwoHeads()
        model.second.weight = model.first.weight
        return model

    ours, reference = tied(), tied()
    with pytest.warns(SharedTargetWarning, match="'first.weight' .*and 'second.weight'") as caught:
        report = AdapterStore(tmp_path).load(ours, verify=verify)
    # Reported where the caller called load, not inside the library.
    assert {Path(w.filename).name for w in caught} == {"test_store.py"}
    # The report says it too, for callers that keep reports rather than warnings.
    assert report.warnings == [str(w.message) for w in caught if w.category is SharedTargetWarning]
    reference.load_state_dict(source.state_dict(), strict=False)
    assert torch.equal(ours.first.weight, reference.first.weight)
    assert ours.first.weight.flatten()[0].item() == 2.0


class _FusedView(torch.nn.Module):
    """A fused projection and a parameter viewing its first rows (same address, another
    shape): two tensors, not a tie, when saved and when loaded."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Parameter(torch.randn(3, 4, 4))
        self.q = torch.nn.Parameter(self.qkv.data[0])


def test_a_view_at_the_same_address_is_not_reported_as_a_shared_target(tmp_path):
    AdapterStore(tmp_path).save(_FusedView())
    with warnings.catch_warnings():
        warnings.simplefilter("error", SharedTargetWarning)
        report = AdapterStore(tmp_path).load(_FusedView())
    assert sorted(report.loaded) == ["q", "qkv"]


def test_wrapper_prefixes_are_handled_both_ways(store):
    model = make_model()
    train(model)
    wrapped = torch.nn.Module()
    wrapped.module = model  # what DistributedDataParallel's state dict looks like
    saved = store.save(wrapped)
    assert "head.weight" in saved.manifest.tensors
    fresh = make_model()
    store.load(fresh)
    assert torch.equal(fresh.head.weight, model.head.weight)

    compiled = torch.nn.Module()
    compiled._orig_mod = make_model()  # torch.compile's OptimizedModule layout
    store.load(compiled)
    assert torch.equal(compiled._orig_mod.head.weight, model.head.weight)


def test_adapter_names_that_are_not_plain_folder_names_are_refused(store, trained):
    for bad in ("../escape", ".hidden", "a/b", ""):
        with pytest.raises(InvalidAdapterError, match="is not allowed"):
            store.save(trained, bad)


def test_strict_false_loads_the_intersection_and_reports_the_rest(store, trained):
    store.save(trained, exclude=["layers.2.*"])
    fresh = make_model(layers=4)  # one more layer, whose LoRA is trainable
    before = snapshot(fresh)
    with pytest.raises(IncompatibleAdapterError, match="'layers.3.q.lora_A'"):
        store.load(fresh, check_base="ignore")
    assert_unchanged(fresh, before)
    report = store.load(fresh, strict=False, check_base="ignore")
    assert report.missing == ["layers.3.q.lora_A", "layers.3.q.lora_B"]
    # Excluded at save, so recorded as frozen on purpose: not "truly missing".
    assert "layers.2.q.lora_A" in report.frozen
    assert torch.equal(fresh.layers[0].q.lora_B, trained.layers[0].q.lora_B)


def test_dtype_differences_are_cast_and_reported(store, trained):
    store.save(trained)
    fresh = make_model()
    fresh.head.to(torch.float64)
    report = store.load(fresh)
    assert report.cast == {"head.weight": ("F32", "F64"), "head.bias": ("F32", "F64")}
    assert torch.equal(fresh.head.weight, trained.head.weight.double())


def test_store_root_is_created_on_first_save(tmp_path):
    store = AdapterStore(tmp_path / "deep" / "store")
    assert store.names() == [] and store.versions("x") == []
    store.save(make_model(), "x")
    assert (tmp_path / "deep" / "store" / "x" / "1" / "manifest.json").is_file()


def test_sha256_checksums_can_be_chosen(tmp_path, trained):
    store = AdapterStore(tmp_path, checksum="sha256")
    saved = store.save(trained)
    assert {s.checksum.algorithm for s in saved.manifest.shards} == {"sha256"}
    store.load(make_model())


def test_gc_removes_leftovers_of_dead_writers_only(store, trained):
    store.save(trained)
    dead = store.root / "default" / ".tmp-otherhost-1-abcdef12"
    dead.mkdir()
    old = os.stat(dead).st_mtime - 3 * 24 * 3600
    os.utime(dead, (old, old))
    alive = store.root / "default" / f".tmp-{os.uname().nodename}-{os.getpid()}-abcdef12"
    alive.mkdir()
    assert store.gc() == [dead]
    assert alive.exists() and store.versions("default") == [1]


def test_gc_ignores_a_save_published_after_its_listing(store, monkeypatch):
    """The race a polling reader's gc met while two writers saved (1-4 % of runs): a
    writer renames its temporary directory to its version between gc's listing and gc's
    look at that entry. gc must pass over it, not fail."""
    name_dir = store.root / "default"
    name_dir.mkdir(parents=True)
    in_progress = name_dir / temp_dir_name()  # this live process's: a save in progress
    in_progress.mkdir()
    real_scandir = os.scandir

    def list_then_publish(path):  # type: ignore[no-untyped-def]
        entries = list(real_scandir(path))
        if Path(path) == name_dir and in_progress.exists():
            os.rename(in_progress, name_dir / "1")  # the writer commits right after
        return iter(entries)

    monkeypatch.setattr(os, "scandir", list_then_publish)
    assert store.gc() == []
    assert (name_dir / "1").is_dir()


def test_gc_ignores_a_name_directory_removed_after_its_listing(store, monkeypatch):
    """A failed first save removes the empty name directory it made, maybe just after gc
    listed the store."""
    (store.root / "gone").mkdir(parents=True)
    real_scandir = os.scandir

    def list_then_remove(path):  # type: ignore[no-untyped-def]
        entries = list(real_scandir(path))
        if Path(path) == store.root:
            (store.root / "gone").rmdir()
        return iter(entries)

    monkeypatch.setattr(os, "scandir", list_then_remove)
    assert store.gc() == []


def test_names_and_versions_ignore_a_name_directory_removed_meanwhile(store, trained, monkeypatch):
    """A failed first save removes the empty name directory it made: a reader listing
    the store at that moment sees the directory, then cannot list it."""
    store.save(trained)
    gone = store.root / "gone"
    gone.mkdir()
    real_scandir = os.scandir

    def removed_just_before(path):  # type: ignore[no-untyped-def]
        if Path(path) == gone and gone.exists():
            gone.rmdir()
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", removed_just_before)
    assert store.names() == ["default"]
    gone.mkdir()
    assert store.versions("gone") == []


def test_names_and_gc_ignore_a_store_root_removed_meanwhile(tmp_path, monkeypatch):
    """A failed first save into a new store removes the root it made as well."""
    store = AdapterStore(tmp_path / "new-store")
    store.root.mkdir()
    real_scandir = os.scandir

    def removed_just_before(path):  # type: ignore[no-untyped-def]
        if Path(path) == store.root and store.root.exists():
            store.root.rmdir()
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", removed_just_before)
    assert store.names() == []
    store.root.mkdir()
    assert store.gc() == []


def test_a_save_makes_its_name_directory_again_if_another_save_removed_it(
    store, trained, monkeypatch
):
    """Between making the name directory and its temporary directory inside, a
    concurrent failed first save of the same name may remove the (empty) directory."""
    real_name = writing.temp_dir_name
    calls = []

    def removed_by_another_save():  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            (store.root / "default").rmdir()
        return real_name()

    monkeypatch.setattr(writing, "temp_dir_name", removed_by_another_save)
    saved = store.save(trained)
    assert len(calls) == 2 and saved.version == 1 and store.versions("default") == [1]


@pytest.mark.parametrize("error", [PermissionError, FileNotFoundError])
def test_a_first_save_that_cannot_make_its_directory_leaves_no_folders(
    tmp_path, trained, monkeypatch, error
):
    """Refused (or removed under it on every attempt): the save fails and the store root
    and name folder it made are gone again."""
    store = AdapterStore(tmp_path / "new-store")
    attempts = []

    def refused(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.name.startswith(".tmp-"):
            attempts.append(self)
            raise error(13, "refused", str(self))
        return real_mkdir(self, *args, **kwargs)

    real_mkdir = Path.mkdir
    monkeypatch.setattr(Path, "mkdir", refused)
    with pytest.raises(error):
        store.save(trained)
    assert len(attempts) == (3 if error is FileNotFoundError else 1)
    assert not store.root.exists()


def test_keep_last_tolerates_a_version_removed_between_its_lookup_and_its_rename(
    store, trained, monkeypatch
):
    store.save(trained)
    real_path = AdapterStore.path

    def looked_up_then_gone(self, name, version=None):  # type: ignore[no-untyped-def]
        path = real_path(self, name, version)
        if version is not None:  # delete's lookup: another writer removes it right after
            shutil.rmtree(path)
        return path

    monkeypatch.setattr(AdapterStore, "path", looked_up_then_gone)
    saved = store.save(trained, keep_last=1)
    assert saved.version == 2 and store.versions("default") == [2]


def test_keep_last_tolerates_another_writer_pruning_the_same_version(store, trained, monkeypatch):
    """Two writers of one name with keep_last may both delete the same old version; the
    one that finds it gone has still saved successfully."""
    store.save(trained)
    real_delete = AdapterStore.delete

    def other_writer_first(self, name, version):  # type: ignore[no-untyped-def]
        real_delete(AdapterStore(self.root), name, version)  # the other writer wins
        real_delete(self, name, version)

    monkeypatch.setattr(AdapterStore, "delete", other_writer_first)
    saved = store.save(trained, keep_last=1)
    assert saved.version == 2 and store.versions("default") == [2]


def test_load_report_summary_names_the_counts(store, trained):
    store.save(trained)
    text = store.load(make_model()).summary()
    assert "loaded 8 tensors" in text and "frozen (not saved on purpose)" in text


def test_save_accepts_path_like_roots(tmp_path: Path, trained):
    store = AdapterStore(str(tmp_path))
    assert store.save(trained).path == tmp_path / "default" / "1"


@pytest.mark.parametrize("restore_mtime", [False, True], ids=["edited", "edited-mtime-restored"])
def test_a_rotten_previous_shard_is_written_anew_not_linked(store, trained, restore_mtime):
    first = store.save(trained)
    rotten = first.path / "shards/layers.0.safetensors"
    before = rotten.stat()
    data = bytearray(rotten.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in v1's file; the tensors in memory are fine
    rotten.write_bytes(bytes(data))
    if restore_mtime:  # hides the edit from size and mtime: only the bytes tell
        os.utime(rotten, ns=(before.st_atime_ns, before.st_mtime_ns))
    second = store.save(trained)
    assert "shards/layers.0.safetensors" not in second.reused_shards
    assert "shards/layers.1.safetensors" in second.reused_shards
    fresh = make_model()
    store.load(fresh)  # v2 verifies and loads
    assert torch.equal(fresh.layers[0].q.lora_B, trained.layers[0].q.lora_B)


def test_every_reused_shard_is_hashed_again_before_it_is_linked(store, trained, monkeypatch):
    """No shortcut by file identity (inode, mtime, ...): rot below the file system and
    edits within one coarse timestamp tick leave it unchanged (review of a faster draft)."""
    store.save(trained)
    hashed: list[str] = []

    def counting(path, algorithm):
        hashed.append(Path(path).name)
        return digest_file(path, algorithm)

    monkeypatch.setattr(writing, "digest_file", counting)
    with torch.no_grad():
        trained.head.weight.add_(1.0)
    second = store.save(trained)
    assert sorted(hashed) == sorted(Path(p).name for p in second.reused_shards)
    assert len(hashed) == 3


def test_names_skip_folders_that_are_not_adapters(store, trained):
    store.save(trained, "real")
    for stray in ("lost+found", "notes and logs", "__pycache__"):
        (store.root / stray).mkdir()
    assert store.names() == ["real"]


NON_DEFAULT_DTYPES = [torch.bfloat16, torch.float16, torch.float64]


@pytest.mark.parametrize("dtype", NON_DEFAULT_DTYPES, ids=["bf16", "fp16", "fp64"])
def test_store_round_trip_of_other_dtypes_and_int_buffers(store, dtype):
    model = make_model().to(dtype)
    with torch.no_grad():  # "trained" values (training in fp16 itself would overflow)
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn_like(param))
    model.register_buffer("counts", torch.arange(12, dtype=torch.int32).reshape(3, 4))
    saved = store.save(model, include=["counts"])
    assert saved.manifest.tensors["counts"].dtype == "I32"
    fresh = make_model().to(dtype)
    fresh.register_buffer("counts", torch.zeros(3, 4, dtype=torch.int32))
    report = store.load(fresh)
    assert report.cast == {}
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_store_round_trip_of_a_non_contiguous_parameter(store):
    model = make_model()
    # A transposed view as the parameter's data: not contiguous in memory.
    model.head.weight = torch.nn.Parameter(torch.randn(16, 4).t())
    assert not model.head.weight.is_contiguous()
    saved = store.save(model)
    assert saved.manifest.tensors["head.weight"].shape == (4, 16)
    fresh = make_model()
    fresh.head.weight = torch.nn.Parameter(torch.zeros(16, 4).t())  # also non-contiguous
    store.load(fresh)
    assert torch.equal(fresh.head.weight, model.head.weight)


def test_a_durable_save_makes_every_file_durable_before_the_rename_commits_it(
    tmp_path, trained, monkeypatch
):
    optimizer = torch.optim.Adam([p for p in trained.parameters() if p.requires_grad])
    store = AdapterStore(tmp_path / "store", durable=True)
    recorder = FsyncRecorder(monkeypatch)
    store.save(trained)  # a second save links unchanged shards: their entries count too
    with torch.no_grad():
        trained.head.weight.add_(1.0)
    saved = store.save(trained, optimizer=optimizer)
    recorder.assert_durable_commit()
    assert saved.reused_shards and (saved.path / "optimizer.safetensors").is_file()


def test_an_unverified_load_reads_shards_without_mapping_them(store, trained, monkeypatch):
    """verify=False: plain byte copies are pread straight into the parameters; a shard
    with a copy that casts (here one float64 target) is still mapped."""
    saved = store.save(trained)
    mapped: list[int] = []
    real_mmap = mmap.mmap

    def counting_mmap(*args, **kwargs):
        mapped.append(args[0])
        return real_mmap(*args, **kwargs)

    monkeypatch.setattr(mmap, "mmap", counting_mmap)
    fresh = make_model()
    fresh.layers[1].q.lora_A.data = fresh.layers[1].q.lora_A.data.double()
    report = store.load(fresh, verify=False)
    assert len(mapped) == 1  # layers.1's shard; the other shards were streamed
    assert report.cast == {"layers.1.q.lora_A": ("F32", "F64")}
    expected = dict(trained.named_parameters())
    for name, parameter in fresh.named_parameters():
        if parameter.requires_grad:
            assert torch.equal(parameter, expected[name].to(parameter.dtype)), name
    mapped.clear()
    store.load(make_model())  # verified: every shard is mapped and hashed
    assert len(mapped) == len(saved.manifest.shards)


def test_a_durable_save_syncs_shards_it_links_from_a_version_saved_without_durability(
    tmp_path, trained, monkeypatch
):
    AdapterStore(tmp_path / "store", durable=False).save(trained)
    with torch.no_grad():
        trained.head.weight.add_(1.0)
    recorder = FsyncRecorder(monkeypatch)
    saved = AdapterStore(tmp_path / "store", durable=True).save(trained)
    assert len(saved.reused_shards) == 3
    recorder.assert_durable_commit()  # the linked inodes too: nobody had synced them


def test_a_failed_first_save_leaves_no_folders_behind(tmp_path, trained, monkeypatch):
    import adapter_store.store as store_module

    def broken(plan):
        raise RuntimeError("fingerprint failed")

    monkeypatch.setattr(store_module, "fingerprint_save", broken)
    store = AdapterStore(tmp_path / "new" / "store")
    with pytest.raises(RuntimeError, match="fingerprint failed"):
        store.save(trained)
    assert not (tmp_path / "new").exists()


def test_lazily_negated_parameters_round_trip_their_values(tmp_path):
    """torch._neg_view tensors hold negated memory: every path must use their values."""
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch._neg_view(torch.tensor([1.0, 2.0, 3.0])))
    model.frozen = torch.nn.Parameter(torch._neg_view(torch.arange(600.0)), requires_grad=False)
    store = AdapterStore(tmp_path / "store", durable=False)
    saved = store.save(model)
    assert saved.manifest.base.tensors["frozen"].content == content_digest(-torch.arange(600.0))
    for verify in (True, False):
        fresh = torch.nn.Module()
        fresh.w = torch.nn.Parameter(torch._neg_view(torch.zeros(3)))
        fresh.frozen = torch.nn.Parameter(-torch.arange(600.0), requires_grad=False)
        store.load(fresh, verify=verify)
        assert fresh.w.tolist() == [-1.0, -2.0, -3.0], verify


def test_a_version_deleted_and_saved_again_elsewhere_is_not_trusted_as_durable(
    tmp_path, trained, monkeypatch
):
    """Version numbers are reused after a delete: what this store made durable is known by
    the directory's and its manifest's identity, not by its number."""
    mine = AdapterStore(tmp_path / "store", durable=True)
    other = AdapterStore(tmp_path / "store", durable=False)
    mine.save(trained)
    other.delete("default", 1)
    assert other.save(trained).version == 1  # the number again, never made durable
    with torch.no_grad():
        trained.head.weight.add_(1.0)
    recorder = FsyncRecorder(monkeypatch)
    saved = mine.save(trained)
    assert len(saved.reused_shards) == 3
    recorder.assert_durable_commit()  # the linked files of the non-durable v1 included


def _wrapped(values: torch.Tensor) -> torch.Tensor:
    # A __torch_dispatch__ wrapper subclass, as DTensor and quantized tensors are: its
    # values live in inner tensors and its own data_ptr() is 0.
    return TwoTensor(values, values.clone())


class _RefusingCopies(TwoTensor):
    """A wrapper subclass whose copy_ fails: what no check before the copies can see."""

    @classmethod
    def __torch_dispatch__(cls, func, types, args, kwargs=None):
        if func is torch.ops.aten.copy_.default:
            raise RuntimeError("this wrapper is read-only")
        return super().__torch_dispatch__(func, types, args, kwargs)

    def __repr__(self) -> str:  # torch's would print values, through the refused ops
        return "_RefusingCopies()"


def test_a_copy_refused_by_the_model_is_a_partial_load_error(tmp_path):
    _, store = _saved_pair(tmp_path, "first", "second")
    target = torch.nn.Module()
    target.first = torch.nn.Parameter(torch.zeros(4))
    values = torch.zeros(4)
    target.second = torch.nn.Parameter(_RefusingCopies(values, values.clone()))
    try:  # not pytest.raises: a traceback through torch's frames would print the wrapper
        store.load(target)
        error: Exception | None = None
    except Exception as raised:
        error = raised
    assert isinstance(error, PartialLoadError), type(error)
    assert re.search(r"copying 'second' into 'second' failed after 1 of 2 .*read-only", str(error))
    assert error.key == "second"
    assert error.path is not None and error.path.endswith(".safetensors")
    assert not torch.equal(target.first, torch.zeros(4))  # it did land: hence the error


def test_a_trainable_wrapper_subclass_is_refused_by_name(tmp_path):
    model = torch.nn.Module()
    model.plain = torch.nn.Parameter(torch.randn(4))
    model.sharded = torch.nn.Parameter(_wrapped(torch.randn(4)))
    store = AdapterStore(tmp_path / "store", durable=False)
    with pytest.raises(InvalidAdapterError, match=r"cannot save 'sharded': it is a TwoTensor"):
        store.save(model)  # was: the process died reading address 0
    assert store.versions("default") == []


def test_a_frozen_wrapper_subclass_counts_by_structure_only(tmp_path):
    def build(seed: int) -> torch.nn.Module:
        generator = torch.Generator().manual_seed(seed)
        model = torch.nn.Module()
        model.adapter = torch.nn.Parameter(torch.randn(4, generator=generator))
        model.base = torch.nn.Parameter(
            _wrapped(torch.randn(300, generator=generator)), requires_grad=False
        )
        return model

    store = AdapterStore(tmp_path / "store", durable=False)
    source = build(0)
    saved = store.save(source)  # was: the process died sampling the base at address 0
    entry = saved.manifest.base.tensors["base"]
    assert (entry.dtype, entry.shape, entry.content) == ("F32", (300,), None)
    for verify in (True, False):
        fresh = build(1)
        report = store.load(fresh, verify=verify)
        assert report.base_check == "match", verify
        assert torch.equal(fresh.adapter, source.adapter), verify


def _saved_pair(tmp_path: Path, *names: str) -> tuple[torch.nn.Module, AdapterStore]:
    """A module of plain trainable 4-element parameters, saved once."""
    source = torch.nn.Module()
    for name in names:
        source.register_parameter(name, torch.nn.Parameter(torch.randn(4)))
    store = AdapterStore(tmp_path / "store", durable=False)
    store.save(source)
    return source, store


def test_wrapper_subclass_targets_are_loaded_through_copy(tmp_path):
    """Parameters that are wrapper subclasses (a sharded model) receive the values via
    copy_, never by writing to their address 0, and two of them are not taken for one
    tied tensor (both report address 0)."""
    source, store = _saved_pair(tmp_path, "a", "b")
    for verify in (True, False):
        target = torch.nn.Module()
        target.a = torch.nn.Parameter(_wrapped(torch.zeros(4)))
        target.b = torch.nn.Parameter(_wrapped(torch.zeros(4)))
        report = store.load(target, verify=verify)
        assert sorted(report.loaded) == ["a", "b"], verify
        for name in ("a", "b"):
            loaded = getattr(target, name)
            assert torch.equal(loaded.a, getattr(source, name)), (verify, name)
            assert torch.equal(loaded.b, getattr(source, name)), (verify, name)


def _freed(values: torch.Tensor) -> torch.Tensor:
    """A view into a storage that was then freed, as FSDP leaves sharded parameters."""
    flat = values.detach().clone().reshape(-1)
    view = flat[1:].view(values.reshape(-1)[1:].shape)
    flat.untyped_storage().resize_(0)
    return view


def test_a_frozen_base_with_freed_storage_counts_by_structure_only(tmp_path):
    model = torch.nn.Module()
    model.adapter = torch.nn.Parameter(torch.randn(4))
    model.base = torch.nn.Parameter(_freed(torch.randn(301)), requires_grad=False)
    store = AdapterStore(tmp_path / "store", durable=False)
    saved = store.save(model)  # was: the process died sampling freed memory
    assert saved.manifest.base.tensors["base"].content is None


@pytest.mark.parametrize("verify", [True, False], ids=["verified", "unverified"])
def test_a_model_built_under_inference_mode_loads_with_a_dtype_cast(tmp_path, verify):
    """Servers build models under torch.inference_mode: their tensors accept in-place
    writes only inside it. Was: the byte copies landed, then the cast's copy_ raised
    torch's RuntimeError, leaving the model half loaded."""
    source = _TwoHeads()
    AdapterStore(tmp_path).save(source)
    with torch.inference_mode():
        target = _TwoHeads()
        target.second.to(torch.float64)
    report = AdapterStore(tmp_path).load(target, verify=verify)
    assert report.cast == {"second.weight": ("F32", "F64")}
    assert torch.equal(target.first.weight, source.first.weight)
    assert torch.equal(target.second.weight, source.second.weight.detach().double())


class _FlatParameter(torch.nn.Parameter):
    """A Parameter subclass, as FSDP's FlatParameter and bitsandbytes' Params4bit are."""


@pytest.mark.parametrize("kind", ["freed-storage", "freed-parameter-subclass", "meta-device"])
def test_a_load_into_tensors_without_memory_is_refused_before_any_copy(tmp_path, kind):
    _, store = _saved_pair(tmp_path, "first", "second")
    for verify in (True, False):
        target = torch.nn.Module()
        target.first = torch.nn.Parameter(torch.zeros(4))
        if kind == "freed-storage":
            target.second = torch.nn.Parameter(_freed(torch.zeros(5)))
        elif kind == "freed-parameter-subclass":  # was: the process died in copy_
            target.second = _FlatParameter(torch.zeros(4))
            target.second.untyped_storage().resize_(0)
        else:
            target.second = torch.nn.Parameter(torch.empty(4, device="meta"))
        with pytest.raises(IncompatibleAdapterError, match=r"1 tensor of the model cannot receive"):
            # was: a crash (freed), or a "successful" load that copied nothing (meta)
            store.load(target, verify=verify)
        assert torch.equal(target.first, torch.zeros(4)), verify  # nothing copied


def test_wrapper_optimizer_state_is_refused_by_name(tmp_path):
    model = torch.nn.Module()
    model.plain = torch.nn.Parameter(torch.randn(4))
    model.sharded = torch.nn.Parameter(_wrapped(torch.randn(4)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    store = AdapterStore(tmp_path / "store", durable=False)
    with pytest.raises(InvalidAdapterError, match=r"optimizer state sharded/momentum_buffer"):
        store.save(model, optimizer=optimizer, exclude=["sharded"])
    assert store.versions("default") == []


def test_manifests_handed_out_are_the_callers_own(tmp_path):
    """The store keeps one parsed manifest per file for its loads: a caller editing the
    manifest it was given (pydantic's frozen stops attribute assignment, not dict edits)
    must not change what later calls see."""
    model = _TwoHeads()
    store = AdapterStore(tmp_path)
    saved = store.save(model, metadata={"task": "x"})
    assert saved.manifest == store.manifest("default")
    for handed in (saved.manifest, store.manifest("default")):
        handed.metadata["task"] = "edited"
        del handed.tensors["first.weight"]
        handed.shards.clear()
        handed.base.tensors.clear()
    again = store.manifest("default")
    assert again.metadata == {"task": "x"}
    assert sorted(again.tensors) == ["first.weight", "second.weight"]
    assert again == _parsed_from_disk(saved.path)
    assert sorted(store.load(_TwoHeads()).loaded) == ["first.weight", "second.weight"]


def _parsed_from_disk(version_dir: Path) -> object:
    from adapter_store.manifest import parse_manifest

    return parse_manifest((version_dir / "manifest.json").read_bytes(), path="manifest.json")


def _move_shard_into_folder(version_dir: Path, shard: str, folder: str) -> str:
    """Move one shard below ``shards/<folder>/`` and list it there (the format allows
    nested shard paths; pulls write them)."""
    moved = f"shards/{folder}/{shard.removeprefix('shards/')}"
    (version_dir / moved).parent.mkdir(parents=True)
    os.rename(version_dir / shard, version_dir / moved)
    text = (version_dir / "manifest.json").read_text()
    (version_dir / "manifest.json").write_text(text.replace(f'"{shard}"', f'"{moved}"'))
    return moved


def test_shards_in_folders_load_verified_and_strangers_there_are_found(tmp_path):
    from adapter_store.validation import validate_version

    source = _TwoHeads()
    saved = AdapterStore(tmp_path).save(source)
    shard = saved.manifest.tensors["first.weight"].shard
    moved = _move_shard_into_folder(saved.path, shard, "sub")
    # Was: shards/sub itself reported as unlisted, so every verified load failed.
    assert validate_version(saved.path)[1] == []
    report = AdapterStore(tmp_path).load(_TwoHeads())
    assert "first.weight" in report.loaded
    (saved.path / moved).with_name("stranger.safetensors").write_bytes(b"x")
    (saved.path / "shards/empty").mkdir()
    with pytest.raises(IntegrityError, match=r"shards/empty: file is not listed"):
        AdapterStore(tmp_path).load(_TwoHeads())
    (saved.path / "shards/empty").rmdir()
    with pytest.raises(
        IntegrityError, match=r"shards/sub/stranger\.safetensors: file is not listed"
    ):
        AdapterStore(tmp_path).load(_TwoHeads())


class _ScaledInner(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(3))


class _WrapperWithItsOwnScale(torch.nn.Module):
    """Keys 'scale' and 'module.scale': one name once DDP's prefix is removed."""

    def __init__(self) -> None:
        super().__init__()
        self.module = _ScaledInner()
        self.scale = torch.nn.Parameter(torch.ones(3))


def test_names_that_collide_once_prefixes_are_removed_are_refused(tmp_path):
    """Was: one of the two trained tensors silently neither saved nor loaded."""
    store = AdapterStore(tmp_path)
    with pytest.raises(
        InvalidAdapterError,
        match=r"two different tensors named 'scale' .*'scale' and 'module\.scale'",
    ):
        store.save(_WrapperWithItsOwnScale())
    assert store.names() == []
    store.save(_ScaledInner())
    target = _WrapperWithItsOwnScale()
    with pytest.raises(IncompatibleAdapterError, match=r"cannot be loaded: .*'module\.scale'"):
        store.load(target)
    assert torch.equal(target.scale, torch.ones(3))
    assert torch.equal(target.module.scale, torch.ones(3))


def test_a_load_minds_only_collisions_among_names_the_adapter_uses(tmp_path):
    """Colliding buffers the adapter never mentions (not stored, not in its base) do not
    make the load ambiguous; they did once every collision refused it."""
    source = torch.nn.Module()
    source.head = torch.nn.Linear(2, 2)
    store = AdapterStore(tmp_path)
    store.save(source)
    target = _WrapperWithItsOwnScale()
    target.head = torch.nn.Linear(2, 2)
    target.register_buffer("stats", torch.zeros(1))
    target.module.register_buffer("stats", torch.ones(1))  # 'stats' and 'module.stats'
    report = store.load(target, strict=False, check_base="ignore")
    assert sorted(report.loaded) == ["head.bias", "head.weight"]
    assert torch.equal(target.head.weight, source.head.weight)


def test_one_tensor_under_a_prefixed_and_a_bare_name_is_not_a_collision(tmp_path):
    model = torch.nn.Module()
    model.module = _ScaledInner()
    model.register_parameter("scale", model.module.scale)  # the same tensor, twice
    saved = AdapterStore(tmp_path).save(model)
    assert list(saved.manifest.tensors) == ["scale"]


@pytest.mark.parametrize("verify", [True, False], ids=["verified", "unverified"])
def test_a_version_replaced_during_a_load_never_mixes_two_saves(tmp_path, monkeypatch, verify):
    """Deleting the newest version frees its number, and another process's save can
    publish a new version under it while a load runs. Was: the load read the old manifest
    and the new shards: without verification their sizes and headers match, so a model
    got another save's values. The manifest and the shards now come from one directory."""
    from adapter_store import reading

    store = AdapterStore(tmp_path, durable=False)
    first, second = _TwoHeads(), _TwoHeads()
    saved = store.save(first)
    real_plan = reading.plan_version

    def replaced_meanwhile(*args, **kwargs):
        os.rename(saved.path, tmp_path / "default" / ".deleting-1-test")  # delete, step 1
        assert store.save(second).version == 1  # the number again, other values
        return real_plan(*args, **kwargs)

    monkeypatch.setattr(reading, "plan_version", replaced_meanwhile)
    target = _TwoHeads()
    store.load(target, verify=verify)
    assert torch.equal(target.first.weight, first.first.weight)
    assert torch.equal(target.second.weight, first.second.weight)


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "not-durable"])
def test_a_save_deleted_by_another_process_right_after_its_commit_still_succeeds(
    tmp_path, monkeypatch, durable
):
    """Deletes take no lock: another process may delete a version the moment it appears.
    Was: the save's bookkeeping after the rename raised FileNotFoundError, telling the
    caller that a committed save had failed."""
    from adapter_store import publish

    store = AdapterStore(tmp_path, durable=durable)
    real = publish.version_identity if durable else publish.remember_manifest
    hook = "version_identity" if durable else "remember_manifest"

    def deleted_first(version_dir, *args):
        store.delete("default", int(version_dir.name))
        return real(version_dir, *args)

    monkeypatch.setattr(publish, hook, deleted_first)
    assert store.save(_TwoHeads()).version == 1
    assert store.versions("default") == []


def test_versions_lists_again_when_a_version_vanished_while_it_looked(tmp_path, monkeypatch):
    """keep_last=1 publishes the new version, then deletes the old one. Was: a listing
    taken before the first and checked after the second saw no version at all."""
    from adapter_store import store as store_module

    store = AdapterStore(tmp_path, durable=False)
    store.save(_TwoHeads())
    real_scandir = os.scandir
    calls = []

    def listing_then_a_save(path):
        if calls:
            return real_scandir(path)
        calls.append(path)
        entries = list(real_scandir(path))
        AdapterStore(tmp_path, durable=False).save(_TwoHeads(), keep_last=1)  # meanwhile
        return iter(entries)

    monkeypatch.setattr(store_module.os, "scandir", listing_then_a_save)
    assert store.versions("default") == [2]


def test_gc_reports_only_what_it_removed(tmp_path, monkeypatch):
    from adapter_store import retention

    store = AdapterStore(tmp_path, durable=False)
    saved = store.save(_TwoHeads())
    stuck = saved.path.parent / ".deleting-9-abcdef01"
    stuck.mkdir()
    monkeypatch.setattr(retention.shutil, "rmtree", lambda path, ignore_errors: None)
    assert store.gc() == []  # was: [stuck], which was still there
    monkeypatch.undo()
    assert store.gc() == [stuck] and not stuck.exists()


def test_a_first_save_whose_parent_cannot_be_synced_leaves_no_folder(tmp_path, monkeypatch):
    """A parent directory one may write but not read cannot be opened to fsync it. Was:
    the store folders made before that failure stayed behind."""
    from adapter_store import writing

    def unreadable(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(writing, "fsync_path", unreadable)
    with pytest.raises(PermissionError):
        AdapterStore(tmp_path / "store", durable=True).save(_TwoHeads())
    assert not (tmp_path / "store").exists()


def test_a_version_deleted_while_its_manifest_is_read_is_not_found(tmp_path, monkeypatch):
    from adapter_store import version_files

    saved = AdapterStore(tmp_path, durable=False).save(_TwoHeads())
    real = version_files.resolve_inside

    def deleted_meanwhile(*args, **kwargs):
        found = real(*args, **kwargs)
        os.rename(saved.path, saved.path.parent / ".deleting-1-test")
        return found

    monkeypatch.setattr(version_files, "resolve_inside", deleted_meanwhile)
    with pytest.raises(AdapterNotFoundError, match="deleted while it was being read"):
        version_files.read_manifest(saved.path)  # was: a bare FileNotFoundError


def test_running_out_of_file_descriptors_is_no_damage(tmp_path):
    """Each open shard holds a descriptor (two while mapped). Was: IntegrityError, as if
    a shard were damaged; it is the process's limit."""
    import resource

    model = torch.nn.ModuleDict({f"m{i}": torch.nn.Linear(2, 2) for i in range(40)})
    store = AdapterStore(tmp_path, durable=False)
    store.save(model)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 20, hard))
    try:
        with pytest.raises(OSError, match="raise the limit") as caught:
            store.load(model)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not isinstance(caught.value, IntegrityError)
