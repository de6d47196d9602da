"""The commit lock: mutual exclusion, release on error, and the same lock as filelock's.

Threads stand in for processes: ``flock`` locks belong to an open file description, so
two descriptors of one file exclude each other within a process as across processes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from filelock import FileLock

from adapter_store import locking
from adapter_store.locking import commit_lock

#: How long a blocked waiter is given to (wrongly) get in; not a measured time.
GRACE_SECONDS = 0.3


@pytest.fixture(params=["flock", "filelock-fallback"])
def lock_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "filelock-fallback":
        monkeypatch.setattr(locking, "fcntl", None)  # as on Windows
    return str(request.param)


def _waiter(
    lock: Callable[[], AbstractContextManager[object]],
) -> tuple[threading.Thread, threading.Event, threading.Event]:
    """A thread that takes ``lock``, signals ``inside``, and holds it until ``leave``."""
    inside, leave = threading.Event(), threading.Event()

    def run() -> None:
        with lock():
            inside.set()
            leave.wait(30)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, inside, leave


@pytest.fixture
def lock_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / ".lock"


def test_a_second_holder_waits_until_the_first_releases(lock_impl: str, lock_path: Path) -> None:
    with commit_lock(lock_path):
        thread, inside, leave = _waiter(lambda: commit_lock(lock_path))
        assert not inside.wait(GRACE_SECONDS), "two holders of the commit lock at once"
    assert inside.wait(30), "the waiter never got the lock after it was released"
    leave.set()
    thread.join(30)


def test_the_lock_is_released_when_the_block_raises(lock_impl: str, lock_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), commit_lock(lock_path):
        raise RuntimeError("boom")
    thread, inside, leave = _waiter(lambda: commit_lock(lock_path))
    assert inside.wait(30)
    leave.set()
    thread.join(30)


@pytest.mark.parametrize("holder", ["filelock-holds", "commit-lock-holds"])
def test_it_excludes_filelock_holders_and_is_excluded_by_them(lock_path: Path, holder: str) -> None:
    """Older adapter-store versions lock ``<name>/.lock`` with ``filelock.FileLock``."""
    first, second = (
        (lambda: FileLock(lock_path), lambda: commit_lock(lock_path))
        if holder == "filelock-holds"
        else (lambda: commit_lock(lock_path), lambda: FileLock(lock_path))
    )
    with first():
        thread, inside, leave = _waiter(second)
        assert not inside.wait(GRACE_SECONDS), "filelock and the commit lock both held"
    assert inside.wait(30)
    leave.set()
    thread.join(30)


def test_the_lock_file_stays_after_release(lock_path: Path) -> None:
    # A waiter may already hold a descriptor of this inode: deleting the file would let
    # the next writer lock a new one while that waiter locks the old.
    with commit_lock(lock_path):
        inode = lock_path.stat().st_ino
    assert lock_path.stat().st_ino == inode


def test_a_child_forked_while_the_lock_is_held_does_not_keep_it(lock_path: Path) -> None:
    # The child shares the open file the lock belongs to; closing our descriptor alone
    # would leave the lock held for as long as the child lives (DataLoader workers).
    with commit_lock(lock_path):
        child = os.fork()
        if child == 0:  # pragma: no cover - the child only waits to be killed
            time.sleep(60)
            os._exit(0)
    try:
        probe = os.open(lock_path, os.O_RDWR)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while still held
        finally:
            os.close(probe)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


class _FlockFails:
    """``fcntl`` whose ``flock`` fails with ``code``: file systems not available here."""

    LOCK_EX, LOCK_UN, LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_UN, fcntl.LOCK_NB

    def __init__(self, code: int) -> None:
        self.code = code

    def flock(self, fd: int, operation: int) -> None:
        raise OSError(self.code, os.strerror(self.code))


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize(
    "code", [errno.ENOLCK, errno.EOPNOTSUPP], ids=["nfs-without-lockd", "not-supported"]
)
def test_a_refused_flock_names_the_lock_file(
    lock_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    monkeypatch.setattr(locking, "fcntl", _FlockFails(code))
    before = _open_descriptors()
    with (
        pytest.raises(OSError, match=r"cannot take the commit lock .*\.lock") as caught,
        commit_lock(lock_path),
    ):
        pytest.fail("entered the block without the lock")
    assert caught.value.filename == str(lock_path)
    assert caught.value.errno == code
    assert _open_descriptors() == before


def test_a_file_system_without_flock_falls_back_to_filelock(
    lock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(locking, "fcntl", _FlockFails(errno.ENOSYS))
    entered = []
    with commit_lock(lock_path):
        entered.append(True)
        # filelock holds the file now (with flock, which works on this disk); a
        # second commit lock must wait for it.
        thread, inside, leave = _waiter(lambda: commit_lock(lock_path))
        assert not inside.wait(GRACE_SECONDS), "two holders of the commit lock at once"
    assert inside.wait(30)
    leave.set()
    thread.join(30)
    assert entered == [True]


def test_the_filelock_fallback_gives_up_naming_the_lock_file(
    lock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without flock, a lock file left behind looks held: the wait must end."""
    monkeypatch.setattr(locking, "fcntl", _FlockFails(errno.ENOSYS))
    monkeypatch.setattr(locking, "FALLBACK_TIMEOUT_SECONDS", 0.2)
    with FileLock(lock_path):  # another holder that never lets go in time
        done: list[BaseException] = []

        def attempt() -> None:
            try:
                with commit_lock(lock_path):
                    done.append(RuntimeError("entered the block without the lock"))
            except OSError as exc:
                done.append(exc)

        thread = threading.Thread(target=attempt)
        thread.start()
        thread.join(30)
    (error,) = done
    assert isinstance(error, OSError) and error.errno == errno.ETIMEDOUT
    assert error.filename == str(lock_path) and "remove it" in str(error)


def test_an_old_filelock_without_fallback_is_a_named_error(
    lock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class OldFileLock:  # filelock before its marker-file fallback raises this
        def __init__(self, path: Path, timeout: float) -> None:
            self.path, self.timeout = path, timeout

        def acquire(self) -> None:
            raise NotImplementedError("FileSystem does not appear to support flock")

    monkeypatch.setattr(locking, "fcntl", _FlockFails(errno.ENOSYS))
    monkeypatch.setattr(locking, "FileLock", OldFileLock)
    with (
        pytest.raises(OSError, match=r"cannot take the commit lock .*does not appear") as caught,
        commit_lock(lock_path),
    ):
        pytest.fail("entered the block without the lock")
    assert caught.value.filename == str(lock_path)
