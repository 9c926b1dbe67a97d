"""Templates to responses: the Jinja2 environment (autoescaping on), flash messages, page headers.

Jinja2 is imported when the first page is rendered, not when the server module loads.
Every page goes out with ``no-store`` (pages show private data) and a Content-Security-Policy
that allows only this site's own scripts, styles and images: nothing is fetched from elsewhere,
and an injected inline script would not run.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from datamill._version import __version__
from datamill.web import urls
from datamill.web.csrf import FIELD, HEADER
from datamill.web.session import Session

if TYPE_CHECKING:
    import jinja2

FLASH_COOKIE = "datamill_flash"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Pages show private data: keep them out of caches, and URLs out of Referer headers.
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CSP,
}


def human_size(n: int | float) -> str:
    """``1536`` -> ``1.5 KB``."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover - the loop always returns


def when(ts: float | None) -> str:
    """A timestamp as local ``YYYY-MM-DD HH:MM:SS``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def utc(ts: float | None) -> str:
    """A timestamp as ``YYYY-MM-DD HH:MM UTC`` (cron schedules are in UTC)."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts)) if ts else ""


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The template environment: the package's templates, autoescaped, with the URL helpers."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("datamill.web", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        folder_url=urls.folder_url,
        item_url=urls.item_url,
        content_url=urls.content_url,
        lineage_url=urls.lineage_url,
        action_url=urls.action_url,
        csrf_field=FIELD,
        csrf_header=HEADER,
        version=__version__,
    )
    env.filters.update(
        size=human_size, when=when, utc=utc, tojson_pretty=lambda v: json.dumps(v, indent=2, sort_keys=True)
    )
    return env


def flash(response: Response, message: str, kind: str = "ok") -> Response:
    """Show ``message`` on the next page this browser renders (after a redirect)."""
    value = quote(json.dumps({"m": message[:500], "k": kind}), safe="")
    response.set_cookie(FLASH_COOKIE, value, max_age=60, path="/", httponly=True, samesite="strict")
    return response


def _take_flash(request: Request) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        data = json.loads(unquote(raw))
        return {"message": str(data["m"]), "kind": "error" if data.get("k") == "error" else "ok"}
    except (ValueError, KeyError, TypeError):
        return None


def render(
    request: Request,
    template: str,
    session: Session | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """``template`` rendered for ``session``'s user, with the pending flash message (then cleared)."""
    message = _take_flash(request)
    html = (
        environment()
        .get_template(template)
        .render(
            request=request,
            session=session,
            user=session.actor if session else None,
            csrf=session.csrf if session else "",
            flash=message,
            path=request.url.path,
            **context,
        )
    )
    response = HTMLResponse(html, status_code=status, headers=HEADERS)
    if message is not None:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def redirect(url: str, message: str | None = None, kind: str = "ok") -> RedirectResponse:
    """A 303 to ``url`` (the browser then GETs it), with an optional flash message."""
    response = RedirectResponse(url, status_code=303, headers=HEADERS)
    if message:
        flash(response, message, kind)
    return response
