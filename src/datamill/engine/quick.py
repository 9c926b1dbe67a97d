"""``pipeline.run(paths)``: the simple path, with no server and no setup.

The files are put into a home (a throw-away one unless ``home`` is given, in which case the
cache carries over between calls), the pipeline runs in this process, and the outputs come back
decoded, keyed by planned task id (``"summary[inputs/a.csv]"``).

Nothing is left in ``$TMPDIR``: the throw-away home (its database, blobs and admin token) is
removed before the call returns or raises, and so are the files of outputs whose values are read
into memory (bytes, text, JSON, DataFrames). Outputs that decode to a ``Path`` (the ``file`` and
``png`` codecs, and registered codecs, which may keep referring to their file) need their file
afterwards: those files live in ``RunResult.files_dir`` until the result is closed
(``result.close()``, or leaving ``with pipeline.run(...) as result:``), garbage-collected, or the
interpreter exits.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from datamill.errors import NotFound, StepFailed

if TYPE_CHECKING:
    from datamill.engine.runs import TaskRow
    from datamill.home import Home

#: Built-in codecs whose decoded value holds the data itself, so their files can go at once.
_IN_MEMORY_CODECS = frozenset({"bytes", "text", "json", "parquet"})


def _remove_tree(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class RunResult:
    """What ``pipeline.run`` returns: the run record, its tasks, and each task's decoded outputs.

    ``files_dir`` holds the files behind outputs that decode to a ``Path`` (None when there are
    none). It is removed by :meth:`close` (also on leaving a ``with`` block), when the result is
    garbage-collected, or at interpreter exit; copy a file elsewhere to keep it longer.
    """

    run: dict[str, Any]
    tasks: list[dict[str, Any]]
    outputs: dict[str, Any] = field(default_factory=dict)
    files_dir: Path | None = None

    def __post_init__(self) -> None:
        # weakref.finalize also runs at interpreter exit, so a result nobody closed leaves nothing behind.
        self._cleanup = weakref.finalize(self, _remove_tree, self.files_dir)

    @property
    def status(self) -> str:
        """``succeeded``, ``failed`` or ``cancelled``."""
        return str(self.run["status"])

    def __getitem__(self, task_id: str) -> Any:
        return self.outputs[task_id]

    def step(self, name: str) -> dict[str, Any]:
        """The outputs of every task of one step, by planned task id."""
        return {k: v for k, v in self.outputs.items() if k == name or k.startswith(name + "[")}

    def close(self) -> None:
        """Remove ``files_dir``: ``Path`` outputs stop existing. Calling it again does nothing."""
        self._cleanup()

    def __enter__(self) -> RunResult:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


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
    """Put ``inputs`` (paths, or ``(name, bytes)``) into a home and run ``pipeline`` over them here.

    Without ``home`` a throw-away home is used and removed before this returns or raises.
    """
    from datamill.home import Home

    throwaway = Path(tempfile.mkdtemp(prefix="datamill-run-")) if home is None else None
    try:
        h = Home.open(home if throwaway is None else throwaway, demo=False)
        try:
            return _run_in(
                h, pipeline, inputs, params=params, force=force, executor=executor, raise_on_failure=raise_on_failure
            )
        finally:
            h.close()
    finally:
        _remove_tree(throwaway)


def _run_in(
    h: Home,
    pipeline: Any,
    inputs: Iterable[str | Path | tuple[str, bytes]],
    *,
    params: Mapping[str, Any] | None,
    force: bool,
    executor: str,
    raise_on_failure: bool,
) -> RunResult:
    from datamill.engine.engine import Engine
    from datamill.engine.runs import TaskStatus

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
    failed = [t for t in tasks if t.status == TaskStatus.FAILED]
    if failed and raise_on_failure:
        first = failed[0]
        raise StepFailed(
            f"{len(failed)} task(s) failed; first: {first.planned_id}: {first.error}",
            run=run["id"],
            failed=[t.planned_id for t in failed],
        )
    done = [t for t in tasks if t.status in (TaskStatus.SUCCEEDED, TaskStatus.CACHED)]
    outputs, files_dir = _decode(h, done)
    return RunResult(run.to_dict(), [t.to_dict() for t in tasks], outputs, files_dir)


def _decode(h: Home, tasks: list[TaskRow]) -> tuple[dict[str, Any], Path | None]:
    """Each task's decoded outputs, and the directory of the files some of them still need (or None).

    Blobs are copied out of the home (which may be removed next) into a scratch directory; the
    files of values read into memory are deleted as soon as they are decoded.
    """
    from datamill.pipeline import codecs
    from datamill.pipeline.runner import OutputFile, decode_outputs

    outputs: dict[str, Any] = {}
    scratch = Path(tempfile.mkdtemp(prefix="datamill-out-"))
    keep = done = False
    try:
        for t in tasks:
            files = []
            for i, o in enumerate(t.outputs):
                target = scratch / str(t.id) / str(i) / Path(o.name).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(o.inline if o.inline is not None else h.blobs.read(o.digest))
                files.append(OutputFile(o.name, target, o.content_type, o.codec))
            outputs[t.planned_id] = decode_outputs(files)
            for f in files:
                # A registered codec may replace a built-in's name and keep referring to its file.
                if f.codec in _IN_MEMORY_CODECS and codecs.is_builtin(f.codec):
                    f.path.unlink()
                else:
                    keep = True
        done = True
    finally:
        if not (done and keep):
            _remove_tree(scratch)
    return outputs, scratch if keep else None
