"""Removing versions and the leftovers of interrupted saves and deletes from a store.

Both run while other processes save and load: a version disappears by one rename (a
reader sees it whole or not at all), and a leftover is only removed once its writer is
gone or it is old enough.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .layout import deleting_dir_name, is_leftover

#: A temporary directory older than this is a leftover even if its writer seems alive
#: (another host's process, or a reused process id).
STALE_SECONDS = 24 * 3600


def delete_version(path: Path, version: int) -> None:
    """Delete the committed version directory ``path``: renamed away, then removed."""
    doomed = path.parent / deleting_dir_name(version)
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_leftovers(root: Path, *, older_than_seconds: float) -> list[Path]:
    """Remove the temporary and half-deleted directories under ``root``'s name folders
    whose writer is gone or that are older than ``older_than_seconds``; returns them."""
    removed: list[Path] = []
    # Saves and deletes run meanwhile: any entry listed may be gone by the time it is
    # looked at (a save renames its temporary directory; a failed first save removes
    # its empty name directory, and the store root if it made that too).
    try:
        name_dirs = [Path(e.path) for e in os.scandir(root) if e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for name_dir in name_dirs:
        try:
            entries = list(os.scandir(name_dir))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.is_dir() and is_leftover(entry, older_than_seconds):
                shutil.rmtree(entry.path, ignore_errors=True)
                if not os.path.lexists(entry.path):  # not when it could not be removed
                    removed.append(Path(entry.path))
    return removed
