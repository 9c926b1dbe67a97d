"""Runs and tasks: plan, submit, read, wait for, cancel and retry runs; explain tasks and read their logs.

Routes (under ``/api/v1``):

* ``POST /plan``: a dry run (which tasks would run, which are cached); changes nothing
* ``GET /runs?limit=N&status=S``: runs you may see, newest first
* ``POST /runs``: record a run; the server's scheduler executes it (``datamill up`` runs one)
* ``GET /runs/{id}?wait=S``: a run with its task counts; with ``wait``, answers once the run has
  ended or ``S`` seconds (at most 60) have passed
* ``GET /runs/{id}/tasks``; ``POST /runs/{id}/cancel``; ``POST /runs/{id}/retry`` (a new run)
* ``GET /tasks/{id}``; ``GET /tasks/{id}/why``; ``GET /tasks/{id}/logs?follow=true`` (text; with
  ``follow``, streams until the task ends)

Each handler calls the embedded client acting as the caller, so access rules and results are the
same as with ``datamill`` on a local home.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import iterate_in_threadpool

from datamill.api.broadcast import EventBroadcaster
from datamill.api.deps import ActorDep, HomeDep, blocking
from datamill.api.ids import RunId, TaskId
from datamill.api.openapi import OBJECT, OBJECTS, errors, json_of, text
from datamill.api.routes.events import EventStreamResponse
from datamill.client.local import LocalClient
from datamill.engine.runs import FINISHED_RUN
from datamill.errors import Conflict

router = APIRouter(tags=["runs"])

MAX_WAIT = 60.0

PIPELINE_DOC = "A pipeline reference the server can load: module:attr, /path/file.py:attr or /path/file.yaml."


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


def _client(home: Any, actor: Any) -> LocalClient:
    return LocalClient(home, actor)


@router.post(
    "/plan",
    responses={**errors(400, 403, 404, 409), 200: json_of("The plan.", OBJECT)},
    summary="Plan a run (dry run)",
)
async def plan_run(body: PlanRequest, actor: ActorDep, home: HomeDep) -> JSONResponse:
    """Which tasks a run of ``pipeline`` over ``folder`` would run and which it would take from the cache."""
    result = await blocking(_client(home, actor).plan, body.pipeline, body.folder, body.params, body.force)
    return JSONResponse(result)


@router.get(
    "/runs",
    responses={**errors(400), 200: json_of("The runs.", OBJECTS)},
    summary="List runs",
)
async def list_runs(
    actor: ActorDep,
    home: HomeDep,
    limit: int = Query(50, ge=1, le=10_000, description="At most this many runs."),
    status: str | None = Query(None, description="Only runs in this state: queued, running, succeeded, ..."),
) -> JSONResponse:
    """Runs you may see, newest first."""
    return JSONResponse(await blocking(_client(home, actor).runs, limit, status))


@router.post(
    "/runs",
    response_model=RunCreated,
    status_code=201,
    responses=errors(400, 403, 404, 409),
    summary="Submit a run",
)
async def submit_run(request: Request, body: RunRequest, actor: ActorDep, home: HomeDep) -> JSONResponse:
    """Record a run over the items of ``folder``; the server's scheduler executes it."""
    if body.require_scheduler and getattr(request.app.state, "services", None) is None:
        raise Conflict(
            "this server runs no scheduler, so nothing would execute the run; start it with `datamill up`, "
            "or run the pipeline on the home directly (without --url)"
        )
    run_id = await blocking(
        _client(home, actor).submit_run,
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
    responses={**errors(404), 200: json_of("The run.", OBJECT)},
    summary="Get a run",
)
async def get_run(
    request: Request,
    run_id: RunId,
    actor: ActorDep,
    home: HomeDep,
    wait: float = Query(0, ge=0, le=MAX_WAIT, description="Seconds to wait for the run to end."),
) -> JSONResponse:
    """A run with its task counts (``counts`` by status, ``steps``: step -> status -> n)."""
    client = _client(home, actor)
    broadcaster: EventBroadcaster = request.app.state.broadcaster
    deadline = time.monotonic() + wait
    while True:
        cursor = await blocking(home.events.latest)
        info = await blocking(client.run_info, run_id)
        remaining = deadline - time.monotonic()
        if info["status"] in FINISHED_RUN or remaining <= 0 or broadcaster.closed:
            return JSONResponse(info)
        # Any new event may be this run's; reading it again is cheap.
        await broadcaster.wait(cursor, remaining)


@router.get(
    "/runs/{run_id}/tasks",
    responses={**errors(404), 200: json_of("Its tasks.", OBJECTS)},
    summary="List a run's tasks",
)
async def list_tasks(run_id: RunId, actor: ActorDep, home: HomeDep) -> JSONResponse:
    """A run's tasks in plan order, with their outputs."""
    return JSONResponse(await blocking(_client(home, actor).tasks, run_id))


@router.post(
    "/runs/{run_id}/cancel",
    response_model=Cancelled,
    responses=errors(403, 404),
    summary="Cancel a run",
)
async def cancel_run(run_id: RunId, actor: ActorDep, home: HomeDep) -> dict[str, Any]:
    """Cancel queued tasks now and running ones as soon as their scheduler sees it."""
    return {"ok": True, "cancelled": await blocking(_client(home, actor).cancel_run, run_id)}


@router.post(
    "/runs/{run_id}/retry",
    response_model=RunCreated,
    status_code=201,
    responses=errors(400, 403, 404, 409),
    summary="Retry a run",
)
async def retry_run(run_id: RunId, actor: ActorDep, home: HomeDep) -> JSONResponse:
    """A new run over the same inputs as a failed or cancelled one; finished tasks come from the cache."""
    return JSONResponse({"id": await blocking(_client(home, actor).retry_run, run_id)}, status_code=201)


@router.get(
    "/tasks/{task_id}",
    responses={**errors(404), 200: json_of("The task.", OBJECT)},
    summary="Get a task",
)
async def get_task(task_id: TaskId, actor: ActorDep, home: HomeDep) -> JSONResponse:
    """One task with its outputs."""
    return JSONResponse(await blocking(_client(home, actor).task, task_id))


@router.get(
    "/tasks/{task_id}/why",
    responses={**errors(404), 200: json_of("The explanation.", OBJECT)},
    summary="Explain a task",
)
async def why(task_id: TaskId, actor: ActorDep, home: HomeDep) -> JSONResponse:
    """Why a task ran or was cached: its key parts and what differs from the nearest earlier task."""
    return JSONResponse(await blocking(_client(home, actor).why, task_id))


class LogStreamResponse(EventStreamResponse):
    """A task's log as plain text, ended when the client disconnects."""

    media_type = "text/plain; charset=utf-8"


@router.get(
    "/tasks/{task_id}/logs",
    summary="Read a task's log",
    response_class=LogStreamResponse,
    responses={**errors(404), 200: text("The log text (with `follow`, streamed until the task ends).", "text/plain")},
)
async def task_logs(
    task_id: TaskId,
    actor: ActorDep,
    home: HomeDep,
    follow: bool = Query(False, description="Keep streaming until the task ends."),
) -> LogStreamResponse:
    """The log of a task so far; with ``follow``, the stream stays open until the task ends."""
    client = _client(home, actor)
    await blocking(client.task, task_id)  # errors (no such task, not yours) as JSON, before streaming
    chunks = client.logs(task_id, follow=follow)
    return LogStreamResponse(iterate_in_threadpool(chunks), headers={"Cache-Control": "no-cache"})
