"""The boundary with huggingface_hub: client, errors, paths in a repo, checked downloads.

Everything huggingface_hub raises is turned into the library's errors here (``raise ...
from exc``): a missing repo, revision or file is :class:`AdapterNotFoundError`, a truncated
or corrupted download :class:`IntegrityError`, anything else from the Hub or the network
:class:`HubError`. Tokens are handed to ``HfApi`` and nowhere else: no message built here
contains one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from tqdm.auto import tqdm

from . import __version__
from .errors import (
    AdapterNotFoundError,
    AdapterStoreError,
    HubArgumentError,
    HubConflictError,
    HubError,
    IntegrityError,
)
from .manifest import Manifest, check_relative_path

_COMMIT_ID = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NETWORK_MODULES = {"httpx", "httpx2", "requests", "urllib3"}
#: Manifest fields that belong to one local store, not to the adapter: a version equal in
#: everything else is the same adapter (a pull followed by a push makes no commit).
_LOCAL_FIELDS = {"name", "version", "origin"}


def _status(exc: HfHubHTTPError) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def translate_error(exc: Exception, where: str) -> AdapterStoreError | None:
    """The library's error for a huggingface_hub or network error (None: not one of those)."""
    if isinstance(exc, HFValidationError):
        return HubArgumentError(f"{where}: {exc}")
    if isinstance(exc, GatedRepoError):
        return HubError(
            f"{where}: the repository is gated and this account has no access; "
            "request access on the Hub, then use that account's token",
            status=_status(exc),
        )
    if isinstance(exc, RepositoryNotFoundError):
        return AdapterNotFoundError(
            f"{where}: no such repository (or it is private and the token in use cannot see it)"
        )
    if isinstance(exc, RevisionNotFoundError):
        return AdapterNotFoundError(f"{where}: no such revision (branch, tag or commit id)")
    if isinstance(exc, LocalEntryNotFoundError):
        return HubError(
            f"{where}: not in the local Hugging Face cache, and the Hub could not "
            "be asked (offline mode, or no connection)"
        )
    if isinstance(exc, EntryNotFoundError):
        return AdapterNotFoundError(
            f"{where}: no such file in the repository at this revision; is path_in_repo right?"
        )
    if isinstance(exc, OfflineModeIsEnabled):
        return HubError(f"{where}: offline mode is on (HF_HUB_OFFLINE=1), and this needs the Hub")
    if isinstance(exc, HfHubHTTPError):
        status = _status(exc)
        detail = exc.server_message or "no detail given"
        if status == 412:
            return HubConflictError(
                f"{where}: the branch moved while pushing (another commit "
                f"landed first: {detail}); nothing was committed. Push "
                "again to compare against the new head.",
                status=status,
            )
        return HubError(f"{where}: the Hub answered HTTP {status}: {detail}", status=status)
    if isinstance(exc, (ConnectionError, TimeoutError)) or (
        type(exc).__module__.split(".")[0] in _NETWORK_MODULES
    ):
        # The HTTP library behind huggingface_hub changed over releases (requests, httpx):
        # recognise its transport errors by module rather than import one of them.
        return HubError(
            f"{where}: cannot reach the Hub at {constants.ENDPOINT} ({type(exc).__name__}: {exc})"
        )
    return None


@contextmanager
def hub_errors(where: str) -> Iterator[None]:
    """Re-raise huggingface_hub and network errors as the library's, ``from`` the cause."""
    try:
        yield
    except AdapterStoreError:
        raise
    except Exception as exc:
        error = translate_error(exc, where)
        if error is None:
            raise
        raise error from exc


def make_api(token: str | None) -> HfApi:
    return HfApi(token=token, library_name="adapter-store", library_version=__version__)


def repo_prefix(path_in_repo: str | None) -> str:
    """``"a/b"`` -> ``"a/b/"``; None or ``""`` -> ``""`` (the repo root)."""
    path = (path_in_repo or "").strip("/")
    if not path:
        return ""
    check_relative_path(path, field="path_in_repo")
    return path + "/"


def adapter_content(manifest: Manifest) -> str:
    """The manifest without its store-local fields, as canonical JSON text: equal means
    the same adapter. Text, not a dict: NaN in metadata or optimizer settings would make
    two dicts of the same manifest unequal (NaN != NaN), and every pull a new version."""
    return json.dumps(manifest.model_dump(mode="json", exclude=_LOCAL_FIELDS), sort_keys=True)


def version_files(manifest: Manifest) -> dict[str, int]:
    """Every file of the version except the manifest -> its size in bytes."""
    files = {shard.path: shard.nbytes for shard in manifest.shards}
    if manifest.optimizer is not None:
        files[manifest.optimizer.path] = manifest.optimizer.nbytes
    return files


def evict_cached(cached: Path) -> None:
    """Drop a corrupt file from the Hugging Face cache (its snapshot link and its blob)."""
    blob = Path(os.path.realpath(cached))
    for path in {cached, blob}:
        with suppress(OSError):
            path.unlink()


def check_content_id(data: bytes, cached: Path, where: str) -> None:
    """The cache names a blob by the Hub's content id: git blob sha1, or sha256 for LFS."""
    content_id = Path(os.path.realpath(cached)).name
    if _COMMIT_ID.fullmatch(content_id):
        actual = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    elif _SHA256.fullmatch(content_id):
        actual = hashlib.sha256(data).hexdigest()
    else:
        return  # a cache without symlinks names files, not blobs: nothing to compare
    if actual != content_id:
        evict_cached(cached)
        raise IntegrityError(
            f"{where}: downloaded bytes hash to {actual} but the Hub's id "
            f"for this file is {content_id}; the download was corrupted "
            "(evicted from the cache: pull again)",
            path=where,
        )


def download_file(
    api: HfApi, repo_id: str, filename: str, revision: str, tqdm_class: type[tqdm] | None = None
) -> Path:
    """One file through the Hugging Face cache; errors become the library's."""
    where = f"{repo_id}/{filename} at {revision[:12]}"
    try:
        return Path(
            api.hf_hub_download(repo_id, filename, revision=revision, tqdm_class=tqdm_class)
        )
    except Exception as exc:
        # huggingface_hub's size check raises a bare OSError: a truncated download.
        if type(exc) is OSError and exc.errno is None:
            first_line = str(exc).splitlines()[0] if str(exc) else "size check failed"
            raise IntegrityError(
                f"{where}: the download is incomplete ({first_line}); nothing was stored, "
                "pull again",
                path=where,
            ) from exc
        error = translate_error(exc, where)
        if error is None:
            raise
        raise error from exc


def download_at(api: HfApi, repo_id: str, filename: str, revision: str | None) -> tuple[Path, str]:
    """Download ``filename`` at ``revision``; returns the cached file and the commit id.

    A real download (not a dry run) records ``refs/<revision>`` in the cache, so the same
    pull works later in offline mode. The commit is read from the snapshot folder the file
    lands in (``snapshots/<commit>/<filename>``), the one huggingface_hub resolved, so the
    rest of the pull cannot pick another commit if the branch moves meanwhile.
    """
    cached = download_file(api, repo_id, filename, revision or constants.DEFAULT_REVISION)
    commit = cached.parents[filename.count("/")].name
    if not _COMMIT_ID.fullmatch(commit):
        raise HubError(
            f"{repo_id}/{filename}: huggingface_hub stored it under {cached}, not under "
            "snapshots/<commit id>; cannot tell which commit was pulled"
        )
    return cached, commit


__all__ = [
    "HubArgumentError",
    "HubConflictError",
    "HubError",
    "adapter_content",
    "check_content_id",
    "download_at",
    "download_file",
    "evict_cached",
    "hub_errors",
    "make_api",
    "repo_prefix",
    "translate_error",
    "version_files",
]
