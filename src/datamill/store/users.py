"""Users, passwords (argon2) and API tokens (random, stored as SHA-256, revocable, expiring)."""

from __future__ import annotations

import hashlib
import secrets
import time

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError, VerifyMismatchError
from sqlalchemy import Connection, insert, select, update

from datamill import events
from datamill.db.models import Token, User
from datamill.errors import AlreadyExists, InvalidInput, NotFound, Unauthorized
from datamill.events import EventKind
from datamill.records import NewToken
from datamill.store.access import Actor

TOKEN_PREFIX = "dm_"
_hasher = PasswordHasher()


def hash_token(token: str) -> str:
    """The stored form of a token. Tokens carry 256 random bits, so a fast hash is enough."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_user_name(name: str) -> str:
    """User names: 1-64 characters of letters, digits, ``.``, ``_``, ``-``, ``@``."""
    ok = 0 < len(name) <= 64 and all(c.isalnum() or c in "._-@" for c in name)
    if not ok:
        raise InvalidInput(
            f"user name {name!r} is not allowed; use 1-64 letters, digits, '.', '_', '-' or '@'", name=name
        )
    return name


def create_user(
    conn: Connection, name: str, password: str | None = None, is_admin: bool = False, by: Actor | None = None
) -> Actor:
    """Create a user; raise :class:`AlreadyExists` if the name is taken."""
    check_user_name(name)
    if conn.execute(select(User.id).where(User.name == name)).first():
        raise AlreadyExists(f"user {name!r} already exists", name=name)
    pw = _hasher.hash(password) if password else None
    uid = conn.execute(
        insert(User).values(name=name, password_hash=pw, is_admin=is_admin, created_at=time.time()).returning(User.id)
    ).scalar_one()
    events.append(
        conn, EventKind.USER_CREATED, actor_id=by.id if by else None, data={"user": name, "is_admin": is_admin}
    )
    return Actor(int(uid), name, is_admin)


def get_user(conn: Connection, name: str) -> Actor:
    """The user called ``name``."""
    row = conn.execute(select(User.id, User.name, User.is_admin).where(User.name == name)).first()
    if row is None:
        raise NotFound(f"no user {name!r}; create one with `datamill user create {name}`", name=name)
    return Actor(row.id, row.name, row.is_admin)


def list_users(conn: Connection) -> list[Actor]:
    """All users, by name."""
    return [
        Actor(r.id, r.name, r.is_admin)
        for r in conn.execute(select(User.id, User.name, User.is_admin).order_by(User.name))
    ]


def check_password(conn: Connection, name: str, password: str) -> Actor:
    """The user if ``password`` is right; :class:`Unauthorized` otherwise (without saying which part)."""
    row = conn.execute(select(User).where(User.name == name)).first()
    if row is None or not row.password_hash:
        raise Unauthorized("wrong user name or password")
    try:
        _hasher.verify(row.password_hash, password)
    except (VerifyMismatchError, VerificationError):
        raise Unauthorized("wrong user name or password") from None
    return Actor(row.id, row.name, row.is_admin)


def set_password(conn: Connection, user: Actor, password: str) -> None:
    """Replace a user's password."""
    if len(password) < 8:
        raise InvalidInput("a password needs at least 8 characters")
    conn.execute(update(User).where(User.id == user.id).values(password_hash=_hasher.hash(password)))


def create_token(
    conn: Connection, user: Actor, name: str = "", ttl_seconds: float | None = None, by: Actor | None = None
) -> NewToken:
    """Create a token for ``user``; the secret is returned once and stored only hashed."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = time.time()
    expires = now + ttl_seconds if ttl_seconds else None
    tid = conn.execute(
        insert(Token)
        .values(user_id=user.id, token_hash=hash_token(secret), name=name, created_at=now, expires_at=expires)
        .returning(Token.id)
    ).scalar_one()
    events.append(
        conn,
        EventKind.TOKEN_CREATED,
        actor_id=(by or user).id,
        data={"user": user.name, "token_id": int(tid), "name": name},
    )
    return NewToken(int(tid), user.name, secret, expires)


def revoke_token(conn: Connection, token_id: int, by: Actor) -> None:
    """Revoke a token: the owner or a site admin may."""
    row = conn.execute(select(Token).where(Token.id == token_id)).first()
    if row is None or (row.user_id != by.id and not by.is_admin):
        raise NotFound(f"no token {token_id}", token_id=token_id)
    conn.execute(update(Token).where(Token.id == token_id).values(revoked_at=time.time()))
    events.append(conn, EventKind.TOKEN_REVOKED, actor_id=by.id, data={"token_id": token_id})


def disable_user(conn: Connection, user: Actor, by: Actor) -> int:
    """Keep ``user`` out: remove their password and revoke every live token; how many were revoked.

    A site admin may let them back in with a new token or password.
    """
    conn.execute(update(User).where(User.id == user.id).values(password_hash=None))
    now = time.time()
    live = conn.execute(select(Token.id).where(Token.user_id == user.id, Token.revoked_at.is_(None))).scalars().all()
    for tid in live:
        conn.execute(update(Token).where(Token.id == tid).values(revoked_at=now))
        events.append(conn, EventKind.TOKEN_REVOKED, actor_id=by.id, data={"token_id": int(tid), "user": user.name})
    return len(live)


def has_password(conn: Connection, user: Actor) -> bool:
    """Whether ``user`` can sign in with a password."""
    return conn.execute(select(User.password_hash).where(User.id == user.id)).scalar() is not None


def revoke_secret(conn: Connection, token: str) -> None:
    """Revoke the token whose secret is ``token`` (signing out of the web app); unknown ones are ignored."""
    row = conn.execute(
        select(Token.id, Token.user_id, Token.revoked_at).where(Token.token_hash == hash_token(token))
    ).first()
    if row is None or row.revoked_at is not None:
        return
    conn.execute(update(Token).where(Token.id == row.id).values(revoked_at=time.time()))
    events.append(conn, EventKind.TOKEN_REVOKED, actor_id=row.user_id, data={"token_id": int(row.id)})


def list_tokens(conn: Connection, user: Actor) -> list[dict[str, object]]:
    """A user's tokens, without secrets."""
    rows = conn.execute(select(Token).where(Token.user_id == user.id).order_by(Token.id)).all()
    return [
        {
            "id": t.id,
            "name": t.name,
            "created_at": t.created_at,
            "expires_at": t.expires_at,
            "revoked": t.revoked_at is not None,
        }
        for t in rows
    ]


def actor_for_token(conn: Connection, token: str) -> Actor:
    """The user a token belongs to; :class:`Unauthorized` if it is unknown, revoked or expired."""
    row = conn.execute(
        select(Token.expires_at, Token.revoked_at, User.id, User.name, User.is_admin)
        .join(User, User.id == Token.user_id)
        .where(Token.token_hash == hash_token(token))
    ).first()
    if row is None:
        raise Unauthorized("the token is not valid; create one with `datamill token create`")
    if row.revoked_at is not None:
        raise Unauthorized("the token was revoked; create a new one with `datamill token create`")
    if row.expires_at is not None and row.expires_at < time.time():
        raise Unauthorized("the token has expired; create a new one with `datamill token create`")
    return Actor(row.id, row.name, row.is_admin)
