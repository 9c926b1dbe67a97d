"""Browser sessions: who is signed in, signing in (login URL or password) and out.

A session is an ordinary API token minted for the browser (named ``web session``, expiring after
:data:`SESSION_SECONDS`), kept in the HTTP-only, SameSite=Strict cookie ``datamill_token`` that
the API has always accepted. So a session is signed (256 random bits, stored hashed), expires,
and is revocable like any token: signing out revokes it, and so does ``datamill token revoke``.
The token in the login URL ``datamill up`` prints is used once, to mint the session; it never
reaches the cookie, and the redirect takes it out of the address bar and the history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import Response

from datamill.api.deps import TOKEN_COOKIE, blocking, service_for
from datamill.api.middleware import resolve_token, token_from_headers
from datamill.errors import DatamillError, Unauthorized
from datamill.home import Home
from datamill.service import Service
from datamill.store import users
from datamill.store.access import Actor
from datamill.web.csrf import check_request, csrf_token

#: How long a browser session lasts.
SESSION_SECONDS = 7 * 24 * 3600
SESSION_NAME = "web session"


@dataclass(frozen=True)
class Session:
    """The signed-in user of a request, their session secret and its CSRF token."""

    actor: Actor
    token: str
    csrf: str

    def service(self, home: Home) -> Service:
        """The service layer acting as this user, as the API's routes use it."""
        return service_for(home, self.actor)


class SignInRequired(Unauthorized):
    """A page that needs a signed-in user was asked for without one; the browser goes to sign in."""

    def __init__(self, next_url: str) -> None:
        super().__init__("sign in to see this page")
        self.next_url = next_url


def _cookie_token(request: Request) -> str | None:
    cookies = [(b"cookie", v.encode("latin-1")) for v in request.headers.getlist("cookie")]
    return token_from_headers(cookies)


async def current_session(request: Request) -> Session | None:
    """The request's session, or None when its cookie is missing, unknown, revoked or expired."""
    if hasattr(request.state, "web_session"):
        cached: Session | None = request.state.web_session
        return cached
    token = _cookie_token(request)
    session = None
    if token:
        try:
            actor = await blocking(resolve_token, request.app.state.home, token)
            session = Session(actor, token, csrf_token(token))
        except DatamillError:
            session = None
    request.state.web_session = session
    return session


def _here(request: Request) -> str:
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{request.url.path}{query}"


async def require_session(request: Request) -> Session:
    """The signed-in user (else :class:`SignInRequired`); unsafe methods must carry the CSRF token."""
    session = await current_session(request)
    if session is None:
        raise SignInRequired(_here(request) if request.method == "GET" else "/")
    await check_request(request, session.token)
    return session


#: What page handlers take: the signed-in user, CSRF already checked.
SessionDep = Annotated[Session, Depends(require_session)]


def sign_in_url(next_url: str) -> str:
    """The sign-in page, coming back to ``next_url`` afterwards."""
    return "/signin" if next_url in ("", "/") else f"/signin?next={quote(next_url, safe='')}"


def safe_next(next_url: str | None) -> str:
    """``next_url`` if it is a path on this site, else ``/`` (no open redirects)."""
    if not next_url or not next_url.startswith("/") or next_url.startswith("//") or "\\" in next_url:
        return "/"
    return next_url


def mint(home: Home, actor: Actor) -> str:
    """A new session secret for ``actor``."""
    with home.db.write() as conn:
        return users.create_token(conn, actor, SESSION_NAME, SESSION_SECONDS, by=actor).token


def open_session(home: Home, token: str) -> str:
    """Mint a session from an API token (the login URL's); raises Unauthorized if it is not valid."""
    return mint(home, resolve_token(home, token))


def password_session(home: Home, name: str, password: str) -> str:
    """Mint a session for a user name and password; Unauthorized if they do not match."""
    with home.db.read() as conn:
        actor = users.check_password(conn, name, password)
    return mint(home, actor)


def close_session(home: Home, token: str) -> None:
    """Revoke a session secret."""
    with home.db.write() as conn:
        users.revoke_secret(conn, token)


def set_cookie(response: Response, request: Request, token: str) -> None:
    """Store the session in the browser: HTTP-only, SameSite=Strict, for the whole site."""
    response.set_cookie(
        TOKEN_COOKIE,
        token,
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_cookie(response: Response) -> None:
    """Forget the session in the browser."""
    response.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="strict")
