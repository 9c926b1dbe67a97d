"""A tiny pipeline for the client, API and CLI tests of runs and dataflows, loaded by file path.

``count`` (per item) counts lines and logs a line; an item whose text holds ``boom`` makes it
fail. ``total`` (aggregate) adds the counts up. ``scale`` is a parameter of ``count``.
"""

from __future__ import annotations

from pathlib import Path

from datamill.pipeline import Context, InputFile, Pipeline, step

COUNTING_FILE = Path(__file__).resolve()
COUNTING_REF = f"{COUNTING_FILE}:pipeline"


@step
def count(item: InputFile, ctx: Context, *, scale: int = 1) -> dict:
    """Lines of the item, times ``scale``."""
    text = item.read_text()
    ctx.log.info("counting %s", item.name)
    if "boom" in text:
        raise ValueError(f"{item.name} holds boom")
    return {"lines": len(text.splitlines()) * scale}


@step(aggregate=True)
def total(count: list) -> dict:
    """Files and lines over every item."""
    return {"files": len(count), "lines": sum(c["lines"] for c in count)}


pipeline = Pipeline("counting", steps=[count, total])
