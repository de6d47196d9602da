"""Grouping keys into per-module shards (pure planning)."""

from __future__ import annotations

import pytest

from adapter_store.layout import shard_filename
from adapter_store.sharding import group_of, plan_shards


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
