"""Pushing adapter versions to a Hugging Face Hub repo, pulling them back, loading them.

A push uploads one version directory (manifest, shards, optimizer file, a generated
``README.md`` card) in a single commit whose parent is the head it compared against: two
concurrent pushes cannot interleave, the later one fails with :class:`HubConflictError`.
A push of what the repo already holds makes no commit. A pull (``hub_pull``) verifies every
file against the manifest before the version appears in the local store.

Only the ``hub*`` modules import huggingface_hub (``hub_client`` is the boundary where its
errors become the library's); ``AdapterStore.push_to_hub`` / ``AdapterStore.pull`` and
``adapter_store.load_from_hub`` import them on first use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, RepoFile, constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from tqdm.auto import tqdm

from .errors import AdapterStoreError
from .hub_client import (
    HubArgumentError,
    HubConflictError,
    HubError,
    adapter_content,
    hub_errors,
    make_api,
    repo_prefix,
    version_files,
)
from .hub_pull import pull, subset_manifest
from .layout import OPTIMIZER_FILENAME, SHARDS_DIR, resolve_inside
from .manifest import MANIFEST_FILENAME, Manifest, dump_manifest, parse_manifest
from .modelcard import CARD_FILENAME, render_model_card
from .results import LoadReport
from .store import AdapterStore
from .version_files import open_optimizer, open_shard, read_manifest

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushResult:
    """What a push did: the commit the repo now points at, and whether it is new."""

    repo_id: str
    commit: str
    #: False when the repo already held this version: no commit was made.
    changed: bool
    commit_url: str | None = None
    pr_url: str | None = None


@dataclass(frozen=True)
class PushPlan:
    """Decided before any write: is the push a no-op, which files to add and delete."""

    unchanged: bool
    upload: tuple[str, ...]
    delete: tuple[str, ...]


def plan_push(
    local: Manifest, remote: Manifest | None, remote_files: Mapping[str, int]
) -> PushPlan:
    """Compare a version with what the repo holds at the same place (paths relative to it).

    Unchanged means: the same manifest (store-local fields aside) and every file present
    with its size. Otherwise every file is uploaded (huggingface_hub skips the bytes of
    files the Hub already has) and shards or an optimizer file the version does not list
    are deleted, so the folder in the repo stays one self-contained version.
    """
    files = version_files(local)
    stale = tuple(
        sorted(
            path
            for path in remote_files
            if path not in files and path not in (MANIFEST_FILENAME, CARD_FILENAME)
        )
    )
    unchanged = (
        remote is not None
        and not stale
        and adapter_content(remote) == adapter_content(local)
        and all(remote_files.get(path) == size for path, size in files.items())
    )
    return PushPlan(unchanged, tuple(files), stale)


def _is_adapter_file(path: str) -> bool:
    return path in (MANIFEST_FILENAME, CARD_FILENAME, OPTIMIZER_FILENAME) or path.startswith(
        SHARDS_DIR + "/"
    )


def _resolve_head(
    api: HfApi, repo_id: str, revision: str | None, private: bool | None
) -> tuple[str, str]:
    """(repo id with namespace, head commit of ``revision``), creating repo and branch."""
    try:
        info = api.repo_info(repo_id, revision=revision)
    except RepositoryNotFoundError:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        info = None
    except RevisionNotFoundError:
        info = None
    if info is None and revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    if info is None:
        info = api.repo_info(repo_id, revision=revision)
    if not info.sha:
        raise HubError(f"{repo_id}: the Hub did not say which commit {revision or 'main'} is at")
    return repo_id, info.sha


def _remote_state(
    api: HfApi, repo_id: str, head: str, prefix: str
) -> tuple[Manifest | None, dict[str, int]]:
    """The adapter already at ``prefix`` in the repo: its manifest (if readable) and files."""
    try:
        entries = list(
            api.list_repo_tree(repo_id, prefix.rstrip("/") or None, revision=head, recursive=True)
        )
    except EntryNotFoundError:
        return None, {}
    files = {
        entry.path[len(prefix) :]: entry.size
        for entry in entries
        if isinstance(entry, RepoFile) and entry.path.startswith(prefix)
    }
    manifest = None
    if MANIFEST_FILENAME in files:
        manifest = _read_remote_manifest(api, repo_id, head, prefix)
    # Other files in the folder (.gitattributes, notes) are not the adapter's, and a push
    # must neither count nor delete them; nor another adapter's, pushed below this one
    # (any folder holding a manifest.json of its own, such as path_in_repo="shards/old").
    # A shard the format allows outside shards/ is the adapter's when its manifest lists it.
    listed = version_files(manifest) if manifest is not None else {}
    nested = tuple(
        path[: -len(MANIFEST_FILENAME)] for path in files if path.endswith("/" + MANIFEST_FILENAME)
    )
    return manifest, {
        path: size
        for path, size in files.items()
        if path in listed or (_is_adapter_file(path) and not path.startswith(nested))
    }


def _read_remote_manifest(api: HfApi, repo_id: str, head: str, prefix: str) -> Manifest | None:
    cached = Path(api.hf_hub_download(repo_id, prefix + MANIFEST_FILENAME, revision=head))
    try:
        return parse_manifest(cached.read_bytes(), path=f"{repo_id}/{prefix}{MANIFEST_FILENAME}")
    except AdapterStoreError:
        return None  # unreadable: simply replaced by this push


def _verify_local(version_dir: Path, manifest: Manifest, *, progress: bool) -> None:
    """Never upload a damaged version: check every local file against the manifest."""
    with tqdm(
        total=manifest.nbytes, unit="B", unit_scale=True, desc="verify", disable=not progress
    ) as bar:
        for shard in manifest.shards:
            open_shard(version_dir, manifest, shard.path, verify=True).close()
            bar.update(shard.nbytes)
        if manifest.optimizer is not None:
            open_optimizer(version_dir, manifest, verify=True).close()
            bar.update(manifest.optimizer.nbytes)


def _operations(
    version_dir: Path, upload: Manifest, plan: PushPlan, *, repo_id: str, prefix: str
) -> list[CommitOperationAdd | CommitOperationDelete]:
    """The one commit: manifest, model card, every file of the version, stale files out."""
    card = render_model_card(upload, repo_id=repo_id, path_in_repo=prefix.rstrip("/") or None)
    adds: list[tuple[str, bytes | str]] = [
        (MANIFEST_FILENAME, dump_manifest(upload)),
        (CARD_FILENAME, card.encode()),
        *(
            (path, str(resolve_inside(version_dir, path, field="shards.path")))
            for path in plan.upload
        ),
    ]
    return [
        *(
            CommitOperationAdd(path_in_repo=prefix + path, path_or_fileobj=data)
            for path, data in adds
        ),
        *(CommitOperationDelete(path_in_repo=prefix + path) for path in plan.delete),
    ]


def push(
    store: AdapterStore,
    repo_id: str,
    name: str = "default",
    version: int | None = None,
    *,
    path_in_repo: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    progress: bool = False,
) -> PushResult:
    """Upload one version of ``name`` (the newest by default) to ``repo_id`` in one commit.

    See :meth:`AdapterStore.push_to_hub`. ``progress`` shows a bar for the local checks.
    """
    version_dir = store.path(name, version)
    manifest = read_manifest(version_dir)
    prefix = repo_prefix(path_in_repo)
    _verify_local(version_dir, manifest, progress=progress)
    # ``origin`` says where a local copy came from; in the repo it would only mislead.
    upload = manifest.model_copy(update={"origin": None})
    api = make_api(token)
    with hub_errors(f"push of {name!r} v{manifest.version} to {repo_id}"):
        repo_id, head = _resolve_head(api, repo_id, revision, private)
        remote, remote_files = _remote_state(api, repo_id, head, prefix)
        plan = plan_push(upload, remote, remote_files)
        if plan.unchanged:
            logger.info(
                "%s already holds %r v%d at %s: no commit", repo_id, name, manifest.version, head
            )
            return PushResult(repo_id, head, changed=False)
        operations = _operations(version_dir, upload, plan, repo_id=repo_id, prefix=prefix)
        info = api.create_commit(
            repo_id,
            operations,
            revision=revision,
            parent_commit=head,
            create_pr=create_pr,
            commit_message=commit_message or f"adapter-store: {name} v{manifest.version}",
        )
    logger.info("pushed %r v%d to %s at %s", name, manifest.version, repo_id, info.oid)
    return PushResult(
        repo_id, info.oid, changed=True, commit_url=info.commit_url, pr_url=info.pr_url
    )


# --- the common case ------------------------------------------------------------------


def default_store_path() -> Path:
    """Where :func:`load_from_hub` keeps pulled adapters: ``$HF_HOME/adapter-store``."""
    return Path(constants.HF_HOME) / "adapter-store"


def load_from_hub(
    model: nn.Module,
    repo_id: str,
    revision: str | None = None,
    *,
    store: AdapterStore | str | os.PathLike[str] | None = None,
    name: str | None = None,
    path_in_repo: str | None = None,
    token: str | None = None,
    modules: Sequence[str] | str | None = None,
    **load_options: Any,
) -> LoadReport:
    """Pull an adapter (once per commit) and load it into ``model``, checked before copying.

    ``store`` defaults to ``$HF_HOME/adapter-store``; ``load_options`` go to
    :meth:`AdapterStore.load` (``strict``, ``check_base``, ``optimizer``...). Raises what
    :meth:`AdapterStore.pull` and :meth:`AdapterStore.load` raise.
    """
    target = (
        store
        if isinstance(store, AdapterStore)
        else AdapterStore(default_store_path() if store is None else store)
    )
    saved = pull(
        target,
        repo_id,
        name=name,
        revision=revision,
        path_in_repo=path_in_repo,
        token=token,
        modules=modules,
    )
    return target.load(model, saved.name, version=saved.version, modules=modules, **load_options)


__all__ = [
    "HubArgumentError",
    "HubConflictError",
    "HubError",
    "PushPlan",
    "PushResult",
    "default_store_path",
    "load_from_hub",
    "plan_push",
    "pull",
    "push",
    "subset_manifest",
]
