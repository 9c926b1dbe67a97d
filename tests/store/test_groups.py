"""Groups: who may create, see and change them; grants to groups; and leaving a group ending access at once.

Each test runs on SQLite and on PostgreSQL (the ``home`` fixture). The level rules themselves are
also in the access matrix of ``test_access.py`` (its group rows).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from datamill.client import LocalClient
from datamill.errors import AlreadyExists, InvalidInput, NotFound, PermissionDenied
from datamill.home import Home
from datamill.store.access import ANONYMOUS, Level, level_on
from tests.helpers import add_user


def _clients(home: Home, *names: str) -> list[LocalClient]:
    for name in names:
        add_user(home, name)
    return [LocalClient(home, home.actor(n)) for n in names]


def test_create_list_show_and_names(home: Home) -> None:
    admin = LocalClient(home)
    ana, bo, cy = _clients(home, "ana", "bo", "cy")
    made = ana.create_group("imaging")
    assert made.name == "imaging" and made.created_by == "ana"
    assert [(m.user, m.admin) for m in made.members] == [("ana", True)]  # the creator is its first admin
    assert made.grants == []
    for bad in ("", ".", "..", "-x", "has space", "a/b", "x" * 65, "tab\t"):
        with pytest.raises(InvalidInput, match="group name"):
            ana.create_group(bad)
    with pytest.raises(AlreadyExists, match="already exists"):
        bo.create_group("imaging")
    with pytest.raises(PermissionDenied, match="sign in"):
        LocalClient(home, ANONYMOUS).create_group("anon")
    bo.create_group("bo-team")
    ana.add_group_member("imaging", "bo")

    assert [g.name for g in ana.groups()] == ["imaging"]
    assert [g.name for g in bo.groups()] == ["bo-team", "imaging"]
    assert cy.groups() == []
    assert [g.name for g in admin.groups()] == ["bo-team", "imaging"]  # site admins see every group
    shown = bo.group("imaging")
    assert [(m.user, m.admin) for m in shown.members] == [("ana", True), ("bo", False)]
    assert admin.group("bo-team").members[0].user == "bo"

    # An outsider is told the group does not exist, in the same words as for a missing one.
    with pytest.raises(NotFound) as hidden:
        cy.group("imaging")
    with pytest.raises(NotFound) as missing:
        cy.group("no-such")
    assert hidden.value.message.replace("imaging", "X") == missing.value.message.replace("no-such", "X")
    for call in (
        lambda: cy.add_group_member("imaging", "cy"),
        lambda: cy.remove_group_member("imaging", "bo"),
        lambda: cy.delete_group("imaging"),
        lambda: cy.remove_group_member("imaging", "cy"),
    ):
        with pytest.raises(NotFound, match="no group 'imaging', or you are not a member"):
            call()


def test_group_admins_manage_members_and_members_may_not(home: Home) -> None:
    admin = LocalClient(home)
    ana, bo, cy, dee = _clients(home, "ana", "bo", "cy", "dee")
    ana.create_group("lab")
    ana.add_group_member("lab", "bo")
    # An ordinary member may not add, remove, promote or delete.
    for call in (
        lambda: bo.add_group_member("lab", "cy"),
        lambda: bo.add_group_member("lab", "bo", admin=True),
        lambda: bo.remove_group_member("lab", "ana"),
        lambda: bo.delete_group("lab"),
    ):
        with pytest.raises(PermissionDenied, match="only admins of group 'lab'"):
            call()
    assert [m.user for m in ana.group("lab").members] == ["ana", "bo"]
    # A group admin made by a group admin manages members too.
    ana.add_group_member("lab", "bo", admin=True)
    assert bo.group("lab").admins() == ["ana", "bo"]
    bo.add_group_member("lab", "cy")
    bo.remove_group_member("lab", "ana")
    assert [m.user for m in bo.group("lab").members] == ["bo", "cy"]
    with pytest.raises(NotFound, match="no user"):
        bo.add_group_member("lab", "nobody")
    with pytest.raises(NotFound, match="not a member"):
        bo.remove_group_member("lab", "dee")
    # The last group admin may not leave the group without one (a site admin may do anything).
    with pytest.raises(InvalidInput, match="last admin"):
        bo.remove_group_member("lab", "bo")
    with pytest.raises(InvalidInput, match="last admin"):
        bo.add_group_member("lab", "bo", admin=False)
    # A member may leave on their own.
    cy.remove_group_member("lab", "cy")
    with pytest.raises(NotFound):
        cy.group("lab")
    admin.add_group_member("lab", "dee")
    admin.remove_group_member("lab", "bo")
    assert dee.group("lab").admins() == []
    admin.delete_group("lab")
    with pytest.raises(NotFound):
        admin.group("lab")


def test_group_grants_levels_inheritance_and_highest_of(home: Home) -> None:
    admin = LocalClient(home)
    ana, bo, cy = _clients(home, "ana", "bo", "cy")
    admin.create_folder("Raw/2026/run-7")
    admin.put("Raw/2026/run-7", "a.csv", b"a")
    admin.create_group("readers")
    admin.create_group("writers")
    for g in ("readers", "writers"):
        admin.add_group_member(g, "bo")
    admin.add_group_member("readers", "cy")
    admin.share_group("Raw", "readers", "read")
    admin.share_group("Raw/2026", "writers", "write")
    assert [g.to_dict() for g in admin.access_list("Raw")] == [{"group": "readers", "level": "read"}]

    def level(who: str, path: str) -> Level:
        with home.db.read() as conn:
            return level_on(conn, home.actor(who), path)

    # Read from the group on Raw, inherited below; bo's write group on Raw/2026 is the higher one there.
    assert [level("cy", p) for p in ("Raw", "Raw/2026", "Raw/2026/run-7")] == [Level.READ] * 3
    assert [level("bo", p) for p in ("Raw", "Raw/2026", "Raw/2026/run-7")] == [Level.READ, Level.WRITE, Level.WRITE]
    assert level("ana", "Raw/2026/run-7") == Level.NONE
    # The user's own grant and the groups': the highest counts, either way round.
    admin.share("Raw", "cy", "admin")
    admin.share("Raw/2026", "bo", "read")
    assert level("cy", "Raw/2026/run-7") == Level.ADMIN
    assert level("bo", "Raw/2026/run-7") == Level.WRITE
    admin.share_group("Raw/2026", "readers", "admin")
    assert level("bo", "Raw/2026/run-7") == Level.ADMIN
    admin.share_group("Raw/2026", "readers", "none")
    admin.share("Raw", "cy", "none")

    # What each level lets a member do, through the store's own checks.
    assert [i.name for i in cy.list_items("Raw/2026/run-7")] == ["a.csv"]
    assert [i.path for i in cy.find("Raw", name="*.csv")] == ["Raw/2026/run-7/a.csv"]
    assert [f.path for f in cy.list_folders()] == ["Raw"]
    with pytest.raises(PermissionDenied, match="need write access"):
        cy.put("Raw/2026/run-7", "b.csv", b"b")
    bo.put("Raw/2026/run-7", "b.csv", b"b")
    with pytest.raises(PermissionDenied, match="need admin access"):
        bo.share("Raw/2026", "ana", "read")
    with pytest.raises(NotFound):
        ana.folder("Raw/2026")
    assert [f.path for f in ana.list_folders()] == []


def test_sharing_with_a_group_needs_folder_admin_and_membership(home: Home) -> None:
    admin = LocalClient(home)
    ana, bo = _clients(home, "ana", "bo")
    ana.create_folder("Ana's")
    bo.create_group("bo-secret")
    ana.create_group("ana-team")
    # Granting to a group one is not in: the same answer as for a group that does not exist.
    with pytest.raises(NotFound) as hidden:
        ana.share_group("Ana's", "bo-secret", "read")
    with pytest.raises(NotFound) as missing:
        ana.share_group("Ana's", "no-such", "read")
    assert hidden.value.message.replace("bo-secret", "X") == missing.value.message.replace("no-such", "X")
    ana.share_group("Ana's", "ana-team", "write")
    ana.add_group_member("ana-team", "bo")
    with pytest.raises(PermissionDenied, match="need admin access"):
        bo.share_group("Ana's", "bo-secret", "read")
    with pytest.raises(ValueError, match="unknown access level"):
        ana.share_group("Ana's", "ana-team", "owner")
    # A site admin may grant to any group, and a folder admin may remove any grant on their folder.
    admin.share_group("Ana's", "bo-secret", "read")
    assert [g.to_dict() for g in ana.access_list("Ana's")] == [
        {"group": "ana-team", "level": "write"},
        {"group": "bo-secret", "level": "read"},
    ]
    ana.share_group("Ana's", "bo-secret", "none")
    assert [g.to_dict() for g in ana.access_list("Ana's")] == [{"group": "ana-team", "level": "write"}]
    assert [(g.folder, g.level) for g in bo.group("ana-team").grants] == [("Ana's", "write")]


def test_removing_a_member_or_deleting_the_group_ends_access_at_once(home: Home) -> None:
    admin = LocalClient(home)
    (bo,) = _clients(home, "bo")
    admin.create_folder("Shared/inner")
    admin.create_group("team")
    admin.add_group_member("team", "bo")
    admin.share_group("Shared", "team", "write")
    bo.put("Shared/inner", "x.txt", b"x")
    start = home.events.latest()
    admin.put("Shared/inner", "y.txt", b"y")
    assert [e.data["name"] for e in bo.events(start)] == ["y.txt"]

    admin.remove_group_member("team", "bo")
    with pytest.raises(NotFound):
        bo.folder("Shared/inner")
    # Events of the folder, even those from before, are filtered by today's membership.
    assert bo.events(start) == []
    with home.db.read() as conn:
        assert level_on(conn, home.actor("bo"), "Shared/inner") == Level.NONE

    admin.add_group_member("team", "bo")
    assert bo.item("Shared/inner/x.txt").version == 1
    admin.create_folder("Other")
    admin.share_group("Other", "team", "read")
    assert admin.delete_group("team") == 2
    with pytest.raises(NotFound):
        bo.folder("Shared")
    assert [g.to_dict() for g in admin.access_list("Shared")] == []
    # A new group of the same name does not inherit the old one's grants.
    admin.create_group("team")
    admin.add_group_member("team", "bo")
    with pytest.raises(NotFound):
        bo.folder("Other")


def test_deleting_a_folder_removes_its_group_grants(home: Home) -> None:
    admin = LocalClient(home)
    admin.create_folder("Gone/sub")
    admin.create_group("team")
    admin.share_group("Gone/sub", "team", "read")
    admin.share_group("Gone", "team", "write")
    admin.delete_folder("Gone", recursive=True)
    assert admin.group("team").grants == []
    admin.create_folder("Gone/sub")  # the same path again: no grant carried over
    assert [g.to_dict() for g in admin.access_list("Gone/sub")] == []


def test_group_events_reach_members_and_site_admins_only(home: Home) -> None:
    admin = LocalClient(home)
    ana, bo, cy = _clients(home, "ana", "bo", "cy")
    start = home.events.latest()
    ana.create_group("hidden-lab")
    ana.add_group_member("hidden-lab", "bo")
    ana.add_group_member("hidden-lab", "bo", admin=True)
    ana.create_folder("Ana's")
    ana.share_group("Ana's", "hidden-lab", "read")
    ana.remove_group_member("hidden-lab", "bo")
    group_kinds = [
        "group.created",
        "group.member_added",
        "group.member_changed",
        "folder.created",
        "folder.shared",
        "group.member_removed",
    ]
    assert [e.kind for e in admin.events(start)] == group_kinds
    assert [e.kind for e in ana.events(start)] == group_kinds
    shared = next(e for e in ana.events(start) if e.kind == "folder.shared")
    assert shared.data == {"path": "Ana's", "group": "hidden-lab", "level": "read"}
    # bo is no longer a member, and cannot read the folder: nothing about the group reaches him.
    assert bo.events(start) == []
    assert cy.events(start) == []
    ana.delete_group("hidden-lab")
    assert [e.kind for e in admin.events(start)][-2:] == ["folder.shared", "group.deleted"]
    # A deleted group's events reach site admins only; the folder's own events stay with its readers.
    assert [(e.kind, e.data.get("level")) for e in ana.events(start)] == [
        ("folder.created", None),
        ("folder.shared", "read"),
        ("folder.shared", "none"),
    ]


@contextmanager
def _statements(home: Home) -> Iterator[list[str]]:
    """The SQL statements run on the home's engine inside the block."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(home.db.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(home.db.engine, "before_cursor_execute", record)


def test_level_on_asks_two_queries_whatever_the_number_of_groups(home: Home) -> None:
    admin = LocalClient(home)
    add_user(home, "bo")
    admin.create_folder("a/b/c/d")
    for n in range(12):
        admin.create_group(f"g{n}")
        admin.add_group_member(f"g{n}", "bo")
        admin.share_group(["a", "a/b", "a/b/c"][n % 3], f"g{n}", "read")
    admin.share_group("a/b/c", "g11", "write")
    bo = home.actor("bo")
    with home.db.read() as conn, _statements(home) as seen:
        got = level_on(conn, bo, "a/b/c/d")
    assert got == Level.WRITE
    selects = [s for s in seen if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2, selects  # the ancestors; then user and group grants in one statement
