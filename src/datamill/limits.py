"""Bounds on what callers send: integers the database can hold, and how deeply JSON may nest.

Both databases store ids, versions and sequence numbers as signed 64-bit integers; a larger
number cannot name anything, and handing it to the driver fails with an overflow deep in the
database layer. JSON nested thousands of levels deep makes Python's (recursive) parser and
encoder raise ``RecursionError``. Both are caller mistakes, so they are refused up front with a
message that says what is allowed.
"""

from __future__ import annotations

import json
from typing import Any

from datamill.errors import InvalidInput

#: The largest integer a database column (BIGINT / SQLite INTEGER) holds.
INT64_MAX = 2**63 - 1

#: How deeply JSON sent by callers (metadata, filters) may nest: objects and arrays, counted together.
MAX_JSON_DEPTH = 64


def text_depth(text: str) -> int:
    """How deeply the JSON ``text`` nests, counted without parsing it (and without recursion).

    Brackets inside strings are skipped; the text need not be valid JSON (the parser reports that).
    """
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def value_depth(value: Any) -> int:
    """How deeply a decoded JSON value nests (dicts and lists/tuples), walked iteratively."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_JSON_DEPTH:
                return deepest  # deep enough to refuse; no need to walk the rest
        stack.extend((child, depth) for child in children)
    return deepest


def too_deep(what: str) -> str:
    """The message for JSON nested deeper than :data:`MAX_JSON_DEPTH`."""
    return f"{what} nests deeper than {MAX_JSON_DEPTH} levels of objects and arrays; flatten it"


def loads_bounded(text: str, what: str, error: type[InvalidInput] = InvalidInput) -> Any:
    """``json.loads(text)``, refusing (``error``) invalid JSON or JSON nested too deeply to handle."""
    if text_depth(text) > MAX_JSON_DEPTH:
        raise error(too_deep(what), max_depth=MAX_JSON_DEPTH)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise error(f"{what} is not valid JSON: {exc}") from None
