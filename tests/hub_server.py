"""In-process fake of the part of the Hugging Face Hub HTTP API that ``huggingface_hub`` uses.

The real client (``huggingface_hub`` 2.4) talks to this server unchanged, so tests exercise its
genuine behaviour (error headers, ETags, NDJSON commits, cache layout) without any network.
Every file is answered with ``uploadMode: regular`` so neither LFS nor Xet is ever involved, and
every commit stores a full snapshot of the repo, so old revisions keep serving their old bytes.

Usage::

    with start_hub_server() as server:
        api = HfApi(endpoint=server.endpoint, token="hf_dummy")
        api.create_repo("user/demo")
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

JSON = dict[str, Any]
Tamper = Callable[[bytes], bytes]
Response = tuple[int, bytes, dict[str, str]]

DEFAULT_USER = "user"  # namespace used when create_repo is called without one
# The real Hub seeds every new repo with a commit holding a .gitattributes file (abridged here).
GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs -text\n"
)
PARENT_MISMATCH = "A commit has happened since. Please refresh and try again."
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# The client quotes revisions (and tree paths) with safe="", so they are single path segments.
_API_RE = re.compile(
    r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)"
    r"(?:/(revision|tree|refs|commits|preupload|commit|branch|discussions)(?:/([^/]+)(?:/(.+))?)?)?$"
)
_RESOLVE_RE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)$")
_COMMIT_COUNTER = itertools.count()  # keeps commit ids unique even for identical content


@functools.lru_cache(maxsize=4096)  # listings re-hash the same blobs; bytes cache their hash
def git_blob_oid(data: bytes) -> str:
    """Git blob id of ``data``: the Hub's ETag and tree ``oid`` for a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def flip_last_byte(data: bytes) -> bytes:
    """Tamper function: same length, last byte inverted."""
    return data[:-1] + bytes([data[-1] ^ 0xFF]) if data else data


def truncate_half(data: bytes) -> bytes:
    """Tamper function: keep only the first half of the bytes."""
    return data[: len(data) // 2]


def _now() -> str:
    """Now, in the Hub's date format (what ``huggingface_hub.utils.parse_datetime`` reads)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubError(Exception):
    """An error answered like the Hub does: status, ``X-Error-Code`` header, JSON ``error``.

    The client maps ``X-Error-Code`` to its exception classes (RepositoryNotFoundError, ...).
    """

    def __init__(
        self, status: int, message: str, code: str | None = None, *, commit: str = "", **extra: Any
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.commit, self.extra = status, code, commit, extra


@dataclass(frozen=True)
class Commit:
    """One commit: its id, parent and a full snapshot of the repo content."""

    oid: str
    parent: str | None
    title: str
    message: str
    files: Mapping[str, bytes]
    date: str = field(default_factory=_now)


@dataclass
class Repo:
    """A repository: its commit graph and refs (``main``, other branches, ``refs/pr/N``)."""

    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    created_at: str = field(default_factory=_now)
    discussions: dict[int, JSON] = field(default_factory=dict)  # PRs and discussions share numbers

    def resolve(self, revision: str) -> Commit:
        """Branch name, ``refs/heads/x``, ``refs/pr/N`` or full commit id -> commit."""
        oid = self.refs.get(revision.removeprefix("refs/heads/"), revision)
        if oid not in self.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commits[oid]

    def history(self, revision: str) -> list[Commit]:
        """Commits reachable from ``revision``, newest first."""
        commit: Commit | None = self.resolve(revision)
        out = []
        while commit is not None:
            out.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return out

    def add_commit(
        self, ref: str, parent: str | None, files: dict[str, bytes], title: str, message: str = ""
    ) -> Commit:
        """Record a commit with the full ``files`` snapshot and point ``ref`` at it."""
        digest = hashlib.sha1(f"{parent}\n{title}\n{next(_COMMIT_COUNTER)}\n".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{git_blob_oid(files[path])}\n".encode())
        commit = Commit(digest.hexdigest(), parent, title, message, MappingProxyType(dict(files)))
        self.commits[commit.oid] = commit
        self.refs[ref] = commit.oid
        return commit

    def open_discussion(self, title: str, pull_request: bool) -> int:
        """Open a discussion; a pull request also gets a ``refs/pr/N`` ref starting at ``main``."""
        num = len(self.discussions) + 1
        self.discussions[num] = {"title": title, "isPullRequest": pull_request, "createdAt": _now()}
        if pull_request:
            self.refs[f"refs/pr/{num}"] = self.refs["main"]
        return num


class HubServer:
    """A fake Hub listening on ``endpoint`` (a free port on 127.0.0.1), served by a daemon thread.

    Test hooks: ``requests`` (live list of ``(method, unquoted path)`` seen),
    ``authorizations`` (their Authorization headers), ``tamper``,
    ``downloads``, ``commits``, ``files``, ``commit`` and ``on_next_commit`` (a concurrent
    writer). Use as a context manager or call ``close()``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.RLock()  # handler threads share all state below
        self._repos: dict[tuple[str, str], Repo] = {}
        self._tampers: dict[tuple[str, str, str], Tamper] = {}
        self._downloads: Counter[tuple[str, str, str]] = Counter()
        self._commit_hooks: dict[tuple[str, str], Callable[[], object]] = {}
        self.requests: list[tuple[str, str]] = []
        # Authorization header of every request (None when absent), for token tests.
        self.authorizations: list[str | None] = []
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.hub = self
        self.endpoint = f"http://{host}:{self._httpd.server_address[1]}"
        # A short poll interval keeps close() (which waits for the serve loop) fast.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- test hooks

    def tamper(
        self, repo_id: str, path: str, fn: Tamper | None = flip_last_byte, repo_type: str = "model"
    ) -> None:
        """Serve ``fn(content)`` on GET of ``path`` (any revision); ``fn=None`` restores it.

        HEAD metadata (ETag, size, commit) is left untouched, like a corrupted CDN or disk. The
        GET's Content-Length matches the tampered body, so a truncation is a clean short file.
        """
        with self._lock:
            key = (repo_type, repo_id, path)
            if fn is None:
                self._tampers.pop(key, None)
            else:
                self._tampers[key] = fn

    def downloads(self, repo_id: str, path: str, repo_type: str = "model") -> int:
        """Number of successful GET /resolve requests for ``path`` (any revision)."""
        with self._lock:
            return self._downloads[(repo_type, repo_id, path)]

    def commits(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> list[str]:
        """Commit ids reachable from ``branch``, newest first (like ``list_repo_commits``)."""
        with self._lock:
            return [c.oid for c in self._repo(repo_type, repo_id).history(branch)]

    def files(
        self, repo_id: str, revision: str = "main", repo_type: str = "model"
    ) -> dict[str, bytes]:
        """Content of the repo at ``revision``."""
        with self._lock:
            return dict(self._repo(repo_type, repo_id).resolve(revision).files)

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | None],
        branch: str = "main",
        title: str = "server-side commit",
        repo_type: str = "model",
    ) -> str:
        """Commit ``files`` (``None`` deletes a path) on top of ``branch``, as another client would.

        Returns the new commit id. Together with ``on_next_commit`` it lands a commit between a
        client's read of the head and its own commit, deterministically.
        """
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            content = dict(repo.resolve(branch).files)
            for path, data in files.items():
                if data is None:
                    content.pop(path, None)
                else:
                    content[path] = data
            return repo.add_commit(branch, repo.refs[branch], content, title).oid

    def on_next_commit(
        self, repo_id: str, fn: Callable[[], object] | None, repo_type: str = "model"
    ) -> None:
        """Run ``fn()`` once when the next commit request for the repo arrives, before the
        request's ``parentCommit`` is checked (``fn=None`` cancels)."""
        with self._lock:
            key = (repo_type, repo_id)
            if fn is None:
                self._commit_hooks.pop(key, None)
            else:
                self._commit_hooks[key] = fn

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------- routing

    def handle(
        self, method: str, raw_path: str, query: dict[str, str], body: bytes, range_: str
    ) -> Response:
        """Route one request; raises HubError for answers that are errors."""
        with self._lock:
            self.requests.append((method, unquote(raw_path)))
            if not raw_path.startswith("/api/"):
                match = _RESOLVE_RE.match(raw_path)
                if match is None or method not in ("GET", "HEAD"):
                    raise HubError(404, f"Not found: {method} {raw_path}")
                kind, repo_id, rev, path = match.groups()
                return self._resolve(
                    kind or "models", repo_id, unquote(rev), unquote(path), method, range_
                )
            if (method, raw_path) == ("POST", "/api/repos/create"):
                return _json(self._create_repo(json.loads(body)))
            if (method, raw_path) == ("POST", "/api/validate-yaml"):
                return _json({"errors": [], "warnings": []})
            match = _API_RE.match(raw_path)
            if match is None:
                raise HubError(404, f"Not found: {method} {raw_path}")
            kind, repo_id, action, arg, rest = match.groups()
            repo = self._repo(kind[:-1], repo_id)
            arg = unquote(arg) if arg else "main"
            if method == "GET" and action in (None, "revision"):
                return _json(self._info(repo, arg))
            if method == "GET" and action == "tree":
                recursive = query.get("recursive", "").lower() in ("1", "true")
                return _json(self._tree(repo, arg, unquote(rest or ""), recursive))
            if method == "GET" and action == "refs":
                return _json(self._refs(repo))
            if method == "GET" and action == "commits":
                return _json([_commit_json(c) for c in repo.history(arg)])
            if method == "POST" and action == "preupload":
                return _json(self._preupload(repo, arg, json.loads(body)))
            if method == "POST" and action == "commit":
                return _json(self._commit(repo, arg, body, create_pr=query.get("create_pr") == "1"))
            if method == "POST" and action == "branch":
                return _json(self._create_branch(repo, arg, json.loads(body or b"{}")))
            # create_pull_request, used by upload_folder(create_pr=True) when hf_xet is enabled.
            if method == "POST" and action == "discussions":
                payload = json.loads(body)
                return _json(
                    {"num": repo.open_discussion(payload["title"], payload["pullRequest"])}
                )
            if method == "GET" and action == "discussions" and arg.isdigit():
                return _json(self._discussion(repo, int(arg)))
            raise HubError(404, f"Not found: {method} {raw_path}")

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    # ----------------------------------------------------------------- endpoints

    def _create_repo(self, body: JSON) -> JSON:
        organization, name = body.get("organization"), body["name"]
        if "/" in name:
            organization, name = name.split("/", 1)
        repo_type = body.get("type") or "model"
        repo = Repo(repo_type, f"{organization or DEFAULT_USER}/{name}", private=False)
        url = self._url(repo)
        if (repo_type, repo.repo_id) in self._repos:
            # create_repo(exist_ok=True) swallows the 409 and still reads `url` from the body.
            raise HubError(409, f"You already created this {repo_type} repo", url=url)
        repo.private = bool(body.get("private")) or body.get("visibility") == "private"
        self._repos[(repo_type, repo.repo_id)] = repo
        repo.add_commit("main", None, {".gitattributes": GITATTRIBUTES}, "initial commit")
        return {"url": url, "name": repo.repo_id, "id": repo.repo_id}

    def _info(self, repo: Repo, revision: str) -> JSON:
        commit = repo.resolve(revision)
        siblings = [
            {"rfilename": path, "size": len(data), "blobId": git_blob_oid(data)}
            for path, data in sorted(commit.files.items())
        ]
        # Fields left out (downloads, tags, cardData...) are optional for ModelInfo & co.
        return {
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "siblings": siblings,
        }

    def _tree(self, repo: Repo, revision: str, path: str, recursive: bool) -> list[JSON]:
        commit = repo.resolve(revision)
        base = path.strip("/")
        prefix = f"{base}/" if base else ""
        entries: dict[str, JSON] = {}
        for name, data in commit.files.items():
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix) :].split("/")
            # Non-recursive listings show only the first level: files, and folders as "directory".
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folder = prefix + "/".join(parts[:depth])
                if folder not in entries:  # hashing a folder reads all of it: once per listing
                    entries[folder] = _entry("directory", folder, 0, _tree_oid(commit, folder))
            if recursive or len(parts) == 1:
                entries[name] = _entry("file", name, len(data), git_blob_oid(data))
        if base and not entries:
            raise HubError(
                404, f"{base} does not exist on {revision}", "EntryNotFound", commit=commit.oid
            )
        # A single page without a Link header: the client's paginator then stops.
        return [entries[key] for key in sorted(entries)]

    def _refs(self, repo: Repo) -> JSON:
        def ref(name: str, oid: str) -> JSON:
            full = name if name.startswith("refs/") else f"refs/heads/{name}"
            return {"name": name, "ref": full, "targetCommit": oid}

        refs = sorted(repo.refs.items())
        return {
            "branches": [ref(name, oid) for name, oid in refs if not name.startswith("refs/pr/")],
            "pullRequests": [ref(name, oid) for name, oid in refs if name.startswith("refs/pr/")],
            "converts": [],
            "tags": [],
        }

    def _preupload(self, repo: Repo, revision: str, body: JSON) -> JSON:
        files = repo.resolve(revision).files
        # `oid` of an existing file lets the client drop unchanged files, as on the real Hub.
        answers = [
            {
                "path": item["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": git_blob_oid(files[item["path"]]) if item["path"] in files else None,
            }
            for item in body["files"]
        ]
        return {"files": answers}

    def _commit(self, repo: Repo, revision: str, body: bytes, create_pr: bool) -> JSON:
        hook = self._commit_hooks.pop((repo.repo_type, repo.repo_id), None)
        if hook is not None:
            hook()
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header: JSON = next((line["value"] for line in lines if line["key"] == "header"), {})
        base = repo.resolve(revision)
        branch = revision.removeprefix("refs/heads/")
        if branch not in repo.refs:
            raise HubError(400, f"Cannot commit to {revision}: not a branch or pull request ref")
        parent = header.get("parentCommit")
        if parent and not base.oid.startswith(parent.lower()):
            raise HubError(412, PARENT_MISMATCH)  # what the real Hub answers to a stale parent
        files = dict(base.files)
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                content = value["content"]
                encoded = value.get("encoding") == "base64"
                files[value["path"]] = base64.b64decode(content) if encoded else content.encode()
            elif key in ("deletedFile", "deletedFolder"):
                folder = value["path"].rstrip("/") + "/"
                doomed = [
                    p
                    for p in files
                    if p == value["path"] or (key == "deletedFolder" and p.startswith(folder))
                ]
                if not doomed:
                    raise HubError(
                        404, "A file with this name doesn't exist", "EntryNotFound", commit=base.oid
                    )
                for path in doomed:
                    del files[path]
            elif key != "header":  # e.g. lfsFile: never requested, since preupload says "regular"
                raise HubError(400, f"Unsupported commit operation {key!r} (regular files only)")
        title = header.get("summary", "")
        pr_num = repo.open_discussion(title, pull_request=True) if create_pr else None
        ref = f"refs/pr/{pr_num}" if pr_num else branch
        commit = repo.add_commit(ref, base.oid, files, title, header.get("description", ""))
        url = self._url(repo)
        return {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{url}/commit/{commit.oid}",
            "pullRequestUrl": f"{url}/discussions/{pr_num}" if pr_num else None,
        }

    def _create_branch(self, repo: Repo, branch: str, body: JSON) -> JSON:
        if branch in repo.refs:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        repo.refs[branch] = repo.resolve(body.get("startingPoint") or "main").oid
        return {}

    def _discussion(self, repo: Repo, num: int) -> JSON:
        if num not in repo.discussions:
            raise HubError(404, f"Discussion not found: {num}")
        return {
            **repo.discussions[num],
            "num": num,
            "status": "draft" if repo.discussions[num]["isPullRequest"] else "open",
            "author": {"name": DEFAULT_USER},
            "repo": {"name": repo.repo_id, "type": repo.repo_type},
            "events": [],
            "changes": {"base": "refs/heads/main"},
            "filesWithConflicts": [],
        }

    def _resolve(
        self, kind: str, repo_id: str, rev: str, path: str, method: str, range_: str
    ) -> Response:
        repo = self._repo(kind[:-1], repo_id)
        commit = repo.resolve(rev)
        if path not in commit.files:
            # X-Repo-Commit on the 404 lets the client cache the file's absence for this commit.
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit=commit.oid)
        data = commit.files[path]
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{git_blob_oid(data)}"',  # quoted, as the client's _normalize_etag expects
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if method == "HEAD":
            return 200, data, headers  # the handler sends Content-Length but no body
        key = (repo.repo_type, repo.repo_id, path)
        self._downloads[key] += 1
        if key in self._tampers:
            data = self._tampers[key](data)
        match = _RANGE_RE.match(range_)
        if match:  # the client resumes interrupted downloads with "Range: bytes=N-"
            start, end = int(match[1]), int(match[2] or len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, data[start : end + 1], headers
        return 200, data, headers


def _json(payload: Any) -> Response:
    return 200, json.dumps(payload).encode(), {"Content-Type": "application/json"}


def _tree_oid(commit: Commit, folder: str) -> str:
    """Content-derived id for a folder (stands in for a git tree id)."""
    listing = "".join(
        f"{p}{git_blob_oid(d)}"
        for p, d in sorted(commit.files.items())
        if p.startswith(folder + "/")
    )
    return hashlib.sha1(listing.encode()).hexdigest()


def _entry(kind: str, path: str, size: int, oid: str) -> JSON:
    return {"type": kind, "path": path, "size": size, "oid": oid}


def _commit_json(commit: Commit) -> JSON:
    return {
        "id": commit.oid,
        "title": commit.title,
        "message": commit.message,
        "authors": [{"user": DEFAULT_USER}],
        "date": commit.date,
    }


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not block close()
    hub: HubServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive like the real Hub; every answer sets Content-Length
    # Headers and body go out in separate writes: with Nagle on, each response stalls ~40 ms.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.hub.authorizations.append(self.headers.get("Authorization"))
        try:
            status, payload, headers = self.server.hub.handle(
                method, url.path, query, body, self.headers.get("Range", "")
            )
        except HubError as err:
            status, payload = err.status, json.dumps({"error": str(err), **err.extra}).encode()
            headers = {"Content-Type": "application/json"}
            if err.code:
                headers["X-Error-Code"] = err.code
            if err.commit:
                headers["X-Repo-Commit"] = err.commit
        except Exception as err:  # a bug in the fake must answer 500, not hang the client
            status, payload, headers = 500, json.dumps({"error": repr(err)}).encode(), {}
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet; ``HubServer.requests`` records the traffic instead."""


def start_hub_server() -> HubServer:
    """Start a fake Hub on a free local port; close it with ``close()`` or a ``with`` block."""
    return HubServer()


def patch_hf_environment(monkeypatch: pytest.MonkeyPatch, endpoint: str, hf_home: Path) -> None:
    """Point ``huggingface_hub`` defaults at ``endpoint`` and keep its cache under ``hf_home``.

    Env vars alone are not enough: ``huggingface_hub.constants`` reads them once, at import, and
    the module-level helpers (``huggingface_hub.upload_folder``...) are bound to an ``HfApi``
    built at import time. So the constants and that instance are patched as well.
    """
    from huggingface_hub import constants, hf_api

    cache = hf_home / "hub"
    variables = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_TOKEN": "hf_dummy",  # never read (or send) a developer's real token
    }
    for variable, text in variables.items():
        monkeypatch.setenv(variable, text)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    constant_values: dict[str, object] = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(cache),
        # Keeps upload_folder on the create_commit path (hf_xet would switch it to the Xet
        # upload pipeline, which this server handles too, see test_hub_server.py).
        "HF_HUB_DISABLE_XET": True,
        # Also stops the user-agent code from fetching {ENDPOINT}/api/agent-harnesses.
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_ETAG_TIMEOUT": 5,
        "HF_HUB_OFFLINE": False,
    }
    for name, value in constant_values.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
