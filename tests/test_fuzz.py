"""Fuzzing the two parsers of untrusted bytes: the manifest and the shard header.

Random bytes, byte-level mutations of valid files, and structure-aware mutations (valid
JSON with hostile values in every field) go into ``parse_manifest``, ``parse_header`` and
a real ``ShardReader`` over a real file. Only :class:`AdapterStoreError` subclasses may
come out: any other exception fails the test, and a hang is turned into a failure.
Example counts stay small enough for CI (the whole module runs in a few seconds).
"""

from __future__ import annotations

import contextlib
import json
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from reliability_helpers import build_model, no_hang

from adapter_store import AdapterStore, AdapterStoreError
from adapter_store.checksum import digest_buffer
from adapter_store.dtypes import torch_dtype
from adapter_store.manifest import Manifest, TensorEntry, dump_manifest, parse_manifest
from adapter_store.safetensors_io import parse_header
from adapter_store.shard_reader import ShardReader

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def sample() -> Iterator[tuple[bytes, bytes, dict[str, TensorEntry], Path]]:
    """A real manifest, a real shard, its manifest entries, and a scratch directory."""
    with tempfile.TemporaryDirectory() as scratch:
        saved = AdapterStore(Path(scratch) / "store").save(build_model(1), "fuzz")
        shard = saved.manifest.shards[-1].path
        expected = {k: t for k, t in saved.manifest.tensors.items() if t.shard == shard}
        yield (
            dump_manifest(saved.manifest),
            (saved.path / shard).read_bytes(),
            expected,
            Path(scratch),
        )


# --- strategies ----------------------------------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "..",
            "/etc/passwd",
            "C:/x",
            "shards/../../x",
            "F32",
            "BF16",
            "sha256",
            "xxh3-128",
            "",
            "\x00",
            2**63,
            -1,
            1e308,
        ]
    )
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def _mutated_bytes(draw: st.DrawFn, original: bytes) -> bytes:
    """A few flips, deletions, insertions or a truncation of ``original``."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "overwrite"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "truncate":
            del data[at:]
        else:
            chunk = draw(
                st.sampled_from(
                    [
                        b"\xff" * 8,
                        b"\x00" * 8,
                        b"9" * 40,
                        b"[" * 64,
                        b'"',
                        b"-1",
                        b"1e999",
                        b"null",
                        b"{}",
                    ]
                )
            )
            data[at : at + len(chunk)] = chunk
    return bytes(data)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


@st.composite
def _mutated_json(draw: st.DrawFn, original: Any) -> Any:
    """``original`` with a few values (anywhere in the tree) replaced or removed."""
    document = json.loads(json.dumps(original))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(document) if p]
        if not paths:
            break
        *parents, last = draw(st.sampled_from(paths))
        parent = document
        for step in parents:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.booleans()) and draw(st.booleans()):
            del parent[last]
        else:
            parent[last] = draw(_JSON)
    return document


def _shard(header: Any, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _expect_library_errors_only(call: Any, *args: Any, **kwargs: Any) -> None:
    with no_hang(20), contextlib.suppress(AdapterStoreError):
        call(*args, **kwargs)


# --- the manifest parser -------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=4096))
@example(data=b"9" * 5000)  # past Python's 4300-digit limit: a ValueError, not JSON's
@example(data=b"[" * 100_000)  # RecursionError territory
@example(data=b'{"format": "adapter-store", "format_version": 1, "tensors": []}')
def test_random_bytes_into_parse_manifest(data):
    _expect_library_errors_only(parse_manifest, data, path="fuzz/manifest.json")


@FUZZ
@given(st.data())
def test_mutated_manifest_bytes_into_parse_manifest(sample, data):
    manifest_bytes = sample[0]
    _expect_library_errors_only(parse_manifest, data.draw(_mutated_bytes(manifest_bytes)))


@FUZZ
@given(st.data())
def test_hostile_values_in_every_manifest_field(sample, data):
    document = data.draw(_mutated_json(json.loads(sample[0])))
    _expect_library_errors_only(parse_manifest, json.dumps(document).encode())


def test_the_unmutated_sample_parses(sample):
    assert isinstance(parse_manifest(sample[0]), Manifest)  # the mutations start from valid


# --- the shard header and reader -----------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=1024))
@example(data=_shard({"k": {"dtype": [], "shape": [], "data_offsets": [0, 0]}}, b""))
@example(
    data=_shard(
        {"k": {"dtype": "F32", "shape": [2**32] * 100_000, "data_offsets": [0, 4]}}, b"\0" * 4
    )
)
@example(data=b"\x80\x04\x95" + b"\x00" * 13)  # the start of a pickle
def test_random_bytes_into_parse_header(data):
    _expect_library_errors_only(parse_header, data, len(data), path="fuzz.safetensors")


@FUZZ
@given(header=_JSON, tail=st.binary(max_size=64))
def test_random_json_headers_into_parse_header(header, tail):
    data = _shard(header, tail)
    _expect_library_errors_only(parse_header, data, len(data), path="fuzz.safetensors")


@FUZZ
@given(st.data())
def test_hostile_values_in_every_header_field(sample, data):
    shard = sample[1]
    (length,) = struct.unpack("<Q", shard[:8])
    header = data.draw(_mutated_json(json.loads(shard[8 : 8 + length])))
    crafted = _shard(header, shard[8 + length :])
    _expect_library_errors_only(parse_header, crafted, len(crafted), path="fuzz.safetensors")


def _read_everything(path: Path, data: bytes, expected: dict[str, TensorEntry]) -> None:
    # Re-signed: the checksum agrees, so the header checks are what must hold.
    checksum = ("xxh3-128", digest_buffer(data, "xxh3-128"))
    with ShardReader(
        path, display=str(path), nbytes=len(data), checksum=checksum, expected=expected
    ) as reader:
        for key, entry in reader.entries.items():
            target = torch.empty(entry.shape, dtype=torch_dtype(entry.dtype))
            reader.copy_into(key, target)


@FUZZ
@given(st.data())
def test_mutated_shard_files_through_the_shard_reader(sample, data):
    _, shard, expected, scratch = sample
    crafted = data.draw(
        _mutated_bytes(shard) | _mutated_bytes(shard[:8]).map(lambda head: head + shard[8:])
    )
    path = scratch / "fuzz.safetensors"
    path.unlink(missing_ok=True)
    path.write_bytes(crafted)
    _expect_library_errors_only(_read_everything, path, crafted, expected)


def test_the_unmutated_shard_reads(sample):
    _, shard, expected, scratch = sample
    path = scratch / "intact.safetensors"
    path.write_bytes(shard)
    _read_everything(path, shard, expected)  # no error: the mutations start from valid
