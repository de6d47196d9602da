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


def shard_filename(group: str, part: int = 1, parts: int = 1, *, hashed: bool = False) -> str:
    """Relative path of a group's shard: readable, and safe on every file system.

    ``hashed`` adds the group's digest even to a name that needs no cleaning, for a group
    whose plain name another group's file already has.
    """
    stem = _UNSAFE_CHARS.sub("_", group) or "_"
    if stem.startswith("."):
        stem = "_" + stem
    if hashed or len(stem) > _MAX_STEM or stem != group:
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


#: How much later than a temporary directory's last change its writer's recorded start
#: may seem: /proc's boot time is whole seconds, and the wall clock may have been set since.
_START_SLACK_SECONDS = 60.0


#: A temporary directory whose writer seems alive on this host is kept at least this long,
#: whatever ``older_than_seconds`` says (no save takes a day), and no longer: containers
#: that share a host name but not process ids make any live process look like the writer
#: (a crashed save of pid 1 in one container, and pid 1 of another).
LIVE_WRITER_MAX_SECONDS = 24 * 3600


def is_leftover(entry: os.DirEntry[str], older_than_seconds: float) -> bool:
    """A directory an interrupted save or delete left behind, safe to remove.

    ``.deleting-*`` always. ``.tmp-*`` of a writer on this host when that process is gone
    (its id unused, or reused by a process started after the directory last changed), or
    when older than both ``older_than_seconds`` and ``LIVE_WRITER_MAX_SECONDS``: a save in
    progress is not removed. ``.tmp-*`` of a writer on another host, which cannot be
    asked, when older than ``older_than_seconds``.
    """
    if entry.name.startswith(DELETING_PREFIX):
        return True
    if not entry.name.startswith(TEMP_PREFIX):
        return False
    try:
        modified = entry.stat().st_mtime  # a fresh stat, not the listing's
    except FileNotFoundError:  # published (renamed) since the listing, or its save failed
        return False
    age = time.time() - modified
    host, _, pid = entry.name[len(TEMP_PREFIX) :].rpartition("-")[0].rpartition("-")
    if host == socket.gethostname() and pid.isdigit():
        if not _is_writer_alive(int(pid), modified):
            return True
        return age > max(older_than_seconds, LIVE_WRITER_MAX_SECONDS)
    return age > older_than_seconds


def _is_writer_alive(pid: int, modified: float) -> bool:
    """Is process ``pid`` of this host alive, and old enough to have written a directory
    last changed at ``modified``?"""
    if pid <= 0:  # os.kill(0, ...) would ask about our own process group
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # alive, owned by another user
        pass
    started = _process_start_time(pid)
    # The writer started before it made the directory: a process started later is
    # another program that was given the dead writer's id.
    return started is None or started <= modified + _START_SLACK_SECONDS


def _process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None where the system
    does not say (no /proc: then a live id counts as the writer)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            # Fields after the command name, which may itself hold spaces and ')'.
            fields = file.read().rpartition(b")")[2].split()
        with open("/proc/stat", "rb") as file:
            boot = next(int(line.split()[1]) for line in file if line.startswith(b"btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError, StopIteration):
        return None
