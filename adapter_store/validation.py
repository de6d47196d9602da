"""Validating saved adapters without a model: manifests, shard headers, checksums.

Used by ``adapter-store validate`` and after a Hub pull. Returns every problem found
(one per file and field) instead of stopping at the first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import AdapterStoreError, ManifestError
from .layout import TEMP_PREFIX
from .manifest import MANIFEST_FILENAME, Manifest
from .reading import open_optimizer, open_shard, read_manifest, unlisted_files


@dataclass(frozen=True)
class Problem:
    """One thing wrong: the file, the field or key (if known), and what is wrong."""

    file: str
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.message}"


def _problems_of(error: AdapterStoreError, fallback: str) -> list[Problem]:
    file = getattr(error, "path", None) or fallback
    if isinstance(error, ManifestError) and hasattr(error, "problems"):
        return [Problem(file, field, message) for field, message in error.problems]
    field = getattr(error, "field", None) or getattr(error, "key", None)
    message = str(error)
    prefix = f"{file}: "
    return [Problem(file, field, message[len(prefix):] if message.startswith(prefix)
                    else message)]


def validate_version(version_dir: Path, *, check_shards: bool = True
                     ) -> tuple[Manifest | None, list[Problem]]:
    """Check one version directory; ``check_shards=False`` checks the manifest only."""
    manifest_file = str(version_dir / MANIFEST_FILENAME)
    try:
        manifest = read_manifest(version_dir)
    except AdapterStoreError as exc:
        return None, _problems_of(exc, manifest_file)
    if not check_shards:
        return manifest, []
    problems: list[Problem] = []
    for shard in manifest.shards:
        try:
            open_shard(version_dir, manifest, shard.path, verify=True).close()
        except AdapterStoreError as exc:
            problems += _problems_of(exc, str(version_dir / shard.path))
    if manifest.optimizer is not None:
        try:
            open_optimizer(version_dir, manifest, verify=True).close()
        except AdapterStoreError as exc:
            problems += _problems_of(exc, str(version_dir / manifest.optimizer.path))
    for extra in unlisted_files(version_dir, manifest):
        problems.append(Problem(str(version_dir / extra), None,
                                "file is not listed in the manifest"))
    return manifest, problems


def find_version_dirs(path: Path) -> list[Path]:
    """Version directories under ``path``: itself, a name directory, or a whole store."""
    if (path / MANIFEST_FILENAME).exists() or not path.is_dir():
        return [path]
    found = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith((".", TEMP_PREFIX)):
            continue
        if entry.name.isdigit():
            found.append(Path(entry.path))
        else:
            found.extend(find_version_dirs(Path(entry.path)))
    return found
