"""adapter-store: save, share and reload the trainable part of a PyTorch model.

>>> store = AdapterStore("checkpoints")
>>> saved = store.save(model, "rna-lora", step=1000)        # only requires_grad tensors
>>> report = store.load(fresh_model, "rna-lora")            # checked before it copies
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import (
    AdapterNotFoundError,
    AdapterStoreError,
    BaseModelMismatchError,
    HubArgumentError,
    HubConflictError,
    HubError,
    IncompatibleAdapterError,
    IntegrityError,
    InvalidAdapterError,
    ManifestError,
    PartialLoadError,
    UnsafePathError,
)
from .manifest import Manifest
from .reading import BaseModelMismatchWarning, SharedTargetWarning
from .results import LoadReport, SavedAdapter
from .store import AdapterStore

if TYPE_CHECKING:
    from .hub import load_from_hub


def __getattr__(name: str) -> Any:
    # Imported on first use: importing adapter_store must not import huggingface_hub.
    if name == "load_from_hub":
        from .hub import load_from_hub

        return load_from_hub
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdapterNotFoundError",
    "AdapterStore",
    "AdapterStoreError",
    "BaseModelMismatchError",
    "BaseModelMismatchWarning",
    "HubArgumentError",
    "HubConflictError",
    "HubError",
    "IncompatibleAdapterError",
    "IntegrityError",
    "InvalidAdapterError",
    "LoadReport",
    "Manifest",
    "ManifestError",
    "PartialLoadError",
    "SavedAdapter",
    "SharedTargetWarning",
    "UnsafePathError",
    "__version__",
    "load_from_hub",
]
