"""Pipelines for the local pool's pipe tests, loaded by file reference (the workers load them too).

``grow`` returns a value as big as its ``pad`` parameter: with a big parameter, every call carries
big arguments to a worker and brings a big result back, both ways at once on the same pipe.
"""

from __future__ import annotations

from pathlib import Path

from datamill.pipeline import InputFile, Pipeline, step

PIPELINES = Path(__file__).resolve()


def ref(name: str) -> str:
    """The reference of pipeline ``name`` in this file."""
    return f"{PIPELINES}:{name}"


@step
def grow(item: InputFile, *, pad: str = "") -> bytes:
    """The item's bytes repeated to the size of ``pad`` (a parameter as big as the value returned)."""
    data = item.read_bytes()
    return data * (len(pad) // max(1, len(data)))


big_values = Pipeline("big_values", steps=[grow])
