"""``AdapterStore``: versions of named adapters in a local folder.

A save writes every file into a temporary sibling directory, then, under a per-name lock,
picks the next version number, writes ``manifest.json`` last (the commit marker) and
renames the directory into place. A version directory therefore either exists whole or
not at all; readers need no lock. Deleting renames a version away before removing it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checksum import ALGORITHMS, DEFAULT_ALGORITHM
from .errors import AdapterNotFoundError, InvalidAdapterError
from .fingerprint import FINGERPRINT_MODES
from .layout import is_version_name, manifest_path
from .manifest import (
    NAME_PATTERN,
    ChecksumAlgorithm,
    FingerprintMode,
    Manifest,
    OptimizerSection,
)
from .publish import publish_version, version_identity
from .reading import load_version
from .results import LoadReport, SavedAdapter, detached_manifest
from .retention import STALE_SECONDS, delete_version, remove_leftovers
from .save_plan import SavePlan, build_manifest, fingerprint_save, plan_save
from .sharding import DEFAULT_MAX_SHARD_BYTES
from .version_files import read_manifest
from .writing import make_temp_dir, remove_empty_dirs, write_optimizer, write_shards

#: How often ``versions`` lists a name again when versions vanished while it looked.
_LISTING_ATTEMPTS = 5


class AdapterStore:
    """Named, versioned adapters under ``root`` (created on first save).

    ``checksum``: ``"xxh3-128"`` (fast, default) or ``"sha256"`` (cryptographic).
    ``durable``: fsync files and directories before a save returns (default True).
    ``fingerprint``: ``"sample"`` (default) or ``"full"`` content of the frozen base.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        checksum: ChecksumAlgorithm = DEFAULT_ALGORITHM,
        durable: bool = True,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
        fingerprint: FingerprintMode = "sample",
    ) -> None:
        if checksum not in ALGORITHMS:
            raise ValueError(f"checksum must be one of {ALGORITHMS}, got {checksum!r}")
        if fingerprint not in FINGERPRINT_MODES:
            raise ValueError(f"fingerprint must be one of {FINGERPRINT_MODES}, got {fingerprint!r}")
        self.root = Path(root)
        self.checksum = checksum
        self.durable = durable
        self.max_shard_bytes = max_shard_bytes
        self.fingerprint = fingerprint
        #: Identities of version directories this store published durably: a later
        #: durable save that hard-links their files needs no fsync for them.
        self._synced_versions: set[tuple[int, ...]] = set()

    def __repr__(self) -> str:
        return f"AdapterStore({str(self.root)!r})"

    # --- reading the store ---------------------------------------------------------------

    def names(self) -> list[str]:
        """Adapter names with at least one committed version, sorted."""
        try:
            entries = list(os.scandir(self.root))
        except (FileNotFoundError, NotADirectoryError):  # no store yet, or removed meanwhile
            return []
        return sorted(
            e.name
            for e in entries
            # Other folders (lost+found, notes, caches) are not adapters: skip, don't fail.
            if e.is_dir() and NAME_PATTERN.fullmatch(e.name) and self.versions(e.name)
        )

    def versions(self, name: str) -> list[int]:
        """Committed versions of ``name``, ascending; ``[]`` for an unknown name."""
        directory = self._name_dir(name)
        for _ in range(_LISTING_ATTEMPTS):
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):  # unknown, or removed meanwhile
                return []
            numbered = [e for e in entries if is_version_name(e.name)]
            found = sorted(
                int(e.name) for e in numbered if os.path.isfile(manifest_path(Path(e.path)))
            )
            # A save with keep_last publishes its version, then deletes the old one: a
            # listing taken before the first and checked after the second sees neither,
            # though the name always has a version. A vanished entry says: list again.
            if found or not any(not os.path.exists(e.path) for e in numbered):
                return found
        return found

    def path(self, name: str, version: int | None = None) -> Path:
        """The directory of a committed version (the newest when ``version`` is None)."""
        known = self.versions(name)
        if not known:
            raise AdapterNotFoundError(
                f"{self.root}: no adapter named {name!r}; the store has {self.names()}"
            )
        if version is None:
            version = known[-1]
        elif version not in known:
            orphan = self._name_dir(name) / str(version)
            hint = f" ({orphan} has no manifest.json)" if os.path.isdir(orphan) else ""
            raise AdapterNotFoundError(
                f"{self.root}: adapter {name!r} has no version {version}{hint}; it has {known}"
            )
        return self._name_dir(name) / str(version)

    def manifest(self, name: str, version: int | None = None) -> Manifest:
        """The manifest of a version (the newest when ``version`` is None), as a copy of
        the caller's own: changing it changes nothing the store reads."""
        return detached_manifest(read_manifest(self.path(name, version)))

    def _name_dir(self, name: str) -> Path:
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise InvalidAdapterError(
                f"adapter name {name!r} is not allowed: use letters, "
                "digits, '.', '_' and '-', starting with a letter or "
                "digit, at most 128 characters"
            )
        return self.root / name

    # --- save ------------------------------------------------------------------------------

    def save(
        self,
        model: nn.Module,
        name: str = "default",
        *,
        optimizer: torch.optim.Optimizer | None = None,
        step: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        include: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        keep_last: int | None = None,
        group_by: Callable[[str], str] | None = None,
        durable: bool | None = None,
    ) -> SavedAdapter:
        """Save the trainable tensors of ``model`` as the next version of ``name``.

        Stores every parameter with ``requires_grad`` (plus ``include`` glob matches, minus
        ``exclude`` matches; a pattern list or one pattern, matched against canonical and
        wrapped names), one safetensors shard per module group, and a manifest with
        the base fingerprint. The version appears atomically; on any error nothing is
        left behind and earlier versions are untouched. ``keep_last=N`` then deletes all
        but the newest N versions. Raises :class:`InvalidAdapterError` when there is
        nothing valid to save.
        """
        directory = self._name_dir(name)
        durable = self.durable if durable is None else durable
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}")
        plan = plan_save(
            model,
            include=include,
            exclude=exclude,
            metadata=metadata,
            optimizer=optimizer,
            group_by=group_by,
            max_shard_bytes=self.max_shard_bytes,
            fingerprint=self.fingerprint,
            step=step,
        )
        manifest, reused = self._write_version(directory, name, plan, step=step, durable=durable)
        saved = SavedAdapter(
            name, manifest.version, directory / str(manifest.version), manifest, reused
        )
        if keep_last is not None:
            self._prune(name, keep_last)
        return saved

    def _write_version(
        self, directory: Path, name: str, plan: SavePlan, *, step: int | None, durable: bool
    ) -> tuple[Manifest, tuple[str, ...]]:
        """Write a planned save into a temporary directory and publish it as the next
        version; returns its manifest and the shards reused from the previous version.
        On any error nothing of it is left behind."""
        temp, created = make_temp_dir(directory, durable=durable)
        try:
            previous = self._newest(name)
            written = write_shards(
                temp,
                plan.shards,
                plan.selection.tensors,
                algorithm=self.checksum,
                durable=durable,
                previous=previous,
                previous_synced=previous is not None and self._synced(previous[0]),
            )
            optimizer_section: OptimizerSection | None = None
            optimizer_unsynced: tuple[Path, ...] = ()
            if plan.optimizer is not None:
                optimizer_section, optimizer_unsynced = write_optimizer(
                    temp, plan.optimizer, algorithm=self.checksum, durable=durable
                )
            # Pure work while the disk writes the shards: the fsyncs wait in _publish.
            base = fingerprint_save(plan)
            manifest = self._publish(
                directory,
                temp,
                lambda version: build_manifest(
                    plan, base, written, optimizer_section, name=name, version=version, step=step
                ),
                durable=durable,
                unsynced=(*written.unsynced, *optimizer_unsynced),
            )
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            remove_empty_dirs(created)  # a failed first save leaves no empty folders
            raise
        return manifest, written.reused

    def _prune(self, name: str, keep_last: int) -> None:
        """Delete all but the newest ``keep_last`` versions of ``name``."""
        for old in self.versions(name)[:-keep_last]:
            # Another writer of this name may prune the same version first: it is gone
            # either way, and the save that asked has succeeded.
            with contextlib.suppress(AdapterNotFoundError, FileNotFoundError):
                self.delete(name, old)

    def _synced(self, version_dir: Path) -> bool:
        try:
            return version_identity(version_dir) in self._synced_versions
        except OSError:  # deleted meanwhile: linking will fail and write the file instead
            return False

    def _newest(self, name: str) -> tuple[Path, Manifest] | None:
        known = self.versions(name)
        if not known:
            return None
        path = self._name_dir(name) / str(known[-1])
        try:
            return path, read_manifest(path)
        except Exception:  # a damaged older version must not block a new save
            return None

    def _publish(
        self,
        directory: Path,
        temp: Path,
        manifest_for: Callable[[int], Manifest],
        *,
        durable: bool,
        unsynced: Sequence[Path] = (),
    ) -> Manifest:
        """``publish.publish_version``, remembering what this store made durable."""
        published = publish_version(
            directory, temp, manifest_for, durable=durable, unsynced=unsynced
        )
        if published.durable_identity is not None:
            self._synced_versions.add(published.durable_identity)
        return published.manifest

    # --- load ------------------------------------------------------------------------------

    def load(
        self,
        model: nn.Module,
        name: str = "default",
        *,
        version: int | None = None,
        strict: bool = True,
        modules: Sequence[str] | str | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        check_base: str = "error",
        verify: bool = True,
    ) -> LoadReport:
        """Load a version (the newest by default) into ``model``, all of it or nothing.

        Before any parameter is touched: the manifest is validated, every stored key is
        mapped onto the model (shapes must agree; dtypes are cast and reported), the base
        fingerprint is compared (``check_base``: "error", "warn" or "ignore"), and every
        shard needed is checked (size, header, and checksum unless ``verify=False``).
        ``modules=[...]`` loads only those module groups (names or glob patterns) and
        opens only their files. ``strict=False`` loads the intersection and reports the
        rest. Raises :class:`IncompatibleAdapterError` (``BaseModelMismatchError`` for a
        different base), :class:`IntegrityError`, :class:`ManifestError`,
        :class:`AdapterNotFoundError`; the model is then byte-identical to before. Only
        :class:`PartialLoadError` (another program truncated a shard during the copy of an
        unverified load, or a tensor of the model refused the copy) means the model was
        partly changed.
        """
        path = self.path(name, version)
        return load_version(
            model,
            path,
            name=name,
            version=int(path.name),
            strict=strict,
            modules=modules,
            optimizer=optimizer,
            check_base=check_base,
            verify=verify,
        )

    # --- Hugging Face Hub (adapter_store.hub; imported on use, so that importing the
    # --- package does not import huggingface_hub) ----------------------------------------

    def push_to_hub(
        self,
        repo_id: str,
        name: str = "default",
        version: int | None = None,
        *,
        path_in_repo: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str | None = None,
        create_pr: bool = False,
    ) -> str:
        """Upload one version (the newest by default) to ``repo_id``; returns the commit id.

        One commit holds ``manifest.json``, the shards, the optimizer file if any and a
        generated ``README.md`` card, under ``path_in_repo`` (the repo root by default), on
        branch ``revision`` (created if missing) or as a pull request (``create_pr``). The
        repo is created if needed (``private`` applies then). The commit's parent is the
        head compared against, so a concurrent push makes this one fail with
        ``HubConflictError`` instead of interleaving. If the repo already holds this version
        there, no commit is made and the current head is returned. Local files are verified
        first (:class:`IntegrityError`); Hub failures raise :class:`AdapterNotFoundError` or
        ``adapter_store.hub.HubError``. The token is never written anywhere.
        """
        from .hub import push

        return push(
            self,
            repo_id,
            name,
            version,
            path_in_repo=path_in_repo,
            revision=revision,
            private=private,
            token=token,
            commit_message=commit_message,
            create_pr=create_pr,
        ).commit

    def pull(
        self,
        repo_id: str,
        *,
        name: str | None = None,
        revision: str | None = None,
        path_in_repo: str | None = None,
        token: str | None = None,
        modules: Sequence[str] | str | None = None,
    ) -> SavedAdapter:
        """Download an adapter from ``repo_id`` as the next version of ``name``, verified.

        ``revision`` (branch, tag, ``refs/pr/N`` or commit id) is resolved to one commit, and
        every file comes from that commit, through huggingface_hub's cache (``HF_HOME``,
        offline mode and tokens as usual). Each shard is checked against the manifest (size,
        checksum, header) before the version appears; a corrupt or truncated download raises
        :class:`IntegrityError` and leaves the store as it was. ``modules=[...]`` downloads
        only those module groups' shards: the local version's manifest then lists just
        them (load it with the same ``modules``, or ``strict=False``). The resolved commit is
        recorded in ``manifest.origin``; pulling the commit the newest version already holds
        returns that version. ``name`` defaults to the last part of ``path_in_repo``, else
        of ``repo_id``.
        """
        from .hub import pull

        return pull(
            self,
            repo_id,
            name=name,
            revision=revision,
            path_in_repo=path_in_repo,
            token=token,
            modules=modules,
        )

    # --- retention -------------------------------------------------------------------------

    def delete(self, name: str, version: int) -> None:
        """Delete one version. It disappears atomically (renamed away, then removed)."""
        delete_version(self.path(name, version), version)

    def gc(self, *, older_than_seconds: float = STALE_SECONDS) -> list[Path]:
        """Remove leftovers of interrupted saves and deletes; returns what was removed.

        A temporary directory of a writer on this host is removed when that process is
        gone (should its id look alive, after a day and ``older_than_seconds``): saves in
        progress are left alone. One of a writer on another host, which cannot be asked,
        when it is older than ``older_than_seconds``.
        """
        return remove_leftovers(self.root, older_than_seconds=older_than_seconds)


__all__ = ["AdapterStore"]
