"""Tests for the fake Hub in ``hub_server.py``, driven by the real ``huggingface_hub`` client."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
from hub_server import (
    PARENT_MISMATCH,
    HubServer,
    git_blob_oid,
    patch_hf_environment,
    start_hub_server,
    truncate_half,
)
from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

REPO = "user/demo"
FILES = {
    "config.json": b'{"rank": 8}',
    "weights/adapter.bin": bytes(range(256)) * 4,
    "weights/nested/extra.txt": b"extra",
}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A fresh fake Hub, with huggingface_hub's defaults pointed at it (the conftest recipe)."""
    with start_hub_server() as server:
        patch_hf_environment(monkeypatch, server.endpoint, tmp_path / "hf_home")
        yield server


@pytest.fixture
def api(hub: HubServer) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token="hf_dummy")


@pytest.fixture
def uploaded(api: HfApi, tmp_path: Path) -> str:
    """Create REPO and upload FILES in one commit; returns that commit id."""
    folder = tmp_path / "upload"
    for name, data in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    api.create_repo(REPO)
    return api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="add adapter").oid


def download(hub: HubServer, cache: Path, filename: str, revision: str | None = None) -> bytes:
    """Fetch REPO/filename through hf_hub_download into ``cache`` and return its bytes."""
    path = hf_hub_download(
        REPO, filename, revision=revision, cache_dir=cache, endpoint=hub.endpoint, token="hf_dummy"
    )
    return Path(path).read_bytes()


def test_create_repo_exist_ok(hub: HubServer, api: HfApi) -> None:
    url = api.create_repo(REPO)
    assert (url.repo_id, url.endpoint, str(url)) == (REPO, hub.endpoint, f"{hub.endpoint}/{REPO}")
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(REPO)
    assert err.value.response.status_code == 409
    # Like the real Hub: a first commit holding .gitattributes.
    assert api.list_repo_files(REPO) == [".gitattributes"]
    assert api.model_info(REPO).sha == hub.commits(REPO)[0]
    assert api.create_repo("solo", private=True).repo_id == "user/solo"
    assert api.model_info("user/solo").private is True


def test_upload_folder_and_listing(hub: HubServer, api: HfApi, uploaded: str) -> None:
    assert hub.commits(REPO)[0] == uploaded and len(hub.commits(REPO)) == 2
    assert hub.files(REPO) == {".gitattributes": hub.files(REPO)[".gitattributes"], **FILES}
    assert api.list_repo_files(REPO) == sorted([".gitattributes", *FILES])
    top = {entry.path: type(entry).__name__ for entry in api.list_repo_tree(REPO)}
    assert top == {".gitattributes": "RepoFile", "config.json": "RepoFile", "weights": "RepoFolder"}
    sub = [entry.path for entry in api.list_repo_tree(REPO, "weights", recursive=True)]
    assert sub == ["weights/adapter.bin", "weights/nested", "weights/nested/extra.txt"]
    info = api.model_info(REPO, files_metadata=True)
    assert info.sha == uploaded
    assert {s.rfilename: s.size for s in info.siblings or []}["config.json"] == len(
        FILES["config.json"]
    )
    commits = api.list_repo_commits(REPO)
    assert [c.commit_id for c in commits] == hub.commits(REPO)
    assert commits[0].title == "add adapter"


def test_hf_hub_download_and_metadata(hub: HubServer, uploaded: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert download(hub, cache, "weights/adapter.bin") == FILES["weights/adapter.bin"]
    assert download(hub, cache, "weights/adapter.bin") == FILES["weights/adapter.bin"]
    assert hub.downloads(REPO, "weights/adapter.bin") == 1  # second call: HEAD only, cache hit
    url = hf_hub_url(REPO, "config.json", endpoint=hub.endpoint)
    meta = get_hf_file_metadata(url, token="hf_dummy")
    assert (meta.commit_hash, meta.etag, meta.size) == (
        uploaded,
        git_blob_oid(FILES["config.json"]),
        11,
    )


def test_snapshot_download_allow_patterns(hub: HubServer, uploaded: str, tmp_path: Path) -> None:
    hub.requests.clear()
    folder = snapshot_download(
        REPO, allow_patterns=["weights/*"], cache_dir=tmp_path / "cache", endpoint=hub.endpoint
    )
    got = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())
    assert got == ["weights/adapter.bin", "weights/nested/extra.txt"]
    gets = [path for method, path in hub.requests if method == "GET" and "/resolve/" in path]
    assert sorted(gets) == [f"/{REPO}/resolve/{uploaded}/{name}" for name in got]
    assert hub.downloads(REPO, "config.json") == 0


def test_old_commit_serves_old_bytes(
    hub: HubServer, api: HfApi, uploaded: str, tmp_path: Path
) -> None:
    second = api.upload_file(path_or_fileobj=b"v2", path_in_repo="config.json", repo_id=REPO).oid
    assert hub.commits(REPO)[:2] == [second, uploaded]
    cache = tmp_path / "cache"
    assert download(hub, cache, "config.json") == b"v2"
    assert download(hub, cache, "config.json", revision=uploaded) == FILES["config.json"]
    assert api.model_info(REPO, revision=uploaded).sha == uploaded


def test_unchanged_upload_makes_no_commit(hub: HubServer, api: HfApi, uploaded: str) -> None:
    # preupload returns each existing file's oid, so the client drops unchanged files.
    info = api.upload_file(
        path_or_fileobj=FILES["config.json"], path_in_repo="config.json", repo_id=REPO
    )
    assert info.oid == uploaded and hub.commits(REPO)[0] == uploaded


def test_stale_parent_commit_is_rejected(hub: HubServer, api: HfApi, uploaded: str) -> None:
    initial = hub.commits(REPO)[1]
    add = CommitOperationAdd(path_in_repo="late.txt", path_or_fileobj=b"late")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit(REPO, [add], commit_message="late", parent_commit=initial)
    assert err.value.response.status_code == 412
    assert PARENT_MISMATCH in str(err.value)
    add = CommitOperationAdd(path_in_repo="late.txt", path_or_fileobj=b"late")
    assert (
        api.create_commit(REPO, [add], commit_message="ok", parent_commit=uploaded).oid
        == hub.commits(REPO)[0]
    )


def test_create_pr(hub: HubServer, api: HfApi, uploaded: str, tmp_path: Path) -> None:
    info = api.upload_file(
        path_or_fileobj=b"pr", path_in_repo="config.json", repo_id=REPO, create_pr=True
    )
    assert (info.pr_revision, info.pr_num, info.pr_url) == (
        "refs/pr/1",
        1,
        f"{hub.endpoint}/{REPO}/discussions/1",
    )
    assert hub.commits(REPO)[0] == uploaded  # main untouched
    assert hub.commits(REPO, "refs/pr/1")[:2] == [info.oid, uploaded]
    assert download(hub, tmp_path / "cache", "config.json", revision="refs/pr/1") == b"pr"
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert [(r.ref, r.target_commit) for r in refs.pull_requests or []] == [("refs/pr/1", info.oid)]


def test_create_branch_and_delete(hub: HubServer, api: HfApi, uploaded: str) -> None:
    api.create_branch(REPO, branch="dev")
    api.create_branch(REPO, branch="dev", exist_ok=True)
    api.delete_folder("weights", repo_id=REPO, revision="dev")
    api.delete_file("config.json", repo_id=REPO, revision="dev")
    assert api.list_repo_files(REPO, revision="dev") == [".gitattributes"]
    assert hub.commits(REPO)[0] == uploaded
    with pytest.raises(EntryNotFoundError):
        api.delete_file("missing.txt", repo_id=REPO)


def test_not_found_errors(hub: HubServer, api: HfApi, uploaded: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("user/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/missing", "config.json", cache_dir=cache, endpoint=hub.endpoint)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="nope")
    with pytest.raises(RevisionNotFoundError):
        download(hub, cache, "config.json", revision="nope")
    with pytest.raises(EntryNotFoundError):
        download(hub, cache, "missing.txt")
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(REPO, "missing"))


def test_tamper_changes_get_only(hub: HubServer, uploaded: str, tmp_path: Path) -> None:
    name, original = "weights/adapter.bin", FILES["weights/adapter.bin"]
    hub.tamper(REPO, name)
    flipped = download(hub, tmp_path / "flipped", name)
    # The client does not hash regular files: corruption of the same length goes unnoticed.
    assert len(flipped) == len(original) and flipped != original
    meta = get_hf_file_metadata(hf_hub_url(REPO, name, endpoint=hub.endpoint))
    assert (meta.etag, meta.size) == (git_blob_oid(original), len(original))
    hub.tamper(REPO, name, truncate_half)
    with pytest.raises(OSError, match="Consistency check failed"):
        download(hub, tmp_path / "truncated", name)
    hub.tamper(REPO, name, None)
    assert download(hub, tmp_path / "clean", name) == original


def test_range_request(hub: HubServer, uploaded: str) -> None:
    request = urllib.request.Request(f"{hub.endpoint}/{REPO}/resolve/main/config.json")
    request.add_header("Range", "bytes=2-")
    with urllib.request.urlopen(request) as response:
        assert response.status == 206 and response.read() == FILES["config.json"][2:]


def test_upload_folder_pr_through_xet_pipeline(
    hub: HubServer, api: HfApi, uploaded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With hf_xet enabled, upload_folder takes another path (create_pull_request + commit)."""
    pytest.importorskip("hf_xet")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", False)
    (tmp_path / "pr").mkdir()
    (tmp_path / "pr" / "config.json").write_bytes(b"xet pr")
    info = api.upload_folder(repo_id=REPO, folder_path=tmp_path / "pr", create_pr=True)
    assert (info.pr_revision, hub.commits(REPO)[0]) == ("refs/pr/1", uploaded)
    assert hub.files(REPO, "refs/pr/1")["config.json"] == b"xet pr"
    assert api.get_discussion_details(REPO, 1).is_pull_request


def test_dataset_repo(hub: HubServer, api: HfApi, tmp_path: Path) -> None:
    url = api.create_repo("user/data", repo_type="dataset")
    assert str(url) == f"{hub.endpoint}/datasets/user/data"
    api.upload_file(
        path_or_fileobj=b"a,b", path_in_repo="t.csv", repo_id="user/data", repo_type="dataset"
    )
    assert api.dataset_info("user/data").sha == hub.commits("user/data", repo_type="dataset")[0]
    path = hf_hub_download(
        "user/data", "t.csv", repo_type="dataset", cache_dir=tmp_path, endpoint=hub.endpoint
    )
    assert Path(path).read_bytes() == b"a,b"
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("user/data")  # same id, wrong repo type


def test_patched_defaults_need_no_endpoint(hub: HubServer, tmp_path: Path) -> None:
    """What conftest gets from patch_hf_environment: module-level helpers work unchanged."""
    huggingface_hub.create_repo(REPO)
    huggingface_hub.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    assert HfApi().list_repo_files(REPO) == [".gitattributes", "x.txt"]
    path = Path(huggingface_hub.hf_hub_download(REPO, "x.txt"))
    assert path.read_bytes() == b"x" and (tmp_path / "hf_home" / "hub") in path.parents


def test_server_side_commit_lands_between_read_and_commit(
    hub: HubServer, api: HfApi, uploaded: str
) -> None:
    """``on_next_commit`` + ``commit``: a deterministic concurrent writer for race tests."""
    landed: list[str] = []
    hub.on_next_commit(REPO, lambda: landed.append(hub.commit(REPO, {"config.json": None})))
    add = CommitOperationAdd(path_in_repo="late.txt", path_or_fileobj=b"late")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit(REPO, [add], commit_message="late", parent_commit=uploaded)
    assert err.value.response.status_code == 412
    assert hub.commits(REPO)[:2] == [landed[0], uploaded]
    assert "config.json" not in hub.files(REPO) and "late.txt" not in hub.files(REPO)
    # The hook fired once: the next commit goes through.
    add = CommitOperationAdd(path_in_repo="late.txt", path_or_fileobj=b"late")
    api.create_commit(REPO, [add], commit_message="ok", parent_commit=landed[0])
    assert hub.files(REPO)["late.txt"] == b"late"


def test_authorization_headers_are_recorded(hub: HubServer, tmp_path: Path) -> None:
    HfApi(endpoint=hub.endpoint, token="hf_abc").create_repo(REPO)
    assert hub.authorizations[-1] == "Bearer hf_abc"
