"""Provenance: an item version's lineage, and RO-Crates of runs.

Routes (under ``/api/v1``):

* ``GET /lineage/{path}?version=N&down=false&depth=N&format=json``: what the version was derived
  from (or, with ``down=true``, what was derived from it). ``format``: ``json`` (default),
  ``prov-json``, ``prov-n``, ``tree`` (text), or ``ro-crate`` (a zip of the run that generated it)
* ``GET /runs/{run_id}/ro-crate``: a zip of a run's Workflow Run RO-Crate, with its files
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.background import BackgroundTask

from datamill.api.deps import ActorDep, HomeDep, blocking
from datamill.api.ids import RunId, VersionQuery
from datamill.api.openapi import binary, errors, json_of, text
from datamill.api.paths import UrlPath
from datamill.home import Home
from datamill.limits import INT64_MAX
from datamill.provenance import Lineage, generating_run, render, to_json, to_ro_crate
from datamill.store.access import Actor

router = APIRouter(tags=["provenance"])

FORMAT_PATTERN = "^(json|prov-json|prov-n|tree|ro-crate)$"
MEDIA_TYPES = {
    "prov-json": "application/json",
    "prov-n": "text/provenance-notation; charset=utf-8",
    "tree": "text/plain; charset=utf-8",
}


def _crate_zip(home: Home, actor: Actor, run_id: int) -> tuple[Path, Path]:
    """Write the run's crate as a zip in a new temporary directory; returns (zip, directory)."""
    tmp = Path(tempfile.mkdtemp(prefix="datamill-crate-"))
    try:
        return to_ro_crate(home, actor, run_id, tmp / f"run-{run_id}-ro-crate.zip"), tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _zip_response(zip_path: Path, tmp: Path) -> FileResponse:
    return FileResponse(
        zip_path,
        media_type="application/zip",
        filename=zip_path.name,
        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True),
    )


@router.get(
    "/lineage/{path:names}",
    response_class=Response,
    responses={
        **errors(400, 404),
        200: {
            "description": "The lineage in the asked-for format.",
            "content": {
                **json_of("", {"type": "object"})["content"],
                **text("", "text/provenance-notation", "text/plain")["content"],
                **binary("", "application/zip")["content"],
            },
        },
    },
    summary="An item version's lineage",
)
async def lineage(
    path: UrlPath,
    actor: ActorDep,
    home: HomeDep,
    version: VersionQuery = None,
    down: bool = Query(False, description="What was derived from it, instead of what it was derived from."),
    depth: int | None = Query(None, ge=1, le=INT64_MAX, description="Follow at most this many tasks."),
    fmt: str = Query("json", alias="format", pattern=FORMAT_PATTERN, description="Answer format."),
) -> Response:
    """Lineage of an item version: entities, activities and agents with their PROV relations.

    Versions in folders you may not read appear as ``(not visible)`` nodes without names.
    """
    if fmt == "ro-crate":
        run_id = await blocking(generating_run, home, actor, path, version)
        return _zip_response(*await blocking(_crate_zip, home, actor, run_id))
    lin = Lineage(home)
    query = lin.downstream if down else lin.upstream
    graph = await blocking(query, actor, path, version, depth)
    if fmt == "json":
        return JSONResponse(to_json(graph))
    text = await blocking(render, graph, fmt)
    return PlainTextResponse(text, media_type=MEDIA_TYPES[fmt])


@router.get(
    "/runs/{run_id}/ro-crate",
    response_class=FileResponse,
    responses={**errors(404), 200: binary("The RO-Crate, zipped.", "application/zip")},
    summary="A run as a Workflow Run RO-Crate (zip)",
)
async def run_crate(run_id: RunId, actor: ActorDep, home: HomeDep) -> FileResponse:
    """A zip of the run's RO-Crate: the run, its tasks and steps, and its input and output files."""
    return _zip_response(*await blocking(_crate_zip, home, actor, run_id))
