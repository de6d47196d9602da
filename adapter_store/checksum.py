"""Shard checksums.

The default, xxh3-128, is a fast non-cryptographic hash (~27 GB/s here): it catches
corruption (truncation, flipped bits, a wrong file) at a cost that keeps verification on
by default. It does not resist a deliberate forgery; ``sha256`` does, at ~1.8 GB/s, and
is offered for adapters taken from untrusted sources (``AdapterStore(..., checksum="sha256")``).
"""

from __future__ import annotations

import hashlib
import mmap
import os
from typing import Final, Protocol

import xxhash

DEFAULT_ALGORITHM: Final = "xxh3-128"
ALGORITHMS = ("xxh3-128", "sha256")


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


def new_hasher(algorithm: str) -> Hasher:
    """A fresh incremental hasher for ``algorithm`` (one of :data:`ALGORITHMS`)."""
    if algorithm == "xxh3-128":
        return xxhash.xxh3_128()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown checksum algorithm {algorithm!r}; expected one of {ALGORITHMS}")


def digest_buffer(data: bytes | memoryview, algorithm: str) -> str:
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return hasher.hexdigest()


#: Digests of files this process wrote or hashed, by file identity (device, inode, size,
#: mtime, ctime). Any write through the file system changes mtime, and ctime cannot be set
#: back, so while the identity is unchanged the bytes are the ones that were hashed (on
#: kernels with coarse timestamps, barring an edit within the same clock tick; Linux 6.13+
#: ext4/xfs/btrfs give a fresh timestamp to a write after a stat). Saves use it to reuse
#: an unchanged shard of the previous version without hashing that file again.
_KNOWN_DIGESTS: dict[tuple[int, ...], tuple[str, str]] = {}
_KNOWN_DIGESTS_SIZE = 4096


def file_identity(info: os.stat_result) -> tuple[int, ...]:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def remember_file_digest(info: os.stat_result, algorithm: str, digest: str) -> None:
    """Record that the file ``info`` describes hashed to ``digest`` (see ``known_file_digest``)."""
    if len(_KNOWN_DIGESTS) >= _KNOWN_DIGESTS_SIZE:
        _KNOWN_DIGESTS.pop(next(iter(_KNOWN_DIGESTS)), None)
    _KNOWN_DIGESTS[file_identity(info)] = (algorithm, digest)


def known_file_digest(info: os.stat_result, algorithm: str) -> str | None:
    """The digest this process recorded for the file ``info`` describes, if its identity
    is unchanged since; ``None`` when unknown or recorded with another algorithm."""
    known = _KNOWN_DIGESTS.get(file_identity(info))
    return known[1] if known is not None and known[0] == algorithm else None


def digest_file(path: str | os.PathLike[str], algorithm: str) -> str:
    """Digest of a whole file, read through a memory map (no copy into Python memory)."""
    hasher = new_hasher(algorithm)
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size:
            with (
                mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
                memoryview(mapped) as view,
            ):
                hasher.update(view)
    return hasher.hexdigest()
