"""Names on disk: where a version's files live, and how a group becomes a file name.

::

    <root>/<name>/<version>/manifest.json
    <root>/<name>/<version>/shards/<group>.safetensors
    <root>/<name>/<version>/shards/<group>-00001-of-00002.safetensors   (group above the limit)
    <root>/<name>/<version>/optimizer.safetensors
    <root>/<name>/.tmp-<random>/                                       (a save in progress)
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import stat
import time
import uuid
from pathlib import Path

from .errors import UnsafePathError
from .manifest import MANIFEST_FILENAME, check_relative_path

SHARDS_DIR = "shards"
OPTIMIZER_FILENAME = "optimizer.safetensors"
TEMP_PREFIX = ".tmp-"
DELETING_PREFIX = ".deleting-"
LOCK_FILENAME = ".lock"
_MAX_STEM = 180
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def shard_filename(group: str, part: int = 1, parts: int = 1) -> str:
    """Relative path of a group's shard: readable, and safe on every file system."""
    stem = _UNSAFE_CHARS.sub("_", group) or "_"
    if stem.startswith("."):
        stem = "_" + stem
    if len(stem) > _MAX_STEM or stem != group:
        # Keep distinct groups in distinct files even when sanitising made them alike.
        digest = hashlib.sha256(group.encode()).hexdigest()[:12]
        stem = f"{stem[:_MAX_STEM]}-{digest}"
    suffix = "" if parts == 1 else f"-{part:05d}-of-{parts:05d}"
    return f"{SHARDS_DIR}/{stem}{suffix}.safetensors"


def is_version_name(name: str) -> bool:
    """A committed version's directory name: a decimal number without leading zeros."""
    return name.isdigit() and name.isascii() and not (len(name) > 1 and name[0] == "0")


def manifest_path(version_dir: Path) -> Path:
    return version_dir / MANIFEST_FILENAME


def _resolve_below(root: str, relative: str) -> str:
    """realpath(root/relative), lstat()ing only the components below ``root``: when
    none is a symlink, the path is already canonical (``relative`` has no '..')."""
    current = root
    for part in relative.split("/"):
        current = os.path.join(current, part)
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                return os.path.realpath(os.path.join(root, relative))
        except OSError:
            return os.path.realpath(os.path.join(root, relative))
    return current


def resolve_inside(
    version_dir: Path, relative: str, *, field: str, root: str | None = None
) -> Path:
    """The file ``relative`` names, refusing anything (``..``, symlinks) that leaves
    ``version_dir``. ``root``: ``os.path.realpath(version_dir)`` when the caller resolves
    many files of one directory (realpath lstat()s every component from "/")."""
    return Path(resolve_inside_str(version_dir, relative, field=field, root=root))


def resolve_inside_str(
    version_dir: str | os.PathLike[str], relative: str, *, field: str, root: str | None = None
) -> str:
    """``resolve_inside`` as a string: no ``Path`` objects for a loader opening many shards."""
    check_relative_path(relative, field=field)
    root = root or os.path.realpath(version_dir)
    target = _resolve_below(root, relative)
    if target != os.path.join(root, relative) and os.path.commonpath([root, target]) != root:
        raise UnsafePathError(
            f"{os.path.join(version_dir, relative)}: {field} resolves to {target}, outside "
            "the version directory (a symlink that escapes it?)",
            path=relative,
            field=field,
        )
    return target


def temp_dir_name() -> str:
    """A save's temporary directory: host and pid say whose it is (see ``is_leftover``)."""
    return f"{TEMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def deleting_dir_name(version: int) -> str:
    return f"{DELETING_PREFIX}{version}-{uuid.uuid4().hex[:8]}"


def is_leftover(entry: os.DirEntry[str], older_than_seconds: float) -> bool:
    """A directory an interrupted save or delete left behind, safe to remove.

    ``.deleting-*`` always; ``.tmp-*`` when its writer (on this host) is gone, or when it
    is older than ``older_than_seconds`` (a writer on another host cannot be asked).
    """
    if entry.name.startswith(DELETING_PREFIX):
        return True
    if not entry.name.startswith(TEMP_PREFIX):
        return False
    try:
        modified = entry.stat().st_mtime  # a fresh stat, not the listing's
    except FileNotFoundError:  # published (renamed) since the listing, or its save failed
        return False
    if time.time() - modified > older_than_seconds:
        return True
    host, _, pid = entry.name[len(TEMP_PREFIX) :].rpartition("-")[0].rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False
