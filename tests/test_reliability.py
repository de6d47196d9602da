"""Hostile inputs: every damaged or crafted file is refused with a specific error that
names the file and the key or field, and the target model stays byte-identical.

Each case damages one saved version on disk. Cases marked "re-signed" also rewrite the
manifest's ``nbytes`` and checksum for the crafted shard, as an attacker who controls
the whole adapter directory would, so that the header and path checks (not only the
checksum) are what refuses them. Nothing is ever unpickled: the pickle cases carry a
payload that would create a marker directory if it ran.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import resource
import shutil
import socket
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from reliability_helpers import build_model, no_hang, state_bytes, trainable_bytes

import adapter_store
from adapter_store import (
    AdapterNotFoundError,
    AdapterStore,
    AdapterStoreError,
    IntegrityError,
    ManifestError,
    SavedAdapter,
    UnsafePathError,
    layout,
)
from adapter_store.checksum import digest_buffer
from adapter_store.validation import validate_version

VICTIM = "victim"
HEAD = "shards/head.safetensors"
MARKER = "payload-ran"
_MiB = 1024 * 1024


class _Payload:
    """Unpickling this creates the directory ``MARKER``: proof that pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


# --- crafting files ------------------------------------------------------------------


def _edit_manifest(version_dir: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = version_dir / "manifest.json"
    raw = json.loads(path.read_bytes())
    edit(raw)
    path.write_text(json.dumps(raw))


def _resign(version_dir: Path, relative: str, data: bytes) -> None:
    """Replace a shard and make the manifest agree with its size and checksum."""
    (version_dir / relative).write_bytes(data)

    def edit(raw: dict[str, Any]) -> None:
        entry = next(s for s in raw["shards"] if s["path"] == relative)
        entry["nbytes"] = len(data)
        entry["checksum"]["digest"] = digest_buffer(data, entry["checksum"]["algorithm"])

    _edit_manifest(version_dir, edit)


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _join(header: dict[str, Any], data: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def _craft_head(edit: Callable[[dict[str, Any], bytes], tuple[dict[str, Any], bytes]]):
    """A damage function: rewrite the head shard's header (and data), re-signed."""

    def damage(version_dir: Path, outside: Path) -> None:
        header, data = _split((version_dir / HEAD).read_bytes())
        _resign(version_dir, HEAD, _join(*edit(header, data)))

    return damage


def _set_entry(key: str, **fields: Any):
    def edit(header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        header[key].update(fields)
        return header, data

    return _craft_head(edit)


def _rename_key(old: str, new: str):
    def edit(header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        header[new] = header.pop(old)
        return header, data

    return _craft_head(edit)


def _add_tensor(header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    header["head.smuggled"] = {"dtype": "F32", "shape": [1], "data_offsets": [204, 208]}
    return header, data + b"\x00" * 4


def _huge_tensor(header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    claimed = 2**62  # a 4 EiB tensor in a 348-byte file
    header["head.weight"] = {"dtype": "F32", "shape": [2**20] * 3, "data_offsets": [0, claimed]}
    header["head.bias"]["data_offsets"] = [claimed, claimed + 12]
    return header, data


def _replace_head_bytes(data: bytes | Callable[[bytes], bytes], *, resign: bool):
    def damage(version_dir: Path, outside: Path) -> None:
        old = (version_dir / HEAD).read_bytes()
        new = data(old) if callable(data) else data
        if resign:
            _resign(version_dir, HEAD, new)
        else:
            (version_dir / HEAD).write_bytes(new)

    return damage


def _flip(position: int) -> Callable[[bytes], bytes]:
    def flip(data: bytes) -> bytes:
        index = position % len(data)
        return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]

    return flip


def _header_length(length: int) -> Callable[[bytes], bytes]:
    return lambda data: struct.pack("<Q", length) + data[8:]


def _invalid_header_json(data: bytes) -> bytes:
    (length,) = struct.unpack("<Q", data[:8])
    return data[:8] + b"{not json".ljust(length, b" ") + data[8 + length :]


def _pickled(version_dir: Path, outside: Path) -> None:
    # Padded to the head shard's size, so that the manifest's sizes stay consistent.
    payload = pickle.dumps((_Payload(outside / MARKER), "x" * 400), protocol=4)
    _resign(version_dir, HEAD, payload)


def _torch_saved(version_dir: Path, outside: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"head.weight": torch.zeros(3, 16), "payload": _Payload(outside / MARKER)}, buffer)
    _resign(version_dir, HEAD, buffer.getvalue())


def _move_head(new_path: str):
    """Point the head shard's manifest entry (and its tensors) at ``new_path``."""

    def edit(raw: dict[str, Any]) -> None:
        for shard in raw["shards"]:
            if shard["path"] == HEAD:
                shard["path"] = new_path
        for entry in raw["tensors"].values():
            if entry["shard"] == HEAD:
                entry["shard"] = new_path

    return lambda version_dir, outside: _edit_manifest(version_dir, edit)


def _symlink_head(version_dir: Path, outside: Path) -> None:
    # The target holds the genuine bytes: only the escape check can refuse it.
    shutil.copy(version_dir / HEAD, outside / "head.safetensors")
    (version_dir / HEAD).unlink()
    (version_dir / HEAD).symlink_to(outside / "head.safetensors")


def _symlink_shards_dir(version_dir: Path, outside: Path) -> None:
    shutil.move(version_dir / "shards", outside / "shards")
    (version_dir / "shards").symlink_to(outside / "shards", target_is_directory=True)


def _symlink_manifest(version_dir: Path, outside: Path) -> None:
    shutil.move(version_dir / "manifest.json", outside / "manifest.json")
    (version_dir / "manifest.json").symlink_to(outside / "manifest.json")


def _sparse_manifest(version_dir: Path, outside: Path) -> None:
    with open(version_dir / "manifest.json", "r+b") as file:
        file.truncate(8 * 1024**3)  # 8 GiB on paper, no disk used


def _set_manifest(**fields: Any):
    return lambda version_dir, outside: _edit_manifest(version_dir, lambda r: r.update(fields))


def _set_head_nbytes(nbytes: int):
    def edit(raw: dict[str, Any]) -> None:
        next(s for s in raw["shards"] if s["path"] == HEAD)["nbytes"] = nbytes

    return lambda version_dir, outside: _edit_manifest(version_dir, edit)


def _wrong_type(version_dir: Path, outside: Path) -> None:
    _edit_manifest(version_dir, lambda raw: raw["shards"][0].update(nbytes="many"))


def _write(relative: str, data: bytes):
    return lambda version_dir, outside: (version_dir / relative).write_bytes(data)


def _fifo(version_dir: Path, outside: Path) -> None:
    (version_dir / HEAD).unlink()
    os.mkfifo(version_dir / HEAD)


def _empty_version(version_dir: Path, outside: Path) -> None:
    (version_dir.parent / "2").mkdir()


def _extra_shard(version_dir: Path, outside: Path) -> None:
    # A well-formed safetensors file: only "not listed" is wrong with it.
    (version_dir / "shards/evil.safetensors").write_bytes(
        _join({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 4)
    )


# --- the matrix ----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    damage: Callable[[Path, Path], None]
    error: type[AdapterStoreError]
    #: Names the file and the key or field; matched with re.search.
    match: str
    #: The file a validation problem must name (relative to the version directory).
    file: str = HEAD
    #: False when only the checksum can tell (verify=False then accepts the damage).
    structural: bool = True
    version: int | None = None


_HEAD = re.escape(HEAD)
_MANIFEST = r"manifest\.json"
_UNSAFE = "is not a plain relative path inside the version directory"

CASES = [
    Case(
        "truncated-shard",
        _replace_head_bytes(lambda d: d[:-4], resign=False),
        IntegrityError,
        rf"{_HEAD}: file is \d+ bytes but the manifest's nbytes is \d+ \(truncated\)",
    ),
    Case(
        "bytes-appended-to-shard",
        _replace_head_bytes(lambda d: d + b"\0" * 8, resign=False),
        IntegrityError,
        rf"{_HEAD}: file is \d+ bytes but the manifest's nbytes is \d+ \(bytes appended\)",
    ),
    Case(
        "flipped-byte-in-tensor-data",
        _replace_head_bytes(_flip(-1), resign=False),
        IntegrityError,
        rf"{_HEAD}: xxh3-128 checksum [0-9a-f]+ does not match the manifest's",
        structural=False,
    ),
    Case(
        "flipped-byte-in-header-json",
        _replace_head_bytes(_flip(12), resign=False),
        IntegrityError,
        rf"{_HEAD}: xxh3-128 checksum [0-9a-f]+ does not match the manifest's",
        structural=False,
    ),
    Case(
        "header-length-larger-than-file",
        _replace_head_bytes(_header_length(4096), resign=True),
        IntegrityError,
        rf"{_HEAD}: header length 4096 is larger than the file",
    ),
    Case(
        "header-length-2**63",
        _replace_head_bytes(_header_length(2**63), resign=True),
        IntegrityError,
        rf"{_HEAD}: header length {2**63} is larger than the file",
    ),
    Case(
        "invalid-header-json",
        _replace_head_bytes(_invalid_header_json, resign=True),
        IntegrityError,
        rf"{_HEAD}: header is not valid JSON",
    ),
    Case(
        "overlapping-offsets",
        _set_entry("head.bias", data_offsets=[188, 200]),
        IntegrityError,
        rf"{_HEAD}: header entry 'head\.bias': data_offsets \[188, 200\] overlaps",
    ),
    Case(
        "gapped-offsets",
        _set_entry("head.bias", data_offsets=[196, 208]),
        IntegrityError,
        rf"{_HEAD}: header entry 'head\.bias': data_offsets \[196, 208\] leaves a gap",
    ),
    Case(
        "dtype-differs-from-manifest",
        _set_entry("head.bias", dtype="I32"),
        IntegrityError,
        rf"{_HEAD}: tensor 'head\.bias' is I32 \[3\] in the shard but F32 \[3\] in the "
        "manifest",
    ),
    Case(
        "shape-differs-from-manifest",
        _set_entry("head.bias", shape=[1, 3]),
        IntegrityError,
        rf"{_HEAD}: tensor 'head\.bias' is F32 \[1, 3\] in the shard but F32 \[3\]",
    ),
    Case(
        "manifest-key-absent-from-shard",
        _rename_key("head.bias", "head.bias_"),
        IntegrityError,
        rf"{_HEAD}: tensor 'head\.bias' is listed in the manifest but absent from the shard",
    ),
    Case(
        "shard-key-absent-from-manifest",
        _craft_head(_add_tensor),
        IntegrityError,
        rf"{_HEAD}: tensor 'head\.smuggled' is in the shard but not listed in the manifest",
    ),
    Case(
        "missing-shard-file",
        lambda v, o: (v / HEAD).unlink(),
        IntegrityError,
        rf"{_HEAD}: shard file listed in the manifest is missing",
    ),
    Case(
        "extra-unlisted-shard-file",
        _extra_shard,
        IntegrityError,
        r"shards/evil\.safetensors: file is not listed in the manifest",
        file="shards/evil.safetensors",
        structural=False,
    ),
    Case(
        "manifest-invalid-json",
        _write("manifest.json", b'{"format": "adapter-store", '),
        ManifestError,
        rf"{_MANIFEST}: not valid JSON",
        file="manifest.json",
    ),
    Case(
        "manifest-wrong-types",
        _wrong_type,
        ManifestError,
        rf"{_MANIFEST}: field 'shards\.0\.nbytes': Input should be a valid integer",
        file="manifest.json",
    ),
    Case(
        "manifest-unknown-field",
        _set_manifest(trust_me=True),
        ManifestError,
        rf"{_MANIFEST}: field 'trust_me': Extra inputs are not permitted",
        file="manifest.json",
    ),
    Case(
        "manifest-unsupported-format-version",
        _set_manifest(format_version=2),
        ManifestError,
        rf"{_MANIFEST}: field 'format_version': 2 is not supported",
        file="manifest.json",
    ),
    Case(
        "shard-path-dotdot",
        _move_head("shards/../../escape.safetensors"),
        UnsafePathError,
        rf"{_MANIFEST}: shards\.3\.path: path 'shards/\.\./\.\./escape\.safetensors' {_UNSAFE}",
        file="manifest.json",
    ),
    Case(
        "shard-path-absolute",
        _move_head("/etc/passwd"),
        UnsafePathError,
        rf"{_MANIFEST}: shards\.3\.path: path '/etc/passwd' {_UNSAFE}",
        file="manifest.json",
    ),
    Case(
        "shard-path-drive-letter",
        _move_head("C:/Windows/evil.safetensors"),
        UnsafePathError,
        rf"{_MANIFEST}: shards\.3\.path: path 'C:/Windows/evil\.safetensors' {_UNSAFE}",
        file="manifest.json",
    ),
    Case(
        "shard-path-backslashes",
        _move_head("shards\\..\\..\\escape"),
        UnsafePathError,
        rf"{_MANIFEST}: shards\.3\.path: path .* {_UNSAFE}",
        file="manifest.json",
    ),
    Case(
        "shard-symlink-escapes",
        _symlink_head,
        UnsafePathError,
        rf"{_HEAD}: shards\.path resolves to .*, outside the version directory",
    ),
    Case(
        "shards-dir-symlink-escapes",
        _symlink_shards_dir,
        UnsafePathError,
        r"shards/layers\.0\.safetensors: shards\.path resolves to .*, outside the version "
        "directory",
        file="shards/layers.0.safetensors",
    ),
    Case(
        "manifest-symlink-escapes",
        _symlink_manifest,
        UnsafePathError,
        rf"{_MANIFEST}: manifest resolves to .*, outside the version directory",
        file="manifest.json",
    ),
    Case(
        "manifest-of-8-gib",
        _sparse_manifest,
        ManifestError,
        rf"{_MANIFEST}: manifest is {8 * 1024**3} bytes, more than the \d+ allowed",
        file="manifest.json",
    ),
    Case(
        "manifest-claims-2**62-byte-shard",
        _set_head_nbytes(2**62),
        IntegrityError,
        rf"{_HEAD}: file is \d+ bytes but the manifest's nbytes is {2**62}",
    ),
    Case(
        "header-claims-4-eib-tensor",
        _craft_head(_huge_tensor),
        IntegrityError,
        rf"{_HEAD}: header data_offsets cover {2**62 + 12} bytes \(the last, 'head\.bias', "
        r"ends there\) but the data section is 204 bytes",
    ),
    # Multiplying 100,000 dimensions of 2**32 takes ~13 s: a hang unless refused first.
    Case(
        "header-100k-dimensions",
        _set_entry("head.weight", shape=[2**32] * 100_000),
        IntegrityError,
        rf"{_HEAD}: header entry 'head\.weight': shape is not a list of at most 64 dimensions",
    ),
    Case(
        "pickle-renamed-to-safetensors",
        _pickled,
        IntegrityError,
        rf"{_HEAD}: header length \d+ is larger than the file",
    ),
    Case(
        "torch-save-zip-renamed-to-safetensors",
        _torch_saved,
        IntegrityError,
        rf"{_HEAD}: header length \d+ is larger than the file",
    ),
    Case("fifo-named-like-a-shard", _fifo, IntegrityError, rf"{_HEAD}: not a regular file"),
    Case(
        "empty-version-directory",
        _empty_version,
        AdapterNotFoundError,
        r"adapter 'victim' has no version 2 \(.*victim/2 has no manifest\.json\)",
        file="manifest.json",
        version=2,
    ),
]


@pytest.fixture
def saved(tmp_path: Path) -> tuple[AdapterStore, SavedAdapter]:
    store = AdapterStore(tmp_path / "store")
    return store, store.save(build_model(1), VICTIM)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# Every case with the default verify=True; the structural ones with verify=False as well,
# since skipping the checksum must not skip the size, header and path checks.
_LOADS = [pytest.param(c, True, id=f"{c.id}-verify") for c in CASES] + [
    pytest.param(c, False, id=f"{c.id}-no-verify") for c in CASES if c.structural
]


@pytest.mark.parametrize(("case", "verify"), _LOADS)
def test_hostile_input_is_refused_and_the_model_is_untouched(case, verify, saved, tmp_path):
    store, version = saved
    outside = tmp_path / "outside"
    outside.mkdir()
    case.damage(version.path, outside)
    target = build_model(2)  # same base, other adapter values: a load would change it
    before = state_bytes(target)
    peak = _peak_rss_bytes()

    with no_hang(10), pytest.raises(case.error, match=case.match):
        store.load(target, VICTIM, version=case.version, verify=verify)

    assert state_bytes(target) == before
    assert not (outside / MARKER).exists(), "a pickle payload ran"
    assert _peak_rss_bytes() - peak < 256 * _MiB


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.version is None], ids=[c.id for c in CASES if c.version is None]
)
def test_validate_reports_each_hostile_input_against_its_file(case, saved, tmp_path):
    _, version = saved
    outside = tmp_path / "outside"
    outside.mkdir()
    case.damage(version.path, outside)
    with no_hang(10):
        _, problems = validate_version(version.path)
    assert any(p.file == str(version.path / case.file) for p in problems), [
        str(p) for p in problems
    ]
    assert not (outside / MARKER).exists()


def test_without_verify_only_the_checksum_would_have_seen_flipped_tensor_bytes(saved, tmp_path):
    """The trade-off of verify=False, stated as a test: damage inside tensor data loads."""
    store, version = saved
    _replace_head_bytes(_flip(-1), resign=False)(version.path, tmp_path)
    target = build_model(2)
    store.load(target, VICTIM, verify=False)
    loaded, intact = trainable_bytes(target), trainable_bytes(build_model(1))
    assert [k for k in intact if loaded[k] != intact[k]] == ["head.bias"]


def test_an_empty_version_directory_hides_nothing_and_is_never_reused(saved):
    store, version = saved
    (version.path.parent / "2").mkdir()
    assert store.versions(VICTIM) == [1]
    target = build_model(2)
    store.load(target, VICTIM)
    assert trainable_bytes(target) == trainable_bytes(build_model(1))
    assert store.save(build_model(3), VICTIM).version == 3
    assert store.versions(VICTIM) == [1, 3]
    assert list((version.path.parent / "2").iterdir()) == []


def test_a_numbered_directory_without_manifest_does_not_block_saves(saved):
    store, version = saved
    orphan = version.path.parent / "2"
    shutil.copytree(version.path / "shards", orphan / "shards")  # an interrupted copy
    assert store.save(build_model(3), VICTIM).version == 3
    assert sorted(p.name for p in (orphan / "shards").iterdir()) == sorted(
        p.name for p in (version.path / "shards").iterdir()
    )


def test_a_damaged_optimizer_file_changes_neither_model_nor_optimizer(tmp_path):
    store = AdapterStore(tmp_path / "store")
    model = build_model(1)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    model.head.weight.sum().backward()
    optimizer.step()
    saved = store.save(model, VICTIM, optimizer=optimizer)
    data = bytearray((saved.path / "optimizer.safetensors").read_bytes())
    data[-1] ^= 0x01
    (saved.path / "optimizer.safetensors").write_bytes(bytes(data))

    target = build_model(2)
    fresh = torch.optim.Adam([p for p in target.parameters() if p.requires_grad])
    before, before_state = state_bytes(target), fresh.state_dict()
    with pytest.raises(IntegrityError, match=r"optimizer\.safetensors: xxh3-128 checksum"):
        store.load(target, VICTIM, optimizer=fresh)
    assert state_bytes(target) == before
    assert fresh.state_dict() == before_state


def test_sha256_checksums_catch_the_same_damage(tmp_path):
    store = AdapterStore(tmp_path / "store", checksum="sha256")
    saved = store.save(build_model(1), VICTIM)
    assert {s.checksum.algorithm for s in saved.manifest.shards} == {"sha256"}
    _replace_head_bytes(_flip(-1), resign=False)(saved.path, tmp_path)
    target = build_model(2)
    before = state_bytes(target)
    with pytest.raises(
        IntegrityError,
        match=rf"{_HEAD}: sha256 checksum [0-9a-f]{{64}} does "
        "not match",
    ):
        AdapterStore(tmp_path / "store").load(target, VICTIM)  # the manifest says sha256
    assert state_bytes(target) == before


def test_temporary_directories_are_invisible_to_readers_and_removed_by_gc(saved):
    store, version = saved
    name_dir = version.path.parent
    # A complete copy, manifest included, under a temporary name of a writer on another
    # host: not a version, and not removed while it might still be in progress.
    stale = name_dir / ".tmp-otherhost-4242-deadbeef"
    shutil.copytree(version.path, stale)
    assert store.versions(VICTIM) == [1] and store.names() == [VICTIM]
    assert store.gc() == []
    assert store.gc(older_than_seconds=0) == [stale]
    assert not stale.exists() and store.versions(VICTIM) == [1]


_HOST = socket.gethostname()
_DAY = 24 * 3600.0


@pytest.mark.parametrize(
    ("temp_name", "age_seconds", "older_than_seconds", "removed"),
    [
        (f".tmp-{_HOST}-{os.getpid()}-live0001", 0.0, 0.0, False),
        (f".tmp-{_HOST}-{os.getpid()}-live0002", 0.0, _DAY, False),
        (f".tmp-{_HOST}-999999999-dead0001", 0.0, _DAY, True),
        (f".tmp-{_HOST}-{os.getpid()}-reused01", 3 * _DAY, _DAY * 30, True),
        (".tmp-otherhost-4242-young001", 0.0, _DAY, False),
        (".tmp-otherhost-4242-old00001", 2 * _DAY, _DAY, True),
    ],
    ids=[
        "live-writer-here-any-age-limit",
        "live-writer-here-default-limit",
        "dead-writer-here",
        "writer-id-reused-by-a-later-process",
        "other-host-younger-than-the-limit",
        "other-host-older-than-the-limit",
    ],
)
def test_gc_asks_a_writer_on_this_host_and_ages_out_only_other_hosts(
    saved, temp_name, age_seconds, older_than_seconds, removed
):
    if temp_name.endswith("reused01") and not os.path.exists(f"/proc/{os.getpid()}/stat"):
        pytest.skip("process start times come from /proc")
    store, version = saved
    temp = version.path.parent / temp_name
    temp.mkdir()
    # Aged past this process's start: this process cannot have written it, so its id in
    # the name was reused after the writer died.
    moment = time.time() - age_seconds
    os.utime(temp, (moment, moment))
    assert store.gc(older_than_seconds=older_than_seconds) == ([temp] if removed else [])
    assert temp.exists() is not removed


@pytest.mark.parametrize(
    ("age_seconds", "removed"), [(600.0, False), (2 * _DAY, True)], ids=["ten-minutes", "two-days"]
)
def test_gc_ages_out_a_live_looking_writer_here_after_a_day(
    saved, monkeypatch, age_seconds, removed
):
    """Containers sharing a host name but not process ids: a crashed save of pid 1 in one
    looks alive through pid 1 of another, forever. Such a folder goes after a day (no
    save takes that long), whatever older_than_seconds says, and not before."""
    monkeypatch.setattr(layout, "_process_start_time", lambda pid: 0.0)  # long running
    store, version = saved
    temp = version.path.parent / f".tmp-{_HOST}-1-crashed1"
    temp.mkdir()
    moment = time.time() - age_seconds
    os.utime(temp, (moment, moment))
    assert store.gc(older_than_seconds=60) == ([temp] if removed else [])


def test_files_and_directories_follow_the_process_umask(tmp_path):
    previous = os.umask(0o002)  # group-writable, as for a store shared by a team
    try:
        saved = AdapterStore(tmp_path / "store").save(build_model(1), VICTIM)
    finally:
        os.umask(previous)
    modes = {
        str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode)
        for p in [saved.path.parent, *saved.path.rglob("*"), saved.path]
    }
    for path, mode in modes.items():
        expected = 0o775 if os.path.isdir(tmp_path / path) else 0o664
        assert mode == expected, f"{path} has mode {oct(mode)}, expected {oct(expected)}"


def test_the_package_never_calls_an_unpickler():
    """Static guard for "nothing is ever unpickled": no pickle, torch.load or numpy
    pickle path anywhere in the package (the pickle cases above prove it at run time)."""
    unpickling = re.compile(
        r"\bimport pickle\b|\bfrom pickle\b|\bpickle\.loads?\(|torch\.load\(|"
        r"allow_pickle\s*=\s*True|weights_only\s*=\s*False|\bdill\b|\bcloudpickle\b"
    )
    package = Path(adapter_store.__file__).parent
    offenders = [
        f"{path.relative_to(package)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if unpickling.search(line)
    ]
    assert offenders == []


def test_a_manifest_edited_in_place_is_read_again_even_with_its_mtime_put_back(tmp_path):
    # Parsed manifests are cached per file identity; an edit that keeps the size and
    # restores the mtime must still be seen (ctime is part of the identity).
    from adapter_store import AdapterStore
    from adapter_store.version_files import read_manifest

    store = AdapterStore(tmp_path)
    store.save(torch.nn.Linear(4, 4), "a")
    version = store.path("a")
    path = version / "manifest.json"
    assert read_manifest(version).name == "a"
    before = os.stat(path)
    data = path.read_bytes()
    edited = data.replace(b'"name": "a"', b'"name": "b"', 1)
    assert len(edited) == len(data) and edited != data
    with open(path, "r+b") as file:
        file.write(edited)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert json.loads(path.read_bytes())["name"] == "b"
    assert read_manifest(version).name == "b"
