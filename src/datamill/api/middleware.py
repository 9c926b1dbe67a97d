"""ASGI middleware: token authentication for ``/api`` and an access log without query strings.

Authentication is a middleware rather than a route dependency so that it covers every request
under ``/api`` (including ones that match no route) and runs before the body is read or
validated: an anonymous caller always gets 401, never a 404/422 that says something about a route.
"""

from __future__ import annotations

import logging
import time
from http.cookies import SimpleCookie

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from datamill.api.deps import TOKEN_COOKIE
from datamill.api.errors import error_response
from datamill.errors import DatamillError, PermissionDenied, Unauthorized
from datamill.home import Home
from datamill.store import users
from datamill.store.access import Actor
from datamill.web import csrf
from datamill.web.csrf import SAFE_METHODS

access_log = logging.getLogger("datamill.access")

API_PREFIX = "/api/"
#: Paths under /api that need no token. Only ones that reveal nothing.
PUBLIC_PATHS = frozenset({"/api/v1/health"})

NO_TOKEN = (
    "this request needs a token: send 'Authorization: Bearer <token>' (the CLI and the Python client "
    "take --token or DATAMILL_TOKEN); `datamill up` prints a login URL with one"
)


def token_from_headers(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The bearer token of a request, else its ``datamill_token`` cookie, else None."""
    cookie_token = None
    for key, value in headers:
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif key == b"cookie" and cookie_token is None:
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed Cookie header is the same as none
                continue
            if TOKEN_COOKIE in jar:
                cookie_token = jar[TOKEN_COOKIE].value or None
    return cookie_token


def bearer_sent(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request carries its own ``Authorization: Bearer`` token (not only the session cookie)."""
    for key, value in headers:
        if key == b"authorization" and value[:7].lower() == b"bearer " and value[7:].strip():
            return True
    return False


def csrf_sent(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The request's ``X-CSRF-Token`` header, if any."""
    for key, value in headers:
        if key == b"x-csrf-token":
            return value.decode("latin-1")
    return None


def resolve_token(home: Home, token: str | None) -> Actor:
    """The user of ``token``; :class:`Unauthorized` if there is none or it is not valid."""
    if not token:
        raise Unauthorized(NO_TOKEN)
    with home.db.read() as conn:
        return users.actor_for_token(conn, token)


class TokenAuth:
    """Require a valid token on every ``/api`` request; put its actor in ``scope["state"]["actor"]``."""

    def __init__(self, app: ASGIApp, home: Home) -> None:
        self.app = app
        self.home = home

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith(API_PREFIX) or path in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        token = token_from_headers(scope.get("headers", []))
        try:
            actor = await run_in_threadpool(resolve_token, self.home, token)
        except DatamillError as exc:
            await error_response(exc)(scope, receive, send)
            return
        headers = scope.get("headers", [])
        # A browser sends the session cookie on its own: a change made with it alone could be
        # forged by another page, so it must also carry the session's CSRF token (web/csrf.py).
        if token and scope.get("method") not in SAFE_METHODS and not bearer_sent(headers):
            if not csrf.valid(token, csrf_sent(headers)):
                await error_response(PermissionDenied(csrf.REFUSED, reason="csrf"))(scope, receive, send)
                return
        state = scope.setdefault("state", {})
        state["actor"] = actor
        # Long-lived responses re-check it while they stay open (api/streams.py).
        state["token"] = token
        await self.app(scope, receive, send)


class _DropRecords(logging.Filter):
    """Drops every record: uvicorn's access lines carry query strings, hence login tokens."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


def silence_uvicorn_access_log() -> None:
    """Keep uvicorn's own access log quiet whatever handlers logging config attaches to it.

    ``access_log=False`` only holds while nothing adds a handler to ``uvicorn.access`` (a
    logging config, a test harness); a logger-level filter holds regardless.
    """
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _DropRecords) for f in logger.filters):
        logger.addFilter(_DropRecords())


class AccessLog:
    """One log line per request: client, method, path (never the query string), status, time.

    Query strings are left out because a login URL carries a token there (``/?token=...``).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def logging_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        outcome = ""
        try:
            await self.app(scope, receive, logging_send)
        except BaseException:
            outcome = " (aborted)"
            raise
        finally:
            raw = scope.get("raw_path")
            path = raw.decode("latin-1") if isinstance(raw, bytes) else scope.get("path", "")
            client = scope.get("client")
            who = f"{client[0]}:{client[1]}" if client else "-"
            access_log.info(
                '%s - "%s %s" %s %.1fms%s',
                who,
                scope.get("method"),
                path.split("?", 1)[0],
                status or "-",
                (time.perf_counter() - start) * 1000,
                outcome,
            )
