"""Writing one version's shard and optimizer files into a (temporary) directory.

Shards whose bytes equal the previous version's file of the same name are hard-linked
instead of written: an incremental save after a few layers changed writes only those
layers, and every version directory still holds all its files (self-contained).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .checksum import digest_file
from .file_writing import write_file
from .layout import OPTIMIZER_FILENAME, SHARDS_DIR, temp_dir_name
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
        try:
            for made in reversed(created):
                fsync_path(made.parent)
        except BaseException:  # a parent we may write but not read: leave nothing behind
            remove_empty_dirs(created)
            raise
    return created


#: How often a save makes its name directory again when a concurrent failed first save
#: of the same name removed it (empty) between the two steps of ``make_temp_dir``.
_MKDIR_ATTEMPTS = 3


def make_temp_dir(directory: Path, *, durable: bool) -> tuple[Path, list[Path]]:
    """Create ``directory`` as ``make_dirs`` does, and a fresh temporary directory in it
    for one save or pull. Returns the temporary directory and the directories created
    (deepest first), for ``remove_empty_dirs`` should the save fail."""
    created: list[Path] = []
    for attempt in range(_MKDIR_ATTEMPTS):
        try:
            # make_dirs too: its fsyncs of new parents meet the same removal.
            created = list(dict.fromkeys([*make_dirs(directory, durable=durable), *created]))
            temp = directory / temp_dir_name()
            temp.mkdir()
        except FileNotFoundError:  # removed meanwhile by another save's cleanup
            if attempt + 1 < _MKDIR_ATTEMPTS:
                continue
            remove_empty_dirs(created)
            raise
        except BaseException:
            remove_empty_dirs(created)
            raise
        return temp, created
    raise AssertionError("unreachable")


def remove_empty_dirs(paths: Sequence[Path]) -> None:
    """Remove directories ``make_dirs`` created, where nothing else has put files since."""
    for path in paths:
        try:
            path.rmdir()
        except OSError:
            return  # not empty (another save, the lock file): leave it and its parents


def _link_previous(
    previous: tuple[Path, Manifest] | None, path: str, nbytes: int, checksum: Checksum, target: Path
) -> bool:
    if previous is None:
        return False
    old_dir, old_manifest = previous
    old = next((s for s in old_manifest.shards if s.path == path), None)
    if old is None or old.nbytes != nbytes or old.checksum != checksum:
        return False
    try:
        os.link(old_dir / path, target)
    except OSError:
        return False  # another file system, no hard links, or the file is gone: write it
    # The old file may have rotted since it was written: reuse it only if its bytes still
    # hash to the checksum of the bytes we are saving (~27 GB/s, so a few ms for 67 MB).
    if os.path.getsize(target) == nbytes and digest_file(target, old.checksum.algorithm) == (
        checksum.digest
    ):
        return True
    target.unlink()
    return False


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
    shards, entries, reused = [], {}, []
    owed: list[Path] = []
    for plan in planned:
        encoded = encode_shard([(key, tensors[key]) for key in plan.keys])
        checksum = Checksum(algorithm=algorithm, digest=encoded.digest(algorithm))
        target = directory / plan.path
        if _link_previous(previous, plan.path, encoded.nbytes, checksum, target):
            reused.append(plan.path)
            if durable and not previous_synced:  # it may have been saved with durable=False
                owed.append(target)
        elif write_file(target, list(encoded.chunks()), durable=durable, defer_sync=True):
            owed.append(target)
        shards.append(
            ShardEntry(path=plan.path, group=plan.group, nbytes=encoded.nbytes, checksum=checksum)
        )
        entries.update(_tensor_entries(encoded, plan.path))
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
