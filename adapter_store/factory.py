"""Building a model from a ``MODULE:FACTORY`` spec, as ``adapter-store check --model`` does.

CI checks that an adapter still fits the base model a team ships; the team names the
function that builds that model, and it is imported and called with no arguments.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from torch import nn

from .errors import AdapterStoreError


class ModelFactoryError(AdapterStoreError, ValueError):
    """A ``MODULE:FACTORY`` spec that cannot be imported, called, or gives no model."""


def import_factory(spec: str) -> Any:
    """The callable ``spec`` names: ``package.module:function`` or ``module:Class.method``."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ModelFactoryError(
            f"{spec!r}: expected MODULE:FACTORY, e.g. 'mypackage.models:build_base_model'"
        )
    # Like `python -m`, look in the working directory first: CI runs from the repo root.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelFactoryError(f"{spec!r}: cannot import {module_name!r}: {exc}") from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ModelFactoryError(f"{spec!r}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelFactoryError(f"{spec!r}: {type(target).__name__} is not callable")
    return target


def build_model(spec: str) -> nn.Module:
    """Call the factory ``spec`` names with no arguments; it must return an ``nn.Module``.

    Errors raised by the factory itself propagate unchanged (they are the user's code).
    """
    model = import_factory(spec)()
    if not isinstance(model, nn.Module):
        raise ModelFactoryError(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
