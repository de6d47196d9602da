"""Publishing a finished temporary directory as the next version of a name.

Under the name's lock: pick the number past every numbered directory, write
``manifest.json`` last (the commit marker), make everything durable when asked, rename the
directory into place and fsync the name directory. A version directory therefore exists
whole or not at all, and readers need no lock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .layout import LOCK_FILENAME, is_version_name, manifest_path
from .locking import commit_lock
from .manifest import Manifest, dump_manifest
from .version_files import remember_manifest
from .writing import fsync_path


@dataclass(frozen=True)
class Published:
    manifest: Manifest
    #: ``version_identity`` of the new version when it was made durable, taken under the
    #: lock (a version deleted and saved again right after must not inherit it).
    durable_identity: tuple[int, ...] | None


def publish_version(
    directory: Path,
    temp: Path,
    manifest_for: Callable[[int], Manifest],
    *,
    durable: bool,
    unsynced: Sequence[Path] = (),
) -> Published:
    """Commit ``temp`` as the next version under ``directory``.

    With ``durable``, every file of the temporary directory (``unsynced``: written with
    writeback started, not yet fsynced; then the manifest) and all its directories are
    fsynced before the rename, and the name directory after it. The waits come last, so
    the disk writes the shards while the manifest is built."""
    with commit_lock(directory / LOCK_FILENAME):
        # Past every numbered directory, committed or not: one left without a manifest
        # (an interrupted copy) must neither block saves nor be replaced by one.
        taken = [int(e.name) for e in os.scandir(directory) if is_version_name(e.name)]
        version = max(taken, default=0) + 1
        manifest = manifest_for(version)
        staged = manifest_path(temp)
        with open(staged, "xb") as file:
            file.write(dump_manifest(manifest))
        if durable:
            for path in (*unsynced, staged):
                fsync_path(path)
            # Then every directory's entries, deepest first, the temporary one last
            # (shards/, and whatever subfolders a pulled manifest's paths made).
            for folder, _, _ in os.walk(temp, topdown=False):
                fsync_path(Path(folder))
        target = directory / str(version)
        os.rename(temp, target)
        identity = None
        if durable:
            fsync_path(directory)
        # Committed. What follows only remembers the version, and another process may
        # delete it at once (deletes take no lock): then there is nothing to remember,
        # and the save has still succeeded.
        with contextlib.suppress(FileNotFoundError):
            if durable:
                identity = version_identity(target)
            # The next save of this name compares against this version: skip re-parsing.
            remember_manifest(target, manifest)
    return Published(manifest, identity)


def version_identity(version_dir: Path) -> tuple[int, ...]:
    """Tells a version directory from one deleted and made again under the same name,
    even on an inode number reused: the directory's and its manifest's inode, and the
    manifest's ctime."""
    folder = os.stat(version_dir)
    manifest = os.stat(manifest_path(version_dir))
    return (folder.st_dev, folder.st_ino, manifest.st_ino, manifest.st_ctime_ns)
