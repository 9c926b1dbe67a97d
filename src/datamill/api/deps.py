"""What route handlers get injected: the home, the calling actor, the service layer acting as that
actor, and a way to run blocking code.

Store and database calls block, so handlers run them through :func:`blocking` (starlette's
thread pool) rather than on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ParamSpec, TypeVar

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyCookie, HTTPBearer
from starlette.concurrency import run_in_threadpool

from datamill.api.streams import StreamGuard
from datamill.errors import Unauthorized
from datamill.home import Home
from datamill.service import Service
from datamill.store.access import Actor

P = ParamSpec("P")
T = TypeVar("T")

TOKEN_COOKIE = "datamill_token"

# Declared for the OpenAPI document only: the token is checked by the ``TokenAuth`` middleware
# (so that every /api request is covered, including ones that match no route).
bearer_scheme = HTTPBearer(auto_error=False, description="A datamill API token: `Authorization: Bearer dm_...`.")
cookie_scheme = APIKeyCookie(
    name=TOKEN_COOKIE,
    auto_error=False,
    description="A web-app session token, as set by signing in (`/?token=...` or `/signin`); "
    "requests that change something also need the `X-CSRF-Token` header.",
)


async def blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking call in the thread pool."""
    return await run_in_threadpool(fn, *args, **kwargs)


def get_home(request: Request) -> Home:
    """The home the app serves."""
    home: Home = request.app.state.home
    return home


def get_actor(
    request: Request,
    _bearer: Any = Security(bearer_scheme),
    _cookie: Any = Security(cookie_scheme),
) -> Actor:
    """The user the request's token belongs to (resolved by the ``TokenAuth`` middleware)."""
    actor = request.scope.get("state", {}).get("actor")
    if not isinstance(actor, Actor):
        raise Unauthorized()
    return actor


def get_token(request: Request) -> str:
    """The token the request was authenticated with (long-lived responses re-check it)."""
    token = request.scope.get("state", {}).get("token")
    if not isinstance(token, str):
        raise Unauthorized()
    return token


def get_guard(request: Request) -> StreamGuard:
    """The app's :class:`~datamill.api.streams.StreamGuard` of long-lived responses."""
    guard: StreamGuard = request.app.state.guard
    return guard


HomeDep = Annotated[Home, Depends(get_home)]
TokenDep = Annotated[str, Depends(get_token)]
GuardDep = Annotated[StreamGuard, Depends(get_guard)]
ActorDep = Annotated[Actor, Depends(get_actor)]


def service_for(home: Home, actor: Actor) -> Service:
    """The service layer acting as ``actor`` for a request received over the API.

    ``serving``: a pipeline reference is taken as sent, never read against the server's working
    directory. Long-lived responses call it for the actor they re-check.
    """
    return Service(home, actor, serving=True)


async def get_service(home: HomeDep, actor: ActorDep) -> Service:
    """The service layer acting as the caller (async: making it needs no thread of the pool)."""
    return service_for(home, actor)


ServiceDep = Annotated[Service, Depends(get_service)]
