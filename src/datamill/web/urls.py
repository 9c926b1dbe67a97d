"""URLs of pages and downloads for folder and item paths: each name percent-encoded on its own.

Routes take ``{path:names}`` and read it with :func:`datamill.api.paths.url_path`, exactly as
the API does, so a name may hold ``/``-free anything (spaces, ``#``, ``?``, ``%``, Unicode).
"""

from __future__ import annotations

from urllib.parse import quote, urlencode


def encode_path(path: str) -> str:
    """``a b/c#d`` -> ``a%20b/c%23d``."""
    return "/".join(quote(name, safe="") for name in path.split("/")) if path else ""


def folder_url(path: str) -> str:
    """The folder page (the top level for ``""``)."""
    return f"/folders/{encode_path(path)}" if path else "/folders"


def item_url(path: str, version: int | None = None) -> str:
    """The item page, on a version if given."""
    query = f"?{urlencode({'version': version})}" if version is not None else ""
    return f"/item/{encode_path(path)}{query}"


def content_url(path: str, version: int | None = None) -> str:
    """The API download of an item's bytes (the session cookie authenticates it)."""
    query = f"?{urlencode({'version': version})}" if version is not None else ""
    return f"/api/v1/content/{encode_path(path)}{query}"


def lineage_url(path: str, fmt: str, version: int | None = None) -> str:
    """The API's lineage of an item version in ``fmt`` (prov-json, prov-n, ro-crate, ...)."""
    params: dict[str, str | int] = {"format": fmt}
    if version is not None:
        params["version"] = version
    return f"/api/v1/lineage/{encode_path(path)}?{urlencode(params)}"


def action_url(action: str, path: str) -> str:
    """A form's target: ``/<action>/<path>`` (e.g. ``folder-rename``)."""
    return f"/{action}/{encode_path(path)}" if path else f"/{action}"
