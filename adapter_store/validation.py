"""Validating saved adapters: manifests, shard files, and the fit to a given model.

Used by ``adapter-store validate`` / ``check`` and after a Hub pull. Every function here
returns all the problems it finds (one :class:`Problem` per file and field) instead of
stopping at the first, so that a CI log lists everything to fix in one run.

A manifest is checked twice, by two independent validators: the pydantic model (what the
library itself reads) and the JSON Schema generated from it (what other tools read, as
committed under ``schemas/``). The schema is stricter on types, since pydantic's lax mode
turns ``"version": "3"`` into ``3``; the model is stricter on cross-field rules.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .compat import LoadPlan, check_plan
from .errors import (
    AdapterNotFoundError,
    AdapterStoreError,
    IncompatibleAdapterError,
    ManifestError,
)
from .fingerprint import BaseDifference
from .layout import TEMP_PREFIX, is_version_name, manifest_path, resolve_inside
from .manifest import MANIFEST_FILENAME, MAX_MANIFEST_BYTES, Manifest, manifest_json_schema
from .reading import plan_version
from .version_files import open_optimizer, open_shard, read_manifest, unlisted_files

_LEADING_FIELD = re.compile(r"^([A-Za-z_]\w*(?:\.[^\s:]+)*): (.+)$", re.DOTALL)
#: How far above a file a version directory may be (``shards/x.safetensors`` -> 2).
_MAX_FILE_DEPTH = 2


@dataclass(frozen=True)
class Problem:
    """One thing wrong: the file, the field or key (if known), and what is wrong."""

    file: str
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.message}"

    def as_dict(self) -> dict[str, str | None]:
        return {"file": self.file, "field": self.field, "message": self.message}


def _problems_of(error: AdapterStoreError, file: str) -> list[Problem]:
    """Turn a library error into problems; ``file`` is the file being checked."""
    # IntegrityError.path names the offending file; UnsafePathError.path is the relative
    # path found *in* the manifest, so the manifest stays the file to blame.
    if isinstance(error, ManifestError) or hasattr(error, "key"):
        file = getattr(error, "path", None) or file
    field = getattr(error, "field", None) or getattr(error, "key", None)
    pairs = getattr(error, "problems", None) or [(field, str(error))]
    return [_problem(file, field, message) for field, message in pairs]


def _problem(file: str, field: str | None, message: str) -> Problem:
    message = " ".join(message.split())
    for prefix in (f"{file}: ", f"{field}: ", f"field '{field}': ", "Value error, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    if field in (None, "<root>"):
        # Cross-field rules (model validators, path checks) name their field in the text.
        match = _LEADING_FIELD.match(message)
        if match and match.group(1).split(".")[0] in Manifest.model_fields:
            field, message = match.groups()
    return Problem(file, None if field == "<root>" else field, message)


# --- the JSON Schema -----------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _schema_validator() -> Any:
    try:
        import jsonschema
    except ImportError:  # an optional extra: the pydantic model still checks everything
        return None
    cls = jsonschema.validators.validator_for(manifest_json_schema())
    return cls(manifest_json_schema(), format_checker=cls.FORMAT_CHECKER)


def json_schema_available() -> bool:
    """True when the ``jsonschema`` package is installed, so manifests meet the schema too."""
    return _schema_validator() is not None


def schema_problems(raw: object, *, file: str) -> list[Problem]:
    """Where the parsed manifest JSON ``raw`` breaks the JSON Schema (empty if unchecked)."""
    validator = _schema_validator()
    if validator is None:
        return []
    from jsonschema.exceptions import best_match

    problems = []
    for error in sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.path))):
        path = [str(part) for part in error.absolute_path]
        names: Iterable[str | None] = [None]
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = error.schema.get("properties", {})
            names = [name for name in error.instance if name not in known]
        elif error.validator == "required" and isinstance(error.instance, dict):
            names = [name for name in error.validator_value if name not in error.instance]
        # For anyOf / oneOf, the closest alternative explains more than "not valid under
        # any of the given schemas" ("'20' is not of type 'integer'").
        message = (best_match(error.context) if error.context else error).message
        for name in names:
            field = ".".join(path + ([name] if name else [])) or None
            problems.append(Problem(file, field, f"JSON Schema: {message}"))
    return problems


def _manifest_schema_problems(version_dir: Path, reported: Sequence[Problem]) -> list[Problem]:
    """Schema problems of the version's manifest not already reported for the same field."""
    path = manifest_path(version_dir)
    try:
        # Never read a manifest that is a symlink out of the version directory: the
        # schema's messages would echo an outside file's content (UnsafePathError).
        resolve_inside(version_dir, MANIFEST_FILENAME, field="manifest")
        if os.path.getsize(path) > MAX_MANIFEST_BYTES:
            return []  # refused unread by read_manifest already
        duplicates: list[tuple[str, str]] = []
        with open(path, "rb") as file:
            raw = json.loads(
                file.read(MAX_MANIFEST_BYTES + 1),
                object_pairs_hook=lambda pairs: _noting_duplicates(pairs, duplicates),
            )
    except (OSError, ValueError, RecursionError):
        return []  # unreadable or not JSON: the pydantic check has said so already
    seen = {problem.field for problem in reported}
    # The parser keeps a repeated key's last value; other JSON readers keep the first, so
    # two tools could read one file two ways.
    found = [
        Problem(
            str(path),
            key,
            f"appears twice in one JSON object{beside}; readers disagree on which counts",
        )
        for key, beside in dict.fromkeys(duplicates)
    ]
    return found + [p for p in schema_problems(raw, file=str(path)) if p.field not in seen]


def _noting_duplicates(
    pairs: list[tuple[str, Any]], duplicates: list[tuple[str, str]]
) -> dict[str, Any]:
    """``json.loads``'s object hook: the object, noting each repeated key with a few of
    its neighbours (the hook does not know where in the file the object is)."""
    result: dict[str, Any] = {}
    repeated = []
    for key, value in pairs:
        if key in result:
            repeated.append(key)
        result[key] = value
    for key in repeated:
        others = [k for k in result if k != key][:3]
        duplicates.append((key, f" (beside {', '.join(map(repr, others))})" if others else ""))
    return result


# --- one version ---------------------------------------------------------------------


def validate_version(
    version_dir: Path, *, check_shards: bool = True, json_schema: bool = True
) -> tuple[Manifest | None, list[Problem]]:
    """Check one version directory; ``check_shards=False`` checks the manifest only.

    Checks the manifest (pydantic model, and the JSON Schema when ``json_schema`` and the
    ``jsonschema`` package is installed), then every shard and the optimizer file (size,
    checksum, header against the manifest) and files under ``shards/`` it does not list.
    """
    manifest_file = str(manifest_path(version_dir))
    problems: list[Problem] = []
    manifest = None
    try:
        manifest = read_manifest(version_dir)
    except AdapterStoreError as exc:
        problems += _problems_of(exc, manifest_file)
    if json_schema and os.path.isfile(manifest_file):
        problems += _manifest_schema_problems(version_dir, problems)
    if manifest is None or not check_shards:
        return manifest, problems
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
        problems.append(
            Problem(
                str(version_dir / extra),
                None,
                "file is not listed in the manifest (injected, or left by another tool)",
            )
        )
    return manifest, problems


# --- finding versions ----------------------------------------------------------------


def _has_manifest(path: Path) -> bool:
    return (path / MANIFEST_FILENAME).is_file()


def _is_number(name: str) -> bool:
    return name.isascii() and name.isdigit()


def _subdirs(path: Path) -> list[Path]:
    """Subdirectories, versions in numeric order (2 before 10), hidden and temporary ones
    left out. Symlinked directories are listed: the store follows them when it lists and
    loads versions, so validation must check what they point to."""
    entries = [
        e for e in os.scandir(path) if e.is_dir() and not e.name.startswith((".", TEMP_PREFIX))
    ]
    entries.sort(key=lambda e: (0, int(e.name), "") if _is_number(e.name) else (1, 0, e.name))
    return [Path(e.path) for e in entries]


def version_dir_of_file(path: Path) -> Path | None:
    """The version directory holding the file ``path`` (its manifest or one of its shards)."""
    for parent in list(path.parents)[:_MAX_FILE_DEPTH]:
        if _has_manifest(parent):
            return parent
    return None


def _is_version_dir(path: Path) -> bool:
    """A committed version, or a numbered directory that lost its manifest (an
    interrupted copy, which validation reports) rather than a name called "123"."""
    if _has_manifest(path):
        return True
    return _is_number(path.name) and not any(_is_number(d.name) for d in _subdirs(path))


def find_version_dirs(path: Path) -> list[Path]:
    """Version directories under ``path``: itself, a name directory, or a whole store.

    ``.tmp-*`` directories of saves in progress are skipped. Symlinked directories are
    followed as the store follows them, each real directory walked once.
    """
    if not path.is_dir() or _is_version_dir(path):
        return [path]
    return _walk(path, set())


def _walk(directory: Path, walked: set[str]) -> list[Path]:
    # Version directories are leaves, so only the directories walked into can loop (a
    # link to the store inside it): remember where they really are.
    real = os.path.realpath(directory)
    if real in walked:
        return []
    walked.add(real)
    found = []
    for child in _subdirs(directory):
        if _is_version_dir(child):
            found.append(child)
        elif not child.is_symlink() or committed_versions(child):
            # A linked folder without versions is no adapter the store would serve; not
            # walking it keeps a link to "/" from walking the whole disk.
            found.extend(_walk(child, walked))
    return found


def collect_version_dirs(paths: Iterable[Path]) -> list[Path]:
    """The version directories ``paths`` name (see :func:`find_version_dirs`), each once.

    A file stands for the version directory holding it (pre-commit passes files).
    Raises :class:`AdapterNotFoundError` for a path that holds no adapter version.
    """
    found: dict[Path, None] = {}
    for path in paths:
        if path.is_file():
            version = version_dir_of_file(path)
            if version is None:
                raise AdapterNotFoundError(
                    f"{path}: a file outside any adapter version directory (no "
                    f"{MANIFEST_FILENAME} beside or above it)"
                )
            found[version] = None
            continue
        versions = find_version_dirs(path)
        if not versions:
            raise AdapterNotFoundError(
                f"{path}: no adapter versions found (expected a version directory, a name "
                "directory or a store)"
            )
        found.update(dict.fromkeys(versions))
    return list(found)


def resolve_version_dir(path: Path) -> Path:
    """One version from a version directory, its ``manifest.json``, or
    ``STORE/NAME[/VERSION]`` (the newest version when VERSION is left out).

    Raises :class:`AdapterNotFoundError` naming what exists instead.
    """
    if path.is_file() and path.name == MANIFEST_FILENAME:
        return path.parent
    if _has_manifest(path):
        return path
    # What is on disk decides, not the name: an adapter may be called "7".
    versions = committed_versions(path) if path.is_dir() else []
    if versions:
        return path / str(versions[-1])
    if path.is_dir() and _is_version_dir(path):
        return path  # a version that lost its manifest: the command reports it
    if _is_number(path.name) and path.parent.is_dir():
        versions = committed_versions(path.parent)
        raise AdapterNotFoundError(
            f"{path}: no such version; {path.parent} has versions {versions or 'none'}"
        )
    raise AdapterNotFoundError(
        f"{path}: not an adapter version (no {MANIFEST_FILENAME}) nor a name directory with "
        "versions; give a version directory or STORE/NAME[/VERSION] (`adapter-store ls "
        "STORE` lists a store)"
    )


def committed_versions(name_dir: Path) -> list[int]:
    """Numbers of the version directories under ``name_dir`` that have a manifest."""
    # The store's own rule (no leading zeros): "01" is not a version it would serve.
    return [int(d.name) for d in _subdirs(name_dir) if is_version_name(d.name) and _has_manifest(d)]


# --- fit to a model ------------------------------------------------------------------


@dataclass(frozen=True)
class FitResult:
    """What ``check_fit`` found: problems (empty when the adapter fits), warnings, and the
    one-paragraph explanation the loader would raise."""

    manifest: Manifest | None
    problems: list[Problem]
    warnings: list[str]
    summary: str | None
    plan: LoadPlan | None = None

    @property
    def fits(self) -> bool:
        return not self.problems


def check_fit(
    version_dir: Path,
    model: nn.Module,
    *,
    strict: bool = True,
    check_base: str = "error",
    modules: Sequence[str] | None = None,
    check_shards: bool = True,
) -> FitResult:
    """Would ``load`` of this version into ``model`` succeed? Nothing is copied.

    Validates the version (as :func:`validate_version`), then plans the load exactly as
    the loader does (keys, shapes, base fingerprint; ``strict``, ``check_base`` and
    ``modules`` as for ``AdapterStore.load``) and lists every problem.
    """
    manifest, problems = validate_version(version_dir, check_shards=check_shards)
    if manifest is None:
        return FitResult(None, problems, [], None)
    file = str(manifest_path(version_dir))
    title = f"Adapter {manifest.name!r} v{manifest.version}"
    planned = plan_version(manifest, model, title=title, modules=modules, check_base=check_base)
    tensors, plan, base = planned.tensors, planned.plan, planned.base
    try:
        warnings = check_plan(
            plan,
            base,
            title=title,
            strict=strict,
            check_base=check_base,
            model=tensors,
            copying=False,  # nothing is loaded: a model on the meta device is fine
        )
    except IncompatibleAdapterError as exc:
        found = _fit_problems(plan, base, file=file, strict=strict, check_base=check_base)
        return FitResult(manifest, problems + found, [], str(exc), plan)
    return FitResult(manifest, problems, warnings, None, plan)


def _fit_problems(
    plan: LoadPlan, base: BaseDifference | None, *, file: str, strict: bool, check_base: str
) -> list[Problem]:
    """One problem per key, mirroring the rules of ``compat.check_plan``."""
    found = []
    if base is not None and check_base == "error":
        for key, recorded, now in base.structure:
            found.append(
                Problem(file, f"base.tensors.{key}", f"recorded {recorded}, model has {now}")
            )
        for key in base.content:
            found.append(
                Problem(
                    file,
                    f"base.tensors.{key}",
                    "the model's weights differ from the base the adapter was trained on",
                )
            )
    for key, stored, model in plan.mismatched:
        found.append(
            Problem(file, f"tensors.{key}", f"shape {stored} in the adapter, {model} in the model")
        )
    if strict:
        for key in plan.unexpected:
            found.append(
                Problem(file, f"tensors.{key}", "stored, but the model has no such tensor")
            )
        for key in plan.missing:
            found.append(
                Problem(file, f"tensors.{key}", "trainable in the model, absent from the adapter")
            )
    if not plan.steps and not plan.mismatched:
        found.append(Problem(file, "tensors", "no stored tensor matches a model tensor"))
    return found
