"""``datamill group create|ls|show|add|remove|rm`` and ``datamill share FOLDER --group G``."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def test_group_commands(dm: Any) -> None:
    for name in ("ana", "bo", "cy"):
        dm.ok("user", "create", name)
    r = dm.ok("--user", "ana", "group", "create", "imaging")
    assert r.stdout == "" and "created group 'imaging'" in r.stderr
    made = dm.json("--user", "ana", "group", "show", "imaging")
    assert [(m["user"], m["admin"]) for m in made["members"]] == [("ana", True)]
    r = dm("group", "create", "imaging")
    assert r.exit_code == 1 and "already exists" in r.stderr
    r = dm("group", "create", "bad name")
    assert r.exit_code == 1 and "group name 'bad name' is not allowed" in r.stderr

    dm.ok("--user", "ana", "group", "add", "imaging", "bo", "cy")
    r = dm("--user", "bo", "group", "add", "imaging", "admin")
    assert r.exit_code == 1 and "only admins of group 'imaging'" in r.stderr and "Traceback" not in r.stderr
    r = dm.ok("--user", "ana", "group", "add", "imaging", "bo", "--admin")
    assert "'bo' is an admin of group 'imaging'" in r.stderr
    r = dm.ok("--user", "ana", "group", "add", "imaging", "bo")  # already in: stays an admin
    assert "'bo' is an admin of group 'imaging'" in r.stderr
    listed = dm.json("--user", "bo", "group", "ls")
    assert [(g["name"], [m["user"] for m in g["members"] if m["admin"]]) for g in listed] == [
        ("imaging", ["ana", "bo"])
    ]
    table = dm.ok("--user", "bo", "group", "ls").stdout
    assert "imaging" in table and "ana, bo" in table
    assert "cy" in dm.ok("--user", "bo", "group", "show", "imaging").stdout
    dm.ok("--user", "bo", "group", "remove", "imaging", "cy")
    # cy is out: the group is no longer shown to them, as if it did not exist.
    r = dm("--user", "cy", "group", "show", "imaging")
    assert r.exit_code == 1 and "no group 'imaging', or you are not a member of it" in r.stderr
    assert "you are in no group" in dm.ok("--user", "cy", "group", "ls").stderr
    assert [g["name"] for g in dm.json("group", "ls")] == ["imaging"]  # the site admin sees all

    r = dm.ok("--user", "bo", "group", "rm", "imaging")
    assert "deleted group 'imaging'" in r.stderr
    assert dm.json("group", "ls") == []


def test_share_with_a_group(dm: Any, files: Path) -> None:
    dm.ok("put", "-p", str(files / "a.csv"), "Raw Data")
    dm.ok("user", "create", "ana")
    dm.ok("group", "create", "lab")
    dm.ok("group", "add", "lab", "ana")
    assert dm("--user", "ana", "ls", "Raw Data").exit_code == 1
    r = dm.ok("share", "Raw Data", "--group", "lab", "--read")
    assert "granted group 'lab' read on 'Raw Data'" in r.stderr
    assert [i["name"] for i in dm.json("--user", "ana", "ls", "Raw Data")] == ["a.csv"]
    r = dm("--user", "ana", "put", str(files / "a.csv"), "Raw Data")
    assert r.exit_code == 1 and "need write access" in r.stderr
    dm.ok("share", "Raw Data", "--group", "lab", "--write")
    dm.ok("--user", "ana", "put", str(files / "a.csv"), "Raw Data")
    # User and group grants side by side, in JSON and in the table.
    dm.ok("share", "Raw Data", "ana", "--read")
    assert dm.json("access", "Raw Data") == [{"user": "ana", "level": "read"}, {"group": "lab", "level": "write"}]
    table = dm.ok("access", "Raw Data").stdout
    assert "group" in table and "lab" in table and "write" in table
    assert dm.json("group", "show", "lab")["grants"] == [{"folder": "Raw Data", "level": "write"}]
    r = dm.ok("share", "Raw Data", "--group", "lab", "--none")
    assert "removed the grant of group 'lab'" in r.stderr
    assert dm.json("access", "Raw Data") == [{"user": "ana", "level": "read"}]
    # Exactly one grantee, exactly one level.
    for args in (["Raw Data", "--read"], ["Raw Data", "ana", "--group", "lab", "--read"]):
        r = dm("share", *args)
        assert r.exit_code == 1 and "exactly one user" in r.stderr
    r = dm("share", "Raw Data", "--group", "lab")
    assert r.exit_code == 1 and "exactly one of --read, --write, --admin or --none" in r.stderr
    # A group one is not in cannot be granted (it might as well not exist).
    dm.ok("--user", "ana", "folder", "create", "Ana's")
    r = dm("--user", "ana", "share", "Ana's", "--group", "lab", "--read")
    assert r.exit_code == 0  # ana is in lab
    dm.ok("group", "create", "board")
    r = dm("--user", "ana", "share", "Ana's", "--group", "board", "--read")
    assert r.exit_code == 1 and "no group 'board', or you are not a member of it" in r.stderr
    # Deleting the group removes its grants.
    r = dm.ok("group", "rm", "lab")
    assert "and its 1 folder grant" in r.stderr
    assert dm.json("access", "Ana's") == []
