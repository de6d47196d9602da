"""The committed JSON Schema of manifest.json, checked by an independent validator.

The schema is generated from the pydantic model (``adapter-store schema``); these tests
fail when the committed file drifts from it, check every kind of manifest the library
writes against it with ``jsonschema``, and pin down, for each malformed manifest, which of
the two validators rejects it: every one must fail at least one, and ``validate`` runs
both.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
from cli_models import CliModel, build_model, build_on_meta
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from adapter_store import AdapterStore, ManifestError, UnsafePathError
from adapter_store.cli import main
from adapter_store.manifest import manifest_json_schema, parse_manifest
from adapter_store.validation import validate_version

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "manifest.schema.json"
CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        json.loads(SCHEMA_FILE.read_text()), format_checker=CHECKER
    )


def test_committed_schema_matches_the_model():
    committed = SCHEMA_FILE.read_text()
    assert json.loads(committed) == manifest_json_schema(), (
        "schemas/manifest.schema.json is stale: run `make schema` and commit it"
    )
    assert committed == CliRunner().invoke(main, ["schema"]).stdout


def test_committed_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA_FILE.read_text()))


# --- every manifest the library writes validates -----------------------------------------


class Tied(CliModel):
    """The head's weight also reachable as ``tied.weight``: stored once, plus an alias."""

    def __init__(self) -> None:
        super().__init__()
        self.tied = self.head


def _with_optimizer(store: AdapterStore) -> Any:
    model = build_model()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=0.01)
    sum(p.sum() for p in trainable).backward()  # type: ignore[union-attr]
    optimizer.step()
    metadata = {"task": "x", "nested": {"lr": 0.01, "tags": ["a", None, True]}}
    return store.save(model, "opt", optimizer=optimizer, step=7, metadata=metadata)


def _meta_base(store: AdapterStore) -> Any:
    model = build_on_meta()  # the frozen base has no data: structure-only fingerprint
    for layer in model.layers:
        layer.lora_A = nn.Parameter(torch.ones(2, 8))
        layer.lora_B = nn.Parameter(torch.ones(8, 2))
    model.head = nn.Linear(8, 3)
    return store.save(model, "meta")


SAVES: dict[str, Callable[[Path], Any]] = {
    "plain": lambda root: AdapterStore(root).save(build_model()),
    "optimizer-step-metadata": lambda root: _with_optimizer(AdapterStore(root)),
    "tied-aliases": lambda root: AdapterStore(root).save(Tied()),
    "sha256-full-fingerprint": lambda root: AdapterStore(
        root, checksum="sha256", fingerprint="full"
    ).save(build_model()),
    "bf16": lambda root: AdapterStore(root).save(build_model().to(torch.bfloat16)),
    "split-shards": lambda root: AdapterStore(root, max_shard_bytes=64).save(build_model()),
    "include-frozen": lambda root: AdapterStore(root).save(build_model(), include=["embed"]),
    "meta-base": lambda root: _meta_base(AdapterStore(root)),
}


@pytest.mark.parametrize("save", SAVES.values(), ids=SAVES.keys())
def test_every_manifest_the_library_writes_validates(tmp_path, validator, save):
    saved = save(tmp_path)
    raw = json.loads((saved.path / "manifest.json").read_text())
    assert [e.message for e in validator.iter_errors(raw)] == []
    assert validate_version(saved.path) == (saved.manifest, [])


def test_the_variants_exercise_what_they_claim(tmp_path):
    manifests = {name: save(tmp_path / name).manifest for name, save in SAVES.items()}
    assert manifests["tied-aliases"].aliases == {
        "tied.weight": "head.weight",
        "tied.bias": "head.bias",
    }
    assert manifests["optimizer-step-metadata"].optimizer is not None
    assert {s.checksum.algorithm for s in manifests["sha256-full-fingerprint"].shards} == {"sha256"}
    assert {t.dtype for t in manifests["bf16"].tensors.values()} == {"BF16"}
    assert len(manifests["split-shards"].shards) > len(manifests["plain"].shards)
    assert "embed" in manifests["include-frozen"].tensors
    assert {t.content for t in manifests["meta-base"].base.tensors.values()} == {None}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=8)
    | st.floats(),  # NaN and the infinities are written as tokens JSON readers know
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    metadata=st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    step=st.none() | st.integers(0, 2**62),
)
def test_any_metadata_and_step_validate(tmp_path_factory, validator, metadata, step):
    store = AdapterStore(tmp_path_factory.mktemp("prop"), durable=False)
    saved = store.save(build_model(), step=step, metadata=metadata)
    raw = json.loads((saved.path / "manifest.json").read_text())
    assert [e.message for e in validator.iter_errors(raw)] == []


# --- malformed manifests fail the schema, the model, or both -----------------------------


def _drop(key: str) -> Callable[[dict], None]:
    return lambda m: m.pop(key)


def _set(*path: str, value: object) -> Callable[[dict], None]:
    def edit(m: dict) -> None:
        for part in path[:-1]:
            m = m[int(part)] if isinstance(m, list) else m[part]
        m[path[-1]] = value

    return edit


def _move_shard(path: str) -> Callable[[dict], None]:
    def edit(m: dict) -> None:
        old = m["shards"][0]["path"]
        m["shards"][0]["path"] = path
        for entry in m["tensors"].values():
            if entry["shard"] == old:
                entry["shard"] = path

    return edit


def _duplicate_shard(m: dict) -> None:
    m["shards"].append(dict(m["shards"][0]))


def _no_tensors(m: dict) -> None:
    m["tensors"], m["aliases"] = {}, {}


_DATE_CHECKED = "date-time" in CHECKER.checkers
# (edit, rejected by: "both", "schema" only, or the pydantic "model" only)
MALFORMED: dict[str, tuple[Callable[[dict], None], str]] = {
    "unknown-field": (_set("surprise", value=1), "both"),
    "unknown-nested-field": (_set("tensors", "head.bias", "colour", value="red"), "both"),
    "missing-field": (_drop("frozen_keys"), "both"),
    "float-step": (_set("step", value=1.5), "both"),
    "version-zero": (_set("version", value=0), "both"),
    "negative-dim": (_set("tensors", "head.bias", "shape", value=[-3]), "both"),
    "shape-not-a-list": (_set("tensors", "head.bias", "shape", value="[3]"), "both"),
    "checksum-md5": (_set("shards", "0", "checksum", "algorithm", value="md5"), "both"),
    "digest-not-hex": (_set("shards", "0", "checksum", "digest", value="z" * 32), "both"),
    "format-version-2": (_set("format_version", value=2), "both"),
    "format-version-true": (_set("format_version", value=True), "both"),
    "other-format": (_set("format", value="peft"), "both"),
    "bad-name": (_set("name", value="../x"), "both"),
    "metadata-list": (_set("metadata", value=[1]), "both"),
    # The model parses strictly, like the schema: a numeric string is not a number.
    "version-string": (_set("version", value="1"), "both"),
    # JSON Schema counts 1.0 as the integer 1; the model does not.
    "format-version-float": (_set("format_version", value=1.0), "model"),
    # Rules across fields, and path safety, live in the model only.
    "unknown-dtype": (_set("tensors", "head.bias", "dtype", value="F33"), "model"),
    "nbytes-disagree": (_set("tensors", "head.bias", "nbytes", value=4), "model"),
    "dangling-shard": (_set("tensors", "head.bias", "shard", value="shards/x"), "model"),
    "duplicate-shard": (_duplicate_shard, "model"),
    "no-tensors": (_no_tensors, "model"),
    "dotdot-path": (_move_shard("../../etc/passwd"), "model"),
    "absolute-path": (_move_shard("/etc/passwd"), "model"),
    "readme-shard": (_move_shard("README.md"), "model"),
    "bad-date": (_set("created_at", value="yesterday"), "both" if _DATE_CHECKED else "model"),
}


@pytest.fixture(scope="module")
def saved_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    saved = AdapterStore(tmp_path_factory.mktemp("schema")).save(build_model(), "x")
    return saved.path


@pytest.mark.parametrize(("edit", "rejected_by"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_manifests_fail_the_schema_or_the_model(
    saved_version, tmp_path, validator, edit, rejected_by
):
    raw = json.loads((saved_version / "manifest.json").read_text())
    edit(raw)
    schema_rejects = any(True for _ in validator.iter_errors(raw))
    try:
        parse_manifest(json.dumps(raw).encode())
        model_rejects = False
    except (ManifestError, UnsafePathError):
        model_rejects = True
    assert (schema_rejects, model_rejects) == (
        rejected_by in ("both", "schema"),
        rejected_by in ("both", "model"),
    )
    # `adapter-store validate` runs both validators, so it rejects every one of them.
    version = Path(shutil.copytree(saved_version, tmp_path / "x" / "1"))
    (version / "manifest.json").write_text(json.dumps(raw))
    _, problems = validate_version(version, check_shards=False)
    assert problems and {p.file for p in problems} == {str(version / "manifest.json")}
