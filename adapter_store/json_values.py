"""Plain Python values as the JSON a manifest writes and reads back unchanged.

``save(metadata=...)`` and an optimizer's param groups and scalar state end up in
``manifest.json``: what JSON cannot hold, or what the manifest's reader would refuse, is
refused at save time, naming the entry, before a file is written.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import JsonValue

from .errors import InvalidAdapterError

#: Nesting allowed in metadata: the manifest parser (pydantic's JSON reader) stops at a
#: recursion limit a little above 200 levels, and a version it cannot read is lost.
MAX_DEPTH = 100
#: Python's json refuses integers of more than 4300 digits (int_max_str_digits) when it
#: reads a manifest; pydantic writes them. About 14,000 bits stays below that.
_MAX_INT_BITS = 14_000


def json_value(value: object, field: str, *, depth: int) -> JsonValue:
    """``value`` as a JSON value the manifest writes and reads back unchanged."""
    if depth > MAX_DEPTH:
        where = field if len(field) <= 80 else f"{field[:60]}..."
        raise InvalidAdapterError(f"{where}: nested more than {MAX_DEPTH} levels deep; flatten it")
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        if value.bit_length() > _MAX_INT_BITS:
            raise InvalidAdapterError(
                f"{field}: an integer of {value.bit_length()} bits is too large for JSON "
                "readers; store it as a string"
            )
        return int(value)
    if isinstance(value, str):
        _check_unicode(value, field)
        return value
    if isinstance(value, list | tuple):
        return [json_value(v, f"{field}[{i}]", depth=depth + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        result: dict[str, JsonValue] = {}
        for key, item in value.items():
            result[json_key(key, field)] = json_value(item, f"{field}[{key!r}]", depth=depth + 1)
        return result
    kind = type(value)
    # numpy's booleans, integers and floats of Python's sizes become their Python value;
    # its long doubles (.item() gives numpy again), complex numbers and dates are refused
    # below, as they were before this conversion existed.
    numeric = getattr(getattr(value, "dtype", None), "kind", None) in ("b", "i", "u", "f")
    if kind.__module__ == "numpy" and numeric and getattr(value, "shape", None) == ():
        item = value.item()  # type: ignore[attr-defined]
        if type(item).__module__ == "builtins":
            return json_value(item, field, depth=depth)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    raise InvalidAdapterError(
        f"{field} is a {name}, which JSON cannot store; convert it to a str, number, "
        "bool, None, list or dict"
    )


def json_key(key: object, field: str) -> str:
    """``key`` as a JSON object key: a string that UTF-8 can hold."""
    if not isinstance(key, str):
        raise InvalidAdapterError(
            f"{field}: key {key!r} is a {type(key).__name__}; JSON keys are strings"
        )
    _check_unicode(key, f"{field} key {key!r}")
    return key


def _check_unicode(text: str, field: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # Typically a file name decoded with os.fsdecode from bytes that are not UTF-8.
        raise InvalidAdapterError(
            f"{field}: {text!r} holds {text[exc.start : exc.end]!r}, which is not valid "
            "Unicode (a lone surrogate) and cannot be written as UTF-8 JSON"
        ) from exc
