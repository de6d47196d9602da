"""The manifest model: strict, versioned, and safe about paths."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from adapter_store import InvalidAdapterError, ManifestError, UnsafePathError
from adapter_store.manifest import dump_manifest, parse_manifest
from adapter_store.save_plan import plan_save


@pytest.fixture
def manifest_dict(store, trained):
    return json.loads(dump_manifest(store.save(trained).manifest))


def _parse(data: dict):
    return parse_manifest(json.dumps(data).encode(), path="v1/manifest.json")


def test_round_trip(manifest_dict):
    manifest = _parse(manifest_dict)
    assert json.loads(dump_manifest(manifest)) == manifest_dict


def _set(data, dotted, value):
    *parents, last = dotted.split("/")
    for part in parents:
        data = data[int(part)] if isinstance(data, list) else data[part]
    if value is KeyError:
        del data[last]
    else:
        data[last] = value


def _set_keeping_shard_refs(data: dict, field: str, value: object) -> None:
    """``_set``; a new path for the first shard moves its tensors' references along, so
    that only the path itself can be wrong."""
    if field.startswith("shards/0/path"):
        old = data["shards"][0]["path"]
        for entry in data["tensors"].values():
            if entry["shard"] == old:
                entry["shard"] = value
    _set(data, field, value)


@pytest.mark.parametrize(
    ("field", "value", "error", "match"),
    [
        ("format_version", 2, ManifestError, "'format_version': 2 is not supported"),
        (
            "format_version",
            True,
            ManifestError,
            "'format_version': expected the integer 1, got true",
        ),
        ("format_version", 1.0, ManifestError, "'format_version': expected the integer 1, got 1.0"),
        ("format_version", KeyError, ManifestError, "'format_version': expected the integer 1"),
        ("format", "other", ManifestError, "'format': expected 'adapter-store'"),
        ("surprise", 1, ManifestError, "field 'surprise': Extra inputs are not permitted"),
        ("version", "three", ManifestError, "field 'version'"),
        ("tensors/head.weight/dtype", "F33", ManifestError, "unknown dtype 'F33'"),
        ("tensors/head.weight/nbytes", 1, ManifestError, "nbytes is 1 but F32"),
        ("tensors/head.weight/shard", "shards/none", ManifestError, "is not in shards"),
        ("name", "../x", ManifestError, "field 'name'"),
        ("shards/0/path", "../../etc/passwd", UnsafePathError, "shards.0.path: path "),
        ("shards/0/path", "/etc/passwd", UnsafePathError, "not a plain relative path"),
        ("shards/0/path", "C:/x.safetensors", UnsafePathError, "drive letters"),
        ("shards/0/path", "shards\\..\\x", UnsafePathError, "backslashes"),
        ("frozen_keys", KeyError, ManifestError, "field 'frozen_keys': Field required"),
        (
            "shards/0/path",
            "README.md",
            UnsafePathError,
            "shards.0.path: path 'README.md' is reserved",
        ),
        ("shards/0/path", "manifest.json", UnsafePathError, "'manifest.json' is reserved"),
        ("shards/0/path", "readme.MD", UnsafePathError, "'readme.MD' is reserved"),
    ],
    ids=[
        "version",
        "version-true",
        "version-float",
        "version-missing",
        "format",
        "unknown-field",
        "wrong-type",
        "dtype",
        "nbytes",
        "dangling-shard",
        "name",
        "dotdot",
        "absolute",
        "drive",
        "backslash",
        "missing-field",
        "readme-shard",
        "manifest-shard",
        "readme-shard-other-case",
    ],
)
def test_bad_manifests_name_the_file_and_field(manifest_dict, field, value, error, match):
    _set_keeping_shard_refs(manifest_dict, field, value)
    with pytest.raises(error, match=match) as caught:
        _parse(manifest_dict)
    assert "v1/manifest.json" in str(caught.value) or isinstance(caught.value, UnsafePathError)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("optimizer/path", "README.md", "optimizer.path: path 'README.md' is reserved"),
        ("shards/0/path", "optimizer.safetensors", "shards.0.path: .* is also optimizer.path"),
    ],
    ids=["readme-optimizer", "shard-is-optimizer-file"],
)
def test_data_files_need_paths_of_their_own(store, trained, field, value, match):
    # A push writes every file and the model card in one commit: two at one path lose one.
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.1)
    data = json.loads(dump_manifest(store.save(trained, optimizer=optimizer).manifest))
    _set_keeping_shard_refs(data, field, value)
    with pytest.raises(UnsafePathError, match=match):
        _parse(data)


def test_invalid_json_and_non_objects():
    with pytest.raises(ManifestError, match="x.json: not valid JSON"):
        parse_manifest(b"{nope", path="x.json")
    with pytest.raises(ManifestError, match="expected a JSON object, got list"):
        parse_manifest(b"[]", path="x.json")


def test_zero_tensors_is_invalid(manifest_dict):
    manifest_dict["tensors"] = {}
    manifest_dict["aliases"] = {}
    with pytest.raises(ManifestError, match="at least one tensor"):
        _parse(manifest_dict)


@pytest.mark.parametrize(
    ("value", "token"),
    [(math.inf, b"Infinity"), (-math.inf, b"-Infinity"), (math.nan, b"NaN")],
    ids=["inf", "minus-inf", "nan"],
)
def test_non_finite_metadata_survives_the_file(store, trained, value, token):
    saved = store.save(trained, metadata={"best_loss": value, "history": [1.0, value]})
    data = (saved.path / "manifest.json").read_bytes()
    assert b'"best_loss": ' + token in data
    # The bytes on disk, not the manifest this process remembers from the save.
    metadata = parse_manifest(data).metadata
    for got in (metadata["best_loss"], metadata["history"][1]):
        assert isinstance(got, float)
        assert (math.isnan(got) and math.isnan(value)) or got == value


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("step", "match"),
    [
        (-1, r"step must be an integer >= 0 .*got -1 \(int\)"),
        (2.5, r"got 2\.5 \(float\)"),
        (True, r"got True \(bool\)"),
        ("3", r"got '3' \(str\)"),
    ],
    ids=["negative", "float", "bool", "string"],
)
def test_a_bad_step_is_refused_before_a_file_is_written(trained, step, match):
    with pytest.raises(InvalidAdapterError, match=match):
        plan_save(
            trained,
            include=None,
            exclude=None,
            metadata=None,
            optimizer=None,
            group_by=None,
            max_shard_bytes=2**30,
            fingerprint="sample",
            step=step,
        )


@pytest.mark.parametrize(
    "step", [-1, 2.5, True, "5", 1e300], ids=["negative", "float", "bool", "str", "huge"]
)
def test_a_bad_step_raises_the_library_error_from_save(store, trained, step):
    with pytest.raises(InvalidAdapterError, match="step must be an integer >= 0"):
        store.save(trained, step=step)
    assert store.names() == []
    assert not store.root.exists()  # refused while planning: no folder, no lock file


def test_integer_steps_of_other_types_are_stored_as_ints(store, trained):
    assert store.save(trained, step=torch.tensor(7)).manifest.step == 7
    for whole in (5.0, np.float32(5.0), torch.tensor(5.0)):  # a whole float, as always
        assert store.save(trained, step=whole).manifest.step == 5


def test_numpy_scalars_in_metadata_are_stored_as_their_values(store, trained):
    metadata = {"ok": np.bool_(True), "loss": np.float32(0.5), "epoch": np.int64(3)}
    saved = store.save(trained, metadata=metadata)
    assert saved.manifest.metadata == {"ok": True, "loss": 0.5, "epoch": 3}


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ({"note": "bad \udc80 byte"}, r"serialisable: metadata\['note'\]: .* not valid Unicode"),
        ({"\udc80": 1}, r"metadata key .* not valid Unicode"),
        ({"a": {"b": object()}}, r"metadata\['a'\]\['b'\] is a object, which JSON cannot"),
        ({"a": b"x"}, r"metadata\['a'\] is a bytes"),
        ({"a": np.zeros(2)}, r"metadata\['a'\] is a numpy\.ndarray"),
        ({"a": np.longdouble(0.5)}, r"metadata\['a'\] is a numpy\.longdouble"),
        ({"a": np.datetime64("2024-05-01T12:00:00.000000000")}, r"is a numpy\.datetime64"),
        ({"a": {1: 2}}, r"metadata\['a'\]: key 1 is a int; JSON keys are strings"),
        ({"big": 10**5000}, r"metadata\['big'\]: an integer of .* bits is too large"),
        ({"deep": _nested(150)}, r"nested more than 100 levels deep"),
        (["not", "a", "mapping"], r"JSON-serialisable: a mapping of str to JSON values, got list"),
    ],
    ids=[
        "surrogate",
        "surrogate-key",
        "object",
        "bytes",
        "numpy-array",
        "numpy-longdouble",
        "numpy-datetime",
        "int-key",
        "huge-int",
        "deep",
        "list",
    ],
)
def test_metadata_json_cannot_hold_is_refused_before_a_file_is_written(
    store, trained, metadata, match
):
    with pytest.raises(InvalidAdapterError, match=match):
        store.save(trained, metadata=metadata)
    assert list(store.root.rglob("*.safetensors")) == []


def test_metadata_at_the_limits_reads_back(store, trained):
    metadata = {"deep": _nested(99), "big": 10**4000, "pair": (1, "x")}
    saved = store.save(trained, metadata=metadata)
    read = parse_manifest((saved.path / "manifest.json").read_bytes()).metadata
    assert read == {**metadata, "pair": [1, "x"]}


def _long_module_name() -> nn.Module:
    model = nn.Module()
    model.add_module("x" * 5000, nn.Linear(2, 2))
    return model


@pytest.mark.parametrize(
    ("model", "options", "match"),
    [
        (_long_module_name, {}, r"tensor 'x+'\.\.\. is 5007 characters long"),
        (
            lambda: nn.Linear(2, 2),
            {"group_by": lambda key: "g" * 5000},
            r"module group 'g+'\.\.\. is 5000 characters long, more than the 4096",
        ),
    ],
    ids=["tensor-key", "group"],
)
def test_keys_longer_than_the_manifest_holds_are_refused_up_front(store, model, options, match):
    with pytest.raises(InvalidAdapterError, match=match):
        store.save(model(), **options)
    assert list(store.root.rglob("*.safetensors")) == []
