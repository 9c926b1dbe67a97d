"""Runs and tasks: plan, submit, read, wait for, cancel and retry runs; explain tasks and read their logs.

Routes (under ``/api/v1``):

* ``POST /plan``: a dry run (which tasks would run, which are cached); changes nothing
* ``GET /runs?limit=N&status=S``: runs you may see, newest first
* ``POST /runs``: record a run; the server's scheduler executes it (``datamill up`` runs one)
* ``GET /runs/{id}?wait=S``: a run with its task counts; with ``wait``, answers once the run has
  ended or ``S`` seconds (at most 60) have passed
* ``GET /runs/{id}/tasks?after=T&limit=N``: a page of a run's tasks, each naming its parameter set;
  ``GET /runs/{id}/params/{digest}``: one of the run's parameter sets
* ``POST /runs/{id}/cancel``; ``POST /runs/{id}/retry`` (a new run)
* ``GET /tasks/{id}``; ``GET /tasks/{id}/why``; ``GET /tasks/{id}/logs?follow=true`` (text; with
  ``follow``, streams until the task ends)

Each handler calls the service layer (:class:`datamill.service.Service`) acting as the caller, so
access rules and results are the same as with ``datamill`` on a local home.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from datamill.api.broadcast import EventBroadcaster
from datamill.api.deps import ActorDep, GuardDep, HomeDep, ServiceDep, TokenDep, blocking, service_for
from datamill.api.ids import RunId, TaskId
from datamill.api.openapi import errors, text
from datamill.api.routes.events import EventStreamResponse
from datamill.api.schemas import ListedTaskOut, PlanOut, RunOut, TaskOut, WhyOut, fast_json, list_of, plain
from datamill.api.streams import GONE, Follower, StreamGuard, read_bytes
from datamill.engine.runs import FINISHED_RUN, FINISHED_TASK
from datamill.errors import Conflict, DatamillError, Unavailable
from datamill.home import Home
from datamill.limits import INT64_MAX
from datamill.store.access import Actor

router = APIRouter(tags=["runs"])

MAX_WAIT = 60.0

PIPELINE_DOC = (
    "A registered pipeline name (GET /pipelines); site admins may also give a reference the server can load: "
    "module:attr, /path/file.py:attr or /path/file.yaml."
)


class PlanRequest(BaseModel):
    """What to plan: a pipeline over the items of a folder."""

    pipeline: str = Field(description=PIPELINE_DOC)
    folder: str = Field(description="The folder whose items are the inputs.")
    params: dict[str, Any] = Field(default_factory=dict, description="Step parameters: {'step.param': value}.")
    force: bool = Field(False, description="Plan every task to run, ignoring the cache.")


class RunRequest(PlanRequest):
    """A run to record."""

    dest: str | None = Field(None, description="The folder published outputs go to.")
    reason: str = Field("", description="Why the run was made (shown in listings).")
    executor: str | None = Field(None, description="Recorded with the run; the server's scheduler runs it.")
    require_scheduler: bool = Field(
        False, description="Refuse (409) instead of recording the run when this server runs no scheduler."
    )


class RunCreated(BaseModel):
    """The id of a recorded run."""

    id: int


class Cancelled(BaseModel):
    """Whether a cancel was requested (false: the run had already ended)."""

    ok: bool = True
    cancelled: bool


@router.post(
    "/plan",
    response_model=PlanOut,
    responses=errors(400, 403, 404, 409),
    summary="Plan a run (dry run)",
)
async def plan_run(body: PlanRequest, service: ServiceDep) -> JSONResponse:
    """Which tasks a run of ``pipeline`` over ``folder`` would run and which it would take from the cache."""
    result = await blocking(service.plan, body.pipeline, body.folder, body.params, body.force)
    return JSONResponse(plain(result))


@router.get(
    "/runs",
    response_model=list_of(RunOut),
    responses=errors(400),
    summary="List runs",
)
async def list_runs(
    service: ServiceDep,
    limit: int = Query(50, ge=1, le=10_000, description="At most this many runs."),
    status: str | None = Query(None, description="Only runs in this state: queued, running, succeeded, ..."),
) -> JSONResponse:
    """Runs you may see, newest first."""
    return JSONResponse(plain(await blocking(service.runs, limit, status)))


@router.post(
    "/runs",
    response_model=RunCreated,
    status_code=201,
    responses=errors(400, 403, 404, 409),
    summary="Submit a run",
)
async def submit_run(request: Request, body: RunRequest, service: ServiceDep) -> JSONResponse:
    """Record a run over the items of ``folder``; the server's scheduler executes it."""
    if body.require_scheduler and getattr(request.app.state, "services", None) is None:
        raise Conflict(
            "this server runs no scheduler, so nothing would execute the run; start it with `datamill up`, "
            "or run the pipeline on the home directly (without --url)"
        )
    run_id = await blocking(
        service.submit_run,
        body.pipeline,
        body.folder,
        body.dest,
        body.params,
        body.force,
        body.reason,
        body.executor,
    )
    return JSONResponse({"id": run_id}, status_code=201)


@router.get(
    "/runs/{run_id}",
    response_model=RunOut,
    responses=errors(404),
    summary="Get a run",
)
async def get_run(
    request: Request,
    run_id: RunId,
    actor: ActorDep,
    token: TokenDep,
    guard: GuardDep,
    home: HomeDep,
    wait: float = Query(0, ge=0, le=MAX_WAIT, description="Seconds to wait for the run to end."),
) -> JSONResponse:
    """A run with its task counts (``counts`` by status, ``steps``: step -> status -> n)."""
    if wait <= 0:
        return JSONResponse(plain(await blocking(service_for(home, actor).run_info, run_id)))
    broadcaster: EventBroadcaster = request.app.state.broadcaster
    deadline = time.monotonic() + wait

    def check(who: Actor) -> None:
        service_for(home, who).run_info(run_id)

    # While it waits, the token and the caller's access to the run are re-checked (StreamGuard).
    with guard.follow(token, actor, check, ("run", run_id)) as follower:
        while True:
            cursor = await guard.read(home.events.latest)
            info = await guard.read(service_for(home, follower.actor).run_info, run_id)
            remaining = deadline - time.monotonic()
            if info.status in FINISHED_RUN or remaining <= 0 or broadcaster.closed:
                return JSONResponse(plain(info))
            # Any new event may be this run's; reading it again is cheap.
            if not await follower.pause(broadcaster.wait, cursor, remaining):
                assert follower.reason is not None
                if isinstance(follower.reason, Unavailable):
                    return JSONResponse(plain(info))
                raise follower.reason


@router.get(
    "/runs/{run_id}/tasks",
    response_model=list_of(ListedTaskOut),
    responses=errors(404),
    summary="List a run's tasks",
)
async def list_tasks(
    run_id: RunId,
    service: ServiceDep,
    after: int = Query(0, ge=0, le=INT64_MAX, description="The id of the last task of the previous page (paging)."),
    limit: int = Query(1000, ge=1, le=10_000, description="At most this many tasks."),
) -> Response:
    """A page of a run's tasks in plan order (by id), with their outputs. A page shorter than ``limit`` is the last.

    Each task names its parameter set (``params_digest``, ``params_size`` in bytes of canonical
    JSON); ``params`` holds it only when it is at most 16 KiB, else it is null: read it once with
    ``GET /runs/{id}/params/{digest}``, however many tasks share it.
    """
    page = await blocking(service.task_page, run_id, after, limit)
    return fast_json(page)


@router.get(
    "/runs/{run_id}/params/{digest}",
    response_model=dict[str, Any],
    responses=errors(404),
    summary="Get a run's parameter set",
)
async def get_param_set(
    run_id: RunId,
    service: ServiceDep,
    digest: str = PathParam(
        max_length=80, description="A `params_digest` of one of the run's tasks (or of the run's own parameters)."
    ),
) -> Response:
    """One parameter set of a run; 404 for a digest the run does not use, as for one that does not exist."""
    return fast_json(await blocking(service.param_set, run_id, digest))


@router.post(
    "/runs/{run_id}/cancel",
    response_model=Cancelled,
    responses=errors(403, 404),
    summary="Cancel a run",
)
async def cancel_run(run_id: RunId, service: ServiceDep) -> dict[str, Any]:
    """Cancel queued tasks now and running ones as soon as their scheduler sees it."""
    return {"ok": True, "cancelled": await blocking(service.cancel_run, run_id)}


@router.post(
    "/runs/{run_id}/retry",
    response_model=RunCreated,
    status_code=201,
    responses=errors(400, 403, 404, 409),
    summary="Retry a run",
)
async def retry_run(run_id: RunId, service: ServiceDep) -> JSONResponse:
    """A new run over the same inputs as a failed or cancelled one; finished tasks come from the cache."""
    return JSONResponse({"id": await blocking(service.retry_run, run_id)}, status_code=201)


@router.get(
    "/tasks/{task_id}",
    response_model=TaskOut,
    responses=errors(404),
    summary="Get a task",
)
async def get_task(task_id: TaskId, service: ServiceDep) -> JSONResponse:
    """One task with its outputs."""
    return JSONResponse(plain(await blocking(service.task, task_id)))


@router.get(
    "/tasks/{task_id}/why",
    response_model=WhyOut,
    responses=errors(404),
    summary="Explain a task",
)
async def why(task_id: TaskId, service: ServiceDep) -> JSONResponse:
    """Why a task ran or was cached: its key parts and what differs from the nearest earlier task."""
    return JSONResponse(plain(await blocking(service.why, task_id)))


class LogStreamResponse(EventStreamResponse):
    """A task's log as plain text, ended when the client disconnects."""

    media_type = "text/plain; charset=utf-8"


#: A log is read (and sent) at most this many bytes at a time.
LOG_CHUNK = 64 * 1024


def closing_line(reason: DatamillError) -> str:
    """The last line of a followed log closed by the server: why (a plain-text log has no other way)."""
    return f"\n[datamill] log stream closed: {reason.message}\n"


async def _log_text(
    home: Home, guard: StreamGuard, follower: Follower | None, actor: Actor, task_id: int
) -> AsyncIterator[str]:
    """A task's log; with a follower, until the task ends, the follower is closed or the client leaves.

    Reads are short ones in threads (a chunk of the live file, a chunk of the stored log);
    between them a follower awaits the shared :class:`~datamill.api.streams.LogTailer`.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    t = await guard.read(service_for(home, actor).engine.task, actor, task_id)
    status, digest = t.status, t.log_digest
    live = guard.tailer.live_path(task_id)
    offset = 0
    while True:
        if digest:
            # Ended: the stored log holds every line, the ones already sent included.
            async for chunk in guard.iterate(home.blobs.iter_range(digest, offset)):
                yield decoder.decode(chunk)
            break
        data = await guard.read(read_bytes, live, offset, LOG_CHUNK)
        if data:
            offset += len(data)
            yield decoder.decode(data)
            continue
        if follower is None or status == GONE or status in FINISHED_TASK:
            break
        if not await follower.pause(guard.tailer.wait, task_id, offset):
            assert follower.reason is not None
            yield decoder.decode(b"", final=True) + closing_line(follower.reason)
            return
        seen = guard.tailer.state(task_id)
        if seen is not None:
            status, digest = seen
    yield decoder.decode(b"", final=True)


@router.get(
    "/tasks/{task_id}/logs",
    summary="Read a task's log",
    response_class=LogStreamResponse,
    responses={**errors(404), 200: text("The log text (with `follow`, streamed until the task ends).", "text/plain")},
)
async def task_logs(
    task_id: TaskId,
    actor: ActorDep,
    token: TokenDep,
    guard: GuardDep,
    home: HomeDep,
    follow: bool = Query(False, description="Keep streaming until the task ends."),
) -> LogStreamResponse:
    """The log of a task so far; with ``follow``, the stream stays open until the task ends.

    A followed log ends early, with a last line saying why, once the token is revoked or expires
    or the caller loses access to the run.
    """
    client = service_for(home, actor)
    # errors (no such task, not yours, its input not readable) as JSON, before streaming
    await blocking(client.engine.log_access, actor, task_id)
    follower = None
    if follow:

        def check(who: Actor) -> None:
            service_for(home, who).engine.log_access(who, task_id)

        follower = guard.open_follower(token, actor, check, ("task", task_id), log_task=task_id)
    return LogStreamResponse(
        _log_text(home, guard, follower, actor, task_id),
        follower=follower,
        guard=guard,
        headers={"Cache-Control": "no-cache"},
    )
