"""How a Dagster output value becomes a file in datamill, and back: chosen by the value's type and the name's extension.

======================== ============ =====================================
value                    extension    read back as
======================== ============ =====================================
``bytes``/``bytearray``  ``.bin``     ``bytes``
``str``                  ``.txt``     ``str``
dict, list, number, bool ``.json``    the JSON value
``pathlib.Path``         its suffix   a ``Path`` (steps) or ``bytes``
======================== ============ =====================================

Anything else is refused with a :class:`TypeError` naming the type and what to return instead:
values are never pickled, because unpickling what a folder holds would run whatever code it names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["decode", "encode", "extension_for"]

_JSON_TYPES = (dict, list, tuple, int, float, bool, type(None))


def extension_for(value: Any) -> str:
    """The extension a value is stored under (``.json`` for a dict); raises ``TypeError`` for other types."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ".bin"
    if isinstance(value, str):
        return ".txt"
    if isinstance(value, Path):
        return value.suffix
    if isinstance(value, _JSON_TYPES):
        return ".json"
    raise TypeError(
        f"datamill cannot store a {type(value).__name__}: return bytes, str, a JSON value (dict, list, number) "
        "or a pathlib.Path of a file you wrote (e.g. a DataFrame written with to_parquet)"
    )


def encode(value: Any) -> bytes:
    """The bytes stored for ``value`` (see :func:`extension_for` for what is accepted)."""
    extension_for(value)  # refuse what cannot be stored before anything is written
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, Path):
        return value.read_bytes()
    try:
        return (json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TypeError(f"datamill cannot store this value as JSON: {exc}") from None


def decode(name: str, data: bytes) -> Any:
    """The value stored as ``data`` under ``name``: JSON, text, or the bytes themselves."""
    if name.endswith(".json"):
        return json.loads(data)
    if name.endswith(".txt"):
        return data.decode("utf-8")
    return data
