"""Errors raised on purpose by adapter-store.

Every error the library raises deliberately derives from :class:`AdapterStoreError`; a
builtin is mixed in where it lets callers keep their existing ``except`` clauses::

    AdapterStoreError
    ├── ManifestError (ValueError)            manifest missing, malformed, unknown version/fields
    ├── IncompatibleAdapterError (ValueError) keys / shapes do not fit the model
    │   └── BaseModelMismatchError             the adapter was trained on another base model
    ├── IntegrityError                         shard bytes differ from what the manifest says
    ├── PartialLoadError (OSError)             the copies failed part-way (model changed)
    ├── UnsafePathError (ValueError)           a path points outside the adapter directory
    ├── AdapterNotFoundError (FileNotFoundError)  no such name / version / module / repo file
    ├── InvalidAdapterError (ValueError)       nothing (or something unsavable) to save
    ├── HubError (OSError)                     the Hub could not be reached or refused
    │   └── HubConflictError                   another push landed first (stale parent)
    └── HubArgumentError (ValueError)          a repo id / revision the Hub client refuses

Foreign errors (safetensors, huggingface_hub, OS) are wrapped at the boundary with
``raise ... from exc`` so the cause stays visible.
"""

from __future__ import annotations

import os
from collections.abc import Sequence


class AdapterStoreError(Exception):
    """Root of every error adapter-store raises on purpose."""


class ManifestError(AdapterStoreError, ValueError):
    """A manifest is missing, not valid JSON, or does not match the format.

    ``.path`` is the manifest file, ``.field`` the offending field (dotted), if known;
    ``.problems`` lists every ``(field, message)`` found, for tools that show them all.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        field: str | None = None,
        problems: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)
        self.field = field
        self.problems = list(problems) or ([(field, message)] if field else [])


class IncompatibleAdapterError(AdapterStoreError, ValueError):
    """The adapter does not fit the model: keys are missing or unexpected, shapes differ.

    ``.missing``: model keys the adapter should have provided; ``.unexpected``: adapter
    keys the model does not have; ``.mismatched``: ``(key, adapter_shape, model_shape)``.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
    ) -> None:
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


class BaseModelMismatchError(IncompatibleAdapterError):
    """The adapter was saved on top of a different base model.

    ``.structure_differs`` / ``.content_differs`` say which part of the fingerprint
    disagrees; ``.differing_keys`` names the first base keys that differ.
    """

    def __init__(
        self,
        message: str,
        *,
        structure_differs: bool,
        content_differs: bool,
        differing_keys: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.structure_differs = structure_differs
        self.content_differs = content_differs
        self.differing_keys = list(differing_keys)


class _AboutAFile(AdapterStoreError):
    """An error about one file: ``.path``, and ``.key`` the tensor key if one is to blame."""

    def __init__(
        self, message: str, *, path: str | os.PathLike[str] | None = None, key: str | None = None
    ) -> None:
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)
        self.key = key


class IntegrityError(_AboutAFile):
    """A shard's bytes do not match the manifest (size, checksum or header).

    ``.path`` is the offending file; ``.key`` the tensor key, if one is to blame.
    """


class PartialLoadError(_AboutAFile, OSError):
    """The copies failed part-way, after every check had passed: a shard changed on disk
    while its bytes were being copied (another program truncated it), or a tensor of the
    model refused the copy. Unlike every other load error, the model has been partly
    changed and must be loaded again. ``.path`` is the file, ``.key`` the tensor being
    copied."""


class UnsafePathError(AdapterStoreError, ValueError):
    """A path in a manifest would escape the adapter's version directory.

    ``.path`` is the offending path as written; ``.field`` the manifest field holding it.
    """

    def __init__(self, message: str, *, path: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.field = field


class AdapterNotFoundError(AdapterStoreError, FileNotFoundError):
    """No such adapter name, version, module group or repository file."""


class InvalidAdapterError(AdapterStoreError, ValueError):
    """What was asked to be saved cannot be saved (nothing selected, empty tensors, ...)."""


class HubError(AdapterStoreError, OSError):
    """The Hub could not be reached or refused a request; ``.status`` is the HTTP status."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HubArgumentError(AdapterStoreError, ValueError):
    """huggingface_hub refused a repo id, revision or path before sending anything."""


class HubConflictError(HubError):
    """The branch moved between reading its head and committing: another push landed first.

    Nothing of this push was committed; pushing again compares against the new head.
    """
