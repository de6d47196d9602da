"""The public names of DESIGN.md stay importable, and only they are exported."""

from __future__ import annotations

import inspect

import adapter_store

CONTRACT = {
    "AdapterStore",
    "SavedAdapter",
    "LoadReport",
    "Manifest",
    "AdapterStoreError",
    "ManifestError",
    "IncompatibleAdapterError",
    "BaseModelMismatchError",
    "IntegrityError",
    "UnsafePathError",
    "AdapterNotFoundError",
}


def test_contract_names_are_exported():
    assert set(adapter_store.__all__) >= CONTRACT
    for name in adapter_store.__all__:
        assert hasattr(adapter_store, name), name


def test_every_error_derives_from_the_root_and_mixes_in_builtins():
    assert issubclass(adapter_store.BaseModelMismatchError, adapter_store.IncompatibleAdapterError)
    assert issubclass(adapter_store.AdapterNotFoundError, FileNotFoundError)
    assert issubclass(adapter_store.ManifestError, ValueError)
    for name in adapter_store.__all__:
        obj = getattr(adapter_store, name)
        if inspect.isclass(obj) and issubclass(obj, Exception) and not issubclass(obj, Warning):
            assert issubclass(obj, adapter_store.AdapterStoreError), name


def test_signatures_match_the_contract():
    save = inspect.signature(adapter_store.AdapterStore.save).parameters
    assert list(save)[:3] == ["self", "model", "name"] and save["name"].default == "default"
    for keyword in ("optimizer", "step", "metadata", "include", "exclude"):
        assert save[keyword].kind is inspect.Parameter.KEYWORD_ONLY
    load = inspect.signature(adapter_store.AdapterStore.load).parameters
    assert load["strict"].default is True and load["check_base"].default == "error"
    for keyword in ("version", "modules", "optimizer"):
        assert load[keyword].kind is inspect.Parameter.KEYWORD_ONLY
