"""The web app's assembly: its page routers, the static files, and HTML error pages.

Adding a page group: write ``web/<noun>.py`` with ``router = APIRouter(include_in_schema=False)``
and its templates under ``web/templates/<noun>/``, then add the router to :data:`PAGES`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from starlette.staticfiles import StaticFiles

from datamill.web import admin, dataflows, errors, events, folders, items, runs, signin

#: The page routers, mounted at ``/`` in this order.
PAGES: list[APIRouter] = [
    signin.router,
    folders.router,
    items.router,
    dataflows.router,
    runs.router,
    events.router,
    admin.router,
]

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Mount the web app on ``app`` (after the API's routes and error handlers)."""
    for router in PAGES:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    errors.install(app)
