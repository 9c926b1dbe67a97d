"""The item page: ``/item/{path}``: versions, metadata, a preview and provenance."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from datamill.api.deps import blocking
from datamill.api.paths import UrlPath
from datamill.store.names import split_item_path
from datamill.web.folders import crumbs
from datamill.web.render import render
from datamill.web.session import SessionDep
from datamill.web.urls import item_url

router = APIRouter(include_in_schema=False)


@router.get("/item/{path:names}")
async def item_page(request: Request, path: UrlPath, session: SessionDep) -> Response:
    """One item with its versions."""
    service = session.service(request.app.state.home)
    item = await blocking(service.item, path)
    versions = await blocking(service.versions, path)
    folder, name = split_item_path(path)
    trail = [*crumbs(folder), (name, item_url(path))]
    return render(request, "items/item.html", session, item=item, versions=versions, crumbs=trail)
