"""Dataflows: create, list, read, edit (a new version each time), start, stop, run now, history, delete.

Routes (under ``/api/v1``):

* ``GET /dataflows``, ``POST /dataflows`` (created stopped)
* ``GET|PATCH|DELETE /dataflows/{name}`` (delete is refused while the dataflow runs)
* ``POST /dataflows/{name}/start``; ``POST /dataflows/{name}/stop?cancel=true`` (also cancels its
  runs in flight); ``POST /dataflows/{name}/run`` (one run over the source's current contents,
  executed by the server's scheduler)
* ``GET /dataflows/{name}/history``: every configuration version with the runs made under it

Handlers call the embedded client acting as the caller: the same validation and access rules as
``datamill flow`` on a local home.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictBool

from datamill.api.deps import ServiceDep, blocking
from datamill.api.openapi import errors
from datamill.api.schemas import DataflowOut, DataflowVersionOut, Done, list_of, plain
from datamill.errors import InvalidDataflow

router = APIRouter(tags=["dataflows"])


class DataflowCreate(BaseModel):
    """A new dataflow."""

    name: str = Field(description="1-100 letters, digits, '-', '_' or '.'.")
    kind: str = Field(
        "workflow",
        description="workflow (a pipeline over a folder), directory (site admins only) or stream (a Kafka topic).",
    )
    source: str = Field("", description="The folder it watches (workflow; none for a directory dataflow).")
    dest: str | None = Field(None, description="The folder results go to (outside the source).")
    destination: str | None = Field(None, description="Same as dest.")
    pipeline: str | None = Field(
        None,
        description="A registered pipeline name (GET /pipelines); site admins may also give a reference: "
        "module:attr, file.py:attr, file.yaml. Give this or image (workflow).",
    )
    image: str | None = Field(
        None,
        description="A container image (allowed by the allowed_images setting) whose default command gets each "
        "item's file and an output directory; instead of a pipeline.",
    )
    trigger: str = Field("new-items", description="new-items, manual or 'cron:<five fields>'.")
    params: dict[str, Any] = Field(default_factory=dict, description="Step parameters: {'step.param': value}.")
    description: str = ""
    webhooks: list[str] = Field(default_factory=list, description="URLs to POST run results to.")
    directory: str | None = Field(
        None, description="A directory dataflow's directory on the server, below one of its watch_roots."
    )
    watch: dict[str, Any] | None = Field(
        None,
        description="A directory dataflow's rules: include and exclude (lists of regexes), stable_seconds, "
        "poll, poll_interval, existing.",
    )
    topic: str | None = Field(None, description="The Kafka topic whose files it lands (stream).")
    broker: dict[str, str] = Field(
        default_factory=dict,
        description="Stream: bootstrap, security_protocol, sasl_mechanism, sasl_username, sasl_password; "
        "the server's kafka_* settings fill what is left out. The password is never shown back.",
    )
    partial_timeout_s: float | None = Field(
        None, description="Stream: seconds a partial file may go without a chunk before it is dropped (default 3600)."
    )
    recursive: StrictBool = Field(
        False,
        description="Workflow: items landed in the source's subfolders fire it too; each output lands in the "
        "destination's subfolder mirroring its item's.",
    )


class DataflowEdit(BaseModel):
    """Fields to change; the ones left out keep their value."""

    source: str | None = None
    dest: str | None = None
    destination: str | None = None
    pipeline: str | None = Field(None, description="A new pipeline (replaces an image).")
    image: str | None = Field(None, description="A new container image (replaces a pipeline).")
    trigger: str | None = None
    params: dict[str, Any] | None = None
    description: str | None = None
    webhooks: list[str] | None = None
    directory: str | None = None
    watch: dict[str, Any] | None = None
    topic: str | None = None
    broker: dict[str, str] | None = None
    partial_timeout_s: float | None = None
    recursive: StrictBool | None = None


class RunStarted(BaseModel):
    """The run recorded, or null when the source holds no items."""

    id: int | None


@router.get(
    "/dataflows",
    response_model=list_of(DataflowOut),
    summary="List dataflows",
)
async def list_dataflows(service: ServiceDep) -> JSONResponse:
    """The dataflows you may see, by name."""
    return JSONResponse(plain(await blocking(service.dataflows)))


@router.post(
    "/dataflows",
    status_code=201,
    response_model=DataflowOut,
    responses=errors(400, 403, 404, 409),
    summary="Create a dataflow",
)
async def create_dataflow(body: DataflowCreate, service: ServiceDep) -> JSONResponse:
    """Validate and save a dataflow (stopped); start it with ``POST /dataflows/{name}/start``."""
    dest = body.dest or body.destination
    if not dest:
        raise InvalidDataflow("destination: a destination folder is required (dest)", field="destination")
    if body.kind == "stream":
        if body.recursive:
            raise InvalidDataflow(
                "recursive: only a workflow dataflow watches the subfolders of a source; a stream dataflow "
                "lands files (keeping their subfolders) and has no source",
                field="recursive",
            )
        stream = await blocking(
            service.create_stream_dataflow,
            body.name,
            body.topic or "",
            dest,
            body.broker,
            body.description,
            body.partial_timeout_s,
        )
        return JSONResponse(plain(stream), status_code=201)
    info = await blocking(
        service.create_dataflow,
        body.name,
        body.source,
        dest,
        body.pipeline,
        body.trigger,
        body.params,
        body.description,
        body.webhooks,
        body.kind,
        body.directory,
        body.watch,
        body.image,
        body.recursive,
    )
    return JSONResponse(plain(info), status_code=201)


@router.get(
    "/dataflows/{name}",
    response_model=DataflowOut,
    responses=errors(404),
    summary="Get a dataflow",
)
async def get_dataflow(name: str, service: ServiceDep) -> JSONResponse:
    """One dataflow: configuration, state, version, next fire times and recent runs."""
    return JSONResponse(plain(await blocking(service.dataflow, name)))


@router.patch(
    "/dataflows/{name}",
    response_model=DataflowOut,
    responses=errors(400, 403, 404, 409),
    summary="Edit a dataflow",
)
async def edit_dataflow(name: str, body: DataflowEdit, service: ServiceDep) -> JSONResponse:
    """Apply changes as a new configuration version; runs already recorded keep theirs."""
    changes = body.model_dump(exclude_none=True)
    return JSONResponse(plain(await blocking(service.edit_dataflow, name, **changes)))


@router.delete(
    "/dataflows/{name}",
    response_model=Done,
    responses=errors(403, 404, 409),
    summary="Delete a dataflow",
)
async def delete_dataflow(name: str, service: ServiceDep) -> dict[str, Any]:
    """Remove a stopped dataflow; its runs and results stay."""
    await blocking(service.delete_dataflow, name)
    return {"ok": True}


@router.post(
    "/dataflows/{name}/start",
    response_model=DataflowOut,
    responses=errors(400, 403, 404, 409),
    summary="Start a dataflow",
)
async def start_dataflow(name: str, service: ServiceDep) -> JSONResponse:
    """Mark a dataflow running: its trigger records runs, the first one over items without a result."""
    return JSONResponse(plain(await blocking(service.start_dataflow, name)))


@router.post(
    "/dataflows/{name}/stop",
    response_model=DataflowOut,
    responses=errors(403, 404, 409),
    summary="Stop a dataflow",
)
async def stop_dataflow(
    name: str,
    service: ServiceDep,
    cancel: bool = Query(False, description="Also cancel its runs in flight."),
) -> JSONResponse:
    """Stop recording runs; with ``cancel``, cancel the runs in flight too (listed in ``cancelled``)."""
    return JSONResponse(plain(await blocking(service.stop_dataflow, name, cancel)))


@router.post(
    "/dataflows/{name}/run",
    response_model=RunStarted,
    status_code=201,
    responses=errors(400, 403, 404, 409),
    summary="Run a dataflow now",
)
async def run_dataflow(name: str, service: ServiceDep) -> JSONResponse:
    """One run over the current contents of the source, whatever the trigger and state."""
    return JSONResponse({"id": await blocking(service.run_dataflow, name)}, status_code=201)


@router.get(
    "/dataflows/{name}/history",
    response_model=list_of(DataflowVersionOut),
    responses=errors(404),
    summary="A dataflow's versions",
)
async def dataflow_history(name: str, service: ServiceDep) -> JSONResponse:
    """Every configuration version, oldest first, with the runs made under it."""
    return JSONResponse(plain(await blocking(service.dataflow_history, name)))
