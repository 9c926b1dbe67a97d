"""CSRF protection: a per-session token every form and state-changing browser request must carry.

The token is an HMAC of the session's secret, so it needs no storage, differs per session, dies
with it, and cannot be computed by a page that does not know the session cookie. Forms carry it
in the hidden field :data:`FIELD`; htmx requests and the upload script send the header
:data:`HEADER`. The API applies the same rule to requests authenticated by the session cookie
(``api/middleware.py``); requests with an ``Authorization`` header need none.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from datamill.errors import PermissionDenied

FIELD = "csrf"
HEADER = "X-CSRF-Token"
#: Methods that change nothing and so need no token.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

REFUSED = (
    "this request was refused: it did not carry the page's security token (CSRF). "
    "Reload the page and submit the form again"
)


def csrf_token(session_token: str) -> str:
    """The CSRF token of the session whose secret is ``session_token``."""
    return hmac.new(session_token.encode("utf-8"), b"datamill-csrf", hashlib.sha256).hexdigest()


def valid(session_token: str, sent: str | None) -> bool:
    """Whether ``sent`` is the CSRF token of that session (compared in constant time)."""
    return bool(sent) and hmac.compare_digest(csrf_token(session_token), str(sent))


async def check_request(request: Request, session_token: str) -> None:
    """Raise :class:`PermissionDenied` unless an unsafe request carries the session's CSRF token.

    Looks at the header first, then (for forms) at the hidden field; reading the form here
    caches it on the request, so the handler reads it again for free.
    """
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get(HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(FIELD)
        sent = value if isinstance(value, str) else None
    if not valid(session_token, sent):
        raise PermissionDenied(REFUSED, reason="csrf")
