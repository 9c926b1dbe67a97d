"""Who may do what: a matrix of roles x operations, root listing, users, tokens and passwords.

The matrix runs on one Home per database (module scope) through ``LocalClient(home, actor)``; each
cell works on folders of its own, so cells do not see each other's changes. A role's level on the
target decides the expected outcome: enough -> allowed, some but not enough -> PermissionDenied,
none -> NotFound (the folder's existence does not leak).

Group rows: ``group_reader``/``group_writer``/``group_admin`` get their level only as members of a
group granted read/write/admin; ``mixed`` has a read grant of their own and is in the write group
(the highest wins); ``ex_member`` was in the admin group and was removed from it (nothing left).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select, update

from datamill.client import LocalClient
from datamill.db.models import Token, User
from datamill.errors import AlreadyExists, InvalidInput, NotFound, PermissionDenied, Unauthorized
from datamill.home import Home
from datamill.store import users
from datamill.store.access import ANONYMOUS, Actor, Level
from tests.helpers import add_user, create_database, drop_database, libpq_url, open_home

# ------------------------------------------------------------------------------ the matrix

ROLES = [
    "site_admin",
    "owner",
    "reader",
    "writer",
    "admin_grant",
    "other",
    "group_reader",
    "group_writer",
    "group_admin",
    "mixed",
    "ex_member",
]
GRANTS = {"reader": "read", "writer": "write", "admin_grant": "admin", "mixed": "read"}
#: group -> (its grant on targets, its members besides the owner who made it)
GROUPS = {
    "g-read": ("read", ["group_reader"]),
    "g-write": ("write", ["group_writer", "mixed"]),
    "g-admin": ("admin", ["group_admin"]),
}
LEVEL_OF_ROLE = {
    "site_admin": Level.ADMIN,
    "owner": Level.ADMIN,
    "reader": Level.READ,
    "writer": Level.WRITE,
    "admin_grant": Level.ADMIN,
    "other": Level.NONE,
    "group_reader": Level.READ,
    "group_writer": Level.WRITE,
    "group_admin": Level.ADMIN,
    "mixed": Level.WRITE,
    "ex_member": Level.NONE,
}


@dataclass(frozen=True)
class Op:
    """An operation on a target folder ``t`` holding ``t/data.txt`` (b"data") and ``t/kept/``."""

    needed: Level
    #: the call, made as the role under test; it checks what it can see itself
    run: Callable[[LocalClient, str], object]
    #: after an allowed call: checks, as the site admin, that it had its effect
    done: Callable[[LocalClient, str], None] = lambda admin, t: None


def _unchanged(admin: LocalClient, t: str) -> None:
    """What every refused call must leave as it was."""
    assert admin.folder(t).path == t
    item = admin.item(f"{t}/data.txt")
    assert (item.version, item.metadata) == (1, {})
    assert [f.name for f in admin.list_folders(t)] == ["kept"]
    assert all(g.user != "bystander" for g in admin.access_list(t))


def _list_items(c: LocalClient, t: str) -> None:
    assert [i.name for i in c.list_items(t)] == ["data.txt"]


def _iter_bytes(c: LocalClient, t: str) -> None:
    _, chunks = c.iter_bytes(f"{t}/data.txt")
    assert b"".join(chunks) == b"data"


def _has_version_2(admin: LocalClient, t: str) -> None:
    assert admin.item(f"{t}/data.txt").version == 2


def _has_metadata(admin: LocalClient, t: str) -> None:
    assert admin.item(f"{t}/data.txt").metadata == {"x": 1}


def _item_gone(admin: LocalClient, t: str) -> None:
    with pytest.raises(NotFound):
        admin.item(f"{t}/data.txt")


def _has_subfolder(admin: LocalClient, t: str) -> None:
    assert [f.name for f in admin.list_folders(t)] == ["kept", "new"]


def _shared(admin: LocalClient, t: str) -> None:
    assert {"user": "bystander", "level": "read"} in [g.to_dict() for g in admin.access_list(t)]


def _folder_gone(admin: LocalClient, t: str) -> None:
    with pytest.raises(NotFound):
        admin.folder(t)


def _moved(admin: LocalClient, t: str) -> None:
    _folder_gone(admin, t)
    assert admin.item(f"{t}-moved/data.txt").version == 1


OPS: dict[str, Op] = {
    "get_folder": Op(Level.READ, lambda c, t: c.folder(t)),
    "list_items": Op(Level.READ, _list_items),
    "get_item": Op(Level.READ, lambda c, t: c.item(f"{t}/data.txt")),
    "iter_bytes": Op(Level.READ, _iter_bytes),
    "put": Op(Level.WRITE, lambda c, t: c.put(t, "data.txt", b"new bytes"), _has_version_2),
    "set_item_metadata": Op(Level.WRITE, lambda c, t: c.set_metadata(f"{t}/data.txt", {"x": 1}), _has_metadata),
    "delete_item": Op(Level.WRITE, lambda c, t: c.delete_item(f"{t}/data.txt"), _item_gone),
    "create_subfolder": Op(Level.WRITE, lambda c, t: c.create_folder(f"{t}/new"), _has_subfolder),
    "share": Op(Level.ADMIN, lambda c, t: c.share(t, "bystander", "read"), _shared),
    "move": Op(Level.ADMIN, lambda c, t: c.rename_folder(t, t.rsplit("/", 1)[-1] + "-moved"), _moved),
    "delete_folder": Op(Level.ADMIN, lambda c, t: c.delete_folder(t, recursive=True), _folder_gone),
}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    """One Home per database for the whole matrix, with its users."""
    tmp = tmp_path_factory.mktemp("access")
    server = dbname = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp}/datamill.db"
    else:
        server = request.getfixturevalue("postgres_url")
        dbname = create_database(server, template=request.getfixturevalue("migrated_template"))
        url = libpq_url(server, dbname)
    home = open_home(tmp / "home", url, blob_url="memory://")  # access is the subject, not the bytes
    for name in ("owner", "reader", "writer", "admin_grant", "other", "bystander", *ROLES[6:]):
        add_user(home, name)
    owner = LocalClient(home, home.actor("owner"))
    for group, (_, members) in GROUPS.items():
        owner.create_group(group)
        for member in members:
            owner.add_group_member(group, member)
    owner.add_group_member("g-admin", "ex_member")
    owner.remove_group_member("g-admin", "ex_member")
    try:
        yield home
    finally:
        home.close()
        if server and dbname:
            drop_database(server, dbname)


_cells = itertools.count()


def _client(home: Home, role: str) -> LocalClient:
    if role == "site_admin":
        return LocalClient(home)
    if role == "anonymous":
        return LocalClient(home, ANONYMOUS)
    return LocalClient(home, home.actor(role))


def _grant(owner: LocalClient, folder: str) -> None:
    for user, level in GRANTS.items():
        owner.share(folder, user, level)
    for group, (level, _) in GROUPS.items():
        owner.share_group(folder, group, level)


def _make_target(home: Home, where: str) -> str:
    """A fresh target folder holding ``data.txt`` and an unrelated subfolder ``kept``.

    direct: a top-level folder of ``owner`` with the grants on it;
    inherited: a folder two levels below such a folder (grants and ownership come from above);
    public: a public-read folder of ``owner`` without grants; private: one without grants.
    """
    n = next(_cells)
    owner = LocalClient(home, home.actor("owner"))
    if where == "direct":
        target = f"direct-{n}"
        owner.create_folder(target)
        _grant(owner, target)
    elif where == "inherited":
        top = f"inh-{n}"
        owner.create_folder(top)
        _grant(owner, top)
        target = f"{top}/mid/leaf"
        owner.create_folder(target)
    elif where in ("public", "private"):
        target = f"{where}-{n}"
        owner.create_folder(target)
        if where == "public":
            owner.set_public(target, True)
    else:
        raise AssertionError(where)
    owner.create_folder(f"{target}/kept")
    owner.put(target, "data.txt", b"data")
    return target


# A site admin's level and an unrelated user's are the same everywhere, so only the roles whose
# level comes from a grant or ownership are tried again on a folder below the one that has it.
INHERITED_ROLES = ["owner", "reader", "writer", "admin_grant", "group_reader", "group_writer", "group_admin", "mixed"]
CASES = (
    [("direct", role) for role in ROLES]
    + [("inherited", role) for role in INHERITED_ROLES]
    + [
        ("public", "other"),
        ("public", "anonymous"),
        ("private", "anonymous"),
    ]
)
LEVEL_OF_CASE = {
    **{(where, role): LEVEL_OF_ROLE[role] for where in ("direct", "inherited") for role in ROLES},
    ("public", "other"): Level.READ,
    ("public", "anonymous"): Level.READ,
    ("private", "anonymous"): Level.NONE,
}


#: Targets shared by the cells that must not change anything (reads and refusals), per home and placement.
_shared_targets: dict[tuple[int, str], str] = {}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize(("where", "role"), CASES, ids=[f"{w}-{r}" for w, r in CASES])
def test_access_matrix(world: Home, where: str, role: str, op: str) -> None:
    home = world
    admin = LocalClient(home)
    client = _client(home, role)
    have, spec = LEVEL_OF_CASE[(where, role)], OPS[op]
    allowed = have >= spec.needed
    key = (id(home), where)
    if allowed and spec.needed > Level.READ:
        target = _make_target(home, where)  # this cell changes its target
    else:
        target = _shared_targets.get(key) or _shared_targets.setdefault(key, _make_target(home, where))
    if allowed:
        spec.run(client, target)
        spec.done(admin, target)
        return
    expected: type[Exception] = NotFound if have == Level.NONE else PermissionDenied
    if role == "anonymous" and op == "create_subfolder":
        expected = NotFound  # "sign in to create folders"
    try:
        with pytest.raises(expected) as err:
            spec.run(client, target)
        if expected is PermissionDenied:
            assert f"need {spec.needed.name.lower()} access" in err.value.message
        _unchanged(admin, target)
    except BaseException:
        _shared_targets.pop(key, None)  # a refused call that changed things spoils the target for others
        raise


# ------------------------------------------------------------------------ listing and leaks


def test_root_listing_shows_only_readable_folders(home: Home) -> None:
    for name in ("owner", "reader", "other"):
        add_user(home, name)
    admin = LocalClient(home)
    owner, reader, other = (LocalClient(home, home.actor(n)) for n in ("owner", "reader", "other"))
    anonymous = LocalClient(home, ANONYMOUS)
    admin.create_folder("admin-secret/inner")
    admin.create_folder("parent/child")
    admin.share("parent/child", "reader", "read")  # a grant below an unreadable parent
    owner.create_folder("proj")
    owner.create_folder("owner-private")
    owner.share("proj", "reader", "read")
    other.create_folder("pub")
    other.set_public("pub", True)

    def top(c: LocalClient) -> list[str]:
        return [f.path for f in c.list_folders()]

    assert top(admin) == ["admin-secret", "owner-private", "parent", "proj", "pub"]
    assert top(owner) == ["owner-private", "proj", "pub"]
    assert top(reader) == ["proj", "pub"]
    assert top(other) == ["pub"]
    assert top(anonymous) == ["pub"]
    # The child shared below an unreadable parent is reachable by path, not by listing.
    assert reader.folder("parent/child").path == "parent/child"
    assert [i.path for i in reader.list_folders("parent/child")] == []
    for c, path in ((reader, "parent"), (other, "proj"), (anonymous, "owner-private"), (reader, "admin-secret")):
        with pytest.raises(NotFound, match="or you may not see it"):
            c.list_folders(path)
    # Refused and missing look the same.
    with pytest.raises(NotFound) as refused:
        other.folder("owner-private")
    with pytest.raises(NotFound) as missing:
        other.folder("no-such-folder")
    assert refused.value.message.replace("owner-private", "X") == missing.value.message.replace("no-such-folder", "X")
    # Revoking the grant hides the folder again.
    owner.share("proj", "reader", "none")
    assert top(reader) == ["pub"]
    with pytest.raises(NotFound):
        reader.folder("proj")


def test_lookups_by_id_do_not_reveal_paths(home: Home) -> None:
    add_user(home, "other")
    admin = LocalClient(home)
    admin.create_folder("hidden project")
    v = admin.put("hidden project", "secret.csv", b"x")
    other = home.actor("other")
    with pytest.raises(NotFound) as err:
        home.store.version_by_id(other, v.version_id)
    assert "hidden project" not in err.value.message
    assert "hidden project" not in str(err.value.detail)
    assert home.store.version_by_id(home.admin, v.version_id).path == "hidden project/secret.csv"


def test_events_of_unreadable_folders_are_hidden(home: Home) -> None:
    add_user(home, "other")
    admin = LocalClient(home)
    other = LocalClient(home, home.actor("other"))
    start = home.events.latest()
    admin.create_folder("private")
    admin.put("private", "p.txt", b"p")
    other.create_folder("mine")
    other.put("mine", "m.txt", b"m")
    assert {e.data.get("path") or e.data.get("folder") for e in other.events(start)} == {"mine"}
    assert {e.kind for e in admin.events(start)} == {"folder.created", "item.created"}
    assert len(admin.events(start)) == 4


def test_share_and_public_need_admin_level(home: Home) -> None:
    add_user(home, "writer")
    add_user(home, "x")
    admin = LocalClient(home)
    admin.create_folder("f")
    admin.share("f", "writer", "write")
    writer = LocalClient(home, home.actor("writer"))
    with pytest.raises(PermissionDenied):
        writer.set_public("f", True)
    with pytest.raises(PermissionDenied):
        writer.share("f", "writer", "admin")  # no raising one's own level
    assert [g.to_dict() for g in writer.access_list("f")] == [{"user": "writer", "level": "write"}]
    with pytest.raises(NotFound, match="no user"):
        admin.share("f", "nobody", "read")
    with pytest.raises(ValueError, match="unknown access level"):
        admin.share("f", "x", "superuser")


# ------------------------------------------------------------------------ users and tokens


def test_users(home: Home) -> None:
    admin = LocalClient(home)
    made = admin.create_user("ada", password="correct horse")
    assert made["name"] == "ada" and made["is_admin"] is False
    assert admin.create_user("boss", admin=True)["is_admin"] is True
    with pytest.raises(AlreadyExists, match="ada"):
        admin.create_user("ada")
    for bad in ("", "has space", "slash/name", "x" * 65):
        with pytest.raises(InvalidInput):
            admin.create_user(bad)
    assert [u["name"] for u in admin.list_users()] == ["ada", "admin", "boss"]
    ada = LocalClient(home, home.actor("ada"))
    with pytest.raises(PermissionDenied):
        ada.create_user("eve")
    with pytest.raises(PermissionDenied):
        ada.list_users()
    assert LocalClient(home, home.actor("boss")).create_user("eve")["name"] == "eve"
    with pytest.raises(NotFound, match="datamill user create"):
        home.actor("nobody")


def _actor_for(home: Home, token: str) -> Actor:
    with home.db.read() as conn:
        return users.actor_for_token(conn, token)


def test_tokens(home: Home) -> None:
    admin = LocalClient(home)
    admin.create_user("ada")
    admin.create_user("bob")
    ada = LocalClient(home, home.actor("ada"))
    bob = LocalClient(home, home.actor("bob"))

    own = ada.create_token(name="laptop")
    assert own.user == "ada" and own.token.startswith(users.TOKEN_PREFIX) and own.expires_at is None
    assert _actor_for(home, own.token) == home.actor("ada")
    by_admin = admin.create_token(user="bob", name="ci", ttl=3600)
    assert by_admin.expires_at is not None and by_admin.expires_at > time.time()
    assert _actor_for(home, by_admin.token).name == "bob"
    with pytest.raises(PermissionDenied):
        ada.create_token(user="bob")
    # Only the hash is stored.
    with home.db.read() as conn:
        stored = list(conn.execute(select(Token.token_hash)).scalars())
    assert own.token not in stored and users.hash_token(own.token) in stored

    for wrong in ("", "dm_nope", own.token + "x", own.token[:-1]):
        with pytest.raises(Unauthorized, match="not valid"):
            _actor_for(home, wrong)

    # Revoked: by its owner, or by a site admin; others are told it does not exist.
    with pytest.raises(NotFound):
        bob.revoke_token(own.id)
    assert _actor_for(home, own.token).name == "ada"
    ada.revoke_token(own.id)
    with pytest.raises(Unauthorized, match="revoked"):
        _actor_for(home, own.token)
    admin.revoke_token(by_admin.id)
    with pytest.raises(Unauthorized, match="revoked"):
        _actor_for(home, by_admin.token)

    # Expired: let its time pass.
    short = bob.create_token(ttl=60)
    assert _actor_for(home, short.token).name == "bob"
    with home.db.write() as conn:
        conn.execute(update(Token).where(Token.id == short.id).values(expires_at=time.time() - 1))
    with pytest.raises(Unauthorized, match="expired"):
        _actor_for(home, short.token)

    with home.db.read() as conn:
        ada_tokens = users.list_tokens(conn, home.actor("ada"))
    assert [(t["name"], t["revoked"]) for t in ada_tokens] == [("laptop", True)]
    assert all("token" not in t for t in ada_tokens)

    # The first admin token saved in the home works.
    saved = home.admin_token()
    assert saved is not None and _actor_for(home, saved) == home.admin


def test_passwords(sqlite_db_url: str, tmp_path: Path) -> None:
    # argon2 is deliberately slow and the database only stores its text: one database is enough.
    home = open_home(tmp_path / "home", sqlite_db_url)
    try:
        _check_passwords(home)
    finally:
        home.close()


def _check_passwords(home: Home) -> None:
    admin = LocalClient(home)
    admin.create_user("ada", password="correct horse")
    admin.create_user("nopw")
    with home.db.read() as conn:
        stored = conn.execute(select(User.password_hash).where(User.name == "ada")).scalar_one()
        assert stored.startswith("$argon2") and "correct horse" not in stored
        assert users.check_password(conn, "ada", "correct horse") == home.actor("ada")
        messages = set()
        for name, pw in (("ada", "wrong horse"), ("ada", ""), ("ghost", "correct horse"), ("nopw", "")):
            with pytest.raises(Unauthorized) as err:
                users.check_password(conn, name, pw)
            messages.add(err.value.message)
        assert messages == {"wrong user name or password"}  # never says which part was wrong
    with home.db.write() as conn:
        with pytest.raises(InvalidInput, match="8 characters"):
            users.set_password(conn, home.actor("ada"), "short")
        users.set_password(conn, home.actor("ada"), "battery staple")
    with home.db.read() as conn:
        assert users.check_password(conn, "ada", "battery staple").name == "ada"
        with pytest.raises(Unauthorized):
            users.check_password(conn, "ada", "correct horse")


def test_reopening_a_home_keeps_admin_and_token(tmp_path: Path, sqlite_db_url: str) -> None:
    # Reopening a home keeps the admin and does not rewrite its token file.
    first = open_home(tmp_path / "h", sqlite_db_url)
    token = first.admin_token()
    first.close()
    again = open_home(tmp_path / "h", sqlite_db_url)
    try:
        assert again.admin_token() == token
        assert token is not None and _actor_for(again, token) == again.admin
    finally:
        again.close()
