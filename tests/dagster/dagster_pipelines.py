"""Pipelines with Dagster steps over the project in ``wordproj/`` (found next to this file)."""

from __future__ import annotations

from pathlib import Path

import datamill

HERE = Path(__file__).resolve().parent

#: per item: the asset job 'counts' (words, then summary)
counts = datamill.Pipeline("counts", steps=[datamill.dagster_step("wordproj.definitions:defs", job_name="counts")])

#: the asset selection [words] only, over all items at once
words_only = datamill.Pipeline(
    "words-only",
    steps=[datamill.dagster_step("wordproj.definitions:defs", assets=["words"], aggregate=True, name="wc")],
)

#: an op that raises
failing = datamill.Pipeline("failing", steps=[datamill.dagster_step("wordproj.definitions:defs", job_name="failing")])

#: an op that sleeps as long as its config says
sleepy = datamill.Pipeline(
    "sleepy",
    steps=[
        datamill.dagster_step(
            "wordproj.definitions:defs", job_name="sleepy", config={"ops": {"nap": {"config": {"seconds": 600}}}}
        )
    ],
)


def ref(name: str) -> str:
    """The reference of a pipeline in this file."""
    return f"{HERE / 'dagster_pipelines.py'}:{name}"
