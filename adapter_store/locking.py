"""The commit lock of one adapter name (``<name>/.lock``), held while a save picks its
version number and renames its directory into place.

On POSIX it is a blocking whole-file ``fcntl.flock``: the kernel wakes the next writer
the moment the lock is free. ``filelock.FileLock`` retries every 50 ms instead, which
made two processes saving one name about 1.6x slower (docs/performance.md), and costs
~128 us per save uncontended against ~10 us. Both take the same lock, since
``FileLock`` also uses ``flock`` on POSIX: a process of an older adapter-store version
and this one exclude each other. ``FileLock`` is still used where ``fcntl`` is missing
(Windows) or the file system does not implement ``flock`` (``ENOSYS``), so that such
stores behave as with older versions (recent ``filelock`` then uses a marker file). On
POSIX the lock file is never deleted: a waiter holding the old inode would lock nothing.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import ModuleType

from filelock import FileLock, Timeout

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

#: The commit lock is held for milliseconds (seconds with slow fsyncs). The ``filelock``
#: fallback cannot tell a held lock from a lock file left behind, so it gives up.
FALLBACK_TIMEOUT_SECONDS = 120.0

#: ``flock`` is not implemented by this file system (some cluster file systems): the one
#: error on which ``filelock`` itself switches to a marker file (recent versions).
_UNSUPPORTED = errno.ENOSYS


@contextmanager
def commit_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive lock on the file ``path`` (created if missing) for the block.

    Raises ``OSError`` naming ``path`` when the lock cannot be taken (for example NFS
    without a lock service)."""
    if fcntl is None:
        with _file_lock(path):
            yield
        return
    fd, created = _open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks; interrupted waits are retried (PEP 475)
    except OSError as exc:
        os.close(fd)
        if exc.errno != _UNSUPPORTED:
            raise OSError(
                exc.errno, f"cannot take the commit lock {path}: {exc.strerror}", str(path)
            ) from exc
        # filelock's own fallback treats an existing file as held: leave none behind.
        if created:
            path.unlink(missing_ok=True)
        fd = -1
    if fd < 0:
        with _file_lock(path):
            yield
        return
    try:
        yield
    finally:
        try:
            # Unlock before closing: a child forked meanwhile (DataLoader workers) shares
            # this open file and would otherwise hold the lock until it exits.
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """``filelock.FileLock`` with a bounded wait and errors that name the lock file."""
    lock = FileLock(path, timeout=FALLBACK_TIMEOUT_SECONDS)
    try:
        lock.acquire()
    except Timeout as exc:
        raise OSError(
            errno.ETIMEDOUT,
            f"cannot take the commit lock {path} within {FALLBACK_TIMEOUT_SECONDS:g} s. "
            "Without flock a lock file left behind (a store copied from another disk) "
            "looks held: remove it if no save of this name is running",
            str(path),
        ) from exc
    except NotImplementedError as exc:  # filelock versions without a marker-file fallback
        raise OSError(
            errno.ENOSYS, f"cannot take the commit lock {path}: {exc}", str(path)
        ) from exc
    try:
        yield
    finally:
        lock.release()


def _open_lock_file(path: Path) -> tuple[int, bool]:
    """A descriptor of the lock file, and whether this call created it."""
    while True:
        with suppress(FileExistsError):
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), True
        try:
            return os.open(path, os.O_RDWR), False
        except FileNotFoundError:  # removed meanwhile (filelock's marker-file fallback)
            continue
