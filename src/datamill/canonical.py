"""Canonical JSON: the one spelling of plain data, for everything that is hashed or compared.

Canonical JSON means sorted keys, no whitespace, UTF-8, and no NaN or infinity. Task keys
(:mod:`datamill.engine.keys`) and command-step identities (:mod:`datamill.pipeline.step`) are hashed
from it, and step parameters are checked with :func:`canonical_value` when a step is made, so a
parameter that could never be part of a key is refused where it is written.

This module sits at the bottom of the layers (standard library only) so that both the pipeline
and the engine can use it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

__all__ = ["Unkeyable", "canonical_json", "canonical_value"]


class Unkeyable(ValueError):
    """A value with no canonical JSON form; ``path`` says where inside the value, ``fix`` what to do."""

    def __init__(self, path: str, problem: str, fix: str) -> None:
        self.path = path
        self.problem = problem
        self.fix = fix
        super().__init__(f"{path}: {problem}; {fix}")


def canonical_value(value: Any, path: str = "") -> Any:
    """``value`` as plain JSON data (tuples become lists), or :class:`Unkeyable` saying why not.

    Only ``None``, ``bool``, ``int``, finite ``float``, ``str``, lists/tuples and dicts with string
    keys are accepted: each of them has exactly one JSON spelling.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum or other int subclass keys like the plain int
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Unkeyable(path, f"{value!r} has no canonical JSON form", "use None or a finite number")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [canonical_value(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise Unkeyable(path, f"dict key {k!r} is not a string", "use string keys (str(key))")
            out[k] = canonical_value(v, f"{path}[{k!r}]")
        return out
    raise Unkeyable(path, *_why_not(value))


def _why_not(value: Any) -> tuple[str, str]:
    """What is wrong with ``value`` as a key part, and the fix."""
    kind = type(value).__name__
    if isinstance(value, (set, frozenset)):
        return f"a {kind} has no stable order", "pass a sorted list instead (sorted(values))"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes cannot be a parameter", "pass text, or make the data an input file of the pipeline"
    if isinstance(value, PurePath):
        return "a Path cannot be a parameter", "pass str(path), or make the file an input of the pipeline"
    if isinstance(value, (_dt.date, _dt.datetime, _dt.time)):
        return f"a {kind} cannot be a parameter", "pass value.isoformat() and parse it in the step"
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        return f"a numpy {kind} cannot be a parameter", "convert it with int(x) or float(x)"
    return (
        f"a {kind} has no canonical form",
        "pass plain JSON values (str, int, float, bool, None, lists and dicts with string keys)",
    )


def canonical_json(value: Any) -> str:
    """The one JSON spelling of plain data: sorted keys, no whitespace, NaN/infinity rejected."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
