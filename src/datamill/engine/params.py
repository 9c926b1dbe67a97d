"""Run parameters as users write them, turned into per-step overrides for the planner.

Accepted forms, which may be mixed:

- ``{"summary": {"threshold": 0.7}}`` — per step;
- ``{"summary.threshold": 0.7}`` — dotted (what ``--param summary.threshold=0.7`` gives);
- ``{"threshold": 0.7}`` — every step that has a parameter of that name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from datamill.errors import InvalidPipeline
from datamill.pipeline import Pipeline


def split_params(pipeline: Pipeline, params: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per-step overrides from user parameters; each is validated against the step's defaults."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in (params or {}).items():
        if key in pipeline and isinstance(value, Mapping):
            out.setdefault(key, {}).update(value)
        elif "." in key and key.split(".", 1)[0] in pipeline:
            step, pname = key.split(".", 1)
            out.setdefault(step, {})[pname] = value
        else:
            owners = [s.name for s in pipeline if key in s.params]
            if not owners:
                known = sorted({f"{s.name}.{p}" for s in pipeline for p in s.params})
                raise InvalidPipeline(
                    f"no step of pipeline '{pipeline.name}' has a parameter '{key}'; "
                    f"known parameters: {', '.join(known) or 'none'}",
                    param=key,
                )
            for step in owners:
                out.setdefault(step, {})[key] = value
    for step, overrides in out.items():
        pipeline.step(step).resolve_params(overrides)
    return out


def parse_param(text: str) -> tuple[str, Any]:
    """``"summary.threshold=0.7"`` -> ``("summary.threshold", 0.7)``; values are JSON when they parse."""
    import json

    if "=" not in text:
        raise InvalidPipeline(f"parameter {text!r} needs the form KEY=VALUE, e.g. threshold=0.7")
    key, raw = text.split("=", 1)
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value
