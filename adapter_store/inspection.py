"""Views of saved adapters for people and scripts: ``inspect`` and ``ls``.

Everything here works from the manifest alone (no tensor is read), and builds a JSON-ready
view first; the text tables are rendered from that view, so ``--json`` and the table
never disagree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import AdapterStoreError
from .layout import is_version_name
from .manifest import Manifest
from .modelcard import format_bytes
from .validation import committed_versions
from .version_files import read_manifest

_DIGEST_CHARS = 12


def format_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(dim) for dim in shape) + "]"


def format_time(moment: datetime) -> str:
    """A UTC time to the second, as tables show it; as recorded, with its UTC offset,
    when it has no UTC equivalent."""
    try:
        return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except OverflowError:
        # 9999-12-31T23:59:59-23:59 is a valid manifest time, but in UTC it falls past
        # the year 9999 that datetime can hold.
        return moment.isoformat(sep=" ", timespec="seconds")


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, right: Sequence[int] = ()
) -> list[str]:
    """Columns padded to their widest cell; columns in ``right`` are right-aligned."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(padded).rstrip())
    return lines


# --- inspect -------------------------------------------------------------------------


def module_of(manifest: Manifest) -> dict[str, str]:
    """Stored key -> the module group (shard group) it was saved in."""
    group = {shard.path: shard.group for shard in manifest.shards}
    return {key: group[entry.shard] for key, entry in manifest.tensors.items()}


def describe_version(version_dir: Path, manifest: Manifest) -> dict[str, Any]:
    """Everything ``inspect`` shows about one version, as JSON-ready values."""
    modules: dict[str, dict[str, Any]] = {}
    for shard in manifest.shards:
        entry = modules.setdefault(
            shard.group, {"name": shard.group, "shards": [], "tensors": 0, "nbytes": 0}
        )
        entry["shards"].append(shard.path)
        entry["nbytes"] += shard.nbytes
    groups = module_of(manifest)
    for key in manifest.tensors:
        modules[groups[key]]["tensors"] += 1
    optimizer = manifest.optimizer
    return {
        "path": str(version_dir),
        "name": manifest.name,
        # The folder's number where it has one: a store loads version N from folder N.
        "version": int(version_dir.name) if is_version_name(version_dir.name) else manifest.version,
        "step": manifest.step,
        "created_at": manifest.created_at.isoformat(),
        "format_version": manifest.format_version,
        "library": manifest.library.model_dump(),
        "nbytes": manifest.nbytes,
        "checksums": sorted({shard.checksum.algorithm for shard in manifest.shards}),
        "base": {
            "content_mode": manifest.base.content_mode,
            "structure_digest": manifest.base.structure_digest,
            "content_digest": manifest.base.content_digest,
            "tensors": len(manifest.base.tensors),
        },
        "frozen_keys": manifest.frozen_keys.count,
        "modules": list(modules.values()),
        "tensors": [
            {
                "key": key,
                "module": groups[key],
                "dtype": entry.dtype,
                "shape": list(entry.shape),
                "nbytes": entry.nbytes,
                "shard": entry.shard,
            }
            for key, entry in manifest.tensors.items()
        ],
        "aliases": dict(manifest.aliases),
        "optimizer": None
        if optimizer is None
        else {
            "class": optimizer.class_name,
            "path": optimizer.path,
            "nbytes": optimizer.nbytes,
            "tensors": len(optimizer.tensors),
        },
        "metadata": manifest.metadata,
    }


def render_version(view: dict[str, Any]) -> str:
    """The readable form of :func:`describe_version`'s view."""
    base, library = view["base"], view["library"]
    shard_bytes = sum(module["nbytes"] for module in view["modules"])
    shards = sum(len(module["shards"]) for module in view["modules"])
    facts = [
        ("step", "-" if view["step"] is None else view["step"]),
        ("created", format_time(datetime.fromisoformat(view["created_at"]))),
        (
            "size",
            f"{format_bytes(view['nbytes'])}: {len(view['tensors'])} tensors in "
            f"{len(view['modules'])} module(s), {shards} shard file(s) of "
            f"{format_bytes(shard_bytes)}" + (" + optimizer state" if view["optimizer"] else ""),
        ),
        ("checksums", ", ".join(view["checksums"])),
        (
            "base model",
            f"{base['tensors']} frozen tensors recorded ({base['content_mode']} "
            f"content); structure {base['structure_digest'][:_DIGEST_CHARS]}, "
            f"content {base['content_digest'][:_DIGEST_CHARS]}",
        ),
    ]
    if view["optimizer"]:
        opt = view["optimizer"]
        facts.append(
            (
                "optimizer",
                f"{opt['class']}, {opt['tensors']} tensors, {format_bytes(opt['nbytes'])}",
            )
        )
    facts.append(
        (
            "library",
            f"adapter-store {library['adapter_store']}, torch "
            f"{library['torch']}, safetensors {library['safetensors']}",
        )
    )
    if view["metadata"]:
        facts.append(("metadata", json.dumps(view["metadata"], sort_keys=True)))
    lines = [f"adapter {view['name']!r} v{view['version']}  ({view['path']})"]
    lines += [f"  {label:<11} {value}" for label, value in facts]
    lines += ["", f"modules ({len(view['modules'])})"]
    module_rows = [
        (m["name"], m["tensors"], format_bytes(m["nbytes"]), ", ".join(m["shards"]))
        for m in view["modules"]
    ]
    lines += [
        "  " + line
        for line in format_table(("MODULE", "TENSORS", "SIZE", "FILE"), module_rows, right=(1, 2))
    ]
    lines += ["", f"tensors ({len(view['tensors'])})"]
    tensor_rows = [
        (t["key"], t["dtype"], format_shape(t["shape"]), format_bytes(t["nbytes"]), t["module"])
        for t in view["tensors"]
    ]
    lines += [
        "  " + line
        for line in format_table(
            ("KEY", "DTYPE", "SHAPE", "SIZE", "MODULE"), tensor_rows, right=(3,)
        )
    ]
    if view["aliases"]:
        lines += ["", f"aliases ({len(view['aliases'])}, tied: stored once)"]
        lines += [f"  {alias} -> {key}" for alias, key in view["aliases"].items()]
    return "\n".join(lines)


# --- ls ------------------------------------------------------------------------------


def version_row(version_dir: Path, manifest: Manifest) -> dict[str, Any]:
    """One line of ``ls``: name, version, step, counts, size, date."""
    return {
        "name": manifest.name,
        "version": manifest.version,
        "path": str(version_dir),
        "step": manifest.step,
        "tensors": len(manifest.tensors),
        "modules": len(manifest.groups),
        "nbytes": manifest.nbytes,
        "created_at": manifest.created_at.isoformat(),
    }


def list_versions(path: Path) -> list[dict[str, Any]]:
    """``ls`` rows for every committed version in a store, or in one name directory.

    A version whose manifest cannot be read gives a row with an ``error`` instead.
    """
    if committed_versions(path):
        name_dirs = [path]
    else:
        name_dirs = [d for d in sorted(path.iterdir()) if d.is_dir() and committed_versions(d)]
    rows = []
    for name_dir in name_dirs:
        for version in committed_versions(name_dir):
            version_dir = name_dir / str(version)
            try:
                row = version_row(version_dir, read_manifest(version_dir))
                # Inside a store its folders are authoritative (docs/format.md): a version
                # copied or pulled under another name or number is listed as loaded.
                row.update(name=name_dir.name, version=version)
                rows.append(row)
            except AdapterStoreError as exc:
                rows.append(
                    {
                        "name": name_dir.name,
                        "version": version,
                        "path": str(version_dir),
                        "error": " ".join(str(exc).split()),
                    }
                )
    return rows


def render_rows(rows: Sequence[dict[str, Any]]) -> str:
    """The ``ls`` table; a row with an ``error`` shows it instead of the numbers."""
    table = []
    for row in rows:
        if "error" in row:
            table.append((row["name"], row["version"], "-", "-", "-", "invalid: see stderr"))
            continue
        table.append(
            (
                row["name"],
                row["version"],
                "-" if row["step"] is None else row["step"],
                row["tensors"],
                format_bytes(row["nbytes"]),
                format_time(datetime.fromisoformat(row["created_at"])),
            )
        )
    headers = ("NAME", "VERSION", "STEP", "TENSORS", "SIZE", "CREATED")
    return "\n".join(format_table(headers, table, right=(1, 2, 3, 4)))
