"""Writing one version's shard and optimizer files into a (temporary) directory.

Shards whose bytes equal the previous version's file of the same name are hard-linked
instead of written: an incremental save after a few layers changed writes only those
layers, and every version directory still holds all its files (self-contained). Shards
that are certainly written are hashed meanwhile on a helper thread when large.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .checksum import digest_file
from .file_writing import write_file
from .layout import OPTIMIZER_FILENAME, SHARDS_DIR
from .manifest import (
    Checksum,
    ChecksumAlgorithm,
    Manifest,
    OptimizerSection,
    ShardEntry,
    TensorEntry,
)
from .optim import OptimizerParts
from .safetensors_io import EncodedShard, encode_shard
from .sharding import PlannedShard


@dataclass(frozen=True)
class WrittenFiles:
    shards: tuple[ShardEntry, ...]
    tensors: Mapping[str, TensorEntry]
    reused: tuple[str, ...]
    optimizer: OptimizerSection | None
    #: Files whose writeback has started but which still need an fsync to be durable.
    unsynced: tuple[Path, ...] = ()


def fsync_path(path: Path) -> None:
    """Make a file's data, or a directory's entries (new files, renames), durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, *, durable: bool) -> list[Path]:
    """Create ``path`` and its missing parents; with ``durable``, fsync the parent of each
    one created (its new entry must survive a power cut). Returns those created, deepest
    first, so that a failed first save or pull can remove them again."""
    created = []
    missing = path
    while not missing.exists():
        created.append(missing)
        missing = missing.parent
    path.mkdir(parents=True, exist_ok=True)
    if durable:
        for made in reversed(created):
            fsync_path(made.parent)
    return created


def remove_empty_dirs(paths: Sequence[Path]) -> None:
    """Remove directories ``make_dirs`` created, where nothing else has put files since."""
    for path in paths:
        try:
            path.rmdir()
        except OSError:
            return  # not empty (another save, the lock file): leave it and its parents


def _link_previous(old_file: Path, old: ShardEntry, target: Path) -> bool:
    """Hard-link the previous version's ``old_file`` (whose recorded bytes equal the ones
    being saved) as ``target``; False, leaving no file, when that cannot be trusted."""
    try:
        os.link(old_file, target)
    except OSError:
        return False  # another file system, no hard links, or the file is gone: write it
    # The old file may have rotted since it was written: reuse it only if its bytes still
    # hash to the checksum of the bytes we are saving (~27 GB/s, so a few ms for 67 MB).
    if os.path.getsize(target) == old.nbytes and digest_file(target, old.checksum.algorithm) == (
        old.checksum.digest
    ):
        return True
    target.unlink()
    return False


#: Shards that are written (not linked) are hashed on a helper thread while this one
#: writes them, when together they are at least this large: both ``os.writev`` and the
#: hashers release the GIL, so on 2 cores the hash (~3 ms for 67 MB) mostly disappears
#: behind the write. Below this size the thread costs more than it hides (W2's 8 MB and
#: W4's shards: no gain, or ~0.5 ms lost).
BACKGROUND_HASH_MIN_BYTES = 16 * 1024 * 1024


@contextmanager
def _digests_meanwhile(
    shards: Sequence[EncodedShard], algorithm: str
) -> Iterator[Callable[[], list[str]]]:
    """Yields a function returning the digests of ``shards``, in order. For large shards
    they are computed on a helper thread from the start, which is joined before the block
    ends, also on an error: no thread outlives a save."""
    if sum(shard.nbytes for shard in shards) < BACKGROUND_HASH_MIN_BYTES:
        yield lambda: [shard.digest(algorithm) for shard in shards]
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="adapter-store-hash") as pool:
        future = pool.submit(lambda: [shard.digest(algorithm) for shard in shards])
        yield future.result


def _tensor_entries(encoded: EncodedShard, shard: str) -> dict[str, TensorEntry]:
    # Values we computed ourselves from real tensors: validating 2,000 of them costs ~6 ms
    # (W2); the manifest is validated as a whole when it is read back. Entries are frozen,
    # so tensors of one shard with the same dtype and shape share one (LoRA's A and B of
    # every projection; W2's 2,000 tensors: one entry built instead of 2,000).
    built: dict[tuple[str, tuple[int, ...]], TensorEntry] = {}
    entries = {}
    for key, e in encoded.entries.items():
        entry = built.get((e.dtype, e.shape))
        if entry is None:
            entry = built[e.dtype, e.shape] = TensorEntry.model_construct(
                shard=shard, dtype=e.dtype, shape=e.shape, nbytes=e.end - e.begin
            )
        entries[key] = entry
    return entries


def _link_candidates(
    previous: tuple[Path, Manifest] | None,
    planned: Sequence[PlannedShard],
    encoded: Sequence[EncodedShard],
    algorithm: str,
) -> dict[int, tuple[Path, ShardEntry]]:
    """The shards (by index) whose previous version, of the same name, size and checksum
    algorithm, may hold the same bytes: they are hashed first, to decide. The others are
    certainly written, and can be hashed meanwhile."""
    if previous is None:
        return {}
    old_dir, old_manifest = previous
    old_shards = {shard.path: shard for shard in old_manifest.shards}
    candidates = {}
    for i, (plan, shard) in enumerate(zip(planned, encoded, strict=True)):
        old = old_shards.get(plan.path)
        if old is not None and old.nbytes == shard.nbytes and old.checksum.algorithm == algorithm:
            candidates[i] = (old_dir / plan.path, old)
    return candidates


def write_shards(
    directory: Path,
    planned: Sequence[PlannedShard],
    tensors: Mapping[str, torch.Tensor],
    *,
    algorithm: ChecksumAlgorithm,
    durable: bool,
    previous: tuple[Path, Manifest] | None,
    previous_synced: bool = False,
) -> WrittenFiles:
    """Write (or link) every planned shard under ``directory``.

    ``previous_synced``: the previous version's files are known to be on disk (this store
    saved it durably), so linked files owe no fsync; otherwise they are listed in
    ``unsynced`` like the written ones."""
    (directory / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    encoded = [encode_shard([(key, tensors[key]) for key in plan.keys]) for plan in planned]
    candidates = _link_candidates(previous, planned, encoded, algorithm)
    fresh = [i for i in range(len(planned)) if i not in candidates]
    digests: dict[int, str] = {}
    reused: list[str] = []
    owed: list[Path] = []
    with _digests_meanwhile([encoded[i] for i in fresh], algorithm) as fresh_digests:
        for i, (plan, shard) in enumerate(zip(planned, encoded, strict=True)):
            target = directory / plan.path
            if i in candidates:
                old_file, old = candidates[i]
                digests[i] = shard.digest(algorithm)
                if digests[i] == old.checksum.digest and _link_previous(old_file, old, target):
                    reused.append(plan.path)
                    if durable and not previous_synced:  # it may have been saved with durable=False
                        owed.append(target)
                    continue
            if write_file(target, list(shard.chunks()), durable=durable, defer_sync=True):
                owed.append(target)
        digests.update(zip(fresh, fresh_digests(), strict=True))
    shards = []
    entries: dict[str, TensorEntry] = {}
    for i, (plan, shard) in enumerate(zip(planned, encoded, strict=True)):
        checksum = Checksum(algorithm=algorithm, digest=digests[i])
        shards.append(
            ShardEntry(path=plan.path, group=plan.group, nbytes=shard.nbytes, checksum=checksum)
        )
        entries.update(_tensor_entries(shard, plan.path))
    # The fsyncs are the caller's, after the rest of the save's work: the disk writes
    # these files meanwhile (see publish.publish_version).
    return WrittenFiles(tuple(shards), entries, tuple(reused), None, tuple(owed))


def write_optimizer(
    directory: Path, parts: OptimizerParts, *, algorithm: ChecksumAlgorithm, durable: bool
) -> tuple[OptimizerSection, tuple[Path, ...]]:
    """Write the optimizer state; returns its manifest section and the file if it still
    needs an fsync (writeback started, as for shards)."""
    encoded = encode_shard(list(parts.tensors))
    path = directory / OPTIMIZER_FILENAME
    owed = write_file(path, list(encoded.chunks()), durable=durable, defer_sync=True)
    section = OptimizerSection(
        path=OPTIMIZER_FILENAME,
        nbytes=encoded.nbytes,
        checksum=Checksum(algorithm=algorithm, digest=encoded.digest(algorithm)),
        class_name=parts.class_name,
        param_groups=list(parts.param_groups),
        tensors=_tensor_entries(encoded, OPTIMIZER_FILENAME),
        scalars={k: dict(v) for k, v in parts.scalars.items()},
    )
    return section, ((path,) if owed else ())
