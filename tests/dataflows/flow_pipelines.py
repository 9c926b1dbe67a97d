"""Small pipelines for the dataflow tests, loaded by file reference (``ref("echo")``).

A file reference works from any working directory, in worker processes and in a server started
as a subprocess. Nothing runs on import but the step and pipeline definitions.
"""

from __future__ import annotations

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
