"""The item page: ``/item/{path}?version=N``: versions, metadata, a preview by type, provenance.

* ``GET /item/{path}``: the current version (or ``?version=N``): its versions (each downloadable
  through the API), metadata (view, and a JSON editor for who may write), a preview
  (:mod:`datamill.web.previews`) and the provenance panel: the lineage drawn as a graph
  (:mod:`datamill.web.lineage`) with downloads of PROV-JSON, PROV-N and the RO-Crate from the
  API's lineage route.
* ``POST /item-metadata/{path}``: replace the item's metadata with a JSON object; invalid JSON
  or metadata re-renders the page with the message under the editor and saves nothing.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from datamill.api.deps import blocking
from datamill.api.paths import UrlPath
from datamill.errors import DatamillError, InvalidInput
from datamill.service import Service
from datamill.store.names import split_item_path
from datamill.web.folders import crumbs
from datamill.web.forms import FieldErrors, message_of, parse_json_object
from datamill.web.lineage import draw, merge
from datamill.web.previews import preview
from datamill.web.render import redirect, render
from datamill.web.session import Session, SessionDep
from datamill.web.urls import item_url

router = APIRouter(include_in_schema=False)

#: How many tasks the drawn lineage follows up and down (the downloads hold all of it).
UP_DEPTH = 6
DOWN_DEPTH = 3


def _version(request: Request) -> int | None:
    raw = request.query_params.get("version")
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"version {raw!r} is not a number; use ?version=1, 2, ...") from None


def item_context(service: Service, path: str, version: int | None) -> dict[str, Any]:
    """Everything the item page shows (blocking)."""
    item = service.item(path)
    versions = service.versions(path)
    shown = service.version(path, version)
    folder, name = split_item_path(path)
    level = service.my_level(folder)
    graph = None
    try:
        up = service.lineage_graph(path, shown.version, depth=UP_DEPTH)
        down = service.lineage_graph(path, shown.version, down=True, depth=DOWN_DEPTH)
        graph = draw(merge(up, down))
    except DatamillError:
        graph = None
    derived = bool(shown.task_id)
    return {
        "item": item,
        "versions": list(reversed(versions)),
        "shown": shown,
        "level": int(level),
        "preview": preview(service, shown),
        "graph": graph,
        "derived": derived,
        "metadata_text": json.dumps(item.metadata, indent=2, sort_keys=True, ensure_ascii=False),
        "crumbs": [*crumbs(folder), (name, item_url(path))],
    }


async def show_item(
    request: Request,
    session: Session,
    path: str,
    status: int = 200,
    errors: FieldErrors | None = None,
    metadata_text: str | None = None,
) -> Response:
    """Render the item page (again with ``errors`` after a rejected form)."""
    service = session.service(request.app.state.home)
    context = await blocking(item_context, service, path, _version(request))
    if metadata_text is not None:
        context["metadata_text"] = metadata_text
    return render(request, "items/item.html", session, status=status, errors=errors or {}, **context)


@router.get("/item/{path:names}")
async def item_page(request: Request, path: UrlPath, session: SessionDep) -> Response:
    """One item."""
    return await show_item(request, session, path)


@router.post("/item-metadata/{path:names}")
async def item_metadata(request: Request, path: UrlPath, session: SessionDep, metadata: str = Form("")) -> Response:
    """Replace the item's metadata with the JSON object sent (keys left out are removed)."""
    service = session.service(request.app.state.home)
    try:
        wanted = parse_json_object(metadata, "the metadata")
        current = await blocking(service.item, path)
        gone = [k for k in current.metadata if k not in wanted]
        await blocking(service.set_metadata, path, wanted, gone)
    except InvalidInput as exc:  # InvalidMetadata included
        return await show_item(request, session, path, exc.status, {"metadata": message_of(exc)}, metadata)
    return redirect(item_url(path) + "#metadata", "Metadata saved.")
