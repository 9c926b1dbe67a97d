"""A one-step per-item pipeline for the cluster tests, loaded by file reference by every process."""

from __future__ import annotations

import time
from pathlib import Path

from datamill.pipeline import InputFile, Pipeline, step

PIPELINES = Path(__file__).resolve()


@step
def upper(item: InputFile) -> str:
    """The item's text, upper-cased: one output per item.

    An item reading ``hold <path>`` makes its first execution (the one that creates ``<path>``)
    wait for ever, so a test can kill the process running it; later executions go straight on.
    """
    text = item.read_text()
    if text.startswith("hold "):
        marker = Path(text.split()[1])
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            pass
        else:
            while True:  # until the process is killed
                time.sleep(1)
    return text.upper()


#: one per-item step, so each item of the source has exactly one result in the destination
single = Pipeline("single", steps=[upper])
