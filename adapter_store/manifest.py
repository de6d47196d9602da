"""The manifest: the JSON record that describes one saved adapter version.

Pydantic lives here, at the JSON boundary, and nowhere else. ``parse_manifest`` turns
untrusted bytes into a :class:`Manifest` or raises :class:`ManifestError` /
:class:`UnsafePathError`; ``dump_manifest`` writes the canonical JSON form.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from .dtypes import DTYPE_NAMES, itemsize
from .errors import ManifestError, UnsafePathError

FORMAT_NAME = "adapter-store"
FORMAT_VERSION = 1
MANIFEST_FILENAME = "manifest.json"
#: A manifest larger than this is refused before it is parsed (no unbounded allocation).
MAX_MANIFEST_BYTES = 64 * 1024 * 1024

_HEX = r"^[0-9a-f]+$"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
Name = Annotated[str, Field(pattern=rf"^{NAME_PATTERN.pattern}$")]
#: Longest key (tensor name, group, optimizer state key) a manifest holds.
MAX_KEY_LENGTH = 4096
Key = Annotated[str, Field(min_length=1, max_length=MAX_KEY_LENGTH)]
Shape = tuple[Annotated[int, Field(ge=0)], ...]
#: Bounds on a shape from an untrusted file: the product of a million dimensions takes
#: minutes (a hang), and no real tensor has more dimensions, or a dimension past int64.
MAX_DIMS = 64
MAX_DIM = 2**63 - 1
ChecksumAlgorithm = Literal["xxh3-128", "sha256"]
FingerprintMode = Literal["sample", "full"]


class _Model(BaseModel):
    # Non-finite floats (a best loss of inf, max_grad_norm=inf) are written as the tokens
    # NaN, Infinity and -Infinity, which json.loads and pydantic read back: pydantic's
    # default writes null, and the value comes back as None.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


class Checksum(_Model):
    """A digest of a file's complete bytes, with the algorithm that made it."""

    algorithm: ChecksumAlgorithm
    digest: Annotated[str, Field(pattern=_HEX, min_length=32, max_length=64)]


class ShardEntry(_Model):
    """One safetensors file of the version: its path relative to the version directory."""

    path: str
    group: Key
    nbytes: Annotated[int, Field(ge=8)]
    checksum: Checksum


class TensorEntry(_Model):
    """One stored tensor: which shard holds it, its dtype (safetensors name) and shape."""

    shard: str
    dtype: str
    shape: Shape
    nbytes: Annotated[int, Field(ge=0)]

    @model_validator(mode="after")
    def _check_dtype_and_size(self) -> TensorEntry:
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {sorted(DTYPE_NAMES)}")
        if len(self.shape) > MAX_DIMS or any(d > MAX_DIM for d in self.shape):
            raise ValueError(
                f"shape must have at most {MAX_DIMS} dimensions, each at most {MAX_DIM} "
                f"(it has {len(self.shape)})"
            )
        expected = math.prod(self.shape) * itemsize(self.dtype)
        if self.nbytes != expected:
            raise ValueError(
                f"nbytes is {self.nbytes} but {self.dtype} {list(self.shape)} takes {expected}"
            )
        return self


class BaseTensor(_Model):
    """What the fingerprint remembers of one frozen base tensor."""

    dtype: str
    shape: Shape
    #: Hex digest of sampled (or all) bytes; ``None`` when the tensor was on the meta device.
    content: Annotated[str, Field(pattern=_HEX)] | None = None


class BaseFingerprint(_Model):
    """Identity of the frozen base the adapter was trained on (see docs/format.md)."""

    content_mode: FingerprintMode
    structure_digest: Annotated[str, Field(pattern=_HEX)]
    content_digest: Annotated[str, Field(pattern=_HEX)]
    tensors: dict[Key, BaseTensor]


class KeySetDigest(_Model):
    """Count and sha256 of a sorted key set (the frozen keys that were not saved)."""

    count: Annotated[int, Field(ge=0)]
    digest: Annotated[str, Field(pattern=_HEX, min_length=64, max_length=64)]


class OptimizerSection(_Model):
    """Optimizer state keyed by parameter *name*, so it restores into a fresh optimizer.

    Tensor state lives in the safetensors file ``path`` under the key
    ``"<parameter name>/<state entry>"`` (``/`` never occurs in a state-dict name).
    """

    path: str
    nbytes: Annotated[int, Field(ge=8)]
    checksum: Checksum
    class_name: str
    #: Hyper-parameters per group; ``params`` lists parameter names, not indices.
    param_groups: list[dict[str, JsonValue]]
    #: Every tensor in the file (``shard`` is ``path``).
    tensors: dict[Key, TensorEntry]
    #: Per parameter name: state entry -> JSON value, for non-tensor entries.
    scalars: dict[Key, dict[str, JsonValue]] = {}


class LibraryVersions(_Model):
    adapter_store: str
    torch: str
    safetensors: str


class Origin(_Model):
    """Where a version pulled from a Hugging Face Hub repo came from."""

    repo_id: str
    revision: str | None = None
    commit: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]
    path_in_repo: str | None = None


class Manifest(_Model):
    """Everything needed to verify and load one adapter version; see docs/format.md."""

    format: Literal["adapter-store"] = "adapter-store"
    format_version: Literal[1] = 1
    name: Name
    version: Annotated[int, Field(ge=1)]
    step: Annotated[int, Field(ge=0)] | None = None
    created_at: datetime
    library: LibraryVersions
    tensors: dict[Key, TensorEntry]
    aliases: dict[Key, Key] = {}
    shards: list[ShardEntry]
    base: BaseFingerprint
    frozen_keys: KeySetDigest
    #: Trainable tensors left out on purpose (``exclude=``): not missing, not base.
    excluded: list[Key] = []
    optimizer: OptimizerSection | None = None
    metadata: dict[str, JsonValue] = {}
    #: Set on versions pulled from the Hub: the repo and the resolved commit.
    origin: Origin | None = None

    @model_validator(mode="after")
    def _check_references(self) -> Manifest:
        if not self.tensors:
            raise ValueError("tensors: an adapter stores at least one tensor")
        paths = [shard.path for shard in self.shards]
        if len(set(paths)) != len(paths):
            raise ValueError("shards: a path is listed twice")
        used: dict[str, int] = dict.fromkeys(paths, 0)
        for key, entry in self.tensors.items():
            if entry.shard not in used:
                raise ValueError(f"tensors.{key}.shard: {entry.shard!r} is not in shards")
            used[entry.shard] += entry.nbytes
        for shard in self.shards:
            if used[shard.path] + 8 > shard.nbytes:
                raise ValueError(
                    f"shards: {shard.path!r} is {shard.nbytes} bytes, too small "
                    f"for its tensors ({used[shard.path]} bytes)"
                )
        for alias, target in self.aliases.items():
            if target not in self.tensors or alias in self.tensors:
                raise ValueError(
                    f"aliases.{alias}: must point from a key not stored to a "
                    f"stored key, got {target!r}"
                )
        for key in self.excluded:
            if key in self.tensors:
                raise ValueError(f"excluded: {key!r} is stored as well")
        return self

    def shard(self, path: str) -> ShardEntry:
        return next(s for s in self.shards if s.path == path)

    @property
    def groups(self) -> list[str]:
        """Module groups in shard order, each once."""
        return list(dict.fromkeys(shard.group for shard in self.shards))

    @property
    def nbytes(self) -> int:
        """Bytes on disk of every shard plus the optimizer file."""
        extra = self.optimizer.nbytes if self.optimizer else 0
        return sum(shard.nbytes for shard in self.shards) + extra

    def relative_paths(self) -> list[str]:
        """Every file of the version other than the manifest, relative to its directory."""
        paths = [shard.path for shard in self.shards]
        if self.optimizer is not None:
            paths.append(self.optimizer.path)
        return paths


# --- parsing -------------------------------------------------------------------------

_DRIVE = re.compile(r"^[A-Za-z]:")


def check_relative_path(path: str, *, field: str) -> None:
    """Refuse a path that could leave the version directory, on any platform."""
    parts = path.split("/")
    bad = (
        not path
        or "\\" in path
        or "\x00" in path
        or path.startswith("/")
        or _DRIVE.match(path)
        or any(part in ("", ".", "..") for part in parts)
    )
    if bad:
        raise UnsafePathError(
            f"{field}: path {path!r} is not a plain relative path inside the version "
            "directory ('..', absolute paths, drive letters and backslashes are refused)",
            path=path,
            field=field,
        )


#: Files at the version root that are not data: the manifest, and what a push writes
#: beside it (the model card; the Hub's LFS rules when pushed to the repo root). A data
#: file there would overwrite them, or be overwritten, in the same commit. Compared
#: without case, because a pull onto a case-insensitive disk makes them one file.
RESERVED_PATHS = (MANIFEST_FILENAME, "README.md", ".gitattributes")
_RESERVED_FOLDED = frozenset(name.casefold() for name in RESERVED_PATHS)


def _check_data_path(path: str, *, field: str, taken: dict[str, str]) -> None:
    check_relative_path(path, field=field)
    if path.casefold() in _RESERVED_FOLDED:
        raise UnsafePathError(
            f"{field}: path {path!r} is reserved at the version root "
            f"({', '.join(RESERVED_PATHS)}); store data files under another name, "
            "such as 'shards/<group>.safetensors'",
            path=path,
            field=field,
        )
    # Exact, not folded: groups such as 'A' and 'a' are distinct shards on Linux.
    if path in taken:
        raise UnsafePathError(
            f"{field}: path {path!r} is also {taken[path]}; every file of a version "
            "needs a path of its own",
            path=path,
            field=field,
        )
    taken[path] = field


def _check_paths(manifest: Manifest, path: str) -> None:
    taken: dict[str, str] = {}
    try:
        if manifest.optimizer is not None:
            _check_data_path(manifest.optimizer.path, field="optimizer.path", taken=taken)
        for index, shard in enumerate(manifest.shards):
            _check_data_path(shard.path, field=f"shards.{index}.path", taken=taken)
    except UnsafePathError as exc:
        raise UnsafePathError(f"{path}: {exc}", path=exc.path, field=exc.field) from exc


def _describe(error: ValidationError) -> list[tuple[str, str]]:
    return [
        (".".join(str(p) for p in item["loc"]) or "<root>", item["msg"]) for item in error.errors()
    ]


def parse_manifest(data: bytes, *, path: str = MANIFEST_FILENAME) -> Manifest:
    """Parse untrusted manifest bytes; every problem names ``path`` and the field."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"{path}: manifest is {len(data)} bytes, more than the {MAX_MANIFEST_BYTES} allowed",
            path=path,
        )
    # ValueError, not only JSONDecodeError: an integer of over 4300 digits raises it.
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})", path=path) from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a JSON object, got {type(raw).__name__}", path=path)
    _check_format(raw, path)
    try:
        # Strict: "1" is not a version and "20" is not a size, as the JSON Schema says too.
        manifest = Manifest.model_validate_json(data, strict=True)
    except ValidationError as exc:
        problems = _describe(exc)
        field, message = problems[0]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ManifestError(
            f"{path}: field '{field}': {message}{more}", path=path, field=field, problems=problems
        ) from exc
    _check_paths(manifest, path)
    return manifest


def _check_format(raw: dict[str, Any], path: str) -> None:
    if raw.get("format") != FORMAT_NAME:
        raise ManifestError(
            f"{path}: field 'format': expected {FORMAT_NAME!r}, got "
            f"{raw.get('format')!r}; is this an adapter-store manifest?",
            path=path,
            field="format",
        )
    found = raw.get("format_version")
    # Python's == takes true and 1.0 for 1; the format says an integer, and a reader
    # that compares strictly (or the JSON Schema, for true) would refuse them.
    if isinstance(found, bool) or not isinstance(found, int):
        raise ManifestError(
            f"{path}: field 'format_version': expected the integer {FORMAT_VERSION}, got "
            f"{json.dumps(found)} ({type(found).__name__}); write it as {FORMAT_VERSION}",
            path=path,
            field="format_version",
        )
    if found != FORMAT_VERSION:
        raise ManifestError(
            f"{path}: field 'format_version': {found!r} is not supported; "
            f"this adapter-store reads version {FORMAT_VERSION}. Upgrade "
            "adapter-store to read newer adapters.",
            path=path,
            field="format_version",
        )


def dump_manifest(manifest: Manifest) -> bytes:
    """The canonical JSON bytes of a manifest (stable key order, UTF-8, trailing newline)."""
    return (manifest.model_dump_json(indent=1) + "\n").encode()


def manifest_json_schema() -> dict[str, Any]:
    """The JSON Schema of the manifest, as committed under ``schemas/``."""
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://adapter-store.invalid/schemas/manifest-v{FORMAT_VERSION}.json"
    return schema
