"""adapter-store: save, share and reload the trainable part of a PyTorch model.

>>> store = AdapterStore("checkpoints")
>>> saved = store.save(model, "rna-lora", step=1000)        # only requires_grad tensors
>>> report = store.load(fresh_model, "rna-lora")            # checked before it copies
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    AdapterNotFoundError,
    AdapterStoreError,
    BaseModelMismatchError,
    IncompatibleAdapterError,
    IntegrityError,
    InvalidAdapterError,
    ManifestError,
    UnsafePathError,
)
from .manifest import Manifest
from .reading import BaseModelMismatchWarning
from .results import LoadReport, SavedAdapter
from .store import AdapterStore

__all__ = [
    "AdapterNotFoundError",
    "AdapterStore",
    "AdapterStoreError",
    "BaseModelMismatchError",
    "BaseModelMismatchWarning",
    "IncompatibleAdapterError",
    "IntegrityError",
    "InvalidAdapterError",
    "LoadReport",
    "Manifest",
    "ManifestError",
    "SavedAdapter",
    "UnsafePathError",
    "__version__",
]
