"""Push and pull through the real huggingface_hub client, against the local Hub server.

Every test talks to ``hub_server`` on 127.0.0.1 only; a "second machine" is a fresh
``HF_HOME`` plus an empty store, sharing nothing with the pushing side but the Hub.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import FsyncRecorder, assert_unchanged, make_model, snapshot, train
from hub_server import (
    HubServer,
    flip_last_byte,
    patch_hf_environment,
    start_hub_server,
    truncate_half,
)
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError
from torch import nn

from adapter_store import (
    AdapterNotFoundError,
    AdapterStore,
    IncompatibleAdapterError,
    IntegrityError,
    InvalidAdapterError,
    Manifest,
    UnsafePathError,
    load_from_hub,
)
from adapter_store.checksum import digest_buffer
from adapter_store.cli import main as cli_main
from adapter_store.hub import HubArgumentError, HubConflictError, HubError, plan_push, push
from adapter_store.manifest import Origin, parse_manifest
from adapter_store.validation import validate_version

REPO = "user/rna-lora"
SHARD = "shards/layers.1.safetensors"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any test whose traffic would leave 127.0.0.1 (records it, even if swallowed)."""
    leaks: list[object] = []
    connect = socket.socket.connect

    def checked(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and (
            not isinstance(address, tuple) or address[0] not in ("127.0.0.1", "::1")
        ):
            leaks.append(address)
            raise AssertionError(f"a test tried to connect to {address!r}")
        connect(sock, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", checked)
    yield
    assert leaks == []


@pytest.fixture
def hub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    with start_hub_server() as server:
        patch_hf_environment(monkeypatch, server.endpoint, tmp_path / "hf_home")
        yield server


def second_machine(
    server: HubServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    label: str = "second",
    durable: bool = False,
) -> AdapterStore:
    """A fresh HF_HOME and an empty store (no fsync unless ``durable``: keeps tests fast)."""
    patch_hf_environment(monkeypatch, server.endpoint, tmp_path / f"hf_home_{label}")
    return AdapterStore(tmp_path / f"store_{label}", durable=durable)


def trained_store(
    tmp_path: Path, durable: bool = False, **save: object
) -> tuple[AdapterStore, nn.Module]:
    model = make_model()
    optimizer = train(model)
    store = AdapterStore(tmp_path / "store", durable=durable)
    store.save(model, "rna", optimizer=optimizer, step=3, **save)  # type: ignore[arg-type]
    return store, model


def trainable_bytes(model: nn.Module) -> dict[str, bytes]:
    return {
        key: param.detach().numpy().tobytes()
        for key, param in model.named_parameters()
        if param.requires_grad
    }


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under ``root``: proves nothing changed."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def resolve_gets(server: HubServer) -> list[str]:
    return [path for method, path in server.requests if method == "GET" and "/resolve/" in path]


# --- the full cycle ------------------------------------------------------------------------


def test_push_then_pull_on_a_second_machine_is_bit_identical(hub_server, tmp_path, monkeypatch):
    store, model = trained_store(
        tmp_path,
        durable=True,
        metadata={"description": "LoRA for RNA folding", "base_model": "tiny/base"},
    )
    local = store.path("rna")
    commit = store.push_to_hub(REPO, "rna")

    assert hub_server.commits(REPO)[0] == commit and len(hub_server.commits(REPO)) == 2
    remote = hub_server.files(REPO)
    manifest = store.manifest("rna")
    assert set(remote) == {
        ".gitattributes",
        "README.md",
        "manifest.json",
        *manifest.relative_paths(),
    }
    for path in manifest.relative_paths():
        assert remote[path] == (local / path).read_bytes(), path
    card = remote["README.md"].decode()
    for text in (
        "LoRA for RNA folding",
        "tiny/base",
        manifest.base.structure_digest,
        "`layers.1`",
        "8 tensors",
        f'load_from_hub(model, "{REPO}")',
    ):
        assert text in card, text

    other = second_machine(hub_server, monkeypatch, tmp_path, durable=True)
    hub_server.requests.clear()
    recorder = FsyncRecorder(monkeypatch)
    saved = other.pull(REPO)
    recorder.assert_durable_commit()  # shards/ included: a pulled version survives power loss
    recorder.assert_synced(other.root.parent, other.root)  # the new store and name folders
    assert (saved.name, saved.version) == ("rna-lora", 1)
    assert saved.manifest.origin == Origin(repo_id=REPO, revision="main", commit=commit)
    # The manifest resolves the branch once; every other file comes from that commit.
    gets = [path for path in resolve_gets(hub_server) if not path.endswith("/manifest.json")]
    assert gets and all(f"/resolve/{commit}/" in path for path in gets)
    for path in manifest.relative_paths():
        assert (saved.path / path).read_bytes() == (local / path).read_bytes(), path
    assert validate_version(saved.path)[1] == []

    fresh = make_model()
    optimizer = torch.optim.Adam([p for p in fresh.parameters() if p.requires_grad], lr=0.05)
    report = other.load(fresh, "rna-lora", optimizer=optimizer)
    assert trainable_bytes(fresh) == trainable_bytes(model)
    assert report.base_check == "match" and report.optimizer_restored
    assert len(optimizer.state) == len(trainable_bytes(model))


def test_pulling_the_first_commit_id_gets_the_first_adapter(hub_server, tmp_path, monkeypatch):
    store, model = trained_store(tmp_path)
    first_bytes = trainable_bytes(model)
    first = store.push_to_hub(REPO, "rna")
    train(model, steps=2, seed=7)
    store.save(model, "rna")
    second = store.push_to_hub(REPO, "rna")
    assert first != second and hub_server.commits(REPO)[:2] == [second, first]

    other = second_machine(hub_server, monkeypatch, tmp_path)
    old = other.pull(REPO, revision=first)
    new = other.pull(REPO)
    assert (old.manifest.origin.commit, new.manifest.origin.commit) == (first, second)
    assert (old.version, new.version) == (1, 2)
    fresh = make_model()
    other.load(fresh, "rna-lora", version=1)
    assert trainable_bytes(fresh) == first_bytes
    other.load(fresh, "rna-lora")
    assert trainable_bytes(fresh) == trainable_bytes(model) != first_bytes


@pytest.mark.parametrize(
    ("path", "damage", "message"),
    [
        (SHARD, flip_last_byte, r"layers\.1\.safetensors: xxh3-128 checksum .* does not match"),
        (SHARD, truncate_half, r"layers\.1\.safetensors at [0-9a-f]{12}: the download is incompl"),
        ("manifest.json", flip_last_byte, r"manifest\.json at [0-9a-f]{12}: downloaded bytes"),
        ("manifest.json", truncate_half, r"manifest\.json at main: the download is incomplete"),
    ],
    ids=["shard-flipped-byte", "shard-truncated", "manifest-flipped-byte", "manifest-truncated"],
)
def test_damaged_download_raises_and_leaves_the_store_unchanged(
    hub_server, tmp_path, monkeypatch, path, damage, message
):
    store, model = trained_store(tmp_path)
    store.push_to_hub(REPO, "rna")
    other = second_machine(hub_server, monkeypatch, tmp_path)
    other.pull(REPO)
    train(model, steps=2, seed=7)  # every tensor changes: no file of v2 is in the cache yet
    store.save(model, "rna")
    store.push_to_hub(REPO, "rna")
    before = tree(other.root)

    hub_server.tamper(REPO, path, damage)
    with pytest.raises(IntegrityError, match=message):
        other.pull(REPO)
    assert tree(other.root) == before  # no temporary folder, no version 2
    assert other.versions("rna-lora") == [1]

    # The corrupt copy was evicted from the Hugging Face cache: a clean retry downloads it again.
    hub_server.tamper(REPO, path, None)
    fresh = make_model()
    load_from_hub(fresh, REPO, store=other)
    assert other.versions("rna-lora") == [1, 2]
    assert trainable_bytes(fresh) == trainable_bytes(model)


def test_a_failed_first_pull_leaves_no_folder_behind(hub_server, tmp_path, monkeypatch):
    store, _ = trained_store(tmp_path)
    store.push_to_hub(REPO, "rna")
    other = second_machine(hub_server, monkeypatch, tmp_path)
    hub_server.tamper(REPO, SHARD)
    with pytest.raises(IntegrityError, match="layers.1.safetensors"):
        other.pull(REPO)
    assert not other.root.exists()


# --- partial pulls -------------------------------------------------------------------------


def test_modules_download_only_their_shards(hub_server, tmp_path, monkeypatch):
    store, model = trained_store(tmp_path)
    store.push_to_hub(REPO, "rna")
    other = second_machine(hub_server, monkeypatch, tmp_path)
    hub_server.requests.clear()

    saved = other.pull(REPO, modules=["layers.1", "head"])

    fetched = sorted(path.rsplit("/", 1)[-1] for path in resolve_gets(hub_server))
    assert fetched == ["head.safetensors", "layers.1.safetensors", "manifest.json"]
    for skipped in (
        "shards/layers.0.safetensors",
        "shards/layers.2.safetensors",
        "optimizer.safetensors",
    ):
        assert hub_server.downloads(REPO, skipped) == 0, skipped
    # The local manifest describes exactly what was pulled: valid, not corrupt.
    assert saved.manifest.groups == ["layers.1", "head"] and saved.manifest.optimizer is None
    assert validate_version(saved.path)[1] == []
    assert sorted(p.name for p in (saved.path / "shards").iterdir()) == [
        "head.safetensors",
        "layers.1.safetensors",
    ]

    fresh = make_model()
    before = snapshot(fresh)
    with pytest.raises(IncompatibleAdapterError, match="not in the adapter"):
        other.load(fresh, "rna-lora")  # a strict full load names what was not pulled
    assert_unchanged(fresh, before)
    loose = other.load(make_model(), "rna-lora", strict=False)
    assert sorted(loose.missing) == [f"layers.{i}.q.lora_{m}" for i in (0, 2) for m in ("A", "B")]
    report = other.load(fresh, "rna-lora", modules=["layers.1", "head"])
    trained = trainable_bytes(model)
    got = trainable_bytes(fresh)
    assert sorted(report.loaded) == sorted(k for k in trained if k.startswith(("layers.1", "head")))
    for key in trained:
        expected = trained[key] if key in report.loaded else before[key].numpy().tobytes()
        assert got[key] == expected, key


def test_unknown_module_is_refused_before_any_shard_download(hub_server, tmp_path, monkeypatch):
    store, _ = trained_store(tmp_path)
    store.push_to_hub(REPO, "rna")
    other = second_machine(hub_server, monkeypatch, tmp_path)
    with pytest.raises(AdapterNotFoundError, match=r"manifest\.json: no module group 'layers\.9'"):
        other.pull(REPO, modules=["layers.9"])
    assert [p for p in resolve_gets(hub_server) if "/shards/" in p] == []
    assert not other.root.exists()


@pytest.mark.parametrize("modules", [[], ()], ids=["empty-list", "empty-tuple"])
def test_an_empty_module_selection_is_refused_before_any_download(
    hub_server, tmp_path, monkeypatch, modules
):
    store, _ = trained_store(tmp_path)
    store.push_to_hub(REPO, "rna")
    other = second_machine(hub_server, monkeypatch, tmp_path)
    with pytest.raises(
        IncompatibleAdapterError, match=r"manifest\.json: the modules asked for \(\[\]\) hold no"
    ):
        other.pull(REPO, modules=modules)
    assert [p for p in resolve_gets(hub_server) if "/shards/" in p] == []
    assert not other.root.exists()


# --- what a push commits -------------------------------------------------------------------


def test_identical_push_makes_no_commit(hub_server, tmp_path, monkeypatch):
    store, _ = trained_store(tmp_path)
    commit = store.push_to_hub(REPO, "rna")
    hub_server.requests.clear()
    assert store.push_to_hub(REPO, "rna") == commit
    assert hub_server.commits(REPO)[0] == commit and len(hub_server.commits(REPO)) == 2
    assert not [path for method, path in hub_server.requests if method == "POST"]

    # A pulled copy differs only in local fields (name, version, origin): still the same.
    other = second_machine(hub_server, monkeypatch, tmp_path)
    other.pull(REPO, name="copy")
    assert other.push_to_hub(REPO, "copy") == commit
    # Another place in the repo does not hold it yet.
    assert store.push_to_hub(REPO, "rna", path_in_repo="elsewhere") != commit


def test_a_different_adapter_replaces_the_old_files(hub_server, tmp_path, monkeypatch):
    store, _ = trained_store(tmp_path)
    store.push_to_hub(REPO, "rna")
    small = make_model(layers=1)
    train(small)
    store.save(small, "small")
    store.push_to_hub(REPO, "small")
    assert sorted(p for p in hub_server.files(REPO) if p.startswith("shards/")) == [
        "shards/head.safetensors",
        "shards/layers.0.safetensors",
    ]
    assert "optimizer.safetensors" not in hub_server.files(REPO)
    other = second_machine(hub_server, monkeypatch, tmp_path)
    fresh = make_model(layers=1)
    load_from_hub(fresh, REPO, store=other)
    assert trainable_bytes(fresh) == trainable_bytes(small)


def _move_shard(version: Path, old: str, new: str) -> None:
    """Store one shard at another path of the version (the format allows any path)."""
    manifest = json.loads((version / "manifest.json").read_text())
    for shard in manifest["shards"]:
        shard["path"] = new if shard["path"] == old else shard["path"]
    for entry in manifest["tensors"].values():
        entry["shard"] = new if entry["shard"] == old else entry["shard"]
    (version / old).rename(version / new)
    (version / "manifest.json").write_text(json.dumps(manifest))


def test_a_shard_outside_shards_is_the_adapters_file(hub_server, tmp_path):
    store, model = trained_store(tmp_path)
    _move_shard(store.path("rna"), "shards/head.safetensors", "head.safetensors")
    assert validate_version(store.path("rna"))[1] == []
    first = push(store, REPO, "rna")
    again = push(store, REPO, "rna")
    assert first.changed and not again.changed and again.commit == first.commit
    assert "head.safetensors" in hub_server.files(REPO)

    store.save(model, "rna")  # a new version, its head back under shards/
    assert push(store, REPO, "rna").changed
    files = hub_server.files(REPO)
    assert "head.safetensors" not in files  # stale: listed by the replaced manifest only
    assert {".gitattributes", "shards/head.safetensors"} <= set(files)


def test_an_adapter_pushed_below_another_is_not_its_file(hub_server, tmp_path):
    """Several adapters may share a repo. Was: a push to the root deleted the adapter at
    shards/old, whose files all start with shards/ as the root adapter's shards do."""
    store, _ = trained_store(tmp_path)
    push(store, REPO, "rna", path_in_repo="shards/old")
    below = {p for p in hub_server.files(REPO) if p.startswith("shards/old/")}
    assert "shards/old/manifest.json" in below
    first = push(store, REPO, "rna")
    assert first.changed and below <= set(hub_server.files(REPO))
    assert not push(store, REPO, "rna").changed  # and not counted as its own either


def test_non_finite_metadata_pushes_and_pulls_once(hub_server, tmp_path, monkeypatch):
    """NaN != NaN: comparing manifests as dicts took every pull of the same commit for a
    new adapter (a new version each time) and every push of it for a change."""
    metadata = {"loss": float("nan"), "best": float("-inf")}
    store, _ = trained_store(tmp_path, metadata=metadata)
    first = push(store, REPO, "rna")
    again = push(store, REPO, "rna")
    assert not again.changed and again.commit == first.commit
    other = second_machine(hub_server, monkeypatch, tmp_path)
    assert other.pull(REPO).version == 1
    assert other.pull(REPO).version == 1
    assert other.versions("rna-lora") == [1]
    assert math.isnan(other.manifest("rna-lora").metadata["loss"])


def test_branch_path_in_repo_and_private(hub_server, tmp_path, monkeypatch):
    store, _ = trained_store(tmp_path)
    commit = store.push_to_hub(
        REPO, "rna", revision="dev", path_in_repo="adapters/rna", private=True
    )
    assert HfApi().model_info(REPO).private is True
    assert hub_server.files(REPO) == {".gitattributes": hub_server.files(REPO)[".gitattributes"]}
    files = hub_server.files(REPO, "dev")
    assert {"adapters/rna/manifest.json", "adapters/rna/README.md"} <= set(files)
    assert 'path_in_repo="adapters/rna"' in files["adapters/rna/README.md"].decode()

    other = second_machine(hub_server, monkeypatch, tmp_path)
    saved = other.pull(REPO, revision="dev", path_in_repo="adapters/rna")
    assert saved.name == "rna" and saved.manifest.origin == Origin(
        repo_id=REPO, revision="dev", commit=commit, path_in_repo="adapters/rna"
    )
    with pytest.raises(UnsafePathError, match="path_in_repo"):
        other.pull(REPO, path_in_repo="../up")


def test_create_pr_leaves_main_alone(hub_server, tmp_path, monkeypatch):
    store, model = trained_store(tmp_path)
    first = store.push_to_hub(REPO, "rna")
    train(model, steps=2, seed=7)
    store.save(model, "rna")
    result = push(store, REPO, "rna", create_pr=True)
    assert result.pr_url == f"{hub_server.endpoint}/{REPO}/discussions/1"
    assert hub_server.commits(REPO)[0] == first
    assert hub_server.commits(REPO, "refs/pr/1")[:2] == [result.commit, first]

    other = second_machine(hub_server, monkeypatch, tmp_path)
    fresh = make_model()
    load_from_hub(fresh, REPO, revision="refs/pr/1", store=other)
    assert trainable_bytes(fresh) == trainable_bytes(model)


# --- concurrent pushes ---------------------------------------------------------------------


def test_a_stale_parent_is_a_conflict_and_commits_nothing(hub_server, tmp_path):
    store, model = trained_store(tmp_path)
    store.push_to_hub(REPO, "rna")
    pushed = hub_server.files(REPO)["manifest.json"]
    train(model, steps=2, seed=7)
    store.save(model, "rna")
    # Another writer lands a commit after our push read the head, before it commits.
    landed: list[str] = []
    hub_server.on_next_commit(
        REPO, lambda: landed.append(hub_server.commit(REPO, {"notes.txt": b"other writer"}))
    )
    with pytest.raises(HubConflictError, match=f"push of 'rna' v2 to {REPO}: the branch moved"):
        store.push_to_hub(REPO, "rna")
    assert hub_server.commits(REPO)[0] == landed[0]
    assert hub_server.files(REPO)["manifest.json"] == pushed  # nothing of v2 went in

    retried = store.push_to_hub(REPO, "rna")
    assert hub_server.commits(REPO)[:2] == [retried, landed[0]]
    assert hub_server.files(REPO)["notes.txt"] == b"other writer"
    assert parse_manifest(hub_server.files(REPO)["manifest.json"]).version == 2


def test_conflict_error_keeps_the_http_cause(hub_server, tmp_path):
    store, _ = trained_store(tmp_path)
    hub_server.on_next_commit(REPO, lambda: hub_server.commit(REPO, {"x": b"x"}))
    # The repo does not exist yet: the push creates it, then loses the race.
    with pytest.raises(HubConflictError) as caught:
        store.push_to_hub(REPO, "rna")
    assert caught.value.status == 412
    assert isinstance(caught.value.__cause__, HfHubHTTPError)


def test_concurrent_pushes_never_interleave(hub_server, tmp_path):
    stores = []
    for seed in (1, 2):
        store = AdapterStore(tmp_path / f"writer{seed}", durable=False)
        model = make_model(seed=seed)
        train(model, seed=seed)
        store.save(model, "rna")
        stores.append(store)
    HfApi().create_repo(REPO)
    barrier = threading.Barrier(len(stores))
    outcomes: list[object] = []

    def writer(store: AdapterStore) -> None:
        barrier.wait()
        try:
            outcomes.append(store.push_to_hub(REPO, "rna"))
        except HubConflictError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=writer, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 2 and any(isinstance(o, str) for o in outcomes)
    # Every commit on main holds one whole adapter: exactly its manifest's files, each with
    # the bytes the manifest's checksum names (both writers use the same file names).
    for commit in hub_server.commits(REPO)[:-1]:
        files = hub_server.files(REPO, commit)
        manifest = parse_manifest(files["manifest.json"])
        shards = {p for p in files if p.startswith("shards/") or p == "optimizer.safetensors"}
        assert shards == set(manifest.relative_paths())
        for shard in manifest.shards:
            digest = digest_buffer(files[shard.path], shard.checksum.algorithm)
            assert digest == shard.checksum.digest, (commit, shard.path)


# --- the token -----------------------------------------------------------------------------


def test_the_token_is_sent_but_never_written_logged_or_shown(
    hub_server, tmp_path, monkeypatch, caplog, capfd
):
    token = "hf_" + "SeCrEtToKeN" * 3
    caplog.set_level(logging.DEBUG)
    store, model = trained_store(tmp_path)
    store.push_to_hub(REPO, "rna", token=token)
    other = second_machine(hub_server, monkeypatch, tmp_path)
    other.pull(REPO, token=token)
    load_from_hub(make_model(), REPO, token=token, store=other)
    train(model, seed=9)
    store.save(model, "rna")
    hub_server.on_next_commit(REPO, lambda: hub_server.commit(REPO, {"x": b"x"}))
    failures = []
    for action in (
        lambda: store.push_to_hub(REPO, "rna", token=token),
        lambda: other.pull("user/missing", token=token),
        lambda: other.pull(REPO, revision="nope", token=token),
        lambda: other.pull(REPO, path_in_repo="nowhere", token=token),
    ):
        with pytest.raises((HubError, AdapterNotFoundError)) as caught:
            action()
        failures.append(caught.value)

    assert f"Bearer {token}" in hub_server.authorizations  # it was really used
    for error in failures:
        cause: BaseException | None = error
        while cause is not None:
            assert token not in str(cause) and token not in repr(cause)
            cause = cause.__cause__ or cause.__context__
    for path in tmp_path.rglob("*"):
        assert token not in path.name
        if path.is_file() and not path.is_symlink():
            assert token.encode() not in path.read_bytes(), path
    assert token not in caplog.text
    out, err = capfd.readouterr()
    assert token not in out and token not in err


# --- errors, offline mode, the convenience -------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repo_id": "user/missing"}, r"user/missing/manifest\.json at main: no such repository"),
        ({"revision": "nope"}, r"manifest\.json at nope: no such revision"),
        ({"path_in_repo": "nowhere"}, r"nowhere/manifest\.json at main: no such file"),
    ],
    ids=["repo", "revision", "file"],
)
def test_missing_repo_revision_or_file(hub_server, tmp_path, kwargs, message):
    store, _ = trained_store(tmp_path)
    store.push_to_hub(REPO, "rna")
    other = AdapterStore(tmp_path / "other", durable=False)
    with pytest.raises(AdapterNotFoundError, match=message) as caught:
        other.pull(**{"repo_id": REPO, **kwargs})
    assert type(caught.value.__cause__).__module__.startswith("huggingface_hub")
    assert not other.root.exists()


def test_a_local_name_taken_from_the_repo_that_the_store_refuses_says_how_to_name_it(
    hub_server, tmp_path
):
    store, _ = trained_store(tmp_path)
    push(store, REPO, "rna", path_in_repo="runs/run 1")
    with pytest.raises(InvalidAdapterError, match=r"taken from path_in_repo.*name="):
        store.pull(REPO, path_in_repo="runs/run 1")
    assert store.pull(REPO, path_in_repo="runs/run 1", name="run-1").version == 1


def test_an_invalid_repo_id_is_refused_before_any_request(hub_server, tmp_path):
    store, _ = trained_store(tmp_path)
    hub_server.requests.clear()
    with pytest.raises(HubArgumentError, match="to a/b/c: Repo id must be in the form"):
        store.push_to_hub("a/b/c", "rna")
    with pytest.raises(HubArgumentError, match="a/b/c/manifest.json at main: Repo id"):
        store.pull("a/b/c")
    assert hub_server.requests == [] and store.names() == ["rna"]


def test_an_unreachable_hub_is_a_hub_error(hub_server, tmp_path, monkeypatch):
    store, _ = trained_store(tmp_path)
    with socket.socket() as probe:  # a port nobody listens on, on this machine
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    with pytest.raises(HubError, match=f"push of 'rna' v1 to {REPO}: cannot reach the Hub") as err:
        store.push_to_hub(REPO, "rna")
    assert isinstance(err.value, OSError) and err.value.__cause__ is not None


def test_offline_mode_pulls_from_the_cache(hub_server, tmp_path, monkeypatch):
    store, _ = trained_store(tmp_path)
    commit = store.push_to_hub(REPO, "rna")
    AdapterStore(tmp_path / "warm", durable=False).pull(REPO)  # fills the Hugging Face cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub_server.requests.clear()
    saved = AdapterStore(tmp_path / "offline", durable=False).pull(REPO)
    assert hub_server.requests == [] and saved.manifest.origin.commit == commit
    with pytest.raises(HubError, match="not in the local Hugging Face cache"):
        AdapterStore(tmp_path / "offline").pull(REPO, path_in_repo="elsewhere")


def test_load_from_hub_pulls_once_per_commit(hub_server, tmp_path, monkeypatch):
    store, model = trained_store(tmp_path)
    store.push_to_hub(REPO, "rna")
    second_machine(hub_server, monkeypatch, tmp_path)
    fresh = make_model()
    report = load_from_hub(fresh, REPO)
    assert trainable_bytes(fresh) == trainable_bytes(model)
    assert report.name == "rna-lora" and len(report.loaded) == len(trainable_bytes(model))
    home = AdapterStore(tmp_path / "hf_home_second" / "adapter-store")
    assert home.versions("rna-lora") == [1]
    hub_server.requests.clear()
    load_from_hub(make_model(), REPO)
    assert home.versions("rna-lora") == [1] and resolve_gets(hub_server) == []


def test_plan_push_compares_content_not_local_fields(tmp_path):
    store, _ = trained_store(tmp_path)
    manifest = store.manifest("rna")
    files = {p: s.nbytes for p, s in ((s.path, s) for s in manifest.shards)}
    files["optimizer.safetensors"] = manifest.optimizer.nbytes
    origin = Origin(repo_id=REPO, commit="a" * 40)
    pulled = manifest.model_copy(update={"name": "other", "version": 7, "origin": origin})
    assert plan_push(manifest, pulled, files).unchanged
    assert not plan_push(manifest, None, files).unchanged
    assert not plan_push(manifest, manifest.model_copy(update={"step": 4}), files).unchanged
    short = {**files, "shards/head.safetensors": 1}
    assert not plan_push(manifest, manifest, short).unchanged
    stale = plan_push(manifest, manifest, {**files, "shards/old.safetensors": 9, "README.md": 1})
    assert not stale.unchanged and stale.delete == ("shards/old.safetensors",)


# --- a real PEFT model ---------------------------------------------------------------------


def test_real_peft_lora_through_the_hub(hub_server, tmp_path, monkeypatch):
    peft = pytest.importorskip("peft")

    def build() -> nn.Module:
        torch.manual_seed(0)
        base = nn.Sequential()
        base.add_module("fc1", nn.Linear(8, 16))
        base.add_module("act", nn.ReLU())
        base.add_module("fc2", nn.Linear(16, 4))
        config = peft.LoraConfig(r=2, target_modules=["fc1", "fc2"], init_lora_weights=False)
        return peft.get_peft_model(base, config)

    model = build()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    store = AdapterStore(tmp_path / "store", durable=False)
    store.save(model, "peft")
    store.push_to_hub(REPO, "peft")
    other = second_machine(hub_server, monkeypatch, tmp_path)
    fresh = build()
    assert trainable_bytes(fresh) != trainable_bytes(model)
    report = load_from_hub(fresh, REPO, store=other)
    assert trainable_bytes(fresh) == trainable_bytes(model) and len(report.loaded) == 4


# --- command line --------------------------------------------------------------------------


def test_cli_push_and_pull(hub_server, tmp_path, monkeypatch):
    store, _ = trained_store(tmp_path)
    runner = CliRunner()
    pushed = runner.invoke(cli_main, ["push", str(store.root), "rna", REPO, "-m", "first"])
    assert pushed.exit_code == 0, pushed.output
    commit = hub_server.commits(REPO)[0]
    assert f"pushed 'rna' to {REPO}: commit {commit}" in pushed.stdout
    again = runner.invoke(cli_main, ["push", str(store.root), "rna", REPO, "--version", "1"])
    assert again.exit_code == 0 and "nothing pushed" in again.stdout
    assert len(hub_server.commits(REPO)) == 2

    second_machine(hub_server, monkeypatch, tmp_path)
    target = tmp_path / "cli_store"
    pulled = runner.invoke(
        cli_main,
        ["pull", REPO, str(target), "--name", "rna", "--modules", "layers.0,head", "--no-progress"],
    )
    assert pulled.exit_code == 0, pulled.output
    assert f"pulled {REPO} at {commit}" in pulled.stdout and pulled.stderr == ""
    assert AdapterStore(target).manifest("rna").groups == ["layers.0", "head"]


def test_cli_failures_exit_1_with_one_line(hub_server, tmp_path):
    store, _ = trained_store(tmp_path)
    runner = CliRunner()
    missing = runner.invoke(cli_main, ["pull", "user/missing", str(tmp_path / "s")])
    assert missing.exit_code == 1
    assert missing.stderr.startswith("error: user/missing/manifest.json at main: no such repo")
    unknown = runner.invoke(cli_main, ["push", str(store.root), "nope", REPO])
    assert unknown.exit_code == 1 and "no adapter named 'nope'" in unknown.stderr
    usage = runner.invoke(cli_main, ["push", str(store.root), "rna", REPO, "--version", "0"])
    assert usage.exit_code == 2


def test_cli_progress_bars(hub_server, tmp_path, monkeypatch):
    store, _ = trained_store(tmp_path)
    runner = CliRunner()
    pushed = runner.invoke(cli_main, ["push", str(store.root), "rna", REPO, "--progress"])
    assert pushed.exit_code == 0 and "verify: 100%" in pushed.stderr
    second_machine(hub_server, monkeypatch, tmp_path)
    pulled = runner.invoke(cli_main, ["pull", REPO, str(tmp_path / "p"), "--progress"])
    assert pulled.exit_code == 0 and f"pull {REPO}: 100%" in pulled.stderr
    quiet = runner.invoke(cli_main, ["pull", REPO, str(tmp_path / "q")])  # not a terminal
    assert quiet.exit_code == 0 and "%" not in quiet.stderr


def test_importing_the_package_does_not_import_huggingface_hub():
    code = (
        "import sys, adapter_store; assert 'huggingface_hub' not in sys.modules; "
        "adapter_store.load_from_hub; assert 'huggingface_hub' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_manifest_on_the_hub_has_no_origin(hub_server, tmp_path, monkeypatch):
    store, _ = trained_store(tmp_path)
    store.push_to_hub(REPO, "rna")
    other = second_machine(hub_server, monkeypatch, tmp_path)
    other.pull(REPO, name="copy")
    other.push_to_hub("user/mirror", "copy")
    raw = json.loads(hub_server.files("user/mirror")["manifest.json"])
    assert raw["origin"] is None and raw["name"] == "copy"
    assert Manifest.model_validate(raw).tensors == store.manifest("rna").tensors
