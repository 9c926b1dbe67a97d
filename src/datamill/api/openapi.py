"""What the OpenAPI document says routes answer besides their success: errors and other content types.

Every error has one JSON shape (:class:`Error`, made by :mod:`datamill.api.errors`). Each route
declares the error statuses it can answer with :func:`errors`; the ones every ``/api`` route can
answer (no token, a request that does not match, a bug) are added to all of them in ``app.py``
(:data:`COMMON_ERRORS`). The helpers here describe non-JSON answers: bytes, text, zips and the
Server-Sent Events stream.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

#: What each error status means, as the document says it.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The request is malformed: a bad name, JSON, metadata or value (`code` says which).",
    401: "No valid token: send `Authorization: Bearer <token>` (or the `datamill_token` cookie).",
    403: "You may see it, but not do this to it.",
    404: "No such thing, or you may not see it (the two answers are the same).",
    409: "It exists already, or is in a state that does not allow this.",
    416: "The requested range lies outside the file.",
    422: "The request does not match the API: a parameter is missing, of the wrong type or out of range.",
    500: "Something failed on the server (see its log), or stored bytes are missing or corrupted.",
}


class Error(BaseModel):
    """Every error the API answers: what went wrong and what to do."""

    ok: Literal[False] = False
    status: int = Field(description="The HTTP status, repeated.")
    code: str = Field(description="A stable, machine-readable code: not_found, invalid_name, ...")
    error: str = Field(description="What went wrong and what to do about it.")
    detail: dict[str, Any] = Field(description="Details that depend on the code (never secrets or hidden names).")


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries declaring the JSON error shape for ``statuses``."""
    return {s: {"model": Error, "description": ERROR_DESCRIPTIONS[s]} for s in statuses}


#: What every ``/api`` route but ``/health`` may answer.
COMMON_ERRORS = errors(401, 422, 500)


def json_errors(doc: dict[str, Any]) -> dict[str, Any]:
    """Make every error response of ``doc`` (an OpenAPI document) the JSON error shape.

    FastAPI documents an extra response in the route's own media type, which for streaming
    routes (an event stream, a log) would claim errors come as ``text/event-stream``; they never
    do. Routes with no declared errors (none today) would get none; every error is JSON.
    """
    ref = {"$ref": f"#/components/schemas/{Error.__name__}"}
    for ops in doc.get("paths", {}).values():
        for method, op in ops.items():
            if not isinstance(op, dict):
                continue
            for status, response in op.get("responses", {}).items():
                if status.isdigit() and int(status) >= 400 and method != "head":
                    response["content"] = {"application/json": {"schema": ref}}
    return doc


def binary(description: str, media_type: str = "application/octet-stream") -> dict[str, Any]:
    """A response of raw bytes."""
    return {"description": description, "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}


def text(description: str, *media_types: str) -> dict[str, Any]:
    """A response of text in one of ``media_types``."""
    return {"description": description, "content": {m: {"schema": {"type": "string"}} for m in media_types}}


def json_of(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON response whose schema is written by hand (handlers that return plain dicts)."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


#: A JSON object of any keys; a list of them.
OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}
OBJECTS: dict[str, Any] = {"type": "array", "items": OBJECT}


def event_stream(description: str, event_schema_ref: str) -> dict[str, Any]:
    """A ``text/event-stream`` response; each event's ``data`` is JSON of the schema at ``event_schema_ref``.

    OpenAPI 3.1 has no field for one event of a stream, so ``schema`` describes one event as
    parsed by an SSE reader (``event``, ``id``, ``data``), the way OpenAPI 3.2's ``itemSchema``
    does; comments (``: keep-alive``) and the ``retry`` line carry no event.
    """
    return {
        "description": description,
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["data", "event"],
                    "properties": {
                        "event": {"type": "string", "description": "The event's kind, e.g. `item.created`."},
                        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The event's seq."},
                        "retry": {"type": "integer", "minimum": 0},
                        "data": {
                            "type": "string",
                            "description": "The event as JSON.",
                            "contentMediaType": "application/json",
                            "contentSchema": {"$ref": event_schema_ref},
                        },
                    },
                }
            }
        },
    }
