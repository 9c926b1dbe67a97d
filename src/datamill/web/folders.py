"""The folder pages: the tree, a paged table of items, and what may be done to a folder.

* ``GET /folders``: the top-level folders; ``GET /folders/{path}?q=&sort=&desc=&page=``: one
  folder: its subfolders, one page of its items (sorted and filtered in the database, see
  :mod:`datamill.store.item_pages`), upload, its metadata and sharing.
* Forms (POST, CSRF-checked): ``/folder-new/{parent}``, ``/folder-rename/{path}``,
  ``/folder-delete/{path}``, ``/folder-metadata/{path}``, ``/folder-share/{path}``,
  ``/folder-public/{path}``, ``/item-delete/{path}``. A rejected form re-renders the page with the
  message next to its field and saves nothing; an accepted one redirects (POST/redirect/GET).

Uploads and downloads use the API itself (``PUT``/``GET /api/v1/content/...``) from the page,
authenticated by the session cookie plus the CSRF header (``static/datamill.js``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from datamill.api.deps import blocking
from datamill.api.paths import UrlPath
from datamill.errors import DatamillError, InvalidInput
from datamill.limits import INT64_MAX
from datamill.service import Service
from datamill.store.access import Level
from datamill.store.item_pages import SORTS
from datamill.store.names import check_name, split_item_path
from datamill.web.forms import FieldErrors, message_of, parse_json_object
from datamill.web.render import redirect, render
from datamill.web.session import Session, SessionDep
from datamill.web.urls import folder_url

router = APIRouter(include_in_schema=False)

#: Items per page of the folder table.
PAGE_SIZE = 100
#: The highest page number read from a query string: its offset still fits a 64-bit integer.
LAST_PAGE = INT64_MAX // PAGE_SIZE
LEVELS = ("read", "write", "admin")


def crumbs(path: str) -> list[tuple[str, str]]:
    """Breadcrumbs of a folder path: Folders / a / a/b ..."""
    out = [("Folders", folder_url(""))]
    parts = path.split("/") if path else []
    for i, name in enumerate(parts):
        out.append((name, folder_url("/".join(parts[: i + 1]))))
    return out


@dataclass
class TreeNode:
    """A folder in the tree, with its children when it lies on the way to the open folder."""

    name: str
    path: str
    children: list[TreeNode] = field(default_factory=list)


def tree(service: Service, path: str) -> list[TreeNode]:
    """The folder tree: the top level, opened along ``path`` (one listing per level, never the whole tree)."""
    top = [TreeNode(f.name, f.path) for f in service.list_folders("")]
    level = top
    parts = path.split("/") if path else []
    for i in range(len(parts)):
        here = "/".join(parts[: i + 1])
        node = next((n for n in level if n.path == here), None)
        if node is None:  # a parent the user may not list: show what they may
            break
        node.children = [TreeNode(f.name, f.path) for f in service.list_folders(here)]
        level = node.children
    return top


@dataclass
class Listing:
    """How the items table is asked for: filter, sort, page."""

    q: str = ""
    sort: str = "name"
    desc: bool = False
    page: int = 1

    @classmethod
    def of(cls, request: Request) -> Listing:
        """Read (and tidy) the query string; nonsense falls back to the defaults."""
        params = request.query_params
        sort = params.get("sort", "name")
        try:
            # Past the last page shows an empty table; past the database's integers it would fail.
            page = min(max(1, int(params.get("page", "1"))), LAST_PAGE)
        except ValueError:
            page = 1
        return cls(params.get("q", "")[:200], sort if sort in SORTS else "name", params.get("desc") == "1", page)

    def query(self, **changes: Any) -> str:
        """The query string of this listing with ``changes``."""
        values = {"q": self.q, "sort": self.sort, "desc": self.desc, "page": self.page, **changes}
        kept: dict[str, Any] = {}
        if values["q"]:
            kept["q"] = values["q"]
        if values["sort"] != "name":
            kept["sort"] = values["sort"]
        if values["desc"]:
            kept["desc"] = "1"
        if values["page"] != 1:
            kept["page"] = values["page"]
        return "?" + urlencode(kept)


def folder_context(service: Service, path: str, listing: Listing) -> dict[str, Any]:
    """Everything the folder page shows (blocking: run it in the thread pool)."""
    folder = service.folder(path)
    level = service.my_level(path)
    page = service.page_items(path, listing.sort, listing.desc, (listing.page - 1) * PAGE_SIZE, PAGE_SIZE, listing.q)
    pages = max(1, -(-page.total // PAGE_SIZE))
    grants = service.access_list(path) if level >= Level.ADMIN else []
    return {
        "folder": folder,
        "level": int(level),
        "subfolders": service.list_folders(path),
        "rows": list(zip(page.items, page.made_by, strict=True)),
        "total": page.total,
        "pages": pages,
        "listing": listing,
        "grants": grants,
        "tree": tree(service, path),
        "crumbs": crumbs(path),
        "levels": LEVELS,
        "metadata_text": _pretty(folder.metadata),
    }


def _pretty(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


async def show_folder(
    request: Request,
    session: Session,
    path: str,
    status: int = 200,
    errors: FieldErrors | None = None,
    values: dict[str, str] | None = None,
) -> Response:
    """Render the folder page (again, with ``errors`` next to their fields, after a rejected form)."""
    service = session.service(request.app.state.home)
    context = await blocking(folder_context, service, path, Listing.of(request))
    if values and "metadata" in values:
        context["metadata_text"] = values["metadata"]
    return render(
        request, "folders/folder.html", session, status=status, errors=errors or {}, values=values or {}, **context
    )


@router.get("/folders")
async def top_level(request: Request, session: SessionDep) -> Response:
    """The top-level folders the user may see."""
    return await show_top(request, session)


async def show_top(
    request: Request, session: Session, status: int = 200, errors: FieldErrors | None = None, name: str = ""
) -> Response:
    """Render the top-level page."""
    service = session.service(request.app.state.home)
    folders = await blocking(service.list_folders, "")
    return render(
        request,
        "folders/top.html",
        session,
        status=status,
        folders=folders,
        tree=[TreeNode(f.name, f.path) for f in folders],
        crumbs=crumbs(""),
        errors=errors or {},
        values={"name": name},
    )


@router.get("/folders/{path:names}")
async def folder_page(request: Request, path: UrlPath, session: SessionDep) -> Response:
    """One folder."""
    return await show_folder(request, session, path)


def _service(request: Request, session: Session) -> Service:
    return session.service(request.app.state.home)


@router.post("/folder-new")
@router.post("/folder-new/{path:names}")
async def new_folder(request: Request, session: SessionDep, name: str = Form(""), path: str = "") -> Response:
    """Create a subfolder ``name`` of ``path`` (a top-level folder when ``path`` is empty)."""
    parent = await _parent_path(request, path)
    clean = name.strip()
    try:
        check_name(clean)
        child = f"{parent}/{clean}" if parent else clean
        created = await blocking(_service(request, session).create_folder, child, False)
    except DatamillError as exc:
        if exc.status >= 500 or exc.status == 404:
            raise
        errors = {"new_name": message_of(exc)}
        if parent:
            return await show_folder(request, session, parent, exc.status, errors, {"new_name": name})
        return await show_top(request, session, exc.status, errors, name)
    return redirect(folder_url(created.path), f"Folder {created.name!r} created.")


async def _parent_path(request: Request, raw: str) -> str:
    """The ``{path:names}`` of a route that also exists without one."""
    if not raw:
        return ""
    from datamill.api.paths import url_path

    return url_path(request, raw)


@router.post("/folder-rename/{path:names}")
async def rename_folder(request: Request, path: UrlPath, session: SessionDep, name: str = Form("")) -> Response:
    """Rename a folder (needs admin on it)."""
    parent = path.rpartition("/")[0]
    try:
        check_name(name.strip())
        moved = await blocking(_service(request, session).move_folder, path, parent, name.strip())
    except DatamillError as exc:
        if exc.status >= 500 or exc.status == 404:
            raise
        return await show_folder(request, session, path, exc.status, {"rename": message_of(exc)}, {"rename": name})
    return redirect(folder_url(moved.path), f"Renamed to {moved.name!r}.")


@router.post("/folder-delete/{path:names}")
async def delete_folder(request: Request, path: UrlPath, session: SessionDep, recursive: str = Form("")) -> Response:
    """Delete a folder; a non-empty one only with ``recursive`` ticked."""
    try:
        n = await blocking(_service(request, session).delete_folder, path, recursive == "on")
    except DatamillError as exc:
        if exc.status >= 500 or exc.status == 404:
            raise
        return await show_folder(request, session, path, exc.status, {"delete": message_of(exc)})
    parent = path.rpartition("/")[0]
    return redirect(folder_url(parent), f"Folder {path.rpartition('/')[2]!r} deleted ({n} items).")


@router.post("/folder-metadata/{path:names}")
async def folder_metadata(request: Request, path: UrlPath, session: SessionDep, metadata: str = Form("")) -> Response:
    """Replace a folder's metadata with the JSON object sent (keys left out are removed)."""
    service = _service(request, session)
    try:
        wanted = parse_json_object(metadata, "the metadata")
        current = await blocking(service.folder, path)
        gone = [k for k in current.metadata if k not in wanted]
        await blocking(service.set_folder_metadata, path, wanted, gone)
    except InvalidInput as exc:  # InvalidMetadata included
        return await show_folder(
            request, session, path, exc.status, {"metadata": message_of(exc)}, {"metadata": metadata}
        )
    return redirect(folder_url(path) + "#metadata", "Metadata saved.")


@router.post("/folder-share/{path:names}")
async def share_folder(
    request: Request, path: UrlPath, session: SessionDep, user: str = Form(""), level: str = Form("read")
) -> Response:
    """Grant a user a level on the folder (``none`` removes the grant); needs admin on it."""
    try:
        if not user.strip():
            raise InvalidInput("enter the name of the user to share with")
        if level not in (*LEVELS, "none"):
            raise InvalidInput(f"unknown access level {level!r}; use read, write or admin")
        await blocking(_service(request, session).share, path, user.strip(), level)
    except DatamillError as exc:
        if exc.status >= 500 or (exc.status == 404 and "user" not in exc.detail):
            raise
        return await show_folder(request, session, path, exc.status, {"share": message_of(exc)}, {"share_user": user})
    said = f"Removed {user.strip()}'s access." if level == "none" else f"Shared with {user.strip()} ({level})."
    return redirect(folder_url(path) + "#sharing", said)


@router.post("/folder-public/{path:names}")
async def public_folder(request: Request, path: UrlPath, session: SessionDep, public: str = Form("")) -> Response:
    """Switch public read on or off; needs admin on the folder."""
    await blocking(_service(request, session).set_public, path, public == "on")
    return redirect(folder_url(path) + "#sharing", "Public read is on." if public == "on" else "Public read is off.")


@router.post("/item-delete/{path:names}")
async def delete_item(request: Request, path: UrlPath, session: SessionDep) -> Response:
    """Delete an item with all its versions (needs write on its folder)."""
    await blocking(_service(request, session).delete_item, path)
    folder, name = split_item_path(path)
    return redirect(folder_url(folder), f"Deleted {name!r}.")
