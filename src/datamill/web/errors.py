"""Failures on pages answered as pages: the API's status and words, inside the site's layout.

:func:`install` wraps the app's handlers for typed errors and HTTP errors: a request for a page
(anything outside ``/api``, ``/docs`` and ``/openapi.json``) gets an HTML page with the same status
and the same public message the API would give (a folder one may not read is "not found",
exactly like one that does not exist); every other request keeps the JSON answer. A page that
needs a signed-in user sends the browser to the sign-in page instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from datamill.api.errors import public_error
from datamill.errors import DatamillError, Unauthorized
from datamill.web.render import redirect, render
from datamill.web.session import SignInRequired, current_session, sign_in_url

Handler = Callable[[Request, Any], Response | Awaitable[Response]]

#: Paths whose errors stay JSON.
NOT_PAGES = ("/api/", "/docs", "/openapi.json", "/redoc")
#: The session was lost mid-use (revoked, expired): say so on the sign-in page.
SESSION_ENDED = "your session has ended; sign in again"


def is_page(request: Request) -> bool:
    """Whether the request is for a page (HTML errors) rather than the API (JSON errors)."""
    return not request.url.path.startswith(NOT_PAGES)


async def page_for_error(request: Request, exc: DatamillError) -> Response:
    """The error page for a typed error raised while making a page."""
    if isinstance(exc, SignInRequired):
        return redirect(sign_in_url(exc.next_url))
    if isinstance(exc, Unauthorized):
        return redirect("/signin", SESSION_ENDED, "error")
    body = public_error(exc)
    session = await current_session(request)
    return render(request, "error.html", session, status=exc.status, title=_TITLES.get(exc.status, "Error"), error=body)


_TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Conflict", 413: "Too large"}


async def _call(handler: Handler, request: Request, exc: Exception) -> Response:
    answer = handler(request, exc)
    return await answer if inspect.isawaitable(answer) else answer


def install(app: FastAPI) -> None:
    """Make page errors HTML, keeping the API's JSON handlers for everything else."""
    api_typed: Handler = app.exception_handlers[DatamillError]
    api_http: Handler = app.exception_handlers[StarletteHTTPException]

    async def typed(request: Request, exc: Exception) -> Response:
        if is_page(request) and isinstance(exc, DatamillError):
            return await page_for_error(request, exc)
        return await _call(api_typed, request, exc)

    async def http(request: Request, exc: Exception) -> Response:
        if is_page(request) and isinstance(exc, StarletteHTTPException) and exc.status_code in _TITLES:
            session = await current_session(request)
            message = "no such page" if exc.status_code == 404 else str(exc.detail)
            body = {"status": exc.status_code, "code": "not_found", "error": message}
            return render(
                request, "error.html", session, status=exc.status_code, title=_TITLES[exc.status_code], error=body
            )
        return await _call(api_http, request, exc)

    app.add_exception_handler(DatamillError, typed)
    app.add_exception_handler(StarletteHTTPException, http)
