"""``pipeline.run(paths)``: the simple path, with no server and no setup.

The files are put into a home (a throw-away one unless ``home`` is given, in which case the
cache carries over between calls), the pipeline runs in this process, and the outputs come back
decoded, keyed by planned task id (``"summary[inputs/a.csv]"``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datamill.errors import NotFound, StepFailed


@dataclass
class RunResult:
    """What ``pipeline.run`` returns: the run record, its tasks, and each task's decoded outputs."""

    run: dict[str, Any]
    tasks: list[dict[str, Any]]
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """``succeeded``, ``failed`` or ``cancelled``."""
        return str(self.run["status"])

    def __getitem__(self, task_id: str) -> Any:
        return self.outputs[task_id]

    def step(self, name: str) -> dict[str, Any]:
        """The outputs of every task of one step, by planned task id."""
        return {k: v for k, v in self.outputs.items() if k == name or k.startswith(name + "[")}


def run_pipeline(
    pipeline: Any,
    inputs: Iterable[str | Path | tuple[str, bytes]],
    *,
    home: str | Path | None = None,
    params: Mapping[str, Any] | None = None,
    force: bool = False,
    executor: str = "inline",
    raise_on_failure: bool = True,
) -> RunResult:
    """Put ``inputs`` (paths, or ``(name, bytes)``) into a home and run ``pipeline`` over them here."""
    from datamill.engine.engine import Engine
    from datamill.engine.runs import TaskStatus
    from datamill.home import Home
    from datamill.pipeline.runner import OutputFile, decode_outputs

    h = Home.open(home if home is not None else tempfile.mkdtemp(prefix="datamill-run-"), demo=False)
    try:
        admin = h.admin
        folder = "inputs"
        h.store.create_folder(admin, folder, exist_ok=True)
        for entry in inputs:
            if isinstance(entry, tuple):
                name, data = entry
                h.store.put(admin, folder, name, data)
                continue
            path = Path(entry)
            if not path.is_file():
                raise NotFound(f"{path} is not a file; pass file paths or (name, bytes) pairs", path=str(path))
            with open(path, "rb") as f:
                h.store.put(admin, folder, path.name, f)
        engine = Engine(h)
        refs = engine.inputs_from_folder(admin, folder)
        run = engine.run(admin, pipeline, refs, source=folder, params=params, force=force, executor=executor)
        tasks = engine.tasks(admin, run["id"])
        outputs: dict[str, Any] = {}
        scratch = Path(tempfile.mkdtemp(prefix="datamill-out-"))
        for t in tasks:
            if t.status not in (TaskStatus.SUCCEEDED, TaskStatus.CACHED):
                continue
            files = []
            for i, o in enumerate(t.outputs):
                target = scratch / str(t.id) / str(i) / Path(o.name).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(o.inline if o.inline is not None else h.blobs.read(o.digest))
                files.append(OutputFile(o.name, target, o.content_type, o.codec))
            outputs[t.planned_id] = decode_outputs(files)
        failed = [t for t in tasks if t.status == TaskStatus.FAILED]
        if failed and raise_on_failure:
            first = failed[0]
            raise StepFailed(
                f"{len(failed)} task(s) failed; first: {first.planned_id}: {first.error}",
                run=run["id"],
                failed=[t.planned_id for t in failed],
            )
        return RunResult(run.to_dict(), [t.to_dict() for t in tasks], outputs)
    finally:
        h.close()
