"""One attempt at a task: its work directory, its step on an executor, and its end (a :class:`Done`).

Python steps run on the run's executor (inline, or the local process pool) as
``PythonCall(run_step, (call,))``. Command steps run on the command executor, whatever the run's
executor is: it owns the command's process group, so a timeout or a cancellation stops the command
and everything it started. Container steps run on the container executor
(:mod:`datamill.engine.containers` turns the task into a ``ContainerCall``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Union

from datamill.engine.apps import run_app_step
from datamill.engine.dagster_step import run_dagster_step
from datamill.engine.ends import MAX_ERROR, Done, failure_kind
from datamill.engine.planner import Plan, PlannedTask
from datamill.engine.publish import publish_plan
from datamill.engine.tasks import TaskRow, TaskStatus
from datamill.engine.workdir import Materialized, TaskLog, WorkDirs
from datamill.errors import Cancelled, DatamillError, InvalidPipeline, StepFailed, TaskTimeout
from datamill.executors.base import (
    CommandCall,
    Executor,
    LogMessage,
    Message,
    OnMessage,
    ProgressMessage,
    PythonCall,
    get_executor,
)
from datamill.pipeline.runner import (
    ItemInput,
    StepCall,
    StepResult,
    UpstreamInput,
    collect_outputs,
    command_argv,
    command_env,
    prepare_dirs,
    resolve_step,
    run_step,
)
from datamill.pipeline.runner import made as _made
from datamill.pipeline.step import Step

from .containers import run_container_step

log = logging.getLogger("datamill.scheduler")

#: progress reported and not recorded yet: task id -> (run id, fraction, message)
Progress = dict[int, tuple[int, float, str]]


async def run_command_step(
    executor: Executor,
    call: StepCall,
    on_message: OnMessage,
    timeout: float | None = None,
    step: Step | None = None,
) -> StepResult:
    """Run a command step on ``executor`` (the command executor); returns what it wrote to ``call.output_dir``.

    The command runs in ``call.scratch_dir`` with :func:`command_env` set; its stdout and stderr
    lines (one stream, in the order written) reach ``on_message`` as log messages. ``timeout``
    defaults to the step's. Raises ``StepFailed`` (it exited non-zero, or could not be started) and
    ``TaskTimeout``, naming the step.
    """
    started = time.perf_counter()
    step = step or resolve_step(call)
    if step.kind != "command":
        raise InvalidPipeline(f"step '{step.name}' is not a command step", step=step.name)
    prepare_dirs(call)
    argv = command_argv(call, step)
    command = CommandCall(argv, cwd=str(call.scratch_dir), env=command_env(call, step), merge_stderr=True)
    limit = step.timeout if timeout is None else timeout
    try:
        await executor.run(command, on_message, timeout=limit)
    except TaskTimeout:
        raise TaskTimeout(
            f"step '{step.name}': the command ran past its timeout of {limit:g} s and was stopped with the "
            "processes it started; raise the step's timeout or make it faster",
            step=step.name,
        ) from None
    except StepFailed as exc:
        raise _command_failed(step, argv, exc) from None
    return StepResult(tuple(collect_outputs(call.output_dir)), time.perf_counter() - started)


def _command_failed(step: Step, argv: list[str], exc: StepFailed) -> StepFailed:
    """The error of a command step from the command executor's, in the step's words."""
    detail = exc.detail if isinstance(exc.detail, dict) else {}
    reason = detail.get("reason")
    if reason == "exited":
        code = detail.get("exit_code")
        last = "\n".join(detail.get("stderr") or [])
        return StepFailed(
            f"step '{step.name}': command '{argv[0]}' exited with status {code}"
            + (f"; its last output:\n{last}" if last else "; it printed nothing"),
            step=step.name,
            returncode=code,
        )
    if reason == "not_found":
        return StepFailed(
            f"step '{step.name}': command '{argv[0]}' not found; install it or fix the step's command", step=step.name
        )
    if reason == "not_executable":
        return StepFailed(f"step '{step.name}': command '{argv[0]}' is not executable", step=step.name)
    return StepFailed(f"step '{step.name}': {exc.message}", step=step.name)


def _value_call(
    the_plan: Plan, pt: PlannedTask, dirs: tuple[Path, Path], got: Materialized, made: bool = False
) -> StepCall:
    """The call that runs ``pt`` on values: its items read from their blob files, linked where named only if asked.

    Built here in one go, as :meth:`Plan.step_call` would build it and then set ``in_memory`` and
    the items' sources: that meant parsing every path again and copying the call twice, which cost
    more than a trivial step. ``dirs``: the attempt's output and scratch directories
    (:meth:`WorkDirs.attempt_paths`), made only if the step needs them.

    ``made``: the call and its items are made without their dataclasses' ``__init__`` (what it
    checks and converts holds by construction here: paths are paths or strings, ``items`` a tuple,
    the step found by reference or bytes). For the pool, where a call is built, pickled and
    dropped, and its ``__init__`` cost about as much as its pickling.
    """
    (step, ref, step_bytes, params, in_memory), _, item, items, task_id = _step_fields(the_plan, pt, dirs, got)
    new_item: Callable[..., ItemInput] = _MADE_ITEM if made else ItemInput
    new_call: Callable[..., StepCall] = _MADE_CALL if made else StepCall
    ups = got.upstream
    return new_call(
        step=step,
        output_dir=dirs[0],
        scratch_dir=dirs[1],
        pipeline_ref=ref,
        step_bytes=step_bytes,
        # the plan's mapping, shared by the step's tasks: the local pool sends it to a worker once
        params=params,
        item=None if item is None else new_item(ref=item[0], path=item[1], source=item[2]),
        items=tuple([new_item(ref=r, path=path, source=source) for r, path, source in items]),
        upstream={w.param: UpstreamInput(w.step, tuple(tuple(ups[tid]) for tid in w.tasks), w.many) for w in pt.wires},
        task_id=task_id,
        in_memory=in_memory,
    )


def _template(the_plan: Plan, step: Step, pt: PlannedTask) -> tuple[Any, ...]:
    """The fields of ``pt``'s call that every call of its step in the run has alike (its step, how to
    find it, its parameters, ``in_memory``): the template of :meth:`Constants.template_of`."""
    ref = the_plan.pipeline.ref
    return (step.name, ref, None if ref else the_plan.pipeline.pickled_step(step.name), pt.params, True)


def _step_fields(
    the_plan: Plan,
    pt: PlannedTask,
    dirs: tuple[Any, Any],
    got: Materialized,
    step: Step | None = None,
    template: tuple[Any, ...] | None = None,
) -> tuple[Any, ...]:
    """What :func:`_value_call` puts in the call of ``pt`` (but its upstream values), as the fields a
    pool's ``submit_step`` takes and :func:`_value_call` builds its call from: the template (alike
    for the step's calls in the run; :func:`_template`, or ``template`` when given), the attempt's
    output and scratch directories (``dirs``: :meth:`WorkDirs.attempt_paths`, or
    :meth:`WorkDirs.attempt_parts` for a pool), its item and items as ``(ref, path, source)``, and
    the task's id. ``step``: ``pt``'s, when the caller has it."""
    if step is None:
        step = the_plan.pipeline.step(pt.step)
    files, sources = got.item_files, got.sources
    if template is None:
        template = _template(the_plan, step, pt)
    item = None
    if pt.item is not None:
        at = got.item_path or pt.item.path  # a property that formats a string: once
        item = (pt.item, files.get(at), sources.get(at))
    items = tuple((r, files.get(r.path), sources.get(r.path)) for r in the_plan.inputs) if step.uses_items else ()
    return template, dirs, item, items, pt.id


_MADE_ITEM = functools.partial(_made, ItemInput)
_MADE_CALL = functools.partial(_made, StepCall)


class LoopEnd:
    """The end of an attempt run in a batch in the event loop (:meth:`Attempts.start`), read as an
    asyncio task's (``done``, ``result``, ``cancel``) without a task of its own.

    Cancelling one cancels its batch: the attempts of the batch not run yet end as cancelled.
    """

    __slots__ = ("batch", "end")

    def __init__(self) -> None:
        self.batch: asyncio.Task[None] | None = None
        self.end: Done | None = None

    def done(self) -> bool:
        """Whether the attempt ended (or its batch ended without it: cancelled or failed)."""
        assert self.batch is not None
        return self.end is not None or self.batch.done()

    def result(self) -> Done:
        """The attempt's end; raises ``CancelledError`` (or the batch's error) when it did not run."""
        if self.end is not None:
            return self.end
        assert self.batch is not None
        self.batch.result()  # the batch was cancelled, or failed
        raise asyncio.CancelledError  # it ended without this attempt: it was cancelled

    def cancel(self) -> bool:
        """Cancel the batch (the attempts of it that have not run)."""
        assert self.batch is not None
        return self.batch.cancel()


class _Heard:
    """A pool's attempt's ``on_message`` (called with each message), with its log file made when the
    first message comes: most tasks have none, and a closure and a log file per call cost more
    than their share of a trivial task. (Not the :class:`PoolEnd` itself: the call's handle holds
    its ``on_message``, and the end holds the handle.)"""

    __slots__ = ("attempts", "log", "t")

    def __init__(self, attempts: Attempts, t: TaskRow) -> None:
        self.attempts, self.t = attempts, t
        self.log: TaskLog | None = None

    @property
    def log_file(self) -> TaskLog:
        """The attempt's log file (made when first asked for)."""
        if self.log is None:
            self.log = TaskLog(self.attempts.workdirs.log_file(self.t.id))
        return self.log

    def __call__(self, msg: Message) -> None:
        _heard(self.attempts.progress, self.t, self.log_file, msg)


class PoolEnd:
    """An attempt handed to a pool's :meth:`~datamill.executors.local.LocalExecutor.submit`, read as
    an asyncio task's (``done``, ``result``, ``cancel``) without a task of its own.

    Its :class:`Done` is made when it is first read (by the driver collecting ends), from the
    call's result or error, as :meth:`Attempts.run` makes it.
    """

    __slots__ = ("_end", "attempts", "base", "got", "heard", "pt", "publishes", "submitted", "t", "the_plan")

    def __init__(
        self,
        attempts: Attempts,
        the_plan: Plan,
        t: TaskRow,
        pt: PlannedTask,
        base: str,
        got: Materialized,
        publishes: bool,
    ) -> None:
        self.attempts = attempts
        #: the executor's handle (``future``, ``cancel()``), set once the call is handed over
        self.submitted: Any = None
        self.the_plan, self.t, self.pt, self.base, self.got = the_plan, t, pt, base, got
        self.publishes = publishes
        #: the call's ``on_message``, and its log file
        self.heard = _Heard(attempts, t)
        self._end: Done | None = None

    @property
    def future(self) -> asyncio.Future[Any]:
        """What to wait on: the call's own future."""
        future: asyncio.Future[Any] = self.submitted.future
        return future

    def done(self) -> bool:
        """Whether the call ended (or was cancelled)."""
        return bool(self.submitted.future.done())

    def result(self) -> Done:
        """The attempt's end; raises ``CancelledError`` when it was cancelled."""
        if self._end is None:
            self._end = self.attempts.ended(self)
        return self._end

    def cancel(self) -> bool:
        """Withdraw the call, or stop it if it runs."""
        return bool(self.submitted.cancel())


class _Ended:
    """A call that ended before it reached the pool (it could not be made or pickled)."""

    __slots__ = ("executor", "future")

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future
        self.executor = None

    def cancel(self) -> bool:
        return False

    def waitable(self) -> asyncio.Future[Any]:
        return self.future


#: a batch's steps and call templates (:meth:`Attempts.start`): by step name, the parameters they
#: were made with (a task with other ones makes its own), the step and the template
_Templates = dict[str, tuple[Any, Step, tuple[Any, ...]]]

#: A running attempt as its driver holds it: an asyncio task, one attempt of a batch in the loop,
#: or a call handed to a pool.
Job = Union["asyncio.Task[Done]", LoopEnd, PoolEnd]


def waitables(jobs: Iterable[Job]) -> set[asyncio.Future[Any]]:
    """What to wait on for the unfinished ``jobs``: a batch's task once, not each of its attempts,
    and a pool's calls by the one future their pool resolves when any of them ends (the handle's
    ``waitable()``), not each call's: a waiter woken by it looks again at which jobs are done."""
    out: set[asyncio.Future[Any]] = set()
    pool: Any = None  # the pool whose one future is in already: its other calls need no look
    for j in jobs:
        kind = type(j)
        if kind is PoolEnd:
            submitted = j.submitted  # type: ignore[union-attr]
            if submitted.future.done() or submitted.executor is pool:
                continue
            pool = submitted.executor
            out.add(submitted.waitable())
        elif not j.done():
            out.add(j.batch if kind is LoopEnd else j)  # type: ignore[union-attr,arg-type]
    return out


def _heard(progress: Progress, t: TaskRow, log_file: TaskLog, msg: Message) -> None:
    """What an attempt's ``on_message`` does with a message: progress noted, log lines written."""
    if isinstance(msg, ProgressMessage):
        progress[t.id] = (t.run_id, msg.fraction, msg.message)
    elif isinstance(msg, LogMessage):
        log_file.write(msg.line.rstrip("\n") + "\n")


#: the log file of a pool's attempt that had no message, as :meth:`Attempts._succeeded` reads it:
#: never written (it is not ``used``), so nothing is kept
_NO_LOG = TaskLog(os.devnull)


def _runs_in_loop(the_plan: Plan, t: TaskRow) -> bool:
    """Whether ``t`` is a Python step without a timeout (its call, inline, runs in the loop's thread)."""
    pt = the_plan.task(t.planned_id)
    return pt.timeout is None and the_plan.pipeline.step(pt.step).kind == "python"


class Attempts:
    """Runs attempts at tasks: Python steps on ``executor``, command steps on ``commands``.

    Progress the steps report is left in ``progress`` for the scheduler to record in batches.
    """

    def __init__(
        self,
        executor: Executor,
        commands: Executor,
        workdirs: WorkDirs,
        progress: Progress,
        clock: Callable[[], float],
        containers: Executor | None = None,
        apps: Executor | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> None:
        self.executor = executor
        #: a pool's way to take a step's call by its fields (see ``LocalExecutor.submit_step``)
        self._submit_step: Callable[..., Any] | None = getattr(executor, "submit_step", None)
        #: HTTP app steps run here (see :mod:`datamill.engine.apps`); secrets fill their headers
        self.apps = apps
        self.secrets = dict(secrets or {})
        self.commands = commands
        self.containers = containers
        self.workdirs = workdirs
        self.progress = progress
        self.clock = clock
        #: Dagster steps' executor, made on the first Dagster step (nothing to start or close)
        self._dagster: Executor | None = None

    def dagster(self) -> Executor:
        """The executor Dagster steps run on, as many at once as command steps."""
        if self._dagster is None:
            self._dagster = get_executor("dagster", slots=self.commands.capacity)
        return self._dagster

    def start(self, the_plan: Plan, rows: list[TaskRow], tasks: dict[str, TaskRow], publishes: bool) -> list[Job]:
        """Start attempts at ``rows``; their jobs, in the same order.

        On an executor that runs calls in the event loop itself (the inline executor, untimed),
        Python steps without a timeout run one after the other in one asyncio task for the batch:
        each call ran to its end in its task's first step anyway, and a task per attempt (made,
        scheduled, awaited) cost more than a trivial step. Other attempts get a task each.
        """
        in_loop = bool(getattr(self.executor, "in_loop", False))
        submit = getattr(self.executor, "submit", None)
        jobs: list[Job] = []
        batch: list[tuple[LoopEnd, TaskRow]] = []
        # By step name: the parameters, the step and its calls' template
        # (:func:`_template`), made once for this batch's calls of a step: the pool then looks up
        # what a template names once for them (``Constants.step_call``, by the object).
        templates: _Templates = {}
        for t in rows:
            if in_loop and _runs_in_loop(the_plan, t):
                end = LoopEnd()
                batch.append((end, t))
                jobs.append(end)
                continue
            job = self._submit(submit, the_plan, t, tasks, publishes, templates) if submit is not None else None
            jobs.append(job if job is not None else asyncio.create_task(self.run(the_plan, t, tasks, publishes)))
        if batch:
            runner = asyncio.create_task(self._run_in_loop(the_plan, batch, tasks, publishes))
            for end, _t in batch:
                end.batch = runner
        return jobs

    def _submit(
        self,
        submit: Callable[..., Any],
        the_plan: Plan,
        t: TaskRow,
        tasks: dict[str, TaskRow],
        publishes: bool,
        templates: _Templates,
    ) -> PoolEnd | None:
        """Hand a Python step on values to the pool's ``submit`` (no asyncio task); None for the
        attempts that go through :meth:`run` (other kinds of steps, steps that need a work directory).
        ``templates``: the steps and templates of the batch's calls so far (see :meth:`start`)."""
        pt = the_plan.task(t.planned_id)
        known = templates.get(pt.step)
        if known is not None and known[0] is pt.params:
            step, template = known[1], known[2]
        else:
            step = the_plan.pipeline.step(pt.step)
            template = _template(the_plan, step, pt)
            templates[pt.step] = (pt.params, step, template)
        if step.kind != "python":
            return None
        base = self.workdirs.attempt_base(t)
        try:
            got = self.workdirs.values(base, the_plan, pt, tasks, step)
        except Exception:
            return None  # run() says what went wrong, as for any attempt
        if got is None:
            return None
        job = PoolEnd(self, the_plan, t, pt, base, got, publishes)
        try:
            submitted = None
            if self._submit_step is not None and not pt.wires:
                fields = _step_fields(the_plan, pt, self.workdirs.attempt_parts(base), got, step, template)
                submitted = self._submit_step(run_step, fields, job.heard, pt.timeout)
            if submitted is None:
                call = _value_call(the_plan, pt, self.workdirs.attempt_paths(base), got, made=True)
                submitted = submit(PythonCall(run_step, (call,)), job.heard, timeout=pt.timeout)
        except Exception as exc:  # the call could not be made or pickled: it ends now, as run() would end it
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
            submitted = _Ended(future)
        job.submitted = submitted
        return job

    def ended(self, job: PoolEnd) -> Done:
        """The end of an attempt handed to a pool, from its call's future (done): what :meth:`run`
        makes of the same result or error."""
        the_plan, t, pt, base, got = job.the_plan, job.t, job.pt, job.base, job.got
        future = job.submitted.future
        heard = job.heard
        try:
            result: StepResult = future.result()
            # Without a message there is no log file: nothing to keep, and none is made for it.
            logged = _NO_LOG if heard.log is None else heard.log
            d = self._succeeded(the_plan, t, pt, result, logged, got, True, job.publishes)
        except asyncio.CancelledError:
            heard.log_file.write("cancelled\n")
            shutil.rmtree(base, ignore_errors=True)
            raise
        except Exception as exc:
            d = self._failed(t, pt, exc, heard.log_file)
        finally:
            if heard.log is not None:
                heard.log.close()
        # Removed once recorded, if the step made it (see run()).
        d.work_base = base
        return d

    async def _run_in_loop(
        self, the_plan: Plan, batch: list[tuple[LoopEnd, TaskRow]], tasks: dict[str, TaskRow], publishes: bool
    ) -> None:
        for end, t in batch:
            end.end = await self.run(the_plan, t, tasks, publishes)

    async def run(self, the_plan: Plan, t: TaskRow, tasks: dict[str, TaskRow], publishes: bool = True) -> Done:
        """One attempt at ``t``; its end, failed or not, with its work directory to remove once recorded.

        ``publishes``: whether the run has a destination (else no published names are worked out).
        """
        # A string, made a Path only where a directory is used: most attempts (steps on values)
        # make none, and parsing paths cost more than a trivial step.
        base = self.workdirs.attempt_base(t)
        try:
            d = await self._attempt(base, the_plan, t, tasks, publishes)
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise
        # Removed by the scheduler once the end is recorded: in a thread, after the commit, instead
        # of in the event loop before it (removing a tree can take milliseconds on a busy disk). A
        # task that ran on values made none, unless it asked for an item's path: whether it is
        # there is looked at once per batch then, not with a stat per task here.
        d.work_base = base
        return d

    def _listener(self, t: TaskRow) -> tuple[TaskLog, OnMessage]:
        """An attempt's log file and the ``on_message`` that fills it and notes its progress."""
        # The log file (and its Path) is made with the first line: most tasks log nothing.
        log_file = TaskLog(self.workdirs.log_file(t.id))

        def on_message(msg: Message) -> None:
            _heard(self.progress, t, log_file, msg)

        return log_file, on_message

    async def _attempt(
        self, base: str, the_plan: Plan, t: TaskRow, tasks: dict[str, TaskRow], publishes: bool = True
    ) -> Done:
        pt = the_plan.task(t.planned_id)
        step = the_plan.pipeline.step(pt.step)
        log_file, on_message = self._listener(t)
        try:
            got = self.workdirs.values(base, the_plan, pt, tasks)
            if got is None and os.path.exists(base):
                # Left by a scheduler that died during this attempt (a reclaimed task keeps its
                # number). A call on values needs no such look: it makes its directory only if it
                # needs one, clearing what a dead attempt left there (``run_step``), and the
                # directory is removed after the attempt whoever made it.
                await asyncio.to_thread(shutil.rmtree, base, True)
            call, got, in_memory = self._call(base, the_plan, pt, tasks, got)
            result = await self._run_step(step, call, on_message, pt, t)
            return self._succeeded(the_plan, t, pt, result, log_file, got, in_memory, publishes)
        except asyncio.CancelledError:
            log_file.write("cancelled\n")
            raise
        except Exception as exc:
            return self._failed(t, pt, exc, log_file)
        finally:
            log_file.close()

    def _succeeded(
        self,
        the_plan: Plan,
        t: TaskRow,
        pt: PlannedTask,
        result: StepResult,
        log_file: TaskLog,
        got: Materialized,
        in_memory: bool,
        publishes: bool,
    ) -> Done:
        """The end of an attempt whose step returned ``result``: its outputs kept."""
        outputs = [self.workdirs.keep_output(o) for o in result.outputs]
        # Most tasks log nothing: then there is no log file to keep or remove.
        logged = log_file.path if log_file.used else None
        d = Done(t, pt, TaskStatus.SUCCEEDED, outputs=outputs, key=t.key, log_path=logged, inputs=got.inputs)
        if publishes:
            d.publish = publish_plan(the_plan, pt, outputs)
        if in_memory:  # a loop, not any() of a generator: most tasks have one output
            for o in outputs:
                if o.inline is None:
                    d.unsynced = True
                    break
        return d

    def _failed(self, t: TaskRow, pt: PlannedTask, exc: Exception, log_file: TaskLog) -> Done:
        """The end of an attempt that raised ``exc`` (its step failed, or keeping its outputs did)."""
        if isinstance(exc, (StepFailed, Cancelled, InvalidPipeline)):
            tb = exc.detail.get("traceback") if isinstance(exc.detail, dict) else None
            return self.failure(t, pt, exc.message, tb, log_file.path, failure_kind(exc))
        if isinstance(exc, DatamillError):
            return self.failure(t, pt, exc.message, None, log_file.path, "error")
        # a bug in materialising inputs or storing outputs
        log.error("task %s failed outside its step", t.id, exc_info=exc)
        return self.failure(t, pt, f"{type(exc).__name__}: {exc}", None, log_file.path, "scheduler")

    async def _run_step(
        self, step: Step, call: StepCall, on_message: OnMessage, pt: PlannedTask, t: TaskRow
    ) -> StepResult:
        """Run the step of ``call`` on the executor its kind runs on."""
        if step.kind == "command":
            return await run_command_step(self.commands, call, on_message, pt.timeout, step)
        if step.kind == "container":
            if self.containers is None:
                raise InvalidPipeline(f"step '{step.name}' runs a container, and no container executor is set")
            name = f"{getattr(self.containers, 'name_prefix', 'datamill-')}{t.id}-{t.attempts}"
            return await run_container_step(self.containers, call, on_message, pt, step, name)
        if step.kind == "dagster":
            return await run_dagster_step(self.dagster(), call, on_message, pt.timeout, step)
        if step.kind == "http":
            if self.apps is None:
                raise InvalidPipeline(f"step '{step.name}' is an HTTP app step; this scheduler has no HTTP executor")
            return await run_app_step(self.apps, call, on_message, step, pt.timeout, self.secrets)
        result: StepResult = await self.executor.run(PythonCall(run_step, (call,)), on_message, timeout=pt.timeout)
        return result

    def _call(
        self, base: str, the_plan: Plan, pt: PlannedTask, tasks: dict[str, TaskRow], got: Materialized | None
    ) -> tuple[StepCall, Materialized, bool]:
        """The call that runs ``pt``, its inputs, and whether it runs on values (no work directory).

        ``got``: its inputs as values (:meth:`WorkDirs.values`), or None if it needs a work directory.
        """
        if got is not None:
            return _value_call(the_plan, pt, self.workdirs.attempt_paths(base), got), got, True
        got = self.workdirs.materialize(base, the_plan, pt, tasks)
        call = the_plan.step_call(
            pt,
            output_dir=Path(f"{base}/out"),
            scratch_dir=Path(f"{base}/scratch"),
            item_files=got.item_files,
            upstream_outputs=got.upstream,
        )
        return call, got, False

    def failure(self, t: TaskRow, pt: PlannedTask, message: str, tb: str | None, log_path: Path, failure: str) -> Done:
        """A failed attempt; with a retry time if the task has attempts left."""
        if len(message) > MAX_ERROR:
            # An exception may carry its data (a whole file in a TypeError); the log has the rest.
            message = message[:MAX_ERROR] + " … (truncated; see the task log)"
        d = Done(t, pt, TaskStatus.FAILED, error=message, traceback=tb, key=t.key, log_path=log_path, failure=failure)
        if t.attempts < pt.max_attempts:
            d.retry_at = self.clock() + pt.retry_backoff * (2 ** (t.attempts - 1))
        return d
