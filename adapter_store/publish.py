"""Publishing a finished temporary directory as the next version of a name.

Under the name's lock: pick the number past every numbered directory, write
``manifest.json`` last (the commit marker), make everything durable when asked, rename the
directory into place and fsync the name directory. A version directory therefore exists
whole or not at all, and readers need no lock.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from filelock import FileLock

from .layout import LOCK_FILENAME, is_version_name, manifest_path
from .manifest import Manifest, dump_manifest
from .reading import remember_manifest
from .writing import fsync_path


def publish_version(
    directory: Path,
    temp: Path,
    manifest_for: Callable[[int], Manifest],
    *,
    durable: bool,
    unsynced: Sequence[Path] = (),
) -> Manifest:
    """Commit ``temp`` as the next version under ``directory``; returns its manifest.

    With ``durable``, every file of the temporary directory (``unsynced``: written with
    writeback started, not yet fsynced; then the manifest) and all its directories are
    fsynced before the rename, and the name directory after it. The waits come last, so
    the disk writes the shards while the manifest is built."""
    with FileLock(directory / LOCK_FILENAME):
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
        os.rename(temp, directory / str(version))
        if durable:
            fsync_path(directory)
    # The next save of this name compares against this version: skip re-parsing it.
    remember_manifest(directory / str(version), manifest)
    return manifest


def directory_id(path: Path) -> tuple[int, int]:
    """(device, inode): tells a directory from one recreated under the same name."""
    info = os.stat(path)
    return (info.st_dev, info.st_ino)
