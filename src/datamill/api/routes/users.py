"""Who you are, users and tokens.

* ``GET /api/v1/whoami``
* ``GET /api/v1/users``, ``POST /api/v1/users`` (site admins only)
* ``GET /api/v1/tokens`` your tokens (without secrets); ``POST /api/v1/tokens`` a new token for
  yourself, or for another user as a site admin; ``DELETE /api/v1/tokens/{id}`` revoke
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from datamill.api.deps import ActorDep, HomeDep, blocking
from datamill.api.ids import TokenId
from datamill.api.openapi import errors
from datamill.api.schemas import Done, TokenOut, UserOut
from datamill.errors import PermissionDenied
from datamill.home import Home
from datamill.store import users
from datamill.store.access import Actor

router = APIRouter(tags=["users"])


class UserCreate(BaseModel):
    """A new user."""

    name: str
    password: str | None = Field(None, description="For signing in to the web UI; tokens work without one.")
    admin: bool = Field(False, description="Make the user a site admin.")


class TokenCreate(BaseModel):
    """A new token."""

    user: str | None = Field(None, description="Whose token; yourself when absent (others need a site admin).")
    name: str = Field("", description="A label to recognise the token by.")
    ttl: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Seconds until it expires; never when absent."
    )


class TokenEntry(BaseModel):
    """One of your tokens, without its secret."""

    id: int
    name: str
    created_at: float
    expires_at: float | None
    revoked: bool


def _user_dict(user: Actor) -> dict[str, Any]:
    return {"id": user.id, "name": user.name, "is_admin": user.is_admin}


def _require_admin(actor: Actor) -> None:
    if not actor.is_admin:
        raise PermissionDenied("only a site admin may manage users")


@router.get("/whoami", response_model=UserOut, summary="Who am I")
async def whoami(actor: ActorDep) -> dict[str, Any]:
    """The user the token belongs to."""
    return _user_dict(actor)


@router.get(
    "/users",
    response_model=list[UserOut],
    responses=errors(403),
    summary="List users",
)
async def list_users(actor: ActorDep, home: HomeDep) -> list[dict[str, Any]]:
    """All users (site admins only)."""
    _require_admin(actor)

    def run() -> list[dict[str, Any]]:
        with home.db.read() as conn:
            return [_user_dict(u) for u in users.list_users(conn)]

    return await blocking(run)


def _create_user(home: Home, actor: Actor, body: UserCreate) -> dict[str, Any]:
    with home.db.write() as conn:
        return _user_dict(users.create_user(conn, body.name, body.password, body.admin, by=actor))


@router.post(
    "/users",
    response_model=UserOut,
    status_code=201,
    responses=errors(400, 403, 409),
    summary="Create a user",
)
async def create_user(body: UserCreate, actor: ActorDep, home: HomeDep) -> JSONResponse:
    """Create a user (site admins only)."""
    _require_admin(actor)
    return JSONResponse(await blocking(_create_user, home, actor, body), status_code=201)


@router.get("/tokens", response_model=list[TokenEntry], summary="List your tokens")
async def list_tokens(actor: ActorDep, home: HomeDep) -> list[dict[str, object]]:
    """Your tokens, without their secrets."""

    def run() -> list[dict[str, object]]:
        with home.db.read() as conn:
            return users.list_tokens(conn, actor)

    return await blocking(run)


def _create_token(home: Home, actor: Actor, body: TokenCreate) -> dict[str, Any]:
    with home.db.write() as conn:
        target = users.get_user(conn, body.user) if body.user else actor
        t = users.create_token(conn, target, body.name, body.ttl, by=actor)
    return {"id": t.id, "user": t.user, "token": t.token, "expires_at": t.expires_at}


@router.post(
    "/tokens",
    response_model=TokenOut,
    status_code=201,
    responses=errors(400, 403, 404),
    summary="Create a token",
)
async def create_token(body: TokenCreate, actor: ActorDep, home: HomeDep) -> JSONResponse:
    """A new token; its secret is in this response only. Tokens for others need a site admin."""
    if body.user is not None and body.user != actor.name:
        _require_admin(actor)
    result = await blocking(_create_token, home, actor, body)
    # The secret must not linger in caches along the way.
    return JSONResponse(result, status_code=201, headers={"Cache-Control": "no-store"})


@router.delete(
    "/tokens/{token_id}",
    response_model=Done,
    responses=errors(403, 404),
    summary="Revoke a token",
)
async def revoke_token(token_id: TokenId, actor: ActorDep, home: HomeDep) -> dict[str, Any]:
    """Revoke one of your tokens (anyone's, as a site admin)."""

    def run() -> None:
        with home.db.write() as conn:
            users.revoke_token(conn, token_id, actor)

    await blocking(run)
    return {"ok": True}
