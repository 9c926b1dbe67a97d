"""The admin pages (site admins only; anyone else gets "no such page", as for a page that does not exist).

* ``GET /admin``: users with their tokens (no secrets), and the forms below.
* ``POST /admin/users`` (create), ``POST /admin/users/{name}/disable`` (no password, every token
  revoked: the user is signed out everywhere and stays out until given a new token or password).
* ``POST /admin/tokens`` (create: the secret is shown on the answering page once, never again and
  never in a redirect or cookie), ``POST /admin/tokens/{id}/revoke``.
* ``GET /admin/grants?folder=...``, ``POST /admin/grants``: who may do what on a folder; grant a
  user a level (or none), switch public read.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from datamill.api.deps import blocking
from datamill.errors import DatamillError, NotFound
from datamill.service import Service
from datamill.store.records import AccessGrant, UserInfo
from datamill.store.users import NewToken
from datamill.web.render import redirect, render
from datamill.web.session import Session, SessionDep

router = APIRouter(include_in_schema=False)

LEVELS = ("read", "write", "admin", "none")


def admin_service(request: Request, session: Session) -> Service:
    """The service acting as a site admin; NotFound (the page does not exist) for anyone else."""
    if not session.actor.is_admin:
        raise NotFound("no such page")
    return session.service(request.app.state.home)


@dataclass(frozen=True)
class UserRow:
    """A user, whether they have a password, and their tokens (no secrets)."""

    user: UserInfo
    password: bool
    tokens: list[dict[str, object]]

    @property
    def disabled(self) -> bool:
        """No way in: no password and no live token."""
        return not self.password and not any(not t["revoked"] for t in self.tokens)


def user_rows(service: Service) -> list[UserRow]:
    """Every user with their tokens."""
    out = []
    for u in service.list_users():
        password, tokens = service.user_tokens(u.name)
        out.append(UserRow(u, password, tokens))
    return out


async def _page(
    request: Request, session: Session, service: Service, new_token: NewToken | None = None, status: int = 200
) -> Response:
    rows = await blocking(user_rows, service)
    return render(request, "admin/users.html", session, rows=rows, new_token=new_token, status=status)


@router.get("/admin")
async def admin_page(request: Request, session: SessionDep) -> Response:
    """Users and tokens."""
    return await _page(request, session, admin_service(request, session))


@router.post("/admin/users")
async def create_user(
    request: Request, session: SessionDep, name: str = Form(""), password: str = Form(""), admin: str = Form("")
) -> Response:
    """Create a user (with a password for signing in to the web app, if given)."""
    service = admin_service(request, session)
    try:
        await blocking(service.create_user, name.strip(), password or None, admin == "on")
    except DatamillError as exc:
        return redirect("/admin", exc.message, "error")
    return redirect("/admin", f"User {name.strip()} created.")


@router.post("/admin/users/{name}/disable")
async def disable_user(request: Request, name: str, session: SessionDep) -> Response:
    """Sign a user out everywhere and keep them out."""
    service = admin_service(request, session)
    try:
        n = await blocking(service.disable_user, name)
    except DatamillError as exc:
        if isinstance(exc, NotFound):
            raise
        return redirect("/admin", exc.message, "error")
    return redirect("/admin", f"User {name} disabled: password removed, {n} token{'' if n == 1 else 's'} revoked.")


@router.post("/admin/tokens")
async def create_token(
    request: Request, session: SessionDep, user: str = Form(""), name: str = Form(""), days: str = Form("")
) -> Response:
    """Create a token and show its secret on this answer only."""
    service = admin_service(request, session)
    try:
        ttl = float(days) * 86400 if days.strip() else None
        if ttl is not None and ttl <= 0:
            raise ValueError
    except ValueError:
        return redirect("/admin", "the lifetime must be a positive number of days (or empty: no expiry)", "error")
    try:
        token = await blocking(service.create_token, user, name.strip(), ttl)
    except DatamillError as exc:
        return redirect("/admin", exc.message, "error")
    return await _page(request, session, service, new_token=token)


@router.post("/admin/tokens/{token_id}/revoke")
async def revoke_token(request: Request, token_id: int, session: SessionDep) -> Response:
    """Revoke a token."""
    service = admin_service(request, session)
    await blocking(service.revoke_token, token_id)
    return redirect("/admin", f"Token {token_id} revoked.")


@dataclass(frozen=True)
class Grants:
    """A folder's grants and whether it is public."""

    folder: str
    grants: list[AccessGrant]
    public: bool


def folder_grants(service: Service, path: str) -> Grants:
    """The grants on a folder."""
    info = service.folder(path)
    return Grants(info.path, service.access_list(info.path), info.public_read)


@router.get("/admin/grants")
async def grants_page(request: Request, session: SessionDep, folder: str = "") -> Response:
    """The grants on a folder, and a form to change them."""
    service = admin_service(request, session)
    grants = await blocking(folder_grants, service, folder.strip("/")) if folder.strip("/") else None
    users = await blocking(service.list_users)
    return render(request, "admin/grants.html", session, grants=grants, folder=folder, users=users, levels=LEVELS)


@router.post("/admin/grants")
async def grant(
    request: Request,
    session: SessionDep,
    folder: str = Form(""),
    user: str = Form(""),
    level: str = Form("read"),
    public: str = Form(""),
) -> Response:
    """Give a user a level on a folder (``none`` removes it), or switch public read."""
    service = admin_service(request, session)
    path = folder.strip("/")
    back = f"/admin/grants?folder={path}"
    try:
        if public in ("on", "off"):
            await blocking(service.set_public, path, public == "on")
            message = f"{path} is {'public (anyone may read)' if public == 'on' else 'no longer public'}."
        else:
            await blocking(service.share, path, user, level if level in LEVELS else "read")
            message = f"{user} now has {level} on {path}." if level != "none" else f"{user}'s grant on {path} removed."
    except DatamillError as exc:
        if isinstance(exc, NotFound):
            raise
        return redirect(back, exc.message, "error")
    return redirect(back, message)
