"""adapter-store: save, share and reload the trainable part of a PyTorch model.

>>> store = AdapterStore("checkpoints")
>>> saved = store.save(model, "rna-lora", step=1000)        # only requires_grad tensors
>>> report = store.load(fresh_model, "rna-lora")            # checked before it copies
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: E402  (the version must exist before store imports it)
    AdapterNotFoundError,
    AdapterStoreError,
    BaseModelMismatchError,
    IncompatibleAdapterError,
    IntegrityError,
    InvalidAdapterError,
    ManifestError,
    UnsafePathError,
)
from .manifest import Manifest  # noqa: E402
from .reading import BaseModelMismatchWarning  # noqa: E402
from .results import LoadReport, SavedAdapter  # noqa: E402
from .store import AdapterStore  # noqa: E402

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
