"""A one-step per-item pipeline for the cluster tests, loaded by file reference by every process."""

from __future__ import annotations

from pathlib import Path

from datamill.pipeline import InputFile, Pipeline, step

PIPELINES = Path(__file__).resolve()


@step
def upper(item: InputFile) -> str:
    """The item's text, upper-cased: one output per item."""
    return item.read_text().upper()


#: one per-item step, so each item of the source has exactly one result in the destination
single = Pipeline("single", steps=[upper])
