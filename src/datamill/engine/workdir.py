"""Work directories and task logs: where one attempt at a task reads its inputs and writes its outputs.

A Python step whose inputs and outputs are values needs none (:meth:`WorkDirs.values`): it reads
its items straight from the blob store's files, its upstream values from the database rows
(inline) or blob files, and returns its value as bytes, hashed once when kept. A directory is
made for it only if it asks for an item's path (a link named like the item) or returns a value
whose codec writes files. Every other attempt gets ``<home>/work/task-<id>-<attempt>/`` with
``in/`` (the input items, linked to their blob files where the blob store has local files, else
copied), ``up/`` (the outputs of the tasks it reads), ``out/`` (what it writes) and ``scratch/``.
What it wrote is kept (small outputs inline in the database row, larger ones as blobs) before the
directory is removed. A running
task's log lines go to ``<home>/logs/task-<id>.log``, kept as a blob once the task ends.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datamill.engine.planner import Plan, PlannedTask
from datamill.engine.tasks import OutputRecord, TaskRow
from datamill.errors import InvalidPipeline
from datamill.pipeline import codecs
from datamill.pipeline.inputs import InputRef
from datamill.pipeline.runner import OutputFile, child_parts, child_path
from datamill.pipeline.step import Step
from datamill.store.blobs import BlobStore, digest_bytes
from datamill.store.visibility import strip_paths

#: Outputs up to this size are kept in the database row instead of as a blob file: a trivial
#: task then costs no file write and fsync.
INLINE_LIMIT = 4096


@dataclass
class Materialized:
    """A task's inputs as local files, and the upstream outputs it consumes (to record as its inputs)."""

    #: input item path (``folder/name``) -> local file (a string on the values path: made a Path if used)
    item_files: dict[str, str | Path] = field(default_factory=dict)
    #: upstream planned task id -> its output files
    upstream: dict[str, list[OutputFile]] = field(default_factory=dict)
    #: rows for ``task_inputs``: which upstream output each consumed file was
    inputs: list[dict[str, Any]] = field(default_factory=list)
    #: input item path -> the blob file to read it from (values only: ``item_files`` are linked lazily)
    sources: dict[str, str] = field(default_factory=dict)
    #: the task's item's path (its key in ``item_files`` and ``sources``), when :meth:`WorkDirs.values`
    #: found that the task reads its item alone: not formatted again by who reads them
    item_path: str | None = None


class WorkDirs:
    """The work and log directories of one home, and the blob store that fills and keeps them."""

    def __init__(self, home_path: Path, blobs: BlobStore) -> None:
        self.work_root = home_path / "work"
        self.log_root = home_path / "logs"
        self.log_root.mkdir(parents=True, exist_ok=True)
        self.blobs = blobs
        # Paths made per task are built from strings: one parse instead of one per part.
        self._work = str(self.work_root)
        self._logs = str(self.log_root)
        #: item blobs found on this machine by :meth:`look_for_items`, by digest: taken by :meth:`values`
        self._local: dict[str, str] = {}
        #: the work root's parsed parts (what :func:`child_parts` gives of it), or None where a
        #: path goes as its string: :meth:`attempt_parts` adds an attempt's names to them
        root = child_parts(self.work_root)
        self._root_parts: tuple[str, str, list[str]] | None = (
            (root[0], root[1], root[2]) if isinstance(root, list) else None
        )

    def attempt_dir(self, t: TaskRow) -> Path:
        """The directory of the task's current attempt (flat: fewer directories to make and remove)."""
        return Path(self.attempt_base(t))

    def attempt_base(self, t: TaskRow) -> str:
        """:meth:`attempt_dir` as a string: most attempts make no directory, and need no Path."""
        return f"{self._work}/task-{t.id}-{t.attempts}"

    def attempt_paths(self, base: str) -> tuple[Path, Path]:
        """The ``out`` and ``scratch`` directories of the attempt at ``base`` (:meth:`attempt_base`),
        made from the work root's parsed parts (:func:`child_path`), not by parsing ``base``."""
        name = base.rsplit("/", 1)[1]
        return child_path(self.work_root, name, "out"), child_path(self.work_root, name, "scratch")

    def attempt_parts(self, base: str) -> tuple[list[Any] | str, list[Any] | str]:
        """:meth:`attempt_paths` for another process (a pool's worker): each as :func:`child_parts`.

        The attempt's name (``task-<id>-<attempt>``) is a plain name by construction: added to the
        work root's parts as they are, without :func:`child_parts` checking it for each task."""
        name = base.rsplit("/", 1)[1]
        root = self._root_parts
        if root is None:
            return child_parts(self.work_root, name, "out"), child_parts(self.work_root, name, "scratch")
        drv, top, parts = root
        return [drv, top, [*parts, name, "out"]], [drv, top, [*parts, name, "scratch"]]

    def log_path(self, task_id: int) -> Path:
        """Where a running task's log lines are appended (read by ``datamill logs --follow``)."""
        return Path(self.log_file(task_id))

    def log_file(self, task_id: int) -> str:
        """:meth:`log_path` as a string (a :class:`TaskLog` makes it a Path once a line is logged)."""
        return f"{self._logs}/task-{task_id}.log"

    def look_for_items(self, digests: list[str]) -> None:
        """Find the local blob files of items that tasks just claimed will read (:meth:`values`),
        where the store knows them without looking (:meth:`BlobStore.local_places`): a missing one is
        then found by the step that reads it, which fails saying so.

        Called by the group commit that claims them, in its thread: a stat per task in the event
        loop gave the loop's turn to that thread, and cost more than a trivial step.
        """
        if len(self._local) > 100_000:  # claims taken by other schedulers leave theirs: keep it bounded
            self._local.clear()
        self._local.update(self.blobs.local_places(digests))

    def values(
        self, base: str | Path, the_plan: Plan, pt: PlannedTask, tasks: dict[str, TaskRow], step: Step | None = None
    ) -> Materialized | None:
        """A task's inputs without a work directory, or None if the task needs one (:meth:`materialize`).

        That is a Python step without ``ctx`` whose items are blob files on this machine and whose
        upstream outputs are values a codec reads from memory (or from their blob files). ``step``:
        ``pt``'s, when the caller has it.
        """
        if step is None:
            step = the_plan.pipeline.step(pt.step)
        if step.kind != "python" or step.takes_ctx:
            return None
        item = pt.item
        if item is not None and not pt.deps and step.uses_item and not step.uses_items:
            # The common task (its item alone, nothing upstream): what the loops below make of it.
            source = self._local.pop(item.digest, None) or self.blobs.local_file(item.digest)
            if source is None:
                return None
            at = item.path
            return Materialized({at: f"{base}/in/{item.name}"}, {}, [], {at: source}, at)
        got = Materialized()
        for link, ref in _item_links(base, the_plan, pt, step):
            # Looked for by the commit that claimed the task (off the event loop), else here.
            source = self._local.pop(ref.digest, None) or self.blobs.local_file(ref.digest)
            if source is None:
                return None
            at = ref.path  # a property that formats a string: once
            got.item_files[at] = link
            got.sources[at] = source
        for dep in pt.deps:
            up = tasks[dep]
            files = []
            for o in up.outputs:
                try:
                    in_memory = codecs.get_codec(o.codec).in_memory
                except InvalidPipeline:
                    return None  # a codec not registered here: the usual path says so
                path = None if o.inline is not None else self.blobs.local_path(o.digest)
                if not in_memory or (o.inline is None and path is None):
                    return None
                files.append(OutputFile(o.name, path or Path(o.name), o.content_type, o.codec, o.inline))
                got.inputs.append(_consumed(dep, up, o))
            got.upstream[dep] = files
        return got

    def materialize(self, base: str | Path, the_plan: Plan, pt: PlannedTask, tasks: dict[str, TaskRow]) -> Materialized:
        """Local files for a task's inputs under ``base``: blob files where they exist, else written out."""
        base = Path(base)
        step = the_plan.pipeline.step(pt.step)
        got = Materialized()
        for name, ref in _item_links(base, the_plan, pt, step):
            link = Path(name)
            link.parent.mkdir(parents=True, exist_ok=True)
            self.place(ref.digest, None, link)
            got.item_files[ref.path] = link
        for dep in pt.deps:
            up = tasks[dep]
            files = []
            for j, o in enumerate(up.outputs):
                target = base / "up" / f"{up.id}-{j}" / Path(o.name).name
                target.parent.mkdir(parents=True, exist_ok=True)
                self.place(o.digest, o.inline, target)
                files.append(OutputFile(o.name, target, o.content_type, o.codec))
                got.inputs.append(_consumed(dep, up, o))
            got.upstream[dep] = files
        return got

    def place(self, digest: str, inline: bytes | None, target: Path) -> None:
        """Put the bytes of ``digest`` at ``target``: written if inline, a link to a local blob, else copied."""
        if inline is not None:
            target.write_bytes(inline)
            return
        local = self.blobs.local_path(digest)
        if local is not None:
            os.symlink(local, target)
            return
        with open(target, "wb") as f:
            for chunk in self.blobs.iter_range(digest):
                f.write(chunk)

    def keep_output(self, o: OutputFile) -> OutputRecord:
        """Keep an output a task made: inline if small, else as a blob; its bytes hashed once.

        A value's blob is written without a sync of its own: the recorder syncs the blob store
        once per batch, before the transaction that refers to it (:meth:`Recorder.record`).
        """
        if o.data is not None:
            data = o.data
            if len(data) <= INLINE_LIMIT:
                return OutputRecord(o.name, digest_bytes(data), len(data), o.content_type, o.codec, data)
            blob = self.blobs.put(data, durable=False)
            return OutputRecord(o.name, blob.digest, blob.size, o.content_type, o.codec, None)
        size = o.path.stat().st_size
        if size <= INLINE_LIMIT:
            data = o.path.read_bytes()
            return OutputRecord(o.name, digest_bytes(data), size, o.content_type, o.codec, data)
        with open(o.path, "rb") as f:
            blob = self.blobs.put(f)
        return OutputRecord(o.name, blob.digest, blob.size, o.content_type, o.codec, None)

    def keep_log(self, path: Path | None, traceback: str | None) -> str | None:
        """Keep a task's log (with the traceback of its failure appended) as a blob; its digest, or None if empty."""
        if traceback and path is not None:
            with open(path, "a", encoding="utf-8") as f:
                # the log goes to every reader of the task's input: frames without server paths
                # (the full traceback stays on the task record, for site admins)
                f.write(strip_paths(traceback))
        if path is None or not path.exists() or path.stat().st_size == 0:
            return None
        with open(path, "rb") as f:
            return self.blobs.put(f).digest

    def remove_attempts(self, bases: list[str]) -> None:
        """Remove the directories of ended attempts (:meth:`attempt_base`) that are there.

        The work root is listed once for the batch: most attempts (steps on values) made none, and
        a stat per attempt cost more than a trivial step.
        """
        if not bases:
            return
        try:
            there = set(os.listdir(self._work))
        except FileNotFoundError:
            return
        for base in bases:
            if base.rsplit("/", 1)[-1] in there:
                shutil.rmtree(base, ignore_errors=True)

    @staticmethod
    def remove(log_path: Path | None, work_dir: Path | None) -> None:
        """Remove a task's live log and work directory once its end is recorded."""
        if log_path is not None:
            log_path.unlink(missing_ok=True)
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)


def _item_links(base: str | Path, the_plan: Plan, pt: PlannedTask, step: Step) -> list[tuple[str, InputRef]]:
    """Where each input item a task reads goes in its work directory, with the item."""
    refs: list[InputRef] = []
    if pt.item is not None and step.uses_item:
        refs.append(pt.item)
    if step.uses_items:
        refs += list(the_plan.inputs)
    # Named like the item, so steps that look at suffixes (read_excel, ...) work; a directory
    # per input only when there are several (their names may repeat across folders).
    if len(refs) == 1:
        return [(f"{base}/in/{refs[0].name}", refs[0])]
    return [(f"{base}/in/{i}/{ref.name}", ref) for i, ref in enumerate(refs)]


def _consumed(dep: str, up: TaskRow, o: OutputRecord) -> dict[str, Any]:
    """The ``task_inputs`` row of an upstream output a task reads."""
    return {
        "param": dep,
        "digest": o.digest,
        "upstream_task_id": up.id,
        "output_name": o.name,
        "version_id": o.version_id,
    }


class TaskLog:
    """A task's live log file, created with its first line: most tasks log nothing."""

    def __init__(self, path: str | Path) -> None:
        self._where: str | Path = path
        self._file: Any = None

    @property
    def path(self) -> Path:
        """Where the lines go (a Path made only when asked: most tasks log nothing)."""
        if not isinstance(self._where, Path):
            self._where = Path(self._where)
        return self._where

    def write(self, text: str) -> None:
        """Append ``text`` (line buffered, so ``datamill logs --follow`` sees each line at once)."""
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._file.write(text)

    @property
    def used(self) -> bool:
        """Whether a line was written (the file exists)."""
        return self._file is not None

    def close(self) -> None:
        """Close the file if there is one."""
        if self._file is not None:
            self._file.close()
