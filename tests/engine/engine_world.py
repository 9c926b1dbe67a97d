"""A home with a source and a destination folder, an engine, and the checks engine tests repeat."""

from __future__ import annotations

from collections import Counter
from typing import Any

from datamill.engine import runs
from datamill.pipeline import InputRef
from tests.helpers import DEST, SOURCE, HomeWorld

__all__ = ["DEST", "SOURCE", "World"]


class World(HomeWorld):
    """A home with folders ``Raw`` (inputs) and ``Out`` (outputs) and an :class:`Engine` over it."""

    # ------------------------------------------------------------------ inputs

    def inputs(self, folder: str = SOURCE) -> list[InputRef]:
        return self.engine.inputs_from_folder(self.admin, folder)

    # ------------------------------------------------------------------ runs

    def run(self, pipeline: str, executor: str = "inline", **options: Any) -> dict[str, Any]:
        """Run ``pipeline`` over the current items of ``Raw`` into ``Out``; returns the finished run."""
        options.setdefault("source", SOURCE)
        options.setdefault("dest", DEST)
        return self.engine.run(self.admin, pipeline, self.inputs(), executor=executor, **options)

    def submit(self, pipeline: str, **options: Any) -> int:
        options.setdefault("source", SOURCE)
        options.setdefault("dest", DEST)
        return self.engine.submit(self.admin, pipeline, self.inputs(), **options)

    def run_submitted(self, run_id: int, executor: str = "inline") -> dict[str, Any]:
        """Drive a recorded run here; returns it, finished."""
        self.drive([run_id], executor)
        return self.engine.get_run(self.admin, run_id)

    def tasks(self, run_id: int) -> dict[str, runs.TaskRow]:
        """A run's tasks by planned id (``"parse[Raw/a.txt]"``)."""
        return {t.planned_id: t for t in self.engine.tasks(self.admin, run_id)}

    def statuses(self, run_id: int) -> dict[str, str]:
        return {pid: str(t.status) for pid, t in self.tasks(run_id).items()}

    def status_counts(self, run_id: int) -> Counter[str]:
        return Counter(self.statuses(run_id).values())
