"""The FastAPI app: every route under ``/api/v1``, one JSON error shape, token auth.

Authentication: every ``/api`` request needs a token, sent as ``Authorization: Bearer <token>``
or as the ``datamill_token`` cookie of a web-app session (set by the login URL ``/?token=...``
or the sign-in form; see :mod:`datamill.web.session`). A request authenticated by that cookie
that changes something must also carry the session's CSRF token (``X-CSRF-Token``). Only
``GET /api/v1/health`` answers without a token (and says nothing but ``{"ok": true}``). The web
app (:mod:`datamill.web`) serves the pages under ``/``; ``/docs`` and ``/openapi.json`` are public.

Routers are listed in :data:`ROUTERS`, one module per noun in ``api/routes``; adding one is a
one-line change there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from datamill._version import __version__
from datamill.api.broadcast import EventBroadcaster
from datamill.api.deps import blocking
from datamill.api.errors import ErrorBoundary, install_error_handlers
from datamill.api.limits import RequestLimits
from datamill.api.middleware import AccessLog, TokenAuth, silence_uvicorn_access_log
from datamill.api.openapi import COMMON_ERRORS, json_errors
from datamill.api.routes import batches, content, dataflows, events, folders, items, pipelines, runs, users
from datamill.api.routes import groups as group_routes
from datamill.api.routes import lineage as lineage_routes
from datamill.api.streams import StreamGuard
from datamill.home import Home

API_PREFIX = "/api/v1"

#: The API's routers, mounted under ``/api/v1`` in this order.
ROUTERS: list[APIRouter] = [
    users.router,
    group_routes.router,
    folders.router,
    items.router,
    content.router,
    events.router,
    pipelines.router,
    runs.router,
    dataflows.router,
    batches.router,
    lineage_routes.router,
]

#: Seconds between keep-alive comments on an idle SSE stream.
SSE_KEEPALIVE = 15.0

health_router = APIRouter(tags=["health"])


@health_router.get("/health", summary="Is the server up")
async def health() -> dict[str, bool]:
    """``{"ok": true}`` while the server runs; the one route that needs no token."""
    return {"ok": True}


def _operation_id(route: APIRoute) -> str:
    # Stable, readable ids for generated clients: the handler's name.
    return route.name


def create_app(
    home: Home, sse_keepalive: float = SSE_KEEPALIVE, services: bool = False, register: bool = False
) -> FastAPI:
    """The ASGI app serving ``home``; with ``services``, it also runs the scheduler, triggers and notifier.

    With ``register`` the process appears in ``nodes`` (``datamill doctor``) while it serves: as a
    ``server`` with services, as an ``api`` process without.
    """
    silence_uvicorn_access_log()  # ours (AccessLog) leaves out query strings; uvicorn's does not
    broadcaster = EventBroadcaster(home.events)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = None
        stop = asyncio.Event()
        beating: asyncio.Task[None] | None = None
        if services:
            from datamill.services import Services

            running = Services(home)
            await running.start()
        elif register:
            import os
            import uuid

            from datamill.nodes import Heartbeat

            name = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            beating = asyncio.create_task(Heartbeat(home.db, name, "api").serve(stop))
        app.state.services = running
        try:
            yield
        finally:
            stop.set()
            if beating is not None:
                with contextlib.suppress(Exception):
                    await beating
            if running is not None:
                await running.stop()
            broadcaster.close()
            await blocking(broadcaster.join)

    app = FastAPI(
        title="datamill",
        version=__version__,
        description=(
            "Folders, versioned items, metadata, access control and the event log of a datamill "
            "installation. Every `/api` route needs a token: `Authorization: Bearer <token>`, or the "
            "`datamill_token` cookie of a web session (opening the login URL `/?token=...` starts one; "
            "with the cookie, requests that change something also need the `X-CSRF-Token` header). Errors are JSON: "
            '`{"ok": false, "status", "code", "error", "detail"}`. Folder and item paths go in the URL, '
            "each name percent-encoded on its own."
        ),
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.home = home
    app.state.broadcaster = broadcaster
    app.state.guard = StreamGuard(home)
    app.state.sse_keepalive = sse_keepalive
    app.state.active_streams = 0

    api = APIRouter(prefix=API_PREFIX)
    api.include_router(health_router)
    for router in ROUTERS:
        api.include_router(router, responses=COMMON_ERRORS)
    app.include_router(api)

    def openapi() -> dict[str, Any]:
        # FastAPI's document, with every error response in the JSON error shape.
        if app.openapi_schema is None:
            app.openapi_schema = json_errors(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    install_error_handlers(app)
    from datamill.web.app import install as install_web  # the pages: jinja2 loads on first render

    install_web(app)
    # add_middleware wraps: the last added runs first. Order: log -> catch-all -> size limits -> auth -> routes.
    app.add_middleware(TokenAuth, home=home)
    app.add_middleware(RequestLimits)
    app.add_middleware(ErrorBoundary)
    app.add_middleware(AccessLog)
    return app
