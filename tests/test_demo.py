"""The newcomer's main job, `adapter-store demo`, runs and checks itself."""

from __future__ import annotations

from adapter_store import AdapterStore
from adapter_store.demo import run_demo


def test_demo_passes_and_leaves_a_loadable_store(tmp_path, capsys):
    assert run_demo(tmp_path / "demo", steps=3) == 0
    out = capsys.readouterr().out
    assert "demo passed" in out and "[FAIL]" not in out
    assert "full state dict" in out and "loaded 10 tensors" in out and "kB of adapter" in out
    store = AdapterStore(tmp_path / "demo")
    assert store.versions("demo-lora") == [1]
    assert store.manifest("demo-lora").optimizer is not None


def test_demo_run_twice_makes_a_second_version(tmp_path, capsys):
    run_demo(tmp_path, steps=1)
    assert run_demo(tmp_path, steps=1) == 0
    assert AdapterStore(tmp_path).versions("demo-lora") == [1, 2]


def test_demo_exits_non_zero_when_a_check_fails(tmp_path, capsys, monkeypatch):
    real_load = AdapterStore.load

    def load_only_the_head(self, model, name="default", **options):
        return real_load(self, model, name, modules=["head"])  # the LoRA stays untrained

    monkeypatch.setattr(AdapterStore, "load", load_only_the_head)
    assert run_demo(tmp_path, steps=2) == 1
    out = capsys.readouterr().out
    assert "[FAIL] fresh model gives the trained model's outputs" in out
    assert "demo FAILED" in out
