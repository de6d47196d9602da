"""Reading one version directory's files: its manifest (parsed once per file, cached) and
its shard and optimizer files, each opened through a checked reader.

A load opens the directory first (``pinned_version_dir``) and reads every file through
that descriptor: the manifest and the shards then come from one directory, even when
the version is deleted and its number given to a new save meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .errors import AdapterNotFoundError, ManifestError
from .layout import SHARDS_DIR, manifest_path, resolve_inside, resolve_inside_str
from .manifest import (
    MANIFEST_FILENAME,
    MAX_MANIFEST_BYTES,
    Manifest,
    TensorEntry,
    parse_manifest,
)
from .shard_reader import ShardReader, ShardStream


def read_manifest(version_dir: Path, *, dir_fd: int | None = None) -> Manifest:
    """Parse ``manifest.json`` of a version directory (untrusted input); through
    ``dir_fd``, the directory ``version_dir`` was when it was opened, when given."""
    path = manifest_path(version_dir)
    display = str(path)
    if not path.is_file():
        if version_dir.is_dir():
            raise ManifestError(
                f"{display}: no manifest in this version directory (an "
                "interrupted copy, or not an adapter?)",
                path=display,
            )
        raise AdapterNotFoundError(f"{version_dir}: no such adapter version directory")
    resolve_inside(version_dir, MANIFEST_FILENAME, field="manifest")
    try:
        fd = os.open(MANIFEST_FILENAME if dir_fd is not None else path, os.O_RDONLY, dir_fd=dir_fd)
    except FileNotFoundError as exc:  # deleted (renamed away) since the check above
        raise AdapterNotFoundError(
            f"{version_dir}: the version was deleted while it was being read"
        ) from exc
    with os.fdopen(fd, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > MAX_MANIFEST_BYTES:  # refused before a byte is read into memory
            raise ManifestError(
                f"{display}: manifest is {size} bytes, more than the {MAX_MANIFEST_BYTES} allowed",
                path=display,
            )
        identity = _file_identity(path, os.fstat(file.fileno()))
        cached = _MANIFESTS.get(identity)
        if cached is not None:
            return cached
        data = file.read(MAX_MANIFEST_BYTES + 1)
    manifest = parse_manifest(data, path=display)
    _remember(identity, manifest)
    return manifest


#: Parsed manifests by file identity. A committed version never changes in place (a save
#: publishes a new directory), so a hit is the same bytes; any rewrite changes the inode,
#: size or mtime and misses. Parsing W1's 95 kB manifest costs ~1.6 ms per load.
_MANIFESTS: dict[tuple[object, ...], Manifest] = {}
_MANIFEST_CACHE_SIZE = 64


def _file_identity(path: Path, info: os.stat_result) -> tuple[object, ...]:
    # ctime too: mtime can be set back with os.utime after an in-place edit, ctime cannot.
    return (
        os.path.realpath(path),
        info.st_dev,
        info.st_ino,
        info.st_size,
        info.st_mtime_ns,
        info.st_ctime_ns,
    )


def remember_manifest(version_dir: Path, manifest: Manifest) -> None:
    """Cache a manifest this process has just written (it is valid by construction)."""
    path = manifest_path(version_dir)
    _remember(_file_identity(path, os.stat(path)), manifest)


def _remember(identity: tuple[object, ...], manifest: Manifest) -> None:
    if len(_MANIFESTS) >= _MANIFEST_CACHE_SIZE:
        _MANIFESTS.pop(next(iter(_MANIFESTS)))
    _MANIFESTS[identity] = manifest


def open_shard(
    version_dir: Path,
    manifest: Manifest,
    shard_path: str,
    *,
    verify: bool,
    expected: Mapping[str, TensorEntry] | None = None,
    root: str | None = None,
    dir_fd: int | None = None,
) -> ShardReader:
    """A checked reader of one shard; ``dir_fd``: see ``load_version``."""
    entry = manifest.shard(shard_path)
    file = resolve_inside_str(version_dir, shard_path, field="shards.path", root=root)
    if expected is None:
        expected = {k: t for k, t in manifest.tensors.items() if t.shard == shard_path}
    checksum = (entry.checksum.algorithm, entry.checksum.digest) if verify else None
    return ShardReader(
        file if dir_fd is None else shard_path,
        display=os.path.join(version_dir, shard_path),
        nbytes=entry.nbytes,
        checksum=checksum,
        expected=expected,
        dir_fd=dir_fd,
    )


def open_stream(
    version_dir: Path,
    manifest: Manifest,
    shard_path: str,
    *,
    expected: Mapping[str, TensorEntry],
    root: str | None = None,
    dir_fd: int | None = None,
) -> ShardStream:
    """An unverified reader of one shard that preads straight into the targets."""
    file = resolve_inside_str(version_dir, shard_path, field="shards.path", root=root)
    return ShardStream(
        file if dir_fd is None else shard_path,
        display=os.path.join(version_dir, shard_path),
        nbytes=manifest.shard(shard_path).nbytes,
        expected=expected,
        dir_fd=dir_fd,
    )


def open_optimizer(
    version_dir: Path, manifest: Manifest, *, verify: bool, dir_fd: int | None = None
) -> ShardReader:
    section = manifest.optimizer
    if section is None:
        raise ManifestError(
            f"{manifest_path(version_dir)}: field 'optimizer': this version "
            "was saved without optimizer state",
            field="optimizer",
        )
    file = resolve_inside(version_dir, section.path, field="optimizer.path")
    checksum = (section.checksum.algorithm, section.checksum.digest) if verify else None
    return ShardReader(
        file if dir_fd is None else section.path,
        display=str(version_dir / section.path),
        nbytes=section.nbytes,
        checksum=checksum,
        expected=section.tensors,
        dir_fd=dir_fd,
    )


def unlisted_files(version_dir: Path, manifest: Manifest) -> list[str]:
    """Files under ``shards/`` the manifest does not list (an injected or stale file),
    at any depth: a folder is looked into when the manifest lists files inside it, and
    is itself unlisted otherwise."""
    listed = set(manifest.relative_paths())
    folders = {path.rsplit("/", depth)[0] for path in listed for depth in range(1, path.count("/"))}
    unlisted = []
    pending = [SHARDS_DIR]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(version_dir / folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            path = f"{folder}/{entry.name}"
            if path in folders and entry.is_dir(follow_symlinks=False):
                pending.append(path)
            elif path not in listed:
                unlisted.append(path)
    return sorted(unlisted)


@contextmanager
def pinned_version_dir(version_dir: Path) -> Iterator[int | None]:
    """The version directory, opened: its manifest and files are read through this
    descriptor, so that all come from one directory even if the version is deleted and
    its number given to a new save meanwhile (an unverified load, whose sizes and
    headers would match, could otherwise mix two saves). None where unsupported."""
    if os.open not in os.supports_dir_fd or not hasattr(os, "O_DIRECTORY"):
        yield None
        return
    try:
        fd = os.open(version_dir, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError as exc:
        raise AdapterNotFoundError(f"{version_dir}: no such adapter version directory") from exc
    except OSError:
        yield None  # not a directory, or not readable: the path-based checks report it
        return
    try:
        yield fd
    finally:
        os.close(fd)
