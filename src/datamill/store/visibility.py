"""What one caller may see of records that name items and folders: one redaction rule for every face.

Lineage already hides what a caller may not read (:mod:`datamill.provenance`); this module applies
the same rule to everything else a caller receives about items, runs, tasks, dataflows and events:
nothing names, locates or fingerprints (path, name, digest, metadata, version) an item or folder
the caller may not read. The stored records keep everything; redaction happens on the way out, in
the core, so the API, the embedded client, events and find results all get it.

* item metadata: entries of ``provenance.wasDerivedFrom`` about unreadable folders become
  ``{"folder": HIDDEN, "name": HIDDEN}`` (no version, no digest);
* runs: ``source_folder``/``dest_folder`` the caller may not read become :data:`HIDDEN`, and so
  do inputs in unreadable folders; the run's ``error`` is masked unless every input is readable;
* tasks: a task whose input the caller may not read (its item's folder, or for a task without an
  item, any input of its run) shows no item name or version id, its ``planned_id`` becomes
  ``step[(not visible)]``, and its ``error``, ``traceback`` and progress ``message`` (which may
  quote its input) are masked;
* events: the same fields in event payloads (``planned_id``, ``error``, ``message``, folder paths);
* dataflows: the source or destination the caller may not read becomes :data:`HIDDEN`; webhook
  URLs are shown in full only to who may change the dataflow (:func:`mask_url` otherwise).

Access checks go through :func:`datamill.store.access.level_on` (so every way of being granted
access counts), once per distinct folder per :class:`Visibility`: callers collect the paths of a
whole answer (:meth:`Visibility.load`) before redacting it, so a listing of thousands of records
costs one check per folder, not one per field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, select

from datamill.db.models import Dataflow, Folder, Run, Task
from datamill.events import EventKind, EventRecord
from datamill.refs import image_of_ref
from datamill.store.access import Actor, Level, ancestor_paths, level_on
from datamill.store.groups import group_ids_of

#: The placeholder for anything the caller may not see (the same one lineage uses).
HIDDEN = "(not visible)"
#: What a caller who may not read its inputs is told instead of a task's or run's error text.
MASKED_ERROR = "failed; the details are shown only to those who may read its inputs"
#: What a task's note (superseded, failed earlier, ...) becomes for who may not read its input.
MASKED_NOTE = "(a note shown only to those who may read its inputs)"


def hidden_ref() -> dict[str, Any]:
    """An input or source the caller may not read: neither name, folder, version nor digest."""
    return {"folder": HIDDEN, "name": HIDDEN}


def folder_of(item_path: str) -> str:
    """``"a/b/c.csv"`` -> ``"a/b"``; ``""`` for a path without a folder."""
    return item_path.rsplit("/", 1)[0] if "/" in item_path else ""


def planned_item(planned_id: str) -> str | None:
    """The item path inside a planned task id (``"step[Raw/a.csv]"`` -> ``"Raw/a.csv"``), or None.

    Step names cannot contain ``[`` (see :mod:`datamill.pipeline.step`), so the first one opens it.
    """
    if not planned_id.endswith("]") or "[" not in planned_id:
        return None
    return planned_id[planned_id.index("[") + 1 : -1]


def mask_url(url: str) -> str:
    """A webhook URL without its secret parts: scheme and host only."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return HIDDEN
    return f"{parts.scheme}://{parts.hostname}/{HIDDEN}" if parts.scheme and parts.hostname else HIDDEN


_FRAME_FILE = re.compile(r'File "([^"]*[/\\])([^"/\\]+)"')


def strip_paths(traceback: str) -> str:
    """A Python traceback with each frame's file reduced to its name (``File ".../x.py"`` -> ``File "x.py"``)."""
    return _FRAME_FILE.sub(lambda m: f'File "{m.group(2)}"', traceback)


def mask_ref(ref: str | None) -> str | None:
    """A pipeline reference as a non-admin may see it: ``module:attr`` as is, a file's path hidden.

    A reference to a file names a path on the server, which only site admins may learn (users
    choose registered pipelines by name; the run's ``pipeline_name`` still says which ran). An
    ``image://`` reference names a container image, not a file: shown as it is.
    """
    if not ref or image_of_ref(ref) is not None:
        return ref
    target = ref.rsplit(":", 1)[0] if ":" in ref else ref
    if "/" in target or "\\" in target or target.endswith((".py", ".yaml", ".yml")):
        return HIDDEN
    return ref


class Visibility:
    """Which folders one actor may read, decided once per folder, and the redactions that follow.

    Use one per answer (it caches levels for the connection's transaction).
    """

    def __init__(self, conn: Connection, actor: Actor) -> None:
        self.conn = conn
        self.actor = actor
        self._readable: dict[str, bool] = {}

    # ------------------------------------------------------------------ access

    def load(self, paths: Iterable[str | None]) -> None:
        """Decide, for every distinct folder path among ``paths``, whether the actor may read it.

        Shallow paths first: a level on a folder holds below it, so a readable ancestor decides
        for all its descendants without another check.
        """
        if self.actor.is_admin:
            return
        todo = sorted({p for p in paths if p and p not in self._readable}, key=lambda p: p.count("/"))
        for path in todo:
            if any(self._readable.get(a) for a in ancestor_paths(path)[:-1]):
                self._readable[path] = True
            else:
                self._readable[path] = level_on(self.conn, self.actor, path) >= Level.READ

    def readable(self, path: str | None) -> bool:
        """Whether the actor may read the folder at ``path`` (False for no path)."""
        if not path:
            return False
        if self.actor.is_admin:
            return True
        if path not in self._readable:
            self.load([path])
        return self._readable[path]

    def item_readable(self, item_path: str | None) -> bool:
        """Whether the actor may read the folder holding the item at ``item_path``."""
        return bool(item_path) and self.readable(folder_of(str(item_path)))

    def folder(self, path: str | None) -> str | None:
        """A folder path as the actor may see it: itself, or :data:`HIDDEN`."""
        return None if path is None else path if self.readable(path) else HIDDEN

    def planned_id(self, planned_id: str) -> str:
        """A planned task id without the item path the actor may not read."""
        item = planned_item(planned_id)
        if item is None or self.item_readable(item):
            return planned_id
        return f"{planned_id[: planned_id.index('[')]}[{HIDDEN}]"

    def text(self, text: str | None, paths: Iterable[str | None]) -> str | None:
        """``text`` with every path among ``paths`` the actor may not read replaced by :data:`HIDDEN`."""
        if not text:
            return text
        for p in sorted({p for p in paths if p}, key=len, reverse=True):
            if p in text and not self.readable(p):
                text = text.replace(p, HIDDEN)
        return text

    # ------------------------------------------------------------------ item metadata

    @staticmethod
    def _derived(meta: Mapping[str, Any]) -> list[Any] | None:
        prov = meta.get("provenance")
        if not isinstance(prov, Mapping):
            return None
        derived = prov.get("wasDerivedFrom")
        return derived if isinstance(derived, list) else None

    def metadata_paths(self, meta: Mapping[str, Any]) -> list[str]:
        """The folders item metadata names (in its provenance summary)."""
        return [str(e.get("folder")) for e in self._derived(meta) or [] if isinstance(e, Mapping) and e.get("folder")]

    def metadata(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Item metadata with provenance entries about unreadable folders hidden (a copy when changed)."""
        derived = self._derived(meta)
        if not derived or self.actor.is_admin:
            return meta
        shown = [
            e if isinstance(e, Mapping) and e.get("folder") and self.readable(str(e["folder"])) else hidden_ref()
            for e in derived
        ]
        if shown == derived:
            return meta
        return {**meta, "provenance": {**meta["provenance"], "wasDerivedFrom": shown}}

    def items(self, infos: Iterable[Any]) -> None:
        """Redact the ``metadata`` of item infos in place (one access check per folder named)."""
        if self.actor.is_admin:
            return
        infos = [i for i in infos if i.metadata and "provenance" in i.metadata]
        self.load(p for i in infos for p in self.metadata_paths(i.metadata))
        for i in infos:
            i.metadata = self.metadata(i.metadata)

    # ------------------------------------------------------------------ runs and tasks

    @staticmethod
    def _run_paths(run: Mapping[str, Any]) -> list[str | None]:
        inputs = run.get("inputs") or []
        return [run.get("source_folder"), run.get("dest_folder")] + [
            d.get("folder") for d in inputs if isinstance(d, Mapping)
        ]

    def inputs_readable(self, run: Mapping[str, Any]) -> bool:
        """Whether the actor may read every input of a run (and its source folder, if it has one)."""
        if self.actor.is_admin:
            return True
        if run.get("source_folder") and not self.readable(run["source_folder"]):
            return False
        return all(self.readable(d.get("folder")) for d in run.get("inputs") or [] if isinstance(d, Mapping))

    def runs(self, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run dicts (as :func:`datamill.engine.runs.run_dict` makes them) as the actor may see them."""
        if self.actor.is_admin:
            return runs
        self.load(p for r in runs for p in self._run_paths(r))
        return [self.run(r) for r in runs]

    def run(self, run: dict[str, Any]) -> dict[str, Any]:
        """One run dict as the actor may see it (a copy)."""
        if self.actor.is_admin:
            return run
        out = dict(run)
        if "pipeline_ref" in out:
            out["pipeline_ref"] = mask_ref(out["pipeline_ref"])
        out["source_folder"] = self.folder(run.get("source_folder"))
        out["dest_folder"] = self.folder(run.get("dest_folder"))
        out["inputs"] = [
            d if isinstance(d, Mapping) and self.readable(d.get("folder")) else hidden_ref()
            for d in run.get("inputs") or []
        ]
        if run.get("error") and not self.inputs_readable(run):
            out["error"] = MASKED_ERROR
        return out

    def task_side_readable(self, item_name: str | None, run: Mapping[str, Any]) -> bool:
        """Whether the actor may read a task's input: its item, or (no item) every input of its run."""
        if self.actor.is_admin:
            return True
        return self.item_readable(item_name) if item_name else self.inputs_readable(run)

    def task(self, task: dict[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
        """A task dict (``TaskRow.to_dict()`` or the like) of ``run`` as the actor may see it (a copy)."""
        if self.task_side_readable(task.get("item_name"), run):
            if self.actor.is_admin or not task.get("traceback"):
                return task
            # Frames name files on the server (the pipeline's, the installed packages'): keep the
            # file names and lines, which is what a pipeline's author needs, not where they are.
            return {**task, "traceback": strip_paths(str(task["traceback"]))}
        out = dict(task)
        if out.get("planned_id"):
            out["planned_id"] = self.planned_id(str(out["planned_id"]))
        if out.get("item_name"):
            out["item_name"] = HIDDEN
        if "item_version_id" in out:
            out["item_version_id"] = None
        if out.get("deps"):
            out["deps"] = [self.planned_id(str(d)) for d in out["deps"]]
        if out.get("error"):
            out["error"] = MASKED_ERROR
        if out.get("traceback"):
            out["traceback"] = None
        if out.get("message"):
            out["message"] = ""
        if out.get("note"):
            out["note"] = MASKED_NOTE
        return out

    def load_tasks(self, tasks: Iterable[Mapping[str, Any]], runs: Iterable[Mapping[str, Any]]) -> None:
        """Decide every folder the tasks and runs name, before redacting them one by one."""
        paths: list[str | None] = [p for r in runs for p in self._run_paths(r)]
        for t in tasks:
            if t.get("item_name"):
                paths.append(folder_of(str(t["item_name"])))
            paths += [folder_of(i) for d in t.get("deps") or [] if (i := planned_item(str(d)))]
        self.load(paths)

    # ------------------------------------------------------------------ dataflows

    def dataflow_config(self, cfg: Mapping[str, Any], may_change: bool) -> dict[str, Any]:
        """A dataflow configuration (current or of a version) as the actor may see it (a copy)."""
        out = dict(cfg)
        if not self.actor.is_admin and out.get("pipeline"):
            out["pipeline"] = mask_ref(str(out["pipeline"]))
        for key in ("source", "destination"):
            if out.get(key):
                out[key] = self.folder(str(out[key]))
        if not may_change and out.get("webhooks"):
            out["webhooks"] = [mask_url(str(u)) for u in out["webhooks"]]
        return out


# ---------------------------------------------------------------------------------- events

#: Event payload fields that may quote a task's input (masked when the caller may not read it).
_TASK_FIELDS = ("planned_id", "error", "message", "note")


def visible_events(conn: Connection, actor: Actor, records: Iterable[EventRecord]) -> list[EventRecord]:
    """The events among ``records`` the actor may see, with their payloads redacted for the actor.

    An event about a folder (or something in it) is delivered to readers of that folder; events
    about a group to its current members; other events about no folder (users, tokens) and events
    of a deleted folder only to site admins. Payloads get the redactions of :class:`Visibility`:
    a task event's ``planned_id``, ``error`` and ``message`` when the task's input is not
    readable, a moved folder's old or new path, the source or destination path in a dataflow's
    failure reason.
    """
    records = list(records)
    if actor.is_admin:
        return records
    vis = Visibility(conn, actor)
    fids = sorted({r.folder_id for r in records if r.folder_id is not None})
    paths: dict[int, str] = {}
    for i in range(0, len(fids), 500):
        q = select(Folder.id, Folder.path).where(Folder.id.in_(fids[i : i + 500]))
        paths.update((int(fid), str(path)) for fid, path in conn.execute(q))
    vis.load(paths.values())
    my_groups = group_ids_of(conn, actor) if any(_is_group_event(r) for r in records) else set()
    shown = [
        r
        for r in records
        if (r.folder_id in paths and vis.readable(paths[r.folder_id]))
        or (_is_group_event(r) and r.data.get("group_id") in my_groups)
    ]
    tasks = _task_rows(conn, {r.task_id for r in shown if r.task_id is not None and _quotes_input(r)})
    runs = _run_rows(conn, {t["run_id"] for t in tasks.values() if not t["item_name"]})
    flows = _dataflow_paths(conn, {r.dataflow_id for r in shown if r.dataflow_id is not None and "reason" in r.data})
    vis.load_tasks(tasks.values(), runs.values())
    vis.load(p for ps in flows.values() for p in ps)
    return [_redact_event(vis, r, tasks, runs, flows) for r in shown]


def _is_group_event(rec: EventRecord) -> bool:
    # events about a group (group.*) carry no folder; they reach the group's current members
    return rec.folder_id is None and rec.kind.startswith("group.") and rec.data.get("group_id") is not None


def _quotes_input(rec: EventRecord) -> bool:
    return rec.kind.startswith("task.") and any(rec.data.get(f) for f in _TASK_FIELDS)


def _task_rows(conn: Connection, ids: set[int]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    ordered = sorted(ids)
    for i in range(0, len(ordered), 500):
        q = select(Task.id, Task.run_id, Task.item_name).where(Task.id.in_(ordered[i : i + 500]))
        out.update({int(r.id): {"run_id": r.run_id, "item_name": r.item_name} for r in conn.execute(q)})
    return out


def _run_rows(conn: Connection, ids: set[int]) -> dict[int, dict[str, Any]]:
    ordered = sorted(ids)
    out: dict[int, dict[str, Any]] = {}
    for i in range(0, len(ordered), 500):
        q = select(Run.id, Run.source_folder, Run.inputs).where(Run.id.in_(ordered[i : i + 500]))
        out.update({int(r.id): {"source_folder": r.source_folder, "inputs": r.inputs or []} for r in conn.execute(q)})
    return out


def _dataflow_paths(conn: Connection, ids: set[int]) -> dict[int, list[str]]:
    if not ids:
        return {}
    q = select(Dataflow.id, Dataflow.config).where(Dataflow.id.in_(sorted(ids)))
    return {
        int(r.id): [str(p) for p in ((r.config or {}).get("source"), (r.config or {}).get("destination")) if p]
        for r in conn.execute(q)
    }


def _redact_event(
    vis: Visibility,
    rec: EventRecord,
    tasks: Mapping[int, Mapping[str, Any]],
    runs: Mapping[int, Mapping[str, Any]],
    flows: Mapping[int, list[str]],
) -> EventRecord:
    data = rec.data
    if rec.task_id is not None and rec.task_id in tasks:
        t = tasks[rec.task_id]
        run = runs.get(t["run_id"], {"source_folder": HIDDEN, "inputs": []})
        if not vis.task_side_readable(t["item_name"], run):
            data = dict(data)
            if data.get("planned_id"):
                data["planned_id"] = vis.planned_id(str(data["planned_id"]))
            if data.get("error"):
                data["error"] = MASKED_ERROR
            if data.get("message"):
                data["message"] = ""
            if data.get("note"):
                data["note"] = MASKED_NOTE
    elif rec.kind == EventKind.FOLDER_MOVED:
        data = {**data, "from": vis.folder(data.get("from")), "to": vis.folder(data.get("to"))}
    elif rec.dataflow_id is not None and rec.dataflow_id in flows and data.get("reason"):
        data = {**data, "reason": vis.text(str(data["reason"]), flows[rec.dataflow_id])}
    return rec if data is rec.data else replace(rec, data=data)
