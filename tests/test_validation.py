"""Validation without a model (every corruption, one precise line each) and the fit check."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cli_models import CliModel, build_model, build_other_base, build_rank_4, make_store
from click.testing import CliRunner

from adapter_store import AdapterNotFoundError, AdapterStore
from adapter_store.checksum import digest_buffer
from adapter_store.cli import main
from adapter_store.safetensors_io import encode_shard
from adapter_store.validation import (
    check_fit,
    collect_version_dirs,
    committed_versions,
    find_version_dirs,
    resolve_version_dir,
    validate_version,
)

HEAD = "shards/head.safetensors"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("validation") / "store")


@pytest.fixture
def version(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of 'tiny' v1 (it has optimizer state) to corrupt."""
    return Path(shutil.copytree(pristine / "tiny" / "1", tmp_path / "tiny" / "1"))


def _edit_manifest(version: Path, edit: Callable[[dict], None]) -> None:
    path = version / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=1))


def _truncate(version: Path) -> None:
    path = version / HEAD
    path.write_bytes(path.read_bytes()[:-4])


def _flip_byte(version: Path) -> None:
    path = version / HEAD
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))


def _flip_optimizer_byte(version: Path) -> None:
    path = version / "optimizer.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _bad_json(version: Path) -> None:
    path = version / "manifest.json"
    path.write_text(path.read_text()[:-30])


def _unknown_field(version: Path) -> None:
    _edit_manifest(version, lambda m: m["tensors"]["head.bias"].update(colour="red"))


def _string_version(version: Path) -> None:
    # pydantic's lax mode reads "1" as 1; the JSON Schema (what other tools use) does not.
    _edit_manifest(version, lambda m: m.update(version="1"))


def _dangling_shard(version: Path) -> None:
    _edit_manifest(version, lambda m: m["tensors"]["head.bias"].update(shard="shards/gone"))


def _unsafe_path(version: Path) -> None:
    def edit(m: dict) -> None:
        for entry in m["tensors"].values():
            if entry["shard"] == m["shards"][0]["path"]:
                entry["shard"] = "../../escape.safetensors"
        m["shards"][0]["path"] = "../../escape.safetensors"

    _edit_manifest(version, edit)


def _missing_shard(version: Path) -> None:
    (version / HEAD).unlink()


def _extra_file(version: Path) -> None:
    (version / "shards" / "injected.safetensors").write_bytes(b"\0" * 16)


def _missing_manifest(version: Path) -> None:
    (version / "manifest.json").unlink()


def _repeated_key(version: Path) -> None:
    """The same key twice in one object: this parser keeps the last value, others the
    first, so two tools would read two different manifests."""
    path = version / "manifest.json"
    text = path.read_text()
    path.write_text(
        text.replace(
            '"format": "adapter-store",',
            '"format": "adapter-store",\n "format": "adapter-store",',
            1,
        )
    )


def _header_disagrees(version: Path) -> None:
    """A well-formed shard, checksum and size updated, whose header has another shape."""
    encoded = encode_shard([("head.bias", torch.zeros(3)), ("head.weight", torch.zeros(8, 3))])
    data = b"".join(bytes(chunk) for chunk in encoded.chunks())
    (version / HEAD).write_bytes(data)

    def edit(m: dict) -> None:
        shard = next(s for s in m["shards"] if s["path"] == HEAD)
        shard["nbytes"] = len(data)
        shard["checksum"]["digest"] = digest_buffer(data, shard["checksum"]["algorithm"])

    _edit_manifest(version, edit)


# (corruption, file relative to the version, field, message): exactly one problem each.
CASES = [
    (
        "truncated-shard",
        _truncate,
        HEAD,
        None,
        r"file is \d+ bytes but the manifest.* \d+ "
        r"\(truncated\)",
    ),
    (
        "flipped-byte",
        _flip_byte,
        HEAD,
        None,
        r"xxh3-128 checksum [0-9a-f]{32} does not match "
        r"the manifest's [0-9a-f]{32}; the file is corrupt or was modified",
    ),
    (
        "flipped-optimizer-byte",
        _flip_optimizer_byte,
        "optimizer.safetensors",
        None,
        r"xxh3-128 checksum .* does not match",
    ),
    ("bad-manifest-json", _bad_json, "manifest.json", None, r"not valid JSON \(.*line \d+"),
    (
        "unknown-field",
        _unknown_field,
        "manifest.json",
        "tensors.head.bias.colour",
        r"Extra inputs are not permitted",
    ),
    (
        "string-version",
        _string_version,
        "manifest.json",
        "version",
        r"Input should be a valid integer",
    ),
    (
        "dangling-shard",
        _dangling_shard,
        "manifest.json",
        "tensors.head.bias.shard",
        r"'shards/gone' is not in shards",
    ),
    (
        "unsafe-path",
        _unsafe_path,
        "manifest.json",
        "shards.0.path",
        r"path '../../escape.safetensors' is not a plain relative path",
    ),
    ("missing-shard", _missing_shard, HEAD, None, r"shard file listed in the manifest is missing"),
    (
        "extra-file",
        _extra_file,
        "shards/injected.safetensors",
        None,
        r"file is not listed in the manifest",
    ),
    (
        "missing-manifest",
        _missing_manifest,
        "manifest.json",
        None,
        r"no manifest in this version directory",
    ),
    (
        "repeated-json-key",
        _repeated_key,
        "manifest.json",
        "format",
        r"appears twice in one JSON object \(beside .format_version., .name., .version.\); readers "
        r"disagree on which counts",
    ),
    (
        "shard-header-disagrees",
        _header_disagrees,
        HEAD,
        "head.weight",
        r"tensor 'head.weight' is F32 \[8, 3\] in the shard but F32 \[3, 8\] in the manifest",
    ),
]


@pytest.mark.parametrize(
    ("corrupt", "file", "field", "message"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_every_corruption_is_one_precise_problem_and_exit_1(version, corrupt, file, field, message):
    corrupt(version)
    _, problems = validate_version(version)
    assert len(problems) == 1, [str(p) for p in problems]
    (problem,) = problems
    assert (problem.file, problem.field) == (str(version / file), field)
    assert re.fullmatch(message + r".*", problem.message)

    result = CliRunner().invoke(main, ["validate", str(version)])
    assert result.exit_code == 1, result.output
    where = f"{version / file}: {field}: " if field else f"{version / file}: "
    assert result.stderr.splitlines() == [where + problem.message]


def test_committed_versions_are_those_the_store_serves(version):
    """A folder named "01" is not a version to the store (no leading zeros), so the
    tools that list and check versions must not count it either."""
    shutil.copytree(version, version.parent / "01")
    assert committed_versions(version.parent) == [1]
    assert AdapterStore(version.parent.parent).versions("tiny") == [1]


def test_schema_only_reads_no_shard(version):
    _flip_byte(version)
    _extra_file(version)
    assert validate_version(version, check_shards=False)[1] == []
    assert len(validate_version(version)[1]) == 2


def test_several_problems_are_all_reported(version):
    _truncate(version)
    _extra_file(version)
    _flip_optimizer_byte(version)
    files = sorted(Path(p.file).name for p in validate_version(version)[1])
    assert files == ["head.safetensors", "injected.safetensors", "optimizer.safetensors"]


def test_find_version_dirs_walks_a_store(pristine, tmp_path):
    store = Path(shutil.copytree(pristine, tmp_path / "store"))
    (store / "tiny" / ".tmp-host-1-abcd").mkdir()  # a save in progress: not a version
    (store / "tiny" / "3").mkdir()  # a copy that lost its manifest: reported
    shutil.copytree(store / "wide", store / "123")  # an adapter *named* 123
    os.symlink(store, store / "loop")  # a link loop must not hang the walk
    found = [str(p.relative_to(store)) for p in find_version_dirs(store)]
    assert found == ["123/1", "headless/1", "tiny/1", "tiny/2", "tiny/3", "wide/1"]
    assert find_version_dirs(store / "tiny" / "3") == [store / "tiny" / "3"]


@pytest.mark.parametrize("linked", ["version", "name"], ids=["linked-version", "linked-name"])
def test_validate_checks_symlinked_folders_the_store_serves(pristine, tmp_path, linked):
    store = Path(shutil.copytree(pristine, tmp_path / "store"))
    corrupt = Path(shutil.copytree(store / "tiny" / "1", tmp_path / "elsewhere" / "1"))
    if linked == "version":  # store/tiny/3 -> elsewhere/1
        os.symlink(corrupt, store / "tiny" / "3")
        served = store / "tiny" / "3"
    else:  # store/other -> elsewhere, a name folder
        os.symlink(corrupt.parent, store / "other")
        served = store / "other" / "1"
    _flip_byte(corrupt)
    assert served in find_version_dirs(store)
    result = CliRunner().invoke(main, ["validate", str(store)])
    assert result.exit_code == 1
    assert f"{served / HEAD}: " in result.output and "checksum" in result.output


def test_collect_version_dirs_maps_files_to_their_version(pristine, tmp_path):
    version = pristine / "tiny" / "1"
    paths = [version / "manifest.json", version / HEAD, pristine / "tiny"]
    assert collect_version_dirs(paths) == [version, pristine / "tiny" / "2"]
    stray = tmp_path / "notes.txt"
    stray.write_text("x")
    with pytest.raises(AdapterNotFoundError, match=r"notes.txt: a file outside any adapter"):
        collect_version_dirs([stray])
    with pytest.raises(AdapterNotFoundError, match=r"no adapter versions found"):
        collect_version_dirs([tmp_path])


def test_resolve_version_dir(pristine):
    tiny = pristine / "tiny"
    assert resolve_version_dir(tiny) == tiny / "2"  # newest
    assert resolve_version_dir(tiny / "1") == tiny / "1"
    assert resolve_version_dir(tiny / "1" / "manifest.json") == tiny / "1"
    with pytest.raises(AdapterNotFoundError, match=r"tiny/9: no such version; .* \[1, 2\]"):
        resolve_version_dir(tiny / "9")
    with pytest.raises(AdapterNotFoundError, match=r"`adapter-store ls STORE` lists a store"):
        resolve_version_dir(pristine)


def test_resolve_version_dir_reads_a_numeric_name_as_a_name(pristine, tmp_path):
    store = Path(shutil.copytree(pristine, tmp_path / "store"))
    shutil.copytree(store / "tiny", store / "7")  # an adapter named "7", versions 1 and 2
    (store / "tiny" / "3").mkdir()  # a version that lost its manifest: still a version
    assert resolve_version_dir(store / "7") == store / "7" / "2"  # newest
    assert resolve_version_dir(store / "7" / "1") == store / "7" / "1"
    assert resolve_version_dir(store / "tiny" / "3") == store / "tiny" / "3"
    result = CliRunner().invoke(main, ["inspect", str(store / "7")])
    assert result.exit_code == 0, result.output
    assert "v2" in result.output


# --- the fit check ---------------------------------------------------------------------


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fit_on_the_same_base(pristine):
    result = check_fit(pristine / "tiny" / "1", build_model())
    assert result.fits and result.summary is None
    assert result.plan is not None and len(result.plan.steps) == 6


def test_different_base_lists_every_base_tensor_and_leaves_the_model_alone(pristine):
    model = build_other_base()
    before = _snapshot(model)
    result = check_fit(pristine / "tiny" / "1", model)
    manifest = str(pristine / "tiny" / "1" / "manifest.json")
    assert [(p.file, p.field) for p in result.problems] == [
        (manifest, "base.tensors.embed"),
        (manifest, "base.tensors.layers.0.weight"),
        (manifest, "base.tensors.layers.1.weight"),
    ]
    assert result.summary is not None and "saved on a different base model" in result.summary
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    warned = check_fit(pristine / "tiny" / "1", model, check_base="warn")
    assert warned.fits and "different base model" in warned.warnings[0]


def test_other_rank_names_each_tensor_and_modules_narrow_the_check(pristine):
    result = check_fit(pristine / "tiny" / "1", build_rank_4())
    assert [str(p).split(": ", 1)[1] for p in result.problems] == [
        "tensors.layers.0.lora_A: shape (2, 8) in the adapter, (4, 8) in the model",
        "tensors.layers.0.lora_B: shape (8, 2) in the adapter, (8, 4) in the model",
        "tensors.layers.1.lora_A: shape (2, 8) in the adapter, (4, 8) in the model",
        "tensors.layers.1.lora_B: shape (8, 2) in the adapter, (8, 4) in the model",
    ]
    assert check_fit(pristine / "tiny" / "1", build_rank_4(), modules=["head"]).fits


def test_missing_trainable_keys_are_problems_only_when_strict(pristine):
    model = CliModel(layers=3)  # an extra LoRA layer the adapter knows nothing of
    model.load_state_dict(build_model().state_dict(), strict=False)
    result = check_fit(pristine / "tiny" / "1", model)
    assert [p.field for p in result.problems] == [
        "tensors.layers.2.lora_A",
        "tensors.layers.2.lora_B",
    ]
    assert result.problems[0].message == "trainable in the model, absent from the adapter"
    assert check_fit(pristine / "tiny" / "1", model, strict=False).fits


def test_an_unrelated_model_loads_nothing(pristine):
    result = check_fit(pristine / "tiny" / "1", torch.nn.Linear(2, 2), check_base="ignore")
    messages = {p.field: p.message for p in result.problems}
    assert messages["tensors"] == "no stored tensor matches a model tensor"
    assert messages["tensors.head.weight"] == "stored, but the model has no such tensor"


def test_fit_reports_a_corrupt_shard_too(version):
    _flip_byte(version)
    result = check_fit(version, build_model())
    assert not result.fits and "checksum" in result.problems[0].message
