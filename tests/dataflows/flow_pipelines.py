"""Small pipelines for the dataflow tests, loaded by file reference (``ref("echo")``).

A file reference works from any working directory, in worker processes and in a server started
as a subprocess. Nothing runs on import but the step and pipeline definitions.
"""

from __future__ import annotations

import time
from pathlib import Path

from datamill.pipeline import InputFile, Pipeline, step

HERE = Path(__file__).resolve()


def ref(name: str) -> str:
    """The reference of the pipeline called ``name`` in this file."""
    return f"{HERE}:{name}"


@step(params={"prefix": "v1"})
def echo(item: InputFile, *, prefix: str = "v1") -> bytes:
    """``<prefix>:<the item's bytes>``; an item whose bytes start with ``fail`` fails."""
    data = item.read_bytes()
    if data.startswith(b"fail"):
        raise ValueError(f"{item.name} asked to fail")
    return prefix.encode() + b":" + data


#: One per-item step: ``x.txt`` -> ``x.echo.bin``.
echo_pipeline = Pipeline("echo", [echo])


# Retries only matter when the process running a task is killed (its lease expires, the task is
# requeued, and each loss counts as an attempt): the crash test kills the server repeatedly.
@step(retries=3)
def upper(item: InputFile) -> bytes:
    """The item's bytes in upper case."""
    return item.read_bytes().upper()


@step(retries=3)
def size(upper: bytes) -> dict:
    """The length of ``upper``'s output."""
    return {"bytes": len(upper)}


#: Two per-item steps, both published: ``x.txt`` -> ``x.upper.bin`` and ``x.size.json``.
twostep = Pipeline("twostep", [upper, size])


@step(params={"prefix": "v1", "gate": ""})
def gated(item: InputFile, *, prefix: str = "v1", gate: str = "") -> bytes:
    """``<prefix>:<bytes>`` like ``echo``, but first waits until the file ``gate`` exists (when given).

    A test holds a run in flight with it, to make runs finish in the order it wants.
    """
    while gate and not Path(gate).exists():
        time.sleep(0.01)
    return prefix.encode() + b":" + item.read_bytes()


#: ``x.txt`` -> ``x.echo.bin``, as ``echo_pipeline``, with a gate to hold it back
gated_pipeline = Pipeline("gated", [gated.configure(name="echo")])


@step(aggregate=True)
def listing(echo: list) -> dict:
    """How many items echoed (a failed or skipped item counts as missing)."""
    return {"echoed": sum(1 for e in echo if e is not None), "missing": sum(1 for e in echo if e is None)}


#: echo per item, then an aggregate over all of them: every run covers the whole source
echo_all = Pipeline("echo_all", [echo, listing])
