"""The engine's front door: plan, submit, run, cancel, resume, explain and read logs.

Submitting records a run and all its tasks before anything is dispatched (a run you can see is a
run that exists); a :class:`~datamill.engine.scheduler.Scheduler` then executes it, in this
process (``Engine.run``) or in the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from datamill.coroutine import run_to_end
from datamill.db.models import Run, Task
from datamill.engine import keys, paramsets, registry, replay, runs
from datamill.engine.params import RunParams, split_params
from datamill.engine.planner import CachedResult, OutputDigest, Plan, canonical_inputs, image_digests, plan
from datamill.engine.publish import Publisher, already_published, place_of, publish_plan
from datamill.engine.records import RunInfo, WhyInfo
from datamill.engine.registry import Choice
from datamill.engine.runs import input_ref_from_dict, input_ref_to_dict
from datamill.engine.scheduler import Scheduler, refuse_command_executor
from datamill.errors import DatamillError, InvalidInput, NotFound, PermissionDenied
from datamill.home import Home
from datamill.pipeline import Pipeline, load_pipeline
from datamill.pipeline.dagster_job import PROVENANCE_OUTPUT
from datamill.pipeline.inputs import InputRef
from datamill.store import lookups
from datamill.store.access import Actor, Level, level_on, require
from datamill.store.names import split_path
from datamill.store.visibility import HIDDEN, Visibility

#: TaskRow fields that may name or quote a task's input (redacted by :meth:`Visibility.task`).
_TASK_INPUT_FIELDS = ("planned_id", "item_name", "item_version_id", "deps", "error", "traceback", "message", "note")


@dataclass(frozen=True)
class _Submission:
    """What a submitted run was asked to do, besides its pipeline and inputs."""

    source: str | None
    dest: str | None
    params: Mapping[str, Any] | None
    force: bool
    reason: str
    executor: str | None
    dataflow_id: int | None
    dataflow_version: int | None


#: a run's source and destination (normalised) and their folder ids
_Places = tuple[str | None, str | None, int | None, int | None]


@dataclass(frozen=True)
class _Prepared:
    """A run made ready to record: its plan identity and either the earlier run it copies or its plan."""

    identity: str | None
    #: the destination folder's id the identity was made with
    dest_id: int | None
    #: the earlier run this one repeats (:mod:`datamill.engine.replay`), or None
    earlier: int | None
    plan: Plan | None
    hits: dict[str, tuple[int, list[runs.OutputRecord]]]
    images: Mapping[str, str]
    #: the run's parameters checked, resolved and encoded once (for the identity, the plan and the rows)
    params: RunParams
    refs: tuple[InputRef, ...] = ()

    def inputs(self) -> tuple[InputRef, ...]:
        """The run's inputs in canonical order."""
        return self.plan.inputs if self.plan is not None else self.refs


def resolve_pipeline(pipeline: Pipeline | Choice) -> Pipeline:
    """A pipeline object from itself or an admitted choice (see :func:`~datamill.engine.registry.choose`)."""
    if isinstance(pipeline, Choice):
        return pipeline.loaded if pipeline.loaded is not None else load_pipeline(pipeline.ref)
    return pipeline


class Engine:
    """Runs of pipelines over the items of one home."""

    def __init__(self, home: Home) -> None:
        self.home = home

    def resolve_image(self, image: str) -> str:
        """The digest of container image ``image`` with the configured runtime (plan time)."""
        from datamill.executors.container import image_digest

        return image_digest(image, self.home.settings.container_runtime)

    # ------------------------------------------------------------------ inputs

    def inputs_from_folder(self, actor: Actor, folder: str, recursive: bool = False) -> list[InputRef]:
        """The current versions of the items in ``folder`` (and below, with ``recursive``)."""
        store = self.home.store
        items = store.find_items(actor, folder, recursive=recursive) if recursive else store.list_items(actor, folder)
        return [
            InputRef(
                item_id=i.id,
                version_id=i.version_id,
                folder=i.folder,
                name=i.name,
                version=i.version,
                digest=i.digest,
                size=i.size,
                content_type=i.content_type,
                metadata=i.metadata,
            )
            for i in items
        ]

    # ------------------------------------------------------------------ planning

    def lookup(self, conn: Connection) -> Any:
        """A cache look-up function for the planner, reading through ``conn``."""

        def look(key: str) -> CachedResult | None:
            hit = runs.lookup_cache(conn, key)
            if hit is None:
                return None
            tid, outs = hit
            return CachedResult(
                tuple(OutputDigest(o.name, o.digest, o.size, o.content_type, o.codec) for o in outs), tid
            )

        return look

    def lookup_many(
        self,
        conn: Connection,
        found: dict[str, tuple[int, list[runs.OutputRecord]]] | None = None,
        failed: dict[str, int] | None = None,
    ) -> Callable[[Sequence[str]], dict[str, CachedResult]]:
        """A cache look-up of many keys for the planner (one query per 1,000 keys), reading through ``conn``.

        What it finds is also put in ``found`` (``{key: (task id, outputs)}``, with inline bytes),
        and with ``failed`` the keys whose step failed before (``runs.failed_earlier``), in the same queries.
        """

        def look(keys_: Sequence[str]) -> dict[str, CachedResult]:
            hits = runs.lookup_cache_many(conn, keys_, failed)
            if found is not None:
                found.update(hits)
            return {
                k: CachedResult(
                    tuple(OutputDigest(o.name, o.digest, o.size, o.content_type, o.codec) for o in outs), tid
                )
                for k, (tid, outs) in hits.items()
            }

        return look

    def plan(
        self,
        pipeline: Pipeline | Choice | str,
        inputs: Sequence[InputRef],
        params: Mapping[str, Any] | None = None,
        force: bool = False,
        actor: Actor | None = None,
    ) -> Plan:
        """A dry run: which tasks would run and which are cached. Changes nothing.

        A string is a registered name or, when ``actor`` (by default the home's admin, as the
        embedded Python API acts) is a site admin, a reference; see :func:`registry.choose`.
        """
        with self.home.db.read() as conn:
            if isinstance(pipeline, str):
                pipeline = registry.choose(conn, actor or self.home.admin, pipeline, self.home.settings.image_patterns)
        p = resolve_pipeline(pipeline)
        with self.home.db.read() as conn:
            return plan(
                p,
                inputs,
                split_params(p, params),
                force=force,
                resolve_image=self.resolve_image,
                lookup_many=self.lookup_many(conn),
            )

    # ------------------------------------------------------------------ submitting

    def submit(
        self,
        actor: Actor,
        pipeline: Pipeline | Choice | str,
        inputs: Sequence[InputRef],
        *,
        source: str | None = None,
        dest: str | None = None,
        params: Mapping[str, Any] | None = None,
        force: bool = False,
        reason: str = "",
        executor: str | None = None,
        dataflow_id: int | None = None,
        dataflow_version: int | None = None,
        parent_run_id: int | None = None,
        conn: Connection | None = None,
        scheduler: Scheduler | None = None,
        skip_failed: bool = False,
    ) -> int:
        """Record a run (queued) of ``pipeline`` over ``inputs``; returns its id.

        Pass ``conn`` to record it inside the caller's write transaction (a trigger advancing its
        cursor). A pipeline without a reference can only be run by ``scheduler`` (in this process).
        A string is what ``actor`` chose: a registered name, or a reference if ``actor`` is a site
        admin (:func:`registry.choose`); anything else is refused before anything is loaded.
        With ``skip_failed`` (runs triggers make), a task whose key already failed in its step is
        not run again: it is ``skipped`` with the note "failed earlier (see run N)". Runs a user
        asks for (``datamill run``, ``runs retry``, ``flow run``) leave it False and run them again.
        """
        refuse_command_executor(executor)
        opts = _Submission(source, dest, params, force, reason, executor, dataflow_id, dataflow_version)
        if conn is not None:
            p, ref, places = self._admit(conn, actor, pipeline, inputs, opts, scheduler)
            # A run handed to a scheduler with skip_failed: it needs the failed keys too (hand_over).
            prepared = self._prepare(conn, p, inputs, opts, failures=skip_failed and scheduler is not None)
            # One transaction: the places _admit checked still hold (not checked twice).
            return self._record(conn, actor, p, ref, prepared, opts, parent_run_id, scheduler, skip_failed, places)
        # Choosing and checking the pipeline, binding its apps (their versions are asked over HTTP),
        # resolving images and looking up the cache happen before the write transaction: it holds
        # the database's write lock, which nothing slow should.
        with _collector_paused():
            with self.home.db.read() as rconn:
                p, ref, _places = self._admit(rconn, actor, pipeline, inputs, opts, scheduler)
                prepared = self._prepare(rconn, p, inputs, opts)
            with self.home.db.write() as wconn:
                run_id = self._record(wconn, actor, p, ref, prepared, opts, parent_run_id, scheduler, skip_failed)
                # The scheduler that will drive the run takes its lease and its rows as recorded
                # here: its driver then makes no transaction and reads nothing before its first claim.
                handed = None
                if isinstance(scheduler, Scheduler) and run_id in scheduler.plans:
                    handed = scheduler.hand_over(wconn, run_id, scheduler.plans[run_id], actor)
            if handed is not None and isinstance(scheduler, Scheduler):
                scheduler.receive(run_id, handed)
            return run_id

    def _admit(
        self,
        conn: Connection,
        actor: Actor,
        pipeline: Pipeline | Choice | str,
        inputs: Sequence[InputRef],
        opts: _Submission,
        scheduler: Scheduler | None,
    ) -> tuple[Pipeline, str | None, _Places]:
        """The pipeline (chosen and loaded), its reference and the run's places (:meth:`_places`), after
        checking that it may run here."""
        if isinstance(pipeline, str):
            pipeline = registry.choose(conn, actor, pipeline, self.home.settings.image_patterns)
        p = resolve_pipeline(pipeline)
        ref = pipeline.ref if isinstance(pipeline, Choice) else p.ref
        if ref is None and scheduler is None:
            raise InvalidInput(
                f"pipeline {p.name!r} was built in Python and has no reference; run it with pipeline.run(...) "
                "or Engine.run(...), or load it from a module or file"
            )
        if not inputs and any(p.per_item(s.name) or s.uses_items for s in p):
            where = f"folder {opts.source!r} has no items" if opts.source else "no items were given"
            raise InvalidInput(
                f"no input items for pipeline {p.name!r}: {where}; upload files first or choose another source"
            )
        return p, ref, self._places(conn, actor, inputs, opts)

    def _places(self, conn: Connection, actor: Actor, inputs: Sequence[InputRef], opts: _Submission) -> _Places:
        """The run's source and destination (normalised) and their folder ids, once ``actor`` may use them."""
        source, dest = opts.source, opts.dest
        src_id = dest_id = None
        if source:
            source = "/".join(split_path(source))
            require(conn, actor, source, Level.READ)
            src_id = lookups.folder_id(conn, source)
            if src_id is None:  # an admin passes require() even for a folder that does not exist
                raise NotFound(f"no folder {source!r}, or you may not see it", path=source)
        if dest:
            dest = "/".join(split_path(dest))
            # A missing folder and one the caller may not read get the same answer: no existence oracle.
            dest_id = lookups.readable_folder_id(conn, actor, dest)
            if dest_id is None:
                raise NotFound(
                    f"no destination folder {dest!r}, or you may not see it; "
                    "create it with `datamill folder create` or choose another",
                    path=dest,
                )
            require(conn, actor, dest, Level.WRITE)
        for folder in dict.fromkeys(r.folder for r in inputs):  # each folder once, not once per item
            if level_on(conn, actor, folder) < Level.READ:
                raise NotFound(f"no folder {folder!r}, or you may not see it", path=folder)
        return source, dest, src_id, dest_id

    def _prepare(
        self, conn: Connection, p: Pipeline, inputs: Sequence[InputRef], opts: _Submission, failures: bool = False
    ) -> _Prepared:
        """What recording the run needs: its plan identity, and the earlier run it repeats, else its plan.

        An unforced run with the identity of an earlier run that may be copied now
        (:func:`replay.replayable`) is not planned at all: it is recorded as that run's copy.
        With ``failures``, the plan's cache look-up also finds the keys that failed (:attr:`Plan.failed`).
        """
        refs = canonical_inputs(inputs)
        images = image_digests(p, None, self.resolve_image)
        params = RunParams(p, opts.params)
        identity = dest_id = earlier = None
        if replay.can_replay(p):
            dest_id = lookups.folder_id(conn, "/".join(split_path(opts.dest))) if opts.dest else None
            identity = replay.plan_identity(p, refs, params.steps, images, opts.source or None, dest_id, params)
            if not opts.force:
                earlier = replay.find_earlier(conn, identity)
            if earlier is not None and not replay.replayable(conn, earlier, p, dest_id, lock=False):
                earlier = None
        if earlier is not None:
            return _Prepared(identity, dest_id, earlier, None, {}, images, params, refs)
        the_plan, hits = self._plan_with_cache(conn, p, inputs, opts, images, params, failures)
        return _Prepared(identity, dest_id, None, the_plan, hits, images, params, refs)

    def _plan_with_cache(
        self,
        conn: Connection,
        p: Pipeline,
        inputs: Sequence[InputRef],
        opts: _Submission,
        images: Mapping[str, str],
        params: RunParams,
        failures: bool = False,
    ) -> tuple[Plan, dict[str, tuple[int, list[runs.OutputRecord]]]]:
        """The run's plan, its cache look-ups made in bulk (one query per 1,000 keys), and what they found
        (with ``failures``, the keys that failed before too: :attr:`Plan.failed`)."""
        found: dict[str, tuple[int, list[runs.OutputRecord]]] = {}
        failed: dict[str, int] | None = {} if failures else None
        the_plan = plan(
            p,
            inputs,
            params.steps,
            force=opts.force,
            images=images,
            resolve_image=self.resolve_image,
            lookup_many=self.lookup_many(conn, found, failed),
            mirror=opts.source or None,
            run_params=params,
        )
        if failed is not None:
            the_plan = dataclasses.replace(the_plan, failed=failed)
        return the_plan, found

    def _record(
        self,
        conn: Connection,
        actor: Actor,
        p: Pipeline,
        ref: str | None,
        prepared: _Prepared,
        opts: _Submission,
        parent_run_id: int | None,
        scheduler: Scheduler | None,
        skip_failed: bool,
        places: _Places | None = None,
    ) -> int:
        """The write transaction of :meth:`submit`: check again (unless ``places`` were checked in this
        transaction already), record the run, end it if all was cached."""
        source, dest, src_id, dest_id = places or self._places(conn, actor, prepared.inputs(), opts)
        folder_id = dest_id or src_id
        earlier = prepared.earlier
        if earlier is not None and (
            dest_id != prepared.dest_id or not replay.replayable(conn, earlier, p, dest_id, lock=True)
        ):
            earlier = None  # changed since it was checked: planned after all (rare; holds the write lock)
        the_plan = prepared.plan
        new_tasks: list[runs.NewTask] = []
        if earlier is None:
            if the_plan is None:
                the_plan, hits = self._plan_with_cache(conn, p, prepared.refs, opts, prepared.images, prepared.params)
                prepared = dataclasses.replace(prepared, plan=the_plan, hits=hits)
            new_tasks = self._new_tasks(conn, p, the_plan, prepared.hits, dest)
        run_id = runs.create_run(
            conn,
            pipeline_ref=ref or f"<python:{p.name}>",
            pipeline_name=p.name,
            tasks=new_tasks,
            inputs=[input_ref_to_dict(r) for r in prepared.inputs()],
            requested_by=actor.id,
            reason=opts.reason,
            force=bool(opts.force),
            # image digests resolved now hold for the whole run: a retag while it runs changes nothing
            params={**prepared.params.recorded(), **_images(p, prepared.images)},
            encoder=prepared.params.encoder,
            source_folder=source,
            dest_folder=dest,
            dest_folder_id=folder_id,
            folder_id=folder_id,
            dataflow_id=opts.dataflow_id,
            dataflow_version=opts.dataflow_version,
            executor=opts.executor or self.home.settings.executor,
            parent_run_id=parent_run_id,
            skip_failed=skip_failed and not opts.force,
            plan_digest=prepared.identity,
            replay_of=earlier,
        )
        if scheduler is not None and the_plan is not None:
            # The plan is handed over: the scheduler does not plan the run again.
            scheduler.plans[run_id] = the_plan
            if ref is None:
                scheduler.pipelines[run_id] = p
        return run_id

    def _new_tasks(
        self,
        conn: Connection,
        p: Pipeline,
        the_plan: Plan,
        hits: dict[str, tuple[int, list[runs.OutputRecord]]],
        dest: str | None,
    ) -> list[runs.NewTask]:
        """The tasks to record; those the cache answers, and whose outputs are already published (or
        not published), are recorded as cached with them. The others are queued for a scheduler:
        it publishes what must be published, in its own batches."""
        answers: dict[str, tuple[int, list[runs.OutputRecord]]] = {}
        publishing: dict[str, list[tuple[str, str, str]]] = {}
        for t in the_plan.tasks:
            if t.decision != "cached" or t.refused is not None or t.key not in hits:
                continue
            src, outs = hits[t.key]
            if not dest:
                publish = []
            elif any(o.name == PROVENANCE_OUTPUT for o in outs):
                try:
                    publish = publish_plan(the_plan, t, outs)
                except DatamillError:  # two outputs would get one name: its scheduler fails it, saying so
                    continue
            else:  # the plan named the cached outputs already (what publish_plan would do again)
                publish = [(o.name, o.published_name, "") for o in t.outputs if o.publish]
            answers[t.id] = (src, outs)
            if publish:
                publishing[t.id] = publish
        if publishing and dest:
            # No claims: a run recorded now is newer than every run that published or referenced them.
            current = Publisher(self.home).current_at(
                conn, {place_of(dest, pub) for publish in publishing.values() for _o, pub, _c in publish}, claims=False
            )
            for tid, publish in publishing.items():
                src, outs = answers[tid]
                recorded = already_published(dest, the_plan.task(tid), publish, outs, current)
                if recorded is None:
                    del answers[tid]  # something must be published: the scheduler does it
                else:
                    answers[tid] = (src, recorded)
        uses_item = {s.name: s.uses_item for s in p.steps}
        out = []
        for t in the_plan.tasks:  # in topological order
            if t.id in answers and any(d not in answers for d in t.deps):
                # Its input is left to the scheduler, and may yet fail to publish: so is this task.
                del answers[t.id]
            answer = answers.get(t.id)
            out.append(
                runs.NewTask(
                    planned_id=t.id,
                    step=t.step,
                    step_code=t.step_code,
                    key=t.key,
                    deps=t.deps,
                    params=t.params,
                    max_attempts=t.max_attempts,
                    item_version_id=t.item.version_id if t.item is not None else None,
                    item_name=t.item.path if t.item is not None else None,
                    item_digest=t.item.digest if t.item is not None and uses_item[t.step] else None,
                    cached_from=answer[0] if answer else None,
                    outputs=answer[1] if answer else (),
                )
            )
        return out

    def run(
        self,
        actor: Actor,
        pipeline: Pipeline | Choice | str,
        inputs: Sequence[InputRef],
        *,
        executor: str | None = None,
        workers: int | None = None,
        **options: Any,
    ) -> RunInfo:
        """Submit a run and execute it here with a scheduler of our own; returns the finished run."""

        async def go() -> int:
            sched = Scheduler(self.home, executor or self.home.settings.executor, workers=workers)
            async with sched:
                run_id = await asyncio.to_thread(
                    self.submit, actor, pipeline, inputs, executor=sched.executor.name, scheduler=sched, **options
                )
                await sched.run_until_idle([run_id])
                return run_id

        run_id = run_to_end(go())
        return self.get_run(actor, run_id)

    # ------------------------------------------------------------------ reading

    def _visible(self, conn: Connection, actor: Actor, row: Any) -> bool:
        if actor.is_admin or row.requested_by == actor.id:
            return True
        for path in (row.source_folder, row.dest_folder):
            if path and lookups.readable_folder_id(conn, actor, path) is not None:
                return True
        return False

    def _run_row(self, conn: Connection, actor: Actor, run_id: int) -> Any:
        row = conn.execute(select(Run).where(Run.id == run_id)).first()
        if row is None or not self._visible(conn, actor, row):
            raise NotFound(f"no run {run_id}; list runs with `datamill runs ls`", run_id=run_id)
        return row

    def get_run(self, actor: Actor, run_id: int) -> RunInfo:
        """A run with its task counts, without what the actor may not read (see :mod:`datamill.store.visibility`)."""
        with self.home.db.read() as conn:
            self._run_row(conn, actor, run_id)
            out = runs.get_run(conn, run_id)
            assert out is not None
            return RunInfo.from_dict(Visibility(conn, actor).runs([out])[0])

    def list_runs(self, actor: Actor, limit: int = 50, status: str | None = None) -> list[RunInfo]:
        """Runs the actor may see, newest first, without what the actor may not read."""
        with self.home.db.read() as conn:
            rows = conn.execute(select(Run).order_by(Run.id.desc()).limit(limit * 4 if limit else None)).all()
            shown = [r for r in rows if self._visible(conn, actor, r) and (not status or r.status == status)]
            shown = shown[:limit] if limit else shown
            found = runs.load_run_params(conn, shown)  # only the sets of the runs shown (each set once)
            out = [runs.run_dict(r, found) for r in shown]
            return [RunInfo.from_dict(r) for r in Visibility(conn, actor).runs(out)]

    def tasks(self, actor: Actor, run_id: int) -> list[runs.TaskRow]:
        """A run's tasks, without what the actor may not read of their inputs."""
        with self.home.db.read() as conn:
            row = self._run_row(conn, actor, run_id)
            return self._redacted(Visibility(conn, actor), row, runs.list_tasks(conn, run_id))

    def task_page(
        self, actor: Actor, run_id: int, after: int, limit: int, inline_bytes: int
    ) -> tuple[list[runs.TaskRow], dict[str, tuple[int, dict[str, Any] | None]]]:
        """Up to ``limit`` of a run's tasks with ids above ``after`` (redacted, their ``params`` left
        empty) and what :func:`~datamill.engine.paramsets.load_listed` says of their sets."""
        with self.home.db.read() as conn:
            row = self._run_row(conn, actor, run_id)
            page = runs.list_tasks(conn, run_id, with_params=False, after=after, limit=limit)
            sets = paramsets.load_listed(conn, {t.params_digest for t in page}, inline_bytes)
            return self._redacted(Visibility(conn, actor), row, page), sets

    def param_set(self, actor: Actor, run_id: int, digest: str) -> dict[str, Any]:
        """One parameter set of a run: the run's own or one of its tasks'.

        Not found alike when the run is not the actor's to see, when the run does not use the set
        and when there is no such set: which sets exist is not for the caller to learn.
        """
        with self.home.db.read() as conn:
            row = self._run_row(conn, actor, run_id)
            used = digest in paramsets.run_digests(row.params_digest, row.params_meta) or (
                conn.execute(
                    select(Task.id).where(Task.run_id == run_id, Task.params_digest == digest).limit(1)
                ).first()
                is not None
            )
            found = paramsets.load(conn, [digest]) if used else {}
            if digest not in found:
                raise NotFound(
                    f"run {run_id} has no parameter set {digest}; its tasks (GET /runs/{run_id}/tasks) name theirs",
                    run_id=run_id,
                )
            return found[digest]

    def item_tasks(self, actor: Actor, run_id: int, offset: int, limit: int) -> tuple[list[runs.TaskRow], int]:
        """The tasks of one page of a run's items (see :func:`~datamill.engine.tasks.item_page`), redacted."""
        from datamill.engine.tasks import item_page

        with self.home.db.read() as conn:
            row = self._run_row(conn, actor, run_id)
            page, total = item_page(conn, run_id, offset, limit)
            return self._redacted(Visibility(conn, actor), row, page), total

    def step_links(self, actor: Actor, run_id: int) -> tuple[list[str], list[tuple[str, str]]]:
        """A run's steps in plan order and which feeds which."""
        from datamill.engine.tasks import step_links

        with self.home.db.read() as conn:
            self._run_row(conn, actor, run_id)
            return step_links(conn, run_id)

    def task(self, actor: Actor, task_id: int) -> runs.TaskRow:
        """One task, without what the actor may not read of its inputs."""
        with self.home.db.read() as conn:
            t, row = self._task_row(conn, actor, task_id)
            return self._redacted(Visibility(conn, actor), row, [t])[0]

    def _task_row(self, conn: Connection, actor: Actor, task_id: int) -> tuple[runs.TaskRow, Any]:
        """A task as recorded and its run's row.

        A task of a run the actor may not see is not found, exactly like a missing one.
        """
        t = runs.get_task(conn, task_id)
        row = None if t is None else conn.execute(select(Run).where(Run.id == t.run_id)).first()
        if t is None or row is None or not self._visible(conn, actor, row):
            raise NotFound(f"no task {task_id}", task_id=task_id)
        return t, row

    @staticmethod
    def _redacted(vis: Visibility, row: Any, tasks: list[runs.TaskRow]) -> list[runs.TaskRow]:
        """Tasks of the run ``row`` as ``vis``'s actor may see them (copies where something is hidden)."""
        run = runs.run_dict(row)
        fields = [{k: getattr(t, k) for k in _TASK_INPUT_FIELDS} for t in tasks]
        vis.load_tasks(fields, [run])
        out = []
        for t, f in zip(tasks, fields, strict=True):
            shown = vis.task(f, run)
            out.append(t if shown is f else dataclasses.replace(t, **shown))
        return out

    # ------------------------------------------------------------------ control

    def cancel(self, actor: Actor, run_id: int) -> bool:
        """Request cancellation: queued tasks are cancelled now, running ones killed by their scheduler."""
        with self.home.db.write() as conn:
            row = self._run_row(conn, actor, run_id)
            if not (actor.is_admin or row.requested_by == actor.id):
                dest = row.dest_folder or row.source_folder
                if not dest or level_on(conn, actor, dest) < Level.WRITE:
                    raise PermissionDenied(f"you may not cancel run {run_id}")
            return runs.request_cancel(conn, run_id, actor.id, row.dest_folder_id)

    def retry(self, actor: Actor, run_id: int) -> int:
        """Resume a run as a new run over the same inputs: finished tasks are cached, the rest run again."""
        with self.home.db.read() as conn:
            row = self._run_row(conn, actor, run_id)
            vis = Visibility(conn, actor)
            run = runs.run_dict(row)
            if not vis.inputs_readable(run) or (row.dest_folder and not vis.readable(row.dest_folder)):
                # Checked here so that the errors of submit() do not name folders the actor may not read.
                raise PermissionDenied(
                    f"you may not retry run {run_id}: it reads or writes folders you may not read; "
                    "ask its requester or an admin of its folders"
                )
            if row.status not in (runs.RunStatus.FAILED, runs.RunStatus.CANCELLED):
                raise InvalidInput(f"run {run_id} is {row.status}; only failed or cancelled runs can be retried")
            choice = registry.readmit(conn, actor, row.pipeline_ref, f"run {run_id}", self.home.settings.image_patterns)
            user_params = runs.run_params(conn, row)["user"]
        return self.submit(
            actor,
            choice,
            [input_ref_from_dict(d) for d in row.inputs],
            source=row.source_folder,
            dest=row.dest_folder,
            params=user_params,
            reason=f"retry of run {run_id}",
            executor=row.executor,
            dataflow_id=row.dataflow_id,
            dataflow_version=row.dataflow_version,
            parent_run_id=run_id,
        )

    # ------------------------------------------------------------------ explaining

    def why(self, actor: Actor, task_id: int) -> WhyInfo:
        """A task's key parts and, for a task that ran, what differs from the nearest earlier task of its step."""
        return WhyInfo.from_dict(self._why(actor, task_id))

    def _why(self, actor: Actor, task_id: int) -> dict[str, Any]:
        with self.home.db.read() as conn:
            t, row = self._task_row(conn, actor, task_id)
            vis = Visibility(conn, actor)
            # Item names and digests in the parts are shown only to who may read the task's inputs.
            mine_readable = vis.task_side_readable(t.item_name, runs.run_dict(row))
            parts = self._parts(conn, row, t)
            out: dict[str, Any] = {
                "task": t.id,
                "run": t.run_id,
                "step": t.step,
                "status": t.status,
                "key": t.key,
                "parts": parts if mine_readable else _hide_item_parts(parts),
            }
            image = _image_named(row, parts.get("image"))
            if image is not None:
                out["image"] = image
            if t.status == runs.TaskStatus.CACHED:
                out["explanation"] = f"cached: task {t.cached_from} had the same key and its outputs were reused"
                return out
            earlier = conn.execute(
                select(Task)
                .where(Task.step == t.step, Task.id < t.id, Task.key.is_not(None), Task.key != t.key)
                .order_by(Task.id.desc())
                .limit(50)
            ).all()
            best: tuple[int, list[str], int] | None = None
            both_readable = mine_readable
            for e in earlier:
                erun = conn.execute(select(Run).where(Run.id == e.run_id)).one()
                if not self._visible(conn, actor, erun):
                    continue  # never compare with (and so name) a task of a run the actor may not see
                try:
                    eparts = self._parts(conn, erun, runs.task_row(e, {}))  # its key parts come from its plan
                except Exception:  # its pipeline no longer loads: skip it
                    continue
                diff = keys.diff_parts(eparts, parts)
                if best is None or len(diff) < len(best[1]):
                    best = (e.id, diff, e.run_id)
                    both_readable = mine_readable and vis.task_side_readable(e.item_name, runs.run_dict(erun))
                if best and len(best[1]) <= 1:
                    break
            if best is None:
                out["explanation"] = f"ran: no earlier task of step {t.step!r} had a key to compare with"
            else:
                if not both_readable:
                    best = (best[0], [_hide_item_label(d) for d in best[1]], best[2])
                out["nearest"] = {"task": best[0], "run": best[2], "differs": best[1]}
                out["explanation"] = (
                    f"ran: compared with task {best[0]} (run {best[2]}), these parts differ: {', '.join(best[1])}"
                )
            return out

    def _parts(self, conn: Connection, row: Any, t: runs.TaskRow) -> dict[str, Any]:
        pipeline = load_pipeline(row.pipeline_ref)
        params = runs.run_params(conn, row)
        the_plan = plan(
            pipeline,
            [input_ref_from_dict(d) for d in row.inputs],
            params["steps"],
            images=params.get("images"),
            resolve_image=self.resolve_image,
            mirror=row.source_folder,
        )
        pt = the_plan.task(t.planned_id)
        upstream: dict[str, list[runs.OutputRecord]] = {}
        for dep in pt.deps:
            dep_row = conn.execute(select(Task.id).where(Task.run_id == row.id, Task.planned_id == dep)).scalar()
            got = runs.get_task(conn, dep_row) if dep_row is not None else None
            upstream[dep] = got.outputs if got is not None else []
        return the_plan.key_parts_for(pt, upstream)

    # ------------------------------------------------------------------ logs

    def log_text(self, actor: Actor, task_id: int) -> str:
        """A task's log so far (running: from its live file; finished: from its blob)."""
        return "".join(self.iter_log(actor, task_id, follow=False))

    def log_access(self, actor: Actor, task_id: int) -> runs.TaskRow:
        """The task (as recorded) if the actor may read its log, which may quote its inputs.

        Only who may read the task's inputs may (see :mod:`datamill.store.visibility`); others get
        PermissionDenied, naming nothing. Every way of reading a log must call this first.
        """
        with self.home.db.read() as conn:
            t, row = self._task_row(conn, actor, task_id)
            if not Visibility(conn, actor).task_side_readable(t.item_name, runs.run_dict(row)):
                raise PermissionDenied(
                    f"the log of task {task_id} may quote inputs you may not read; "
                    "ask someone who may read the run's source folder"
                )
            return t

    def iter_log(self, actor: Actor, task_id: int, follow: bool = False, poll: float = 0.2) -> Iterator[str]:
        """A task's log text in chunks; with ``follow``, until the task ends.

        Access is checked at the call, before the first chunk, so a refusal is an error answer
        rather than a broken stream.
        """
        t = self.log_access(actor, task_id)
        return self._log_chunks(actor, t, follow, poll)

    def _log_chunks(self, actor: Actor, t: runs.TaskRow, follow: bool, poll: float) -> Iterator[str]:
        import time

        task_id = t.id
        live = self.home.path / "logs" / f"task-{task_id}.log"
        offset = 0
        while True:
            if t.log_digest:
                data = self.home.blobs.read(t.log_digest).decode("utf-8", "replace")
                yield data[offset:]
                return
            if live.exists():
                with open(live, encoding="utf-8", errors="replace") as f:
                    f.seek(offset)
                    chunk = f.read()
                    offset += len(chunk.encode("utf-8"))
                if chunk:
                    yield chunk
            if not follow or t.status in runs.FINISHED_TASK:
                return
            time.sleep(poll)
            t = self.log_access(actor, task_id)


_collector = threading.Lock()
#: how many submits run with the cyclic garbage collector paused, and whether it was on before
_paused = {"holders": 0, "was_enabled": False}


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a run is planned and recorded.

    Planning and recording a big run makes tens of thousands of small objects with no cycles (plan
    tasks, rows, events); each allocation burst would trigger collections that walk every live
    object again, a large share of an unchanged re-run's time. Reference counting still frees
    everything; the collector resumes (once the last concurrent submit ends) as it was.
    """
    with _collector:
        if _paused["holders"] == 0:
            _paused["was_enabled"] = gc.isenabled()
            gc.disable()
        _paused["holders"] += 1
    try:
        yield
    finally:
        with _collector:
            _paused["holders"] -= 1
            if _paused["holders"] == 0 and _paused["was_enabled"]:
                gc.enable()


def _images(p: Pipeline, images: Mapping[str, str]) -> dict[str, Any]:
    """The run's ``images`` parameter (the image digests resolved for it) and ``step_images``
    (each container step's image, for provenance: see :func:`~datamill.engine.containers.step_images`)."""
    if not images:
        return {}
    steps = {s.name: s.image for s in p.steps if s.image is not None}
    return {"images": dict(images), "step_images": steps}


def _image_named(row: Any, digest: str | None) -> str | None:
    """The image (as its step names it) whose digest, resolved for run ``row``, is ``digest``."""
    if not digest:
        return None
    images = (row.params_meta or {}).get("images") or {}
    return next((str(name) for name, d in images.items() if d == digest), None)


def _is_item_label(label: str) -> bool:
    """Whether a key-part input label names an input item (``item:a.csv``, ``items[0]:a.csv``)."""
    return label.startswith(("item:", "items["))


def _hide_item_label(part: str) -> str:
    """A part name of ``why`` (``inputs.item:a.csv``) without the item's name."""
    label = part.removeprefix("inputs.")
    if label == part or not _is_item_label(label):
        return part
    return f"inputs.{label.split(':', 1)[0]}:{HIDDEN}"


def _hide_item_parts(parts: dict[str, Any]) -> dict[str, Any]:
    """Key parts without the names and digests of input items."""
    shown = [
        [f"{label.split(':', 1)[0]}:{HIDDEN}", HIDDEN] if _is_item_label(str(label)) else [label, digest]
        for label, digest in parts.get("inputs") or []
    ]
    return {**parts, "inputs": shown}
