"""Pipelines for the web app's browser tests, loaded by file reference (``ref("flow")``).

``shout`` logs, reports progress and upper-cases an item. An item whose text starts with
``fail!`` fails; ``fail-unless:<path>`` fails until that file exists (a run to retry); and
``wait:<path>`` waits until that file exists (a long run a test can cancel, then release).
``count`` sums the sizes of ``shout``'s outputs.
"""

from __future__ import annotations

import time
from pathlib import Path

from datamill.pipeline import Context, InputFile, Pipeline, step

HERE = Path(__file__).resolve()


def ref(name: str) -> str:
    """The reference of the pipeline called ``name`` in this file."""
    return f"{HERE}:{name}"


@step
def shout(item: InputFile, ctx: Context) -> str:
    """The item's text in upper case, after logging a line and reporting progress."""
    text = item.read_text()
    ctx.log.info("shouting %s (%d bytes)", item.name, len(text))
    ctx.progress(0.5, "half way")
    if text.startswith("fail-unless:") and not Path(text[12:].strip()).exists():
        raise ValueError(f"{item.name} asked to fail until its file exists")
    if text.startswith("fail!"):
        raise ValueError(f"{item.name} asked to fail")
    if text.startswith("wait:"):
        gate = Path(text[5:].strip())
        while not gate.exists():
            time.sleep(0.02)
    return text.upper()


@step(aggregate=True)
def count(shout: list) -> dict:
    """How many bytes were shouted, over every item."""
    return {"bytes": sum(len(s) for s in shout if s is not None)}


#: shout per item, then count over all items
flow = Pipeline("flow", [shout, count])
