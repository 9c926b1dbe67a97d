"""The folder pages: ``/folders`` (the top level) and ``/folders/{path}`` (one folder)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from datamill.api.deps import blocking
from datamill.api.paths import UrlPath
from datamill.web.render import render
from datamill.web.session import SessionDep
from datamill.web.urls import folder_url

router = APIRouter(include_in_schema=False)


def crumbs(path: str) -> list[tuple[str, str]]:
    """Breadcrumbs of a folder path: Folders / a / a/b ..."""
    out = [("Folders", folder_url(""))]
    parts = path.split("/") if path else []
    for i, name in enumerate(parts):
        out.append((name, folder_url("/".join(parts[: i + 1]))))
    return out


@router.get("/folders")
async def top_level(request: Request, session: SessionDep) -> Response:
    """The folders at the top level that the user may see."""
    service = session.service(request.app.state.home)
    folders = await blocking(service.list_folders, "")
    return render(request, "folders/top.html", session, folders=folders, crumbs=crumbs(""))


@router.get("/folders/{path:names}")
async def folder_page(request: Request, path: UrlPath, session: SessionDep) -> Response:
    """One folder: its subfolders and items."""
    service = session.service(request.app.state.home)
    folder = await blocking(service.folder, path)
    subfolders = await blocking(service.list_folders, path)
    items = await blocking(service.store.list_items, session.actor, path, None, 50)
    return render(
        request, "folders/folder.html", session, folder=folder, subfolders=subfolders, items=items, crumbs=crumbs(path)
    )
