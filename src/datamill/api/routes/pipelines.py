"""The pipeline registry: the pipelines users choose by name for runs and dataflows.

Routes (under ``/api/v1``):

* ``GET /pipelines``: every registered pipeline (name, description, origin, steps); site admins
  also see each one's reference, which may be a path on the server
* ``POST /pipelines``: register a reference under a name (site admins only; it must load)
* ``DELETE /pipelines/{name}``: remove a pipeline a site admin registered (site admins only)
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from datamill.api.deps import ServiceDep, blocking
from datamill.api.schemas import Done, PipelineOut, list_of, plain
from datamill.engine.registry import MAX_REF

router = APIRouter(tags=["pipelines"])


class PipelineCreate(BaseModel):
    """A pipeline to register."""

    name: str = Field(max_length=100, description="1-100 letters, digits, '_' or '-'.")
    ref: str = Field(
        max_length=MAX_REF,
        description="What to load, on the server: module:attr, /path/file.py:attr or /path/file.yaml.",
    )
    description: str = Field("", max_length=10_000, description="Shown in listings; the pipeline's own by default.")


@router.get("/pipelines", response_model=list_of(PipelineOut), summary="List registered pipelines")
async def list_pipelines(service: ServiceDep) -> JSONResponse:
    """The pipelines runs and dataflows may use, by name."""
    return JSONResponse(plain(await blocking(service.pipelines)))


@router.post("/pipelines", response_model=PipelineOut, status_code=201, summary="Register a pipeline")
async def add_pipeline(body: PipelineCreate, service: ServiceDep) -> JSONResponse:
    """Register ``ref`` as ``name`` after checking that it loads (site admins only)."""
    info = await blocking(service.add_pipeline, body.name, body.ref, body.description)
    return JSONResponse(plain(info), status_code=201)


@router.delete("/pipelines/{name}", response_model=Done, summary="Remove a registered pipeline")
async def remove_pipeline(name: str, service: ServiceDep) -> dict[str, Any]:
    """Remove a pipeline a site admin registered (site admins only)."""
    await blocking(service.remove_pipeline, name)
    return {"ok": True}
