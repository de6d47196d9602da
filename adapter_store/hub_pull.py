"""Pulling a version from a Hub repo into a local store, verified before it appears.

The revision is resolved to one commit id and every file comes from that commit, so a push
landing mid-pull cannot mix two versions. Files go through huggingface_hub's cache, are
copied into a temporary directory inside the name's folder, checked against the manifest
(size, checksum, header), and only then published as the next version (``_publish``: the
manifest written last, one rename). A failure removes the temporary directory, any folder
the pull created, and the corrupt file from the Hugging Face cache.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants
from tqdm.auto import tqdm

from .errors import (
    AdapterStoreError,
    IncompatibleAdapterError,
    IntegrityError,
    InvalidAdapterError,
)
from .hub_client import (
    adapter_content,
    check_content_id,
    download_at,
    download_file,
    evict_cached,
    make_api,
    repo_prefix,
    version_files,
)
from .layout import resolve_inside
from .manifest import MANIFEST_FILENAME, Manifest, Origin, parse_manifest
from .reading import resolve_groups
from .results import SavedAdapter
from .shard_reader import ShardReader
from .store import AdapterStore
from .version_files import read_manifest
from .writing import make_temp_dir, remove_empty_dirs

logger = logging.getLogger(__name__)


def subset_manifest(manifest: Manifest, groups: set[str], *, where: str = "manifest") -> Manifest:
    """A valid manifest of just ``groups``: their shards, tensors and aliases, no optimizer.

    The optimizer file holds state for every parameter, so a partial pull leaves it out.
    Raises :class:`IncompatibleAdapterError` (as ``load(modules=[])`` does) when the
    groups hold no tensor: an adapter of nothing cannot be stored.
    """
    shards = [shard for shard in manifest.shards if shard.group in groups]
    kept = {shard.path for shard in shards}
    tensors = {key: entry for key, entry in manifest.tensors.items() if entry.shard in kept}
    if not tensors:
        known = manifest.groups
        raise IncompatibleAdapterError(
            f"{where}: the modules asked for ({sorted(groups)}) hold no tensor, so nothing "
            f"would be pulled; name at least one of the adapter's module groups "
            f"{known[:8]}{' ...' if len(known) > 8 else ''}, or leave modules out"
        )
    aliases = {alias: key for alias, key in manifest.aliases.items() if key in tensors}
    data = manifest.model_dump()
    data.update(shards=shards, tensors=tensors, aliases=aliases, optimizer=None)
    return Manifest.model_validate(data)


def _already_pulled(
    store: AdapterStore, name: str, wanted: Manifest, origin: Origin
) -> SavedAdapter | None:
    """The newest local version of ``name`` when it is this very pull (same commit, files)."""
    known = store.versions(name)
    if not known:
        return None
    path = store.path(name, known[-1])
    try:
        manifest = read_manifest(path)
    except AdapterStoreError:
        return None
    same_place = manifest.origin is not None and (
        (manifest.origin.repo_id, manifest.origin.commit, manifest.origin.path_in_repo)
        == (origin.repo_id, origin.commit, origin.path_in_repo)
    )
    if not same_place or adapter_content(manifest) != adapter_content(wanted):
        return None
    return SavedAdapter(name, known[-1], path, manifest)


def _forwarding_tqdm(bar: tqdm) -> type[tqdm]:
    """A tqdm class for huggingface_hub's per-file bars that feeds one overall bar instead."""

    class Forward(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            bar.update(n)
            return None

    return Forward


def _fetch_files(
    api: HfApi,
    repo_id: str,
    manifest: Manifest,
    prefix: str,
    commit: str,
    temp: Path,
    *,
    durable: bool,
    progress: bool,
) -> dict[str, Path]:
    """Download every file ``manifest`` lists into ``temp``; returns path -> cache file."""
    files = version_files(manifest)
    cached: dict[str, Path] = {}
    done = 0
    with tqdm(
        total=sum(files.values()),
        unit="B",
        unit_scale=True,
        desc=f"pull {repo_id}",
        disable=not progress,
    ) as bar:
        forward = _forwarding_tqdm(bar) if progress else None
        for path, nbytes in files.items():
            cached[path] = download_file(api, repo_id, prefix + path, commit, forward)
            target = resolve_inside(temp, path, field="shards.path")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cached[path], target)
            if durable:
                with open(target, "rb+") as file:
                    os.fsync(file.fileno())
            done += nbytes
            bar.update(done - bar.n)  # cached files download nothing: count them here
    return cached


def _verify_pulled(temp: Path, manifest: Manifest, cached: Mapping[str, Path], where: str) -> None:
    """Check every copied file against the manifest (size, checksum, header)."""
    checks = [
        (
            shard.path,
            shard.nbytes,
            shard.checksum,
            {k: t for k, t in manifest.tensors.items() if t.shard == shard.path},
        )
        for shard in manifest.shards
    ]
    if manifest.optimizer is not None:
        section = manifest.optimizer
        checks.append((section.path, section.nbytes, section.checksum, section.tensors))
    for path, nbytes, checksum, expected in checks:
        try:
            ShardReader(
                resolve_inside(temp, path, field="shards.path"),
                display=f"{where}/{path}",
                nbytes=nbytes,
                checksum=(checksum.algorithm, checksum.digest),
                expected=expected,
            ).close()
        except IntegrityError:
            evict_cached(cached[path])
            raise


def _publish_pulled(
    store: AdapterStore,
    api: HfApi,
    *,
    name: str,
    wanted: Manifest,
    origin: Origin,
    prefix: str,
    progress: bool,
) -> SavedAdapter:
    """Download into a temporary directory, verify, then publish the next version."""
    directory = store._name_dir(name)
    temp, created = make_temp_dir(directory, durable=store.durable)
    where = f"{origin.repo_id}@{origin.commit[:12]}" + (f"/{prefix.rstrip('/')}" if prefix else "")
    try:
        cached = _fetch_files(
            api,
            origin.repo_id,
            wanted,
            prefix,
            origin.commit,
            temp,
            durable=store.durable,
            progress=progress,
        )
        _verify_pulled(temp, wanted, cached, where)

        def manifest_for(version: int) -> Manifest:
            return wanted.model_copy(update={"name": name, "version": version, "origin": origin})

        manifest = store._publish(directory, temp, manifest_for, durable=store.durable)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        remove_empty_dirs(created)  # a failed first pull leaves no empty folders behind
        raise
    logger.info("pulled %s into %s v%d", where, name, manifest.version)
    return SavedAdapter(name, manifest.version, directory / str(manifest.version), manifest)


def pull(
    store: AdapterStore,
    repo_id: str,
    *,
    name: str | None = None,
    revision: str | None = None,
    path_in_repo: str | None = None,
    token: str | None = None,
    modules: Sequence[str] | str | None = None,
    progress: bool = False,
) -> SavedAdapter:
    """Download a pushed version into ``store`` as the next version of ``name``, verified.

    See :meth:`AdapterStore.pull`. ``progress`` shows one bar over the bytes to download.
    """
    prefix = repo_prefix(path_in_repo)
    derived = name is None
    name = name or (prefix.rstrip("/").rsplit("/", 1)[-1] if prefix else repo_id.split("/")[-1])
    try:
        store.versions(name)  # refuses a name the store cannot hold, before any download
    except InvalidAdapterError as exc:
        if not derived:
            raise
        raise InvalidAdapterError(
            f"{exc} (taken from {'path_in_repo' if prefix else 'the repo id'}); pass a "
            "name for the local copy: pull(..., name=...), or --name on the command line"
        ) from exc
    api = make_api(token)
    manifest_file = prefix + MANIFEST_FILENAME
    cached, commit = download_at(api, repo_id, manifest_file, revision)
    where = f"{repo_id}/{manifest_file} at {commit[:12]}"
    data = cached.read_bytes()
    check_content_id(data, cached, where)
    remote = parse_manifest(data, path=where)
    groups = resolve_groups(remote, modules, f"{repo_id}/{manifest_file}")
    wanted = (
        remote
        if groups is None
        else subset_manifest(remote, groups, where=f"{repo_id}/{manifest_file}")
    )
    origin = Origin(
        repo_id=repo_id,
        revision=revision or constants.DEFAULT_REVISION,
        commit=commit,
        path_in_repo=prefix.rstrip("/") or None,
    )
    existing = _already_pulled(store, name, wanted, origin)
    if existing is not None:
        logger.info("%s v%d already holds %s at %s", name, existing.version, repo_id, commit)
        return existing
    return _publish_pulled(
        store, api, name=name, wanted=wanted, origin=origin, prefix=prefix, progress=progress
    )


__all__ = ["pull", "subset_manifest"]
