"""Batches: named selections of items a pipeline runs over; their per-item by per-step status, live.

Routes (under ``/api/v1``):

* ``GET /batches``, ``POST /batches`` (from folders, a search, item paths and/or another batch's outputs)
* ``GET|DELETE /batches/{name}``; ``GET /batches/{name}/status`` (the grid and the counts)
* ``GET /batches/{name}/stream``: ``text/event-stream`` of ``status`` events (the grid, each time it
  changes), ending after the run has ended
* ``POST /batches/{name}/start``, ``POST /batches/{name}/retry`` (only failures), ``POST
  /batches/{name}/duplicate``
* ``GET /batches/{name}/download``: every output of the latest run as a zip, streamed

A batch shows each caller only the items (and outputs) of folders they may read.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from datamill.api.deps import ActorDep, GuardDep, HomeDep, ServiceDep, TokenDep, blocking, service_for
from datamill.api.openapi import binary, errors, event_stream
from datamill.api.routes.events import EventStreamResponse, sse_error
from datamill.api.schemas import BatchOut, BatchStatusOut, Done, list_of, plain
from datamill.api.streams import Follower, StreamGuard
from datamill.dataflows.records import BatchStatus
from datamill.errors import Unavailable
from datamill.home import Home
from datamill.records import FINISHED_RUN

router = APIRouter(tags=["batches"])


class SearchIn(BaseModel):
    """Items below ``folder`` by name glob and metadata, as ``datamill find`` takes them."""

    folder: str
    name: str | None = None
    metadata: dict[str, Any] | None = None
    recursive: bool = True


class BatchCreate(BaseModel):
    """A new batch; its items come from any of folders, search, paths and from_batch."""

    name: str = Field(description="1-100 letters, digits, '_', '-' or '.'.")
    pipeline: str = Field(description="A registered pipeline name (site admins may give a reference).")
    dest: str = Field(description="The folder outputs are published to.")
    folders: list[str] = Field(default_factory=list, description="Every item of these folders.")
    recursive: bool = Field(False, description="With folders: their subfolders too.")
    search: SearchIn | None = None
    paths: list[str] = Field(default_factory=list, description="Item paths (a pasted list).")
    from_batch: str | None = Field(None, description="The outputs of this batch's latest run.")
    params: dict[str, Any] = Field(default_factory=dict, description="Step parameters: {'step.param': value}.")
    description: str = ""


class BatchCopy(BaseModel):
    """The new batch's name."""

    name: str


class RunStarted(BaseModel):
    """The run recorded (the server's scheduler executes it)."""

    run: int


@router.get("/batches", response_model=list_of(BatchOut), summary="List batches")
async def list_batches(service: ServiceDep) -> JSONResponse:
    """The batches you may see, by name."""
    return JSONResponse(plain(await blocking(service.batches)))


@router.post(
    "/batches", status_code=201, response_model=BatchOut, responses=errors(400, 403, 404, 409), summary="Create a batch"
)
async def create_batch(body: BatchCreate, service: ServiceDep) -> JSONResponse:
    """Record a batch (not started) of the items selected."""
    svc = service
    info = await blocking(
        lambda: svc.create_batch(
            body.name,
            body.pipeline,
            body.dest,
            folders=body.folders,
            recursive=body.recursive,
            search=body.search.model_dump(exclude_none=True) if body.search else None,
            paths=body.paths,
            from_batch=body.from_batch,
            params=body.params,
            description=body.description,
        )
    )
    return JSONResponse(plain(info), status_code=201)


@router.get("/batches/{name}", response_model=BatchOut, responses=errors(404), summary="Get a batch")
async def get_batch(name: str, service: ServiceDep) -> JSONResponse:
    """One batch: its items (those you may read), runs and counts."""
    return JSONResponse(plain(await blocking(service.batch, name)))


@router.delete("/batches/{name}", response_model=Done, responses=errors(403, 404), summary="Delete a batch")
async def delete_batch(name: str, service: ServiceDep) -> dict[str, Any]:
    """Forget a batch; its runs and outputs stay."""
    await blocking(service.delete_batch, name)
    return {"ok": True}


@router.get(
    "/batches/{name}/status", response_model=BatchStatusOut, responses=errors(404), summary="A batch's status grid"
)
async def batch_status(name: str, service: ServiceDep) -> JSONResponse:
    """Per item, per step: the task's status and progress in the latest run; counts of items."""
    return JSONResponse(plain(await blocking(service.batch_status, name)))


@router.post(
    "/batches/{name}/start",
    status_code=201,
    response_model=RunStarted,
    responses=errors(400, 403, 404),
    summary="Start a batch",
)
async def start_batch(
    name: str, service: ServiceDep, executor: str | None = Query(None, description="inline or local.")
) -> JSONResponse:
    """Record a run of the batch's pipeline over its items' current versions."""
    return JSONResponse({"run": await blocking(service.start_batch, name, executor)}, status_code=201)


@router.post(
    "/batches/{name}/retry",
    status_code=201,
    response_model=RunStarted,
    responses=errors(400, 403, 404, 409),
    summary="Retry a batch's failures",
)
async def retry_batch(name: str, service: ServiceDep) -> JSONResponse:
    """A new run in which only what failed runs again (the rest is reused)."""
    return JSONResponse({"run": await blocking(service.retry_batch, name)}, status_code=201)


@router.post(
    "/batches/{name}/duplicate",
    status_code=201,
    response_model=BatchOut,
    responses=errors(400, 403, 404, 409),
    summary="Duplicate a batch",
)
async def duplicate_batch(name: str, body: BatchCopy, service: ServiceDep) -> JSONResponse:
    """A new batch (yours, not started) of the same items you may read, pipeline and parameters."""
    return JSONResponse(plain(await blocking(service.duplicate_batch, name, body.name)), status_code=201)


@router.get(
    "/batches/{name}/download",
    summary="Download a batch's outputs as a zip",
    response_class=StreamingResponse,
    responses={**errors(404), 200: binary("A zip of every output of the latest run.", "application/zip")},
)
async def download_batch(name: str, service: ServiceDep) -> StreamingResponse:
    """Every output the batch's latest run published (that you may read), streamed as one zip."""
    chunks = await blocking(service.batch_zip, name)
    first = await blocking(next, chunks, b"")  # access and existence are checked before the answer starts
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

    def rest() -> Any:
        yield first
        yield from chunks

    return StreamingResponse(
        rest(), media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="{safe}.zip"'}
    )


def sse_status(status: BatchStatus) -> str:
    """One grid as a ``status`` event."""
    return f"event: status\ndata: {json.dumps(status.to_dict(), separators=(',', ':'))}\n\n"


async def _stream(
    request: Request, home: Home, guard: StreamGuard, follower: Follower, name: str
) -> AsyncIterator[str]:
    broadcaster = request.app.state.broadcaster
    keepalive: float = request.app.state.sse_keepalive
    yield "retry: 3000\n: connected\n\n"
    last: str | None = None
    cursor = await guard.read(home.events.latest)
    while not broadcaster.closed and follower.reason is None:
        status = await guard.read(service_for(home, follower.actor).batch_status, name)
        text = sse_status(status)
        if text != last:
            yield text
            last = text
        if status.run_status in FINISHED_RUN:
            break
        latest = await guard.read(home.events.latest)
        if latest > cursor:
            cursor = latest
            continue
        guard.caught_up(follower)
        if not await follower.pause(broadcaster.wait, cursor, keepalive):
            break
    if follower.reason is not None and not isinstance(follower.reason, Unavailable):
        yield sse_error(follower.reason)


@router.get(
    "/batches/{name}/stream",
    summary="Stream a batch's status (SSE)",
    response_class=EventStreamResponse,
    responses={
        **errors(404),
        200: event_stream("`status` events, each one's `data` a BatchStatus.", "#/components/schemas/BatchStatus"),
    },
)
async def stream_batch(
    request: Request, name: str, actor: ActorDep, token: TokenDep, guard: GuardDep, home: HomeDep
) -> Any:
    """The grid each time it changes, until the batch's run has ended."""
    await blocking(service_for(home, actor).batch_status, name)  # a 404 before the stream starts
    follower = guard.open_follower(token, actor)
    return EventStreamResponse(
        _stream(request, home, guard, follower, name),
        follower=follower,
        guard=guard,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
