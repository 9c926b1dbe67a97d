"""Run parameters as users write them, turned into per-step overrides for the planner.

Accepted forms, which may be mixed:

- ``{"summary": {"threshold": 0.7}}`` — per step;
- ``{"summary.threshold": 0.7}`` — dotted (what ``--param summary.threshold=0.7`` gives);
- ``{"threshold": 0.7}`` — every step that has a parameter of that name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from datamill.engine import paramsets
from datamill.errors import InvalidPipeline
from datamill.pipeline import Pipeline


def split_params(pipeline: Pipeline, params: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per-step overrides from user parameters; each is validated against the step's defaults."""
    out = _split(pipeline, params)
    for step, overrides in out.items():
        pipeline.step(step).resolve_params(overrides)
    return out


class RunParams:
    """A run's parameters checked, resolved and encoded once, for everything that records or hashes them.

    ``user``: as given; ``steps``: each step's overrides (:func:`split_params`); ``resolved``: each
    step's parameters, overrides applied and checked; ``encoder``: their canonical JSON and digests
    (:class:`~datamill.engine.paramsets.Encoder`), shared by the plan identity, the steps' keys and
    the sets the run and its tasks are recorded with. A big parameter is checked once per step that
    takes it and encoded once per run, not once for each of those.

    Raises:
        InvalidPipeline: as :func:`split_params` does.
    """

    def __init__(self, pipeline: Pipeline, params: Mapping[str, Any] | None) -> None:
        self.user = dict(params or {})
        self.steps = _split(pipeline, self.user)
        self.encoder = paramsets.Encoder()
        self.resolved: dict[str, dict[str, Any]] = {}
        for name, overrides in self.steps.items():  # checked in the order split_params checks them
            resolved = self.resolved[name] = pipeline.step(name).resolve_params(overrides)
            for pname, value in overrides.items():
                self.encoder.same(value, resolved[pname])
        for step in pipeline.steps:
            if step.name not in self.resolved:
                self.resolved[step.name] = step.resolve_params(None)
            for value in self.resolved[step.name].values():  # checked values (or checked defaults)
                self.encoder.same(value, value)

    def recorded(self) -> dict[str, Any]:
        """The run's parameters as its row records them (``user`` and ``steps``; images are added to them)."""
        return {"user": self.user, "steps": self.steps}


def _split(pipeline: Pipeline, params: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per-step overrides from user parameters, not checked yet."""
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
