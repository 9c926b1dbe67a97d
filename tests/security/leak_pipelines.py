"""The pipeline of the security tests, loaded by file reference (``REF``).

``leaky`` has a per-item step that logs and reports progress naming its item, and fails for an
item whose bytes start with ``fail`` (its error names the item), and an aggregate step over every
item, published as ``total.json``: every place a private input's name could travel to.
"""

from __future__ import annotations

from pathlib import Path

from datamill.pipeline import Context, InputFile, Pipeline, step

REF = f"{Path(__file__).resolve()}:leaky"


@step
def measure(item: InputFile, ctx: Context) -> dict:
    """The item's size; logs and reports progress with its name; fails for bytes starting with ``fail``."""
    ctx.log.info("reading %s", item.name)
    ctx.progress(0.5, f"reading {item.name}")
    data = item.read_bytes()
    if data.startswith(b"fail"):
        raise ValueError(f"{item.name} asked to fail")
    return {"bytes": len(data)}


@step(aggregate=True)
def total(measure: list) -> dict:
    """The sum of every item's size."""
    return {"bytes": sum(m["bytes"] for m in measure)}


#: ``x.csv`` -> ``x.measure.json``; all -> ``total.json``
leaky = Pipeline("leaky", steps=[measure, total])
