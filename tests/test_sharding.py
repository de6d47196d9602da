"""Grouping keys into per-module shards (pure planning)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from adapter_store import AdapterStore, InvalidAdapterError
from adapter_store.layout import shard_filename
from adapter_store.sharding import group_of, plan_shards
from adapter_store.validation import validate_version

_DIGEST = hashlib.sha256(b"a b").hexdigest()[:12]


@pytest.mark.parametrize(
    ("key", "group"),
    [
        ("model.layers.7.self_attn.q_proj.lora_A.weight", "model.layers.7"),
        ("lm_head.weight", "lm_head"),
        ("classifier.dense.bias", "classifier"),
        (
            "base_model.model.model.layers.0.mlp.lora_B.default.weight",
            "base_model.model.model.layers.0",
        ),
        ("base_model.model.lm_head.weight", "base_model.model.lm_head"),
        ("lora.3", "lora"),
        ("scale", "scale"),
        ("encoder.block.11.layer.0.weight", "encoder.block.11"),
    ],
)
def test_group_of(key, group):
    assert group_of(key) == group


def test_one_shard_per_group_in_order_of_appearance():
    sizes = {"layers.0.a": 4, "head.w": 4, "layers.0.b": 4, "layers.1.a": 4}
    planned = plan_shards(sizes)
    assert [(p.group, p.keys) for p in planned] == [
        ("layers.0", ("layers.0.a", "layers.0.b")),
        ("head", ("head.w",)),
        ("layers.1", ("layers.1.a",)),
    ]
    assert planned[0].path == "shards/layers.0.safetensors"


def test_a_group_splits_only_above_the_limit_and_never_splits_a_tensor():
    sizes = {"g.0.a": 60, "g.0.b": 60, "g.0.c": 200}
    planned = plan_shards(sizes, max_shard_bytes=100)
    assert [p.keys for p in planned] == [("g.0.a",), ("g.0.b",), ("g.0.c",)]
    assert planned[2].path == "shards/g.0-00003-of-00003.safetensors"
    assert len(plan_shards(sizes, max_shard_bytes=1000)) == 1


def test_custom_grouping():
    planned = plan_shards({"a.x": 1, "b.x": 1}, group_by=lambda key: "all")
    assert [p.keys for p in planned] == [("a.x", "b.x")]


def test_file_names_are_safe_and_distinct():
    assert shard_filename("lm_head") == "shards/lm_head.safetensors"
    weird = shard_filename("a/b")
    assert "/" not in weird.removeprefix("shards/") and weird != shard_filename("a_b")
    assert shard_filename(".hidden").startswith("shards/_")
    assert len(shard_filename("x" * 500)) < 255


# (groups in order of appearance, bytes per group, the paths planned)
CLASHES = [
    (
        ["a", "a-00001-of-00002"],
        [2, 1],
        [
            "shards/a-00001-of-00002.safetensors",
            "shards/a-00002-of-00002.safetensors",
            "shards/a-00001-of-00002-"
            + hashlib.sha256(b"a-00001-of-00002").hexdigest()[:12]
            + ".safetensors",
        ],
    ),
    (
        ["a-00001-of-00002", "a"],
        [1, 2],
        [
            "shards/a-00001-of-00002.safetensors",
            "shards/a-" + hashlib.sha256(b"a").hexdigest()[:12] + "-00001-of-00002.safetensors",
            "shards/a-" + hashlib.sha256(b"a").hexdigest()[:12] + "-00002-of-00002.safetensors",
        ],
    ),
    (
        ["a b", f"a_b-{_DIGEST}"],
        [1, 1],
        [
            f"shards/a_b-{_DIGEST}.safetensors",
            f"shards/a_b-{_DIGEST}-"
            + hashlib.sha256(f"a_b-{_DIGEST}".encode()).hexdigest()[:12]
            + ".safetensors",
        ],
    ),
    (
        ["head", "HEAD"],
        [1, 1],
        [
            "shards/head.safetensors",
            "shards/HEAD-" + hashlib.sha256(b"HEAD").hexdigest()[:12] + ".safetensors",
        ],
    ),
]


@pytest.mark.parametrize(
    ("groups", "tensors", "paths"),
    CLASHES,
    ids=["split-then-literal", "literal-then-split", "cleaned-then-literal", "case-only"],
)
def test_groups_whose_names_clash_get_distinct_files(groups, tensors, paths):
    sizes = {f"{group}.{i}": 8 for group, n in zip(groups, tensors, strict=True) for i in range(n)}
    planned = plan_shards(sizes, max_shard_bytes=8, group_by=lambda key: key.rsplit(".", 1)[0])
    assert [p.path for p in planned] == paths
    assert [p.group for p in planned] == [
        g for g, n in zip(groups, tensors, strict=True) for _ in range(n)
    ]


def test_a_clash_no_digest_resolves_is_refused_naming_both_groups():
    sizes = {f"a_b-{_DIGEST}.w": 8, "a b.w": 8}
    with pytest.raises(
        InvalidAdapterError,
        match=rf"module groups 'a_b-{_DIGEST}' and 'a b' would both be stored in "
        rf"shards/a_b-{_DIGEST}\.safetensors; give one of them another name",
    ):
        plan_shards(sizes, group_by=lambda key: key.rsplit(".", 1)[0])


def test_a_save_of_clashing_groups_loads_back_and_validates(tmp_path):
    model = nn.Module()
    model.add_module("a", nn.Linear(8, 8))  # 288 bytes: two parts at 200
    model.add_module("a-00001-of-00002", nn.Linear(2, 2))
    store = AdapterStore(tmp_path, max_shard_bytes=200, durable=False)
    saved = store.save(model, "x")
    assert len({s.path for s in saved.manifest.shards}) == 3
    assert validate_version(saved.path)[1] == []
    fresh = nn.Module()
    fresh.add_module("a", nn.Linear(8, 8))
    fresh.add_module("a-00001-of-00002", nn.Linear(2, 2))
    store.load(fresh, "x")
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


@pytest.mark.parametrize("group", [3, None, ""], ids=["int", "none", "empty"])
def test_a_group_by_that_returns_no_name_is_refused_naming_the_key(group):
    """Was: a raw TypeError (or a file named '.safetensors') from the user's group_by."""
    with pytest.raises(InvalidAdapterError, match=r"group_by returned .* for 'w': it must return"):
        plan_shards({"w": 4}, group_by=lambda key: group)
