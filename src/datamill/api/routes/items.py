"""Items: info, listing, search, versions, metadata and deletion (bytes are in ``content.py``).

Routes (under ``/api/v1``):

* ``GET /folder-items/{folder}``: a folder's items with their current versions (all, or ``after``/``limit``)
* ``GET /item-pages/{folder}?cursor=C&limit=N&sort=name&descending=false``: the same in keyset pages,
  each with the cursor of the next (``datamill ls`` reads these as they come)
* ``GET /find/{folder}?name=GLOB&metadata=JSON&recursive=true``: search below a folder
* ``GET /items/{path}`` item info, ``DELETE /items/{path}`` delete it with all versions
* ``GET /versions/{path}`` all versions; ``GET /version/{path}?version=N`` one (current by default)
* ``PATCH /metadata/{path}``: set/unset item metadata (makes no new version)
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from datamill.api.deps import ActorDep, HomeDep, blocking
from datamill.api.ids import VersionQuery
from datamill.api.openapi import errors
from datamill.api.paths import UrlPath
from datamill.api.routes.folders import MetadataChange
from datamill.api.schemas import Done, ItemOut, ItemPageOut, VersionOut, fast_json, list_of
from datamill.errors import InvalidMetadata
from datamill.limits import loads_bounded

router = APIRouter(tags=["items"])


@router.get(
    "/folder-items/{path:names}",
    response_model=list_of(ItemOut),
    responses=errors(400, 404),
    summary="List a folder's items",
)
async def list_items(
    path: UrlPath,
    actor: ActorDep,
    home: HomeDep,
    after: str | None = Query(None, description="Only items whose name sorts after this (paging)."),
    limit: int | None = Query(None, ge=1, le=100_000, description="At most this many items."),
) -> Response:
    """Items of a folder by name, with their current versions."""
    items = await blocking(home.store.list_items, actor, path, after, limit)
    return fast_json([i.to_dict() for i in items])


@router.get(
    "/item-pages/{path:names}",
    response_model=ItemPageOut,
    responses=errors(400, 404),
    summary="List a folder's items page by page",
)
async def item_pages(
    path: UrlPath,
    actor: ActorDep,
    home: HomeDep,
    cursor: str | None = Query(None, description="Where to continue: the `next` of the previous page."),
    limit: int = Query(1000, ge=1, le=10_000, description="At most this many items on the page."),
    sort: str = Query("name", description="Order by name, updated, size or version (ties by name)."),
    descending: bool = Query(False, description="Largest (or latest) first."),
) -> Response:
    """A page of a folder's items and the cursor of the next page (null after the last).

    A cursor continues only the folder and the order it was made for; an edited one is refused (400).
    """
    items, following = await blocking(home.store.item_dicts_after, actor, path, cursor, limit, sort, descending)
    try:
        return Response(orjson.dumps({"items": items, "next": following}), media_type="application/json")
    except TypeError:  # an integer beyond 64 bits in decoded metadata: the json module writes it
        batch = await blocking(home.store.items_after, actor, path, cursor, limit, sort, descending)
        return JSONResponse({"items": [i.to_dict() for i in batch.items], "next": batch.next})


@router.get(
    "/find/{path:names}",
    response_model=list_of(ItemOut),
    responses=errors(400, 404),
    summary="Find items",
)
async def find_items(
    path: UrlPath,
    actor: ActorDep,
    home: HomeDep,
    name: str | None = Query(None, description="A glob on item names, e.g. '*.csv'."),
    metadata: str | None = Query(None, description="A JSON object; items whose metadata holds these values."),
    recursive: bool = Query(True, description="Search subfolders too."),
    after: str | None = Query(None, description="The path of the last item of the previous page (paging)."),
    limit: int | None = Query(None, ge=1, le=100_000, description="At most this many items."),
) -> Response:
    """Items below a folder whose name matches ``name`` and whose metadata holds ``metadata``.

    In folder creation order, then by name. A page shorter than ``limit`` is the last.
    """
    wanted = loads_bounded(metadata, "the metadata filter", InvalidMetadata) if metadata else None
    items = await blocking(home.store.find_items, actor, path, name, wanted, recursive, after, limit)
    return fast_json([i.to_dict() for i in items])


@router.get(
    "/items/{path:names}",
    response_model=ItemOut,
    responses=errors(400, 404),
    summary="Get an item",
)
async def get_item(path: UrlPath, actor: ActorDep, home: HomeDep) -> JSONResponse:
    """An item with its current version."""
    item = await blocking(home.store.get_item, actor, path)
    return JSONResponse(item.to_dict())


@router.delete(
    "/items/{path:names}",
    response_model=Done,
    responses=errors(400, 403, 404),
    summary="Delete an item",
)
async def delete_item(path: UrlPath, actor: ActorDep, home: HomeDep) -> dict[str, Any]:
    """Delete an item with all its versions. Needs write access."""
    await blocking(home.store.delete_item, actor, path)
    return {"ok": True}


@router.get(
    "/versions/{path:names}",
    response_model=list_of(VersionOut),
    responses=errors(400, 404),
    summary="List an item's versions",
)
async def list_versions(path: UrlPath, actor: ActorDep, home: HomeDep) -> JSONResponse:
    """Every version of an item, oldest first."""
    versions = await blocking(home.store.versions, actor, path)
    return JSONResponse([v.to_dict() for v in versions])


@router.get(
    "/version/{path:names}",
    response_model=VersionOut,
    responses=errors(400, 404),
    summary="Get one version",
)
async def get_version(
    path: UrlPath,
    actor: ActorDep,
    home: HomeDep,
    version: VersionQuery = None,
) -> JSONResponse:
    """One version of an item."""
    info = await blocking(home.store.get_version, actor, path, version)
    return JSONResponse(info.to_dict())


@router.patch(
    "/metadata/{path:names}",
    response_model=ItemOut,
    responses=errors(400, 403, 404),
    summary="Change item metadata",
)
async def set_metadata(path: UrlPath, body: MetadataChange, actor: ActorDep, home: HomeDep) -> JSONResponse:
    """Set and unset metadata keys of an item; no new version is made. Needs write access."""
    item = await blocking(home.store.set_item_metadata, actor, path, body.set, body.unset)
    return JSONResponse(item.to_dict())
