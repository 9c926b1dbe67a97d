"""One JSON error shape for everything the API rejects, made in one place.

Every error body is ``{"ok": false, "status", "code", "error", "detail"}``: a
:class:`~datamill.errors.DatamillError` gives its own ``to_dict()``; FastAPI's validation errors,
unknown routes and unexpected exceptions are mapped to the same keys. An unexpected exception is
logged with its traceback and answered with a fixed message, so neither its text nor anything it
may hold (paths, URLs with passwords, tokens) reaches the client.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from datamill.errors import (
    DatamillError,
    InvalidInput,
    NotFound,
    RangeNotSatisfiable,
    TooManyRequests,
    Unauthorized,
)
from datamill.limits import MAX_JSON_DEPTH

log = logging.getLogger("datamill.api")

INTERNAL_MESSAGE = "internal error; see the server log"

#: What FastAPI says when reading a JSON body raised something other than a syntax error.
_BODY_UNREADABLE = "There was an error parsing the body"

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 406: "not_acceptable", 413: "too_large"}

#: An error message is cut to this many characters: it may quote what a caller sent (a name, a
#: parse error of a file), and an error body must stay small whatever they sent.
MAX_MESSAGE = 1000
#: ``detail`` larger than this (as JSON) is replaced by a note saying so.
MAX_DETAIL = 8 * 1024
#: At most this many validation errors are listed.
MAX_ERRORS = 20


def bounded(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message``, cut to ``limit`` characters with a note of how much was left out."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... ({len(message) - limit} more characters left out)"


def _bounded_detail(detail: dict[str, Any]) -> dict[str, Any]:
    try:
        size = len(json.dumps(detail, default=str))
    except (TypeError, ValueError, RecursionError):
        size = MAX_DETAIL + 1
    if size <= MAX_DETAIL:
        return detail
    return {"truncated": f"the error's detail was {size} bytes long and is left out; see the server log"}


def error_body(status: int, code: str, message: str, detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON error shape: ``{"ok": false, "status", "code", "error", "detail"}``."""
    return {"ok": False, "status": status, "code": code, "error": message, "detail": detail or {}}


def public_error(exc: DatamillError) -> dict[str, Any]:
    """``exc.to_dict()``, minus what a caller without access must not learn.

    A :class:`NotFound` about a path is what a caller gets both for a folder that does not exist
    and for one they may not read; the store's message names the path, so it is replaced by the
    generic one and the path dropped. The two cases then read the same, byte for byte.
    """
    body = exc.to_dict()
    if isinstance(exc, NotFound) and "path" in exc.detail:
        body["error"] = (NotFound.__doc__ or "not found").strip()
        body["detail"] = {k: v for k, v in exc.detail.items() if k != "path"}
    body["error"] = bounded(str(body["error"]))
    body["detail"] = _bounded_detail(body["detail"] if isinstance(body["detail"], dict) else {})
    return body


def error_response(exc: DatamillError) -> JSONResponse:
    """The response for a typed error, with the headers its status calls for."""
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="datamill"'
    if isinstance(exc, RangeNotSatisfiable) and "size" in exc.detail:
        headers["Content-Range"] = f"bytes */{exc.detail['size']}"
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(exc.detail.get("retry_after", 5))
    return JSONResponse(public_error(exc), status_code=exc.status, headers=headers)


def internal_error_response() -> JSONResponse:
    """The answer to an unexpected exception: a fixed message, nothing from the exception."""
    return JSONResponse(error_body(500, "internal", INTERNAL_MESSAGE), status_code=500)


async def _datamill_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DatamillError)
    if exc.status >= 500:
        log.error("%s %s failed: %s (%s)", request.method, request.url.path, exc.message, exc.code)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # The offending input is left out on purpose: it may be large, or a secret sent by mistake.
    errors = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()[:MAX_ERRORS]
    ]
    if any(e["type"] == "json_invalid" for e in errors):
        body = InvalidInput("the request body is not valid JSON; send a JSON object", errors=errors).to_dict()
        return JSONResponse(body, status_code=400)
    summary = bounded("; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors), MAX_MESSAGE // 2)
    message = f"the request does not match the API ({summary}); see /docs"
    return JSONResponse(error_body(422, "invalid_request", message, {"errors": errors}), status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = bounded(exc.detail) if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404:
        message = "no such API route; see /docs for the routes"
    elif exc.status_code == 400 and message == _BODY_UNREADABLE:
        # FastAPI's answer to a body its JSON parser raised on (not a syntax error: that is a
        # 400 above); in practice, JSON nested too deeply for Python's recursive parser.
        body = InvalidInput(
            "the request body could not be read as JSON (nested too deeply, or a number too long?); "
            f"send a JSON object nested at most {MAX_JSON_DEPTH} levels deep"
        ).to_dict()
        return JSONResponse(body, status_code=400)
    return JSONResponse(error_body(exc.status_code, code, message), status_code=exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the one JSON shape."""
    app.add_exception_handler(DatamillError, _datamill_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


class ErrorBoundary:
    """ASGI middleware: an exception nobody handled becomes a logged 500 in the JSON shape.

    Starlette's own last-resort handler would re-raise after answering (so the server logs the
    traceback twice). When the response has already started there is no way to answer, so the
    exception is re-raised: the server then drops the connection and the client sees a broken
    transfer instead of a clean end of a truncated body.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            if isinstance(exc, DatamillError):
                response = error_response(exc)
            else:
                log.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
                response = internal_error_response()
            await response(scope, receive, send)
