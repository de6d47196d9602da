"""The ``README.md`` model card pushed next to an adapter, generated from its manifest alone.

Pure text: nothing here talks to the Hub or reads a file, and the output depends only on the
manifest and where it is pushed, so pushing the same version twice renders the same card
(no timestamps of its own). The token never reaches this module.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping

from .manifest import Manifest

CARD_FILENAME = "README.md"
#: The module table stops after this many rows (an adapter on every layer of a deep model
#: would otherwise drown the card); the manifest lists them all.
MAX_MODULE_ROWS = 32


def format_bytes(nbytes: int) -> str:
    """``1536`` -> ``"1.5 KiB"``: a size for people."""
    if nbytes < 1024:
        return f"{nbytes} B"
    size, unit = nbytes / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"


def _text(metadata: Mapping[str, object], key: str) -> str | None:
    value = metadata.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _front_matter(manifest: Manifest) -> list[str]:
    lines = ["---", "library_name: adapter-store", "tags:", "- adapter-store", "- adapter"]
    base_model = _text(manifest.metadata, "base_model")
    if base_model is not None:
        # A JSON string is a valid YAML scalar: quotes and newlines cannot break the header.
        lines.append(f"base_model: {json.dumps(base_model)}")
    return [*lines, "---", ""]


def _module_table(manifest: Manifest) -> list[str]:
    rows: dict[str, list[int]] = {}
    for entry in manifest.tensors.values():
        counts = rows.setdefault(manifest.shard(entry.shard).group, [0, 0])
        counts[0] += 1
        counts[1] += entry.nbytes
    lines = ["| module group | tensors | size |", "|---|---:|---:|"]
    for group in manifest.groups[:MAX_MODULE_ROWS]:
        count, nbytes = rows.get(group, [0, 0])
        lines.append(f"| `{group}` | {count} | {format_bytes(nbytes)} |")
    hidden = len(manifest.groups) - MAX_MODULE_ROWS
    if hidden > 0:
        lines.append(f"| ... and {hidden} more (see `manifest.json`) | | |")
    return lines


def _load_snippet(repo_id: str, path_in_repo: str | None) -> list[str]:
    # json.dumps: a double-quoted literal that is valid Python for any repo id or path.
    where = f", path_in_repo={json.dumps(path_in_repo)}" if path_in_repo else ""
    return [
        "```python",
        "from adapter_store import load_from_hub",
        "model = build_base_model()  # the same frozen base the fingerprint above describes",
        f"report = load_from_hub(model, {json.dumps(repo_id)}{where})  # checked before any copy",
        "```",
    ]


def _base_section(manifest: Manifest) -> list[str]:
    base = manifest.base
    lines = ["## Base model", ""]
    base_model = _text(manifest.metadata, "base_model")
    if base_model is not None:
        lines.append(f"- base model: `{base_model}`")
    return [
        *lines,
        f"- fingerprint ({base.content_mode} content): structure `{base.structure_digest}`, "
        f"content `{base.content_digest}`",
        f"- frozen base tensors recorded: {len(base.tensors)} "
        f"(frozen keys: {manifest.frozen_keys.count})",
    ]


def _contents_section(manifest: Manifest) -> list[str]:
    dtypes = Counter(entry.dtype for entry in manifest.tensors.values())
    tensor_bytes = sum(entry.nbytes for entry in manifest.tensors.values())
    return [
        "## Contents",
        "",
        f"- {len(manifest.tensors)} tensors, {format_bytes(tensor_bytes)} "
        f"({', '.join(f'{n} {d}' for d, n in sorted(dtypes.items()))}) in "
        f"{len(manifest.shards)} shard files, {format_bytes(manifest.nbytes)} on disk",
        f"- training step: {manifest.step if manifest.step is not None else 'not recorded'}",
        f"- optimizer state: {'included' if manifest.optimizer else 'not included'}",
        f"- saved with adapter-store {manifest.library.adapter_store}, torch "
        f"{manifest.library.torch}",
        "",
        *_module_table(manifest),
    ]


def render_model_card(manifest: Manifest, *, repo_id: str, path_in_repo: str | None) -> str:
    """The model card for ``manifest`` pushed to ``repo_id`` (under ``path_in_repo``)."""
    purpose = _text(manifest.metadata, "description") or (
        "The trainable part of a model (adapters such as LoRA, new heads), without the frozen "
        "base it was trained on."
    )
    shell = f"adapter-store pull {repo_id} ./adapters" + (
        f" --path-in-repo {path_in_repo}" if path_in_repo else ""
    )
    lines = [
        *_front_matter(manifest),
        f"# {manifest.name} (adapter-store adapter, version {manifest.version})",
        "",
        purpose,
        "",
        "Saved with [adapter-store](https://pypi.org/project/adapter-store/): per-module "
        "safetensors shards plus `manifest.json`, which records every key, dtype and shape, a "
        "checksum per shard and a fingerprint of the base model. Loading checks that the "
        "adapter fits the model and was trained on the same base before any parameter is "
        "copied; pulling verifies every shard against the manifest.",
        "",
        *_base_section(manifest),
        "",
        *_contents_section(manifest),
        "",
        "## How to load",
        "",
        *_load_snippet(repo_id, path_in_repo),
        "",
        f"Or from a shell: `{shell}`.",
        "",
    ]
    return "\n".join(lines)


__all__ = ["CARD_FILENAME", "format_bytes", "render_model_card"]
