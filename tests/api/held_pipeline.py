"""A pipeline whose one task logs a line and then holds until a gate file exists.

Tests follow, wait for and stream about a task that is running for as long as they need:
``params={"hold.gate": "/path/of/gate"}``; creating that file lets the task finish.
"""

from __future__ import annotations

import time
from pathlib import Path

from datamill.pipeline import Context, InputFile, Pipeline, step

HELD_REF = f"{Path(__file__).resolve()}:pipeline"


@step
def hold(item: InputFile, ctx: Context, *, gate: str = "") -> str:
    """Logs 'holding', waits for the gate file, logs 'released'."""
    ctx.log.info("holding %s", item.name)
    # A step has no event to wait on from the test; polling a file is its simplest signal.
    while gate and not Path(gate).exists():
        time.sleep(0.05)
    ctx.log.info("released %s", item.name)
    return item.read_text()


pipeline = Pipeline("held", steps=[hold])
