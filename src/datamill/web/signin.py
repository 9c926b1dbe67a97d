"""Signing in and out: ``/`` (with the login URL's ``?token=``), ``/signin`` (user name and password), ``/signout``.

* ``GET /?token=...``: the login URL ``datamill up`` prints. A valid token mints a browser session
  (see :mod:`datamill.web.session`) and redirects to ``/``, taking the token out of the address
  bar; an invalid one shows the sign-in page with a 401. ``GET /`` otherwise opens the folders.
* ``GET /signin``, ``POST /signin``: the password form (users with a password; ``datamill user
  create NAME --password``). Wrong credentials say so without saying which part was wrong.
* ``POST /signout``: revokes the session and forgets the cookie (CSRF-checked like every form).
"""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from datamill.api.deps import blocking
from datamill.errors import DatamillError, Unauthorized
from datamill.web.render import redirect, render
from datamill.web.session import (
    SessionDep,
    clear_cookie,
    close_session,
    current_session,
    open_session,
    password_session,
    safe_next,
    set_cookie,
)

router = APIRouter(include_in_schema=False)

BAD_TOKEN = "that sign-in link is not valid (unknown, revoked or expired); ask for a new one or sign in below"


@router.get("/")
async def home_page(request: Request) -> Response:
    """The site's front door: signs in with ``?token=``; else the folders (or the sign-in page)."""
    token = request.query_params.get("token")
    if token is not None:
        try:
            secret = await blocking(open_session, request.app.state.home, token)
        except DatamillError:
            return render(request, "signin.html", None, status=401, error=BAD_TOKEN, next="/", name="")
        response = redirect("/")
        set_cookie(response, request, secret)
        return response
    if await current_session(request) is None:
        return redirect("/signin")
    return redirect("/folders")


@router.get("/signin")
async def sign_in_page(request: Request, next: str = "/") -> Response:
    """The sign-in form."""
    session = await current_session(request)
    if session is not None:
        return redirect(safe_next(next))
    return render(request, "signin.html", None, error=None, next=safe_next(next), name="")


@router.post("/signin")
async def sign_in(request: Request, name: str = Form(""), password: str = Form(""), next: str = Form("/")) -> Response:
    """Check a user name and password; on success start a session and go to ``next``.

    Nobody is signed in yet, so there is no session to tie a CSRF token to; SameSite=Strict
    cookies and the same-origin form-action policy keep other sites from using this form.
    """
    try:
        if not name or not password:
            raise Unauthorized("enter your user name and password")
        secret = await blocking(password_session, request.app.state.home, name, password)
    except Unauthorized as exc:
        return render(request, "signin.html", None, status=401, error=exc.message, next=safe_next(next), name=name)
    response = redirect(safe_next(next))
    set_cookie(response, request, secret)
    return response


@router.post("/signout")
async def sign_out(request: Request, session: SessionDep) -> Response:
    """End the session: revoke its token and forget the cookie."""
    await blocking(close_session, request.app.state.home, session.token)
    response = redirect("/signin", "You are signed out.")
    clear_cookie(response)
    return response
