"""Numeric ids in URLs, bounded to what the database can hold.

A number outside a signed 64-bit integer cannot name a run, task or token; declaring the bound
makes such a request a 422 in the one error shape (and shows the bound in the OpenAPI document)
instead of an overflow inside the database driver.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path as PathParam
from fastapi import Query

from datamill.limits import INT64_MAX

RunId = Annotated[int, PathParam(ge=1, le=INT64_MAX, description="A run's id.")]
TaskId = Annotated[int, PathParam(ge=1, le=INT64_MAX, description="A task's id.")]
TokenId = Annotated[int, PathParam(ge=1, le=INT64_MAX, description="A token's id.")]


def parse_last_event_id(value: str | None) -> int | None:
    """A ``Last-Event-ID`` header as a cursor; None when it is absent or no seq (ASCII digits, in range)."""
    text = (value or "").strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        return None
    seq = int(text)
    return seq if seq <= INT64_MAX else None


#: ``?version=N`` of an item: the current version when absent.
VersionQuery = Annotated[
    int | None, Query(ge=1, le=INT64_MAX, description="The version number; the current one when absent.")
]
