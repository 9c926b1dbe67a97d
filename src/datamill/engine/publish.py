"""Publishing: a task's outputs become versions of items in the run's destination, with provenance metadata.

Versions are committed through the store (:meth:`Store.commit_version`), in the transaction that
records the task's end. The rules (see :meth:`Publisher.publish`):

* **newer request wins**: an output does not replace a version a later-requested run published;
* **one input per name**: a per-item output does not replace an item derived from another input
  (the task fails with :class:`Collision`);
* an output whose bytes are already the current version's is referenced, not committed again;
* a task whose outputs cannot be published (an invalid name, no right to write any more, ...)
  fails, saying why (:meth:`Publisher.failed`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from datamill.db.models import Dataflow, Task, TaskOutput
from datamill.engine.ends import MAX_ERROR, Done
from datamill.engine.planner import Plan, PlannedTask, collision_message
from datamill.engine.tasks import DONE_OK, OutputRecord, TaskRow, TaskStatus
from datamill.errors import Conflict, DatamillError
from datamill.home import Home
from datamill.pipeline.dagster_job import PROVENANCE_OUTPUT
from datamill.store import lookups
from datamill.store.access import Actor, Level, level_on
from datamill.store.blobs import BlobInfo
from datamill.store.names import join_path
from datamill.store.store import guess_content_type

log = logging.getLogger("datamill.scheduler")

#: where an output is published: ``(folder path, item name)``
Place = tuple[str, str]


class Collision(Conflict):
    """An output would replace another input's output in the destination. Rename one of the inputs, or
    give the step a ``name_template`` that keeps their outputs apart (see :func:`collision_message`)."""


@dataclass
class Current:
    """The current version of a destination item, as the publishing rules need it."""

    version_id: int
    digest: str
    #: the newest run that published this version or recorded it as its output (0: none)
    run: int
    #: the input item (``folder/name``) a per-item task derived it from, else None
    item: str | None


def content_type(name: str, produced: str) -> str:
    """The type to publish under: a generic type from a step yields to what the name says (``.png``)."""
    if produced.split(";")[0] in ("application/octet-stream", "text/plain"):
        guessed = guess_content_type(name)
        if guessed != "application/octet-stream":
            return guessed
    return produced


def publish_plan(the_plan: Plan, pt: PlannedTask, outs: list[OutputRecord]) -> list[tuple[str, str, str]]:
    """``(output name, published name, content type)`` of each output of ``pt`` that is published.

    Raises:
        InvalidPipeline: two outputs would be published under one name.
    """
    ctypes = {o.name: o.content_type for o in outs}
    # The provenance a task records for its outputs goes into their metadata, not into the folder.
    names = [o.name for o in outs if o.name != PROVENANCE_OUTPUT]
    return [
        (po.name, po.published_name, content_type(po.published_name, ctypes[po.name]))
        for po in the_plan.output_names(pt, names)
        if po.publish
    ]


def already_published(
    dest: str,
    pt: PlannedTask,
    publish: list[tuple[str, str, str]],
    outs: list[OutputRecord],
    current: dict[Place, Current],
) -> list[OutputRecord] | None:
    """A cached task's outputs as recorded, when publishing them would change nothing; else None.

    That is when every output it publishes is already the current version of its item in ``dest``
    (the same bytes, derived from the same input): what :meth:`Publisher.publish` would do is then
    to reference those versions. ``current`` is :meth:`Publisher.current_at` of the places, read in
    the transaction that records the task, before its run gets its (newer) id.
    """
    item = pt.item.path if pt.item is not None else None
    digests = {o.name: o.digest for o in outs}
    versions: dict[str, int] = {}
    for out_name, pub_name, _ct in publish:
        now = current.get(place_of(dest, pub_name))
        if now is None or now.digest != digests[out_name] or (item and now.item and now.item != item):
            return None
        versions[out_name] = now.version_id
    return [
        OutputRecord(o.name, o.digest, o.size, o.content_type, o.codec, o.inline, versions.get(o.name)) for o in outs
    ]


def place_of(dest: str, pub_name: str) -> Place:
    """The folder and item name a published name (``"sub/name.csv"``) lands on in ``dest``."""
    sub, _, name = pub_name.rpartition("/")
    return (join_path(dest, sub) if sub else dest, name)


def _unpublished(rec: OutputRecord) -> OutputRecord:
    return OutputRecord(rec.name, rec.digest, rec.size, rec.content_type, rec.codec, rec.inline, None)


class Publisher:
    """Publishes the outputs of a home's tasks into their runs' destination folders."""

    def __init__(self, home: Home) -> None:
        self.home = home

    def prepare(self, actor: Actor, dest: str, d: Done) -> None:
        """Blobs for inline outputs and the subfolders a task publishes into, before its transaction."""
        for out_name, pub_name, _ct in d.publish:
            d.publishing = pub_name
            rec = next(o for o in d.outputs if o.name == out_name)
            if rec.inline is not None and not self.home.blobs.exists(rec.digest):
                # Synced once for the whole batch by the recorder, before its transaction.
                self.home.blobs.put(rec.inline, durable=False)
                d.unsynced = True
            if "/" in pub_name:
                self.home.store.create_folder(actor, join_path(dest, pub_name.rsplit("/", 1)[0]), exist_ok=True)
        d.publishing = None

    @staticmethod
    def failed(d: Done, dest: str, exc: Exception) -> None:
        """Turn a task whose outputs could not be published into a failed task that says why."""
        if isinstance(exc, Collision):
            message, failure = exc.message, "collision"
        else:
            reason = exc.message if isinstance(exc, DatamillError) else f"{type(exc).__name__}: {exc}"
            name = d.publishing or "?"
            shown = name if len(name) <= 80 else name[:77] + "..."
            message, failure = f"could not publish output {shown!r} in {dest!r}: {reason}", "publish"
            if not isinstance(exc, DatamillError):
                log.error("task %s: publishing failed", d.task.id, exc_info=exc)
        d.status = TaskStatus.FAILED
        d.error = message[:MAX_ERROR]
        d.failure = failure
        d.note = None
        d.outputs = []
        d.publish = []

    def current_versions(self, conn: Connection, dest: str, done: list[Done]) -> dict[Place, Current]:
        """The current version of every item ``done`` publishes, by ``(folder, name)``.

        On PostgreSQL the items are locked first, so that what is read here stays true until this
        transaction commits: two runs publishing the same item one after the other see each
        other's versions.
        """
        return self.current_at(
            conn, {place_of(dest, pub) for d in done if d.status in DONE_OK for _out, pub, _ct in d.publish}
        )

    def current_at(self, conn: Connection, wanted: set[Place], claims: bool = True) -> dict[Place, Current]:
        """The current version of each place of ``wanted`` that has one (see :meth:`current_versions`).

        Without ``claims``, ``Current.run`` is only the run that published the version, not the
        newest run that referenced it (a query less per 500 places, for callers that do not compare runs).
        """
        found = lookups.current_versions(conn, wanted, lock=not self.home.db.is_sqlite)
        items = _task_items(conn, [v.task_id for v in found.values() if v.task_id is not None])
        claimed = _claimants(conn, [v.version_id for v in found.values()]) if claims else {}
        return {
            place: Current(
                v.version_id,
                v.digest,
                max(v.run_id or 0, claimed.get(v.version_id, 0)),
                items.get(v.task_id) if v.task_id is not None else None,
            )
            for place, v in found.items()
        }

    def publish(
        self,
        conn: Connection,
        actor: Actor,
        row: Any,
        d: Done,
        the_plan: Plan,
        current: dict[Place, Current],
    ) -> tuple[list[OutputRecord], dict[Place, Current]]:
        """Commit a task's published outputs as item versions in its run's destination ``row.dest_folder``.

        Returns the outputs with their version ids, and how ``current`` (the current version of
        each destination item, see :meth:`current_versions`) changed; the caller applies that
        once the task's savepoint is released. Two rules decide what is published:

        * **newer request wins**: an output does not replace a current version that a later-requested
          run (a higher run id) published or recorded. It is not published (no version id) and the
          task's note says "superseded by run N", whatever order the runs finish in.
        * **one input per name**: a per-item output does not replace an item derived from another
          input (see :func:`collision_message`); the task fails with :class:`Collision`.

        An item whose current version already has the same bytes is left alone (its version is
        referenced), so re-running a dataflow over unchanged inputs adds no versions.
        """
        by_name = {o.name: o for o in d.outputs}
        item = d.planned.item.path if d.planned.item is not None else None
        meta = self._metadata(conn, row, d.task, d.planned, the_plan)
        extra = self._output_provenance(by_name.get(PROVENANCE_OUTPUT))
        changes: dict[Place, Current] = {}
        superseded: list[tuple[str, int]] = []
        for out_name, pub_name, ctype in d.publish:
            d.publishing = pub_name
            rec = by_name[out_name]
            place = place_of(row.dest_folder, pub_name)
            now = changes.get(place) or current.get(place)
            newer = self._check(conn, actor, now, int(row.id), item, place, d.task.step)
            if newer is None and (now is None or now.digest != rec.digest):
                m = meta
                if isinstance(extra.get(out_name), dict):  # e.g. the Dagster run, op and asset that made it
                    m = {**meta, "provenance": {**extra[out_name], **meta["provenance"]}}
                vid, newer = self._commit(conn, actor, row, d.task, rec, ctype, m, place, item, racing=now is None)
            elif newer is None:
                assert now is not None
                vid = now.version_id
            if newer is not None:
                superseded.append((pub_name, newer))
                by_name[out_name] = _unpublished(rec)
                continue
            changes[place] = Current(
                vid, rec.digest, max(int(row.id), now.run if now is not None else 0), item if now is None else now.item
            )
            by_name[out_name] = OutputRecord(
                rec.name, rec.digest, rec.size, rec.content_type, rec.codec, rec.inline, vid
            )
        d.publishing = None
        if superseded:
            newest = max(r for _n, r in superseded)
            names = ", ".join(repr(n) for n, _r in superseded[:3]) + (" ..." if len(superseded) > 3 else "")
            d.note = (
                f"superseded by run {newest}: {names} not published, because a run requested later "
                "already published a newer result"
            )
        return [by_name[o.name] for o in d.outputs], changes

    def _output_provenance(self, rec: OutputRecord | None) -> dict[str, Any]:
        """Per-output provenance a task recorded (:data:`PROVENANCE_OUTPUT`): ``{output name: {...}}``."""
        if rec is None:
            return {}
        try:
            data = rec.inline if rec.inline is not None else self.home.blobs.read(rec.digest)
            got = json.loads(data)
        except (OSError, ValueError, DatamillError) as exc:
            log.warning("task output provenance unreadable: %s", exc)
            return {}
        return got if isinstance(got, dict) else {}

    def _metadata(self, conn: Connection, row: Any, t: TaskRow, pt: PlannedTask, the_plan: Plan) -> dict[str, Any]:
        """The metadata of a published version: its provenance, and the dataflow that made it."""
        # A per-item task derives from its item; an aggregate task from every input of the run.
        inputs = [pt.item] if pt.item is not None else list(the_plan.inputs)
        provenance = {
            "wasGeneratedBy": {
                "run": int(row.id),
                "task": t.id,
                "step": t.step,
                "step_code": t.step_code,
                "dataflow": row.dataflow_id,
                "dataflow_version": row.dataflow_version,
                # a container step: what ran is the image with this digest (its tag may move later)
                **({"image": pt.image, "image_digest": pt.image_digest} if pt.image else {}),
            },
            "wasDerivedFrom": [
                {"folder": r.folder, "name": r.name, "version": r.version, "digest": r.digest} for r in inputs
            ],
        }
        meta: dict[str, Any] = {"provenance": provenance}
        if row.dataflow_id is not None:
            meta["dataflow"] = conn.execute(select(Dataflow.name).where(Dataflow.id == row.dataflow_id)).scalar()
        return meta

    def _commit(
        self,
        conn: Connection,
        actor: Actor,
        row: Any,
        t: TaskRow,
        rec: OutputRecord,
        ctype: str,
        meta: dict[str, Any],
        place: Place,
        item: str | None,
        racing: bool,
    ) -> tuple[int, int | None]:
        """Commit one output as the next version of ``place``: ``(version id, None)``, or ``(0, newer run)``.

        On PostgreSQL another process may create the item between our look-up and this commit
        (``racing``): then the version before ours is checked too, and ours undone if it loses.
        """
        sp = conn.begin_nested() if racing and not self.home.db.is_sqlite else None
        try:
            info = self.home.store.commit_version(
                actor,
                place[0],
                place[1],
                BlobInfo(rec.digest, rec.size),
                ctype,
                meta,
                created_via="run",
                run_id=int(row.id),
                task_id=t.id,
                conn=conn,
            )
            if sp is not None:
                before = self._version_state(conn, info.item_id, info.version - 1) if info.version > 1 else None
                newer = self._check(conn, actor, before, int(row.id), item, place, t.step)
                if newer is not None:
                    sp.rollback()
                    return 0, newer
                sp.commit()
        except BaseException:
            if sp is not None and sp.is_active:
                sp.rollback()
            raise
        return info.version_id, None

    @staticmethod
    def _check(
        conn: Connection, actor: Actor, now: Current | None, run_id: int, item: str | None, place: Place, step: str
    ) -> int | None:
        """The run whose output supersedes ours for ``place`` (see :meth:`publish`), or None.

        Raises:
            Collision: the current version was derived from another input than ``item``.
        """
        if now is None:
            return None
        if now.run > run_id:
            return now.run
        if item is not None and now.item is not None and now.item != item:
            # The other input is named only to whoever may read it.
            other_folder = now.item.rpartition("/")[0]
            other = now.item if level_on(conn, actor, other_folder) >= Level.READ else None
            path = f"{place[0]}/{place[1]}"
            raise Collision(
                collision_message(
                    place[1], step, item, other, f" (now {path!r}; delete it first if it is no longer wanted)"
                ),
                path=path,
            )
        return None

    @staticmethod
    def _version_state(conn: Connection, item_id: int, number: int) -> Current | None:
        """One version of an item as :class:`Current` (who published it, from which input)."""
        v = lookups.item_version(conn, item_id, number)
        if v is None:
            return None
        claimed = _claimants(conn, [v.version_id])
        item = _task_items(conn, [v.task_id]).get(v.task_id) if v.task_id is not None else None
        return Current(v.version_id, v.digest, max(v.run_id or 0, claimed.get(v.version_id, 0)), item)


def _claimants(conn: Connection, version_ids: list[int]) -> dict[int, int]:
    """The newest run whose task outputs name each version (it published or referenced it)."""
    out: dict[int, int] = {}
    for i in range(0, len(version_ids), 500):
        rows = conn.execute(
            select(TaskOutput.version_id, func.max(Task.run_id))
            .join(Task, Task.id == TaskOutput.task_id)
            .where(TaskOutput.version_id.in_(version_ids[i : i + 500]))
            .group_by(TaskOutput.version_id)
        ).all()
        out.update({int(v): int(r) for v, r in rows if v is not None and r is not None})
    return out


def _task_items(conn: Connection, task_ids: list[int]) -> dict[int, str | None]:
    """The input item (``folder/name``) each of ``task_ids`` ran on (None: an aggregate task)."""
    out: dict[int, str | None] = {}
    ids = sorted(set(task_ids))
    for i in range(0, len(ids), 500):
        rows = conn.execute(select(Task.id, Task.item_name).where(Task.id.in_(ids[i : i + 500])))
        out.update({int(r.id): r.item_name for r in rows})
    return out
