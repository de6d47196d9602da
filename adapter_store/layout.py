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
import stat
from pathlib import Path

from .errors import UnsafePathError
from .manifest import MANIFEST_FILENAME, check_relative_path

SHARDS_DIR = "shards"
OPTIMIZER_FILENAME = "optimizer.safetensors"
TEMP_PREFIX = ".tmp-"
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
    check_relative_path(relative, field=field)
    root = root or os.path.realpath(version_dir)
    target = _resolve_below(root, relative)
    if os.path.commonpath([root, target]) != root:
        raise UnsafePathError(
            f"{version_dir / relative}: {field} resolves to {target}, outside the version "
            "directory (a symlink that escapes it?)",
            path=relative,
            field=field,
        )
    return Path(target)
