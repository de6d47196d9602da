"""The command line: every command, every exit code (0 ok, 1 problem, 2 usage error)."""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from cli_models import build_model, make_store
from click.testing import CliRunner, Result

import adapter_store
from adapter_store import AdapterStore, ManifestError
from adapter_store.cli import main
from adapter_store.manifest import manifest_json_schema


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only: tiny v1, v2; wide v1; headless v1 (see cli_models.make_store)."""
    return make_store(tmp_path_factory.mktemp("cli") / "store")


@pytest.fixture
def copy(store: Path, tmp_path: Path) -> Path:
    """A private copy of the store, to damage."""
    return Path(shutil.copytree(store, tmp_path / "store"))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


# --- validate --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "count"),
    [("", 4), ("tiny", 2), ("tiny/1", 1), ("tiny/1/manifest.json", 1)],
    ids=["store", "name", "version", "manifest-file"],
)
def test_validate_valid(store, target, count):
    result = run("validate", store / target)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (
        f"{count} adapter version(s) checked (manifests, shards and checksums): all valid\n"
    )
    assert result.stderr == ""


def test_validate_many_paths_and_files_of_one_version_count_it_once(store):
    version = store / "tiny" / "1"
    result = run(
        "validate",
        "-q",
        version / "manifest.json",
        version / "shards" / "head.safetensors",
        store / "wide",
    )
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    result = run("validate", version / "manifest.json", version / "optimizer.safetensors")
    assert result.stdout.startswith("1 adapter version(s) checked")


def test_validate_json(copy):
    _flip_byte(copy / "tiny" / "2" / "shards" / "head.safetensors")
    result = run("validate", "--json", copy)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False and report["json_schema"] is True
    by_path = {Path(v["path"]).relative_to(copy).as_posix(): v for v in report["versions"]}
    assert sorted(by_path) == ["headless/1", "tiny/1", "tiny/2", "wide/1"]
    bad = by_path["tiny/2"]
    assert (bad["name"], bad["version"], bad["valid"]) == ("tiny", 2, False)
    (problem,) = bad["problems"]
    assert problem["file"] == str(copy / "tiny" / "2" / "shards" / "head.safetensors")
    assert "checksum" in problem["message"]
    assert result.stderr.count("\n") == 1


def test_validate_schema_only_does_not_read_shards(copy):
    _flip_byte(copy / "tiny" / "1" / "shards" / "head.safetensors")
    assert run("validate", "--schema-only", copy).exit_code == 0
    result = run("validate", copy)
    assert result.exit_code == 1
    assert result.stdout.endswith(": 1 invalid\n")
    assert re.fullmatch(r".*/tiny/1/shards/head.safetensors: xxh3-128 checksum .*\n", result.stderr)


def test_validate_usage_errors_exit_2(tmp_path):
    stray = tmp_path / "notes.txt"
    stray.write_text("x")
    cases = {
        "does not exist": ["validate", tmp_path / "nope"],
        "no adapter versions found": ["validate", tmp_path],
        "a file outside any adapter version directory": ["validate", stray],
        "No such option '--frobnicate'": ["validate", "--frobnicate", tmp_path],
        "Missing argument": ["validate"],
    }
    for message, args in cases.items():
        result = run(*args)
        assert result.exit_code == 2, args
        assert message in result.stderr, (args, result.stderr)


# --- check -----------------------------------------------------------------------------


def test_check_fits(store):
    result = run("check", store / "tiny", "--model", "cli_models:build_model")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (
        f"{store / 'tiny' / '2'}: fits CliModel: 6 tensor(s) would load, 3 frozen; "
        "base model matches\n"
    )


def test_check_a_different_base_exits_1_naming_each_base_tensor(store):
    result = run("check", store / "tiny" / "1", "--model", "cli_models:build_other_base")
    assert result.exit_code == 1
    manifest = store / "tiny" / "1" / "manifest.json"
    lines = result.stderr.splitlines()
    assert lines[:3] == [
        f"{manifest}: base.tensors.{key}: the model's weights differ from the base the "
        "adapter was trained on"
        for key in ("embed", "layers.0.weight", "layers.1.weight")
    ]
    assert lines[3].startswith(
        "Adapter 'tiny' v1 does not fit CliModel: it was saved on a different base model"
    )
    assert len(lines) == 4


def test_check_a_wider_base_names_structure_and_shapes(store):
    result = run("check", store / "tiny", "--model", "cli_models:build_wider_base")
    assert result.exit_code == 1
    assert (
        f"{store}/tiny/2/manifest.json: base.tensors.embed: recorded F32[4, 8], model has "
        "F32[4, 12]" in result.stderr.splitlines()
    )
    assert "tensors.head.weight: shape (3, 8) in the adapter, (3, 12) in the model" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("options", "status"),
    [
        (["--check-base", "warn"], "base model DIFFERS (--check-base warn)"),
        (["--check-base", "ignore"], "base model not checked"),
    ],
    ids=["warn", "ignore"],
)
def test_check_base_modes(store, options, status):
    result = run("check", store / "tiny", "--model", "cli_models:build_other_base", *options)
    assert result.exit_code == 0
    assert result.stdout.endswith(f"; {status}\n")
    assert ("warning: Adapter 'tiny' v2: it was saved on a different base" in result.stderr) == (
        options[1] == "warn"
    )


def test_check_on_the_meta_device_compares_structure_only(store):
    result = run("check", store / "tiny", "--model", "cli_models:build_on_meta")
    assert result.exit_code == 0
    assert "structure matches (meta tensors: weights not compared)" in result.stdout


def test_check_modules_strict_and_json(store):
    wide = ["check", store / "tiny", "--model", "cli_models:build_rank_4"]
    assert run(*wide).exit_code == 1
    assert run(*wide, "--module", "head").exit_code == 0
    assert run(*wide, "--module", "layers.*", "--no-strict").exit_code == 1
    result = run(*wide, "--json", "-q")
    report = json.loads(result.stdout)
    assert (report["fits"], report["would_load"]) == (False, 2)
    assert [p["field"] for p in report["problems"]] == [
        f"tensors.layers.{i}.lora_{ab}" for i in (0, 1) for ab in "AB"
    ]
    result = run(*wide, "--module", "nope")
    assert result.exit_code == 2 and "no module group 'nope'" in result.stderr


def test_check_reports_a_corrupt_shard(copy):
    _flip_byte(copy / "tiny" / "2" / "shards" / "layers.0.safetensors")
    result = run("check", copy / "tiny", "--model", "cli_models:build_model")
    assert result.exit_code == 1
    assert "layers.0.safetensors: xxh3-128 checksum" in result.stderr


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cli_models", "expected MODULE:FACTORY"),
        ("no_such_module_xyz:build", "cannot import 'no_such_module_xyz'"),
        ("cli_models:build_missing", "'cli_models' has no attribute 'build_missing'"),
        ("cli_models:build_nothing", "returned str, not a torch.nn.Module"),
    ],
    ids=["no-colon", "no-module", "no-attribute", "not-a-module"],
)
def test_check_bad_model_spec_exits_2(store, spec, message):
    result = run("check", store / "tiny", "--model", spec)
    assert result.exit_code == 2
    assert message in result.stderr


def test_factory_errors_are_one_line_unless_debug(store):
    result = run("check", store / "tiny", "--model", "cli_models:build_broken")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: RuntimeError: the base checkpoint is not downloaded (run with --debug for "
        "the traceback)\n"
    )
    result = run("--debug", "check", store / "tiny", "--model", "cli_models:build_broken")
    assert isinstance(result.exception, RuntimeError)


# --- inspect ---------------------------------------------------------------------------


def test_inspect_table(store):
    result = run("inspect", store / "tiny" / "1")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"adapter 'tiny' v1  ({store / 'tiny' / '1'})"
    assert lines[1] == "  step        1"
    assert re.fullmatch(r"  created     \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", lines[2])
    assert re.fullmatch(
        r"  size        .* 6 tensors in 3 module\(s\), 3 shard file\(s\) .* "
        r"\+ optimizer state",
        lines[3],
    )
    assert re.fullmatch(
        r"  base model  3 frozen tensors recorded \(sample content\); "
        r"structure [0-9a-f]{12}, content [0-9a-f]{12}",
        lines[5],
    )
    assert re.fullmatch(r"  optimizer   Adam, 18 tensors, .*", lines[6])
    assert '  metadata    {"run": "cli-test"}' in lines
    assert "  layers.0.lora_A  F32    [2, 8]  64 B  layers.0" in lines
    assert "  head.bias        F32    [3]     12 B  head" in lines


def test_inspect_json_and_newest_version(store):
    result = run("inspect", "--json", store / "tiny")
    view = json.loads(result.stdout)
    assert (view["name"], view["version"], view["step"]) == ("tiny", 2, 2)
    assert [m["name"] for m in view["modules"]] == ["layers.0", "layers.1", "head"]
    head = next(t for t in view["tensors"] if t["key"] == "head.weight")
    assert head == {
        "key": "head.weight",
        "module": "head",
        "dtype": "F32",
        "shape": [3, 8],
        "nbytes": 96,
        "shard": "shards/head.safetensors",
    }
    assert view["base"]["tensors"] == 3 and view["optimizer"] is None


def test_inspect_bad_path_exits_2_bad_manifest_exits_1(copy):
    result = run("inspect", copy / "tiny" / "9")
    assert result.exit_code == 2 and "no such version" in result.stderr
    assert "has versions [1, 2]" in result.stderr
    (copy / "tiny" / "1" / "manifest.json").write_text("{nope")
    result = run("inspect", copy / "tiny" / "1")
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {copy / 'tiny' / '1' / 'manifest.json'}: not valid JSON (Expecting property "
        "name enclosed in double quotes: line 1 column 2 (char 1))\n"
    )
    assert "Traceback" not in result.output
    result = run("--debug", "inspect", copy / "tiny" / "1")
    assert isinstance(result.exception, ManifestError)


@pytest.mark.parametrize(
    ("created_at", "shown"),
    [
        ("9999-12-31T23:59:59-23:59", "9999-12-31 23:59:59-23:59"),
        ("0001-01-01T00:00:00+05:00", "0001-01-01 00:00:00+05:00"),
        ("2024-05-01T12:00:00+02:00", "2024-05-01 10:00:00 UTC"),
    ],
    ids=["past-year-9999-in-utc", "before-year-1-in-utc", "ordinary"],
)
def test_inspect_and_ls_show_a_time_with_no_utc_equivalent(copy, created_at, shown):
    path = copy / "tiny" / "1" / "manifest.json"
    path.write_text(
        path.read_text().replace(json.loads(path.read_text())["created_at"], created_at)
    )
    assert run("validate", path).exit_code == 0
    result = run("inspect", path)
    assert result.exit_code == 0, result.stderr
    assert f"  created     {shown}" in result.stdout.splitlines()
    result = run("ls", copy / "tiny")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[1].endswith(shown)


# --- diff ------------------------------------------------------------------------------


def test_diff_two_versions(store):
    result = run("diff", store / "tiny" / "1", store / "tiny")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[2:] == [
        "base model: same fingerprint",
        "modules: 0 added, 0 removed, 1 changed, 2 identical",
        "  ~ layers.0",
        "tensors: 0 added, 0 removed, 1 changed, 5 identical",
        "  ~ layers.0.lora_A  F32 [2, 8]  max |a-b| 0.5",
    ]
    report = json.loads(run("diff", "--json", store / "tiny" / "1", store / "tiny").stdout)
    changed = [t for t in report["tensors"] if t["kind"] == "changed"]
    assert [t["key"] for t in changed] == ["layers.0.lora_A"]
    assert changed[0]["max_abs_diff"] == pytest.approx(0.5, abs=1e-6)


def test_diff_added_removed_and_reshaped(store):
    result = run("diff", store / "tiny" / "1", store / "headless")
    lines = result.stdout.splitlines()
    assert lines[3] == "modules: 0 added, 1 removed, 2 changed, 0 identical"
    assert "  - head" in lines
    assert "  - head.weight      F32 [3, 8]" in lines
    result = run("diff", "--exit-code", store / "headless", store / "wide")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert "  ~ layers.0.lora_A  F32 [2, 8] -> F32 [4, 8]" in lines
    assert "  + head.weight      F32 [3, 8]" in lines
    assert run("diff", "--exit-code", store / "tiny", store / "tiny" / "2").exit_code == 0


def test_diff_reads_only_verified_shards(copy):
    _flip_byte(copy / "tiny" / "2" / "shards" / "layers.0.safetensors")
    result = run("diff", copy / "tiny" / "1", copy / "tiny" / "2")
    assert result.exit_code == 1
    assert re.fullmatch(
        r"error: .*/tiny/2/shards/layers.0.safetensors: xxh3-128 checksum .*\n", result.stderr
    )


# --- ls, gc, schema, demo, --version ---------------------------------------------------


def test_ls(store):
    result = run("ls", store)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "STEP", "TENSORS", "SIZE", "CREATED"]
    assert [line.split()[:4] for line in lines[1:]] == [
        ["headless", "1", "-", "4"],
        ["tiny", "1", "1", "6"],
        ["tiny", "2", "2", "6"],
        ["wide", "1", "-", "6"],
    ]
    rows = json.loads(run("ls", "--json", store / "tiny").stdout)
    assert [(r["name"], r["version"]) for r in rows] == [("tiny", 1), ("tiny", 2)]
    assert rows[0]["nbytes"] > rows[1]["nbytes"]  # v1 has optimizer state


def test_ls_and_inspect_go_by_the_store_folders(copy):
    """A version copied to another name and number is listed and shown as the store
    would load it (folders are authoritative in a store), not as its manifest was saved."""
    shutil.copytree(copy / "tiny" / "1", copy / "copied" / "3")
    rows = json.loads(run("ls", "--json", copy / "copied").stdout)
    assert [(r["name"], r["version"]) for r in rows] == [("copied", 3)]
    assert json.loads(run("inspect", "--json", copy / "copied" / "3").stdout)["version"] == 3


def test_json_output_is_strict_json_with_non_finite_metadata(copy):
    """Manifests keep NaN and infinities as bare tokens; command output is for strict
    parsers (jq), which refuse them: they are strings there."""
    AdapterStore(copy, durable=False).save(
        build_model(), "odd", metadata={"loss": math.nan, "best": -math.inf}
    )
    output = run("inspect", "--json", copy / "odd").stdout
    view = json.loads(output, parse_constant=lambda token: pytest.fail(f"bare {token}"))
    assert view["metadata"] == {"loss": "NaN", "best": "-Infinity"}


def test_ls_flags_an_unreadable_manifest(copy, tmp_path):
    (copy / "wide" / "1" / "manifest.json").write_text("[]")
    result = run("ls", copy)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[-1].split() == [
        "wide",
        "1",
        "-",
        "-",
        "-",
        "invalid:",
        "see",
        "stderr",
    ]
    assert result.stderr == (
        f"error: {copy / 'wide' / '1' / 'manifest.json'}: expected a JSON object, got list\n"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("ls", empty)
    assert (result.exit_code, result.stderr) == (0, f"{empty}: no adapters\n")


def test_gc_removes_leftovers_only(copy):
    name_dir = copy / "tiny"
    deleting = name_dir / ".deleting-1-abcdef12"
    stale = name_dir / f".tmp-{socket.gethostname()}-999999999-abcd"  # no such process
    live = name_dir / f".tmp-{socket.gethostname()}-{os.getpid()}-abcd"  # this process
    for path in (deleting, stale, live):
        path.mkdir()
    result = run("gc", copy)
    assert result.exit_code == 0
    assert sorted(result.stdout.splitlines()) == sorted(
        [f"removed {deleting}", f"removed {stale}", "2 leftover(s) removed"]
    )
    assert live.exists() and (name_dir / "1" / "manifest.json").exists()
    remote = name_dir / ".tmp-otherhost-1-abcd"  # another host's writer: only age tells
    remote.mkdir()
    old = time.time() - 3 * 3600
    os.utime(remote, (old, old))
    assert run("gc", "--older-than", "4", copy).stdout == "nothing to remove\n"
    assert run("gc", "--older-than", "2", copy).stdout == (
        f"removed {remote}\n1 leftover(s) removed\n"
    )
    assert run("gc", "--older-than", "0", copy).stdout == "nothing to remove\n"
    assert live.exists()


def test_schema_prints_the_manifest_schema():
    result = run("schema")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == manifest_json_schema()


def test_demo(tmp_path):
    result = run("demo", "--store", tmp_path / "demo", "--steps", "2")
    assert result.exit_code == 0, result.output
    assert "demo passed" in result.stdout
    assert run("validate", tmp_path / "demo").exit_code == 0


def test_version_and_help():
    assert re.fullmatch(r".*version \d+\.\d+\.\d+.*\n", run("--version").stdout)
    result = run("--help")
    for command in ("check", "demo", "diff", "gc", "inspect", "ls", "schema", "validate"):
        assert f"  {command} " in result.stdout


@pytest.mark.parametrize(
    ("target", "code", "output"),
    [
        ("tiny", 0, "2 adapter version(s) checked (manifests, shards and checksums): all valid"),
        ("nowhere", 2, "Usage: adapter-store validate [OPTIONS] PATHS..."),
    ],
    ids=["valid", "usage-error"],
)
def test_python_dash_m_runs_the_command_line(store, target, code, output):
    package_root = Path(adapter_store.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    result = subprocess.run(
        [sys.executable, "-m", "adapter_store.cli", "validate", str(store / target)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == code, result.stderr
    assert output in result.stdout + result.stderr


# --- progress bars ---------------------------------------------------------------------


def _read_all(fd: int) -> str:
    chunks = []
    while select.select([fd], [], [], 0.2)[0]:
        chunks.append(os.read(fd, 65536))
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
@pytest.mark.parametrize("quiet", [False, True], ids=["terminal", "quiet"])
def test_progress_bar_only_on_a_terminal_and_not_quiet(store, monkeypatch, quiet):
    leader, follower = os.openpty()
    # tqdm draws no bar on a terminal of 0 rows, which is what a new pty reports.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    with os.fdopen(follower, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        args = ["validate", str(store)] + (["--quiet"] if quiet else [])
        code = main.main(args, prog_name="adapter-store", standalone_mode=False)
        terminal.flush()
        drawn = _read_all(leader)
    os.close(leader)
    assert code == 0
    assert ("validating" in drawn) == (not quiet)
    # Off the terminal (CliRunner captures stderr) there is never a bar.
    assert "validating" not in run("validate", store).stderr


# --- the pre-commit hook -----------------------------------------------------------------


def test_pre_commit_hook_runs_validate_on_manifest_files(copy):
    yaml = pytest.importorskip("yaml")
    manifest = Path(__file__).resolve().parents[1] / ".pre-commit-hooks.yaml"
    (hook,) = yaml.safe_load(manifest.read_text())
    assert hook["id"] == "adapter-store-validate"
    files = re.compile(hook["files"])
    assert files.search("adapters/tiny/3/manifest.json") and files.search("manifest.json")
    assert not files.search("web/package.json") and not files.search("my_manifest.json")
    assert files.search("adapters/tiny/3/shards/layers.0.safetensors")
    assert files.search("adapters/tiny/3/optimizer.safetensors")
    assert not files.search("models/llama/model-00001-of-00002.safetensors")
    program, *args = hook["entry"].split()
    assert program == "adapter-store"
    # pre-commit appends the staged files that match `files`.
    staged = [str(copy / "tiny" / v / "manifest.json") for v in ("1", "2")]
    assert CliRunner().invoke(main, args + staged).exit_code == 0
    _flip_byte(copy / "tiny" / "2" / "shards" / "layers.1.safetensors")
    result = CliRunner().invoke(main, args + staged)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "tiny/2/shards/layers.1.safetensors: xxh3-128 checksum" in result.stderr
    # A commit that stages only the damaged shard is caught as well.
    only_shard = [str(copy / "tiny" / "2" / "shards" / "layers.1.safetensors")]
    assert CliRunner().invoke(main, args + only_shard).exit_code == 1
