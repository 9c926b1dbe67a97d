"""Form input and form errors: what a page shows next to the field that was wrong.

A handler that rejects a form re-renders the page with status 400 (or the error's own status),
the values that were sent and :class:`FieldErrors`; nothing is saved. Messages are the typed
errors' own words (:mod:`datamill.errors`), so the page says what is wrong and what to do.
"""

from __future__ import annotations

from typing import Any

from datamill.api.errors import public_error
from datamill.errors import DatamillError, InvalidMetadata
from datamill.limits import loads_bounded

#: Field name -> message.
FieldErrors = dict[str, str]


def message_of(exc: DatamillError) -> str:
    """What the user is told about ``exc``: the API's public message (no hidden names)."""
    return str(public_error(exc)["error"])


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    """The JSON object in ``text`` (empty: ``{}``); :class:`InvalidMetadata` saying where it is wrong."""
    if not text.strip():
        return {}
    value = loads_bounded(text, what, InvalidMetadata)
    if not isinstance(value, dict):
        raise InvalidMetadata(f"{what} must be a JSON object ({{...}}), not {type(value).__name__}")
    return value
