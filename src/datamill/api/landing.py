"""``GET /``: a minimal landing page (the full web UI comes later).

Opening the login URL ``datamill up`` prints (``/?token=...``) stores the token in the
``datamill_token`` cookie (HttpOnly, SameSite=Strict) and redirects to ``/``, so the token leaves
the address bar and the browser history. The API accepts that cookie as well as the
``Authorization`` header; SameSite=Strict keeps other sites from riding on it.
"""

from __future__ import annotations

import html
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from datamill._version import __version__
from datamill.api.deps import TOKEN_COOKIE, blocking
from datamill.api.middleware import resolve_token, token_from_headers
from datamill.errors import DatamillError
from datamill.home import Home
from datamill.store.access import Actor

router = APIRouter(include_in_schema=False)

COOKIE_MAX_AGE = 30 * 24 * 3600
#: Keep the page (and any token in its URL) out of caches and Referer headers.
PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{margin-bottom:0} .muted{color:#666} code{background:#f3f3f3;padding:0 .2em}
table{border-collapse:collapse;width:100%} td,th{text-align:left;padding:.2em .5em;border-bottom:1px solid #eee}
"""


def _page(body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>datamill</title><style>{_STYLE}</style></head><body>"
        f"<h1>datamill</h1><p class=muted>version {html.escape(__version__)}</p>{body}</body></html>"
    )


_SIGN_IN = (
    "<p>You are not signed in. Open the login URL that <code>datamill up</code> prints "
    "(<code>http://HOST:PORT/?token=...</code>); it stores your token in a cookie for this site. "
    "Scripts and the CLI send the token as <code>Authorization: Bearer ...</code> instead.</p>"
    '<p>API documentation: <a href="/docs">/docs</a>, <a href="/openapi.json">/openapi.json</a>.</p>'
)


def _overview(home: Home, actor: Actor) -> str:
    folders = home.store.list_folders(actor, "")
    records = home.store.visible_events(actor, home.events.read(max(0, home.events.latest() - 200), 200))[-20:]
    rows = "".join(f"<tr><td>{html.escape(f.name)}</td><td>{html.escape(f.owner or '')}</td></tr>" for f in folders)
    events = "".join(
        f"<tr><td>{ev.seq}</td><td>{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ev.ts))}</td>"
        f"<td>{html.escape(ev.kind)}</td><td>{html.escape(_describe(ev.data))}</td></tr>"
        for ev in reversed(records)
    )
    return (
        f"<p>Signed in as <b>{html.escape(actor.name)}</b>{' (site admin)' if actor.is_admin else ''}. "
        'API documentation: <a href="/docs">/docs</a>.</p>'
        f"<h2>Folders</h2><table><tr><th>name</th><th>owner</th></tr>{rows}</table>"
        f"{'' if folders else '<p class=muted>No folders yet.</p>'}"
        f"<h2>Recent events</h2><table><tr><th>#</th><th>time</th><th>kind</th><th></th></tr>{events}</table>"
    )


def _describe(data: dict[str, Any]) -> str:
    for keys in (("folder", "name"), ("path",), ("user",)):
        if all(k in data for k in keys):
            return "/".join(str(data[k]) for k in keys)
    return ""


@router.get("/", response_class=HTMLResponse)
async def landing(request: Request) -> Response:
    """The landing page; with ``?token=`` it stores the token in a cookie and redirects to ``/``."""
    home: Home = request.app.state.home
    token = request.query_params.get("token")
    if token is not None:
        try:
            await blocking(resolve_token, home, token)
        except DatamillError:
            page = _page("<p><b>That token is not valid</b> (unknown, revoked or expired).</p>" + _SIGN_IN)
            return HTMLResponse(page, status_code=401, headers=PRIVATE)
        response = RedirectResponse("/", status_code=303, headers=PRIVATE)
        response.set_cookie(
            TOKEN_COOKIE,
            token,
            max_age=COOKIE_MAX_AGE,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response
    cookie = token_from_headers([(b"cookie", v.encode("latin-1")) for v in request.headers.getlist("cookie")])
    actor = None
    if cookie:
        try:
            actor = await blocking(resolve_token, home, cookie)
        except DatamillError:
            actor = None
    body = await blocking(_overview, home, actor) if actor else _SIGN_IN
    return HTMLResponse(_page(body), headers=PRIVATE)
