"""``datamill user/token/share/public/access/whoami``, and acting as another user with ``--user``."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def test_users(dm: Any) -> None:
    r = dm.ok("user", "create", "ana")
    assert r.stdout == "" and "created user 'ana'" in r.stderr
    dm.ok("user", "create", "bo", "--admin", "--password-stdin", input="s3cret\n")
    users = dm.json("user", "ls")
    assert [(u["name"], u["is_admin"]) for u in users] == [("admin", True), ("ana", False), ("bo", True)]
    assert "ana" in dm.ok("user", "ls").stdout
    r = dm("user", "create", "ana")
    assert r.exit_code == 1 and "already exists" in r.stderr
    r = dm("user", "create", "cy", "--password-stdin", input="")
    assert r.exit_code == 1 and "empty password" in r.stderr


def test_whoami_and_user_option(dm: Any) -> None:
    assert dm.json("whoami")["name"] == "admin"
    dm.ok("user", "create", "ana")
    me = dm.json("--user", "ana", "whoami")
    assert (me["name"], me["is_admin"]) == ("ana", False)
    assert dm.ok("--user", "ana", "whoami").stdout == "ana\n"
    r = dm("--user", "nobody", "whoami")
    assert r.exit_code == 1 and "datamill user create nobody" in r.stderr
    r = dm("--user", "ana", "user", "ls")
    assert r.exit_code == 1 and "site admin" in r.stderr


def test_share_grants_access(dm: Any, files: Path) -> None:
    dm.ok("put", "-p", str(files / "a.csv"), "Raw Data")
    dm.ok("user", "create", "ana")
    r = dm("--user", "ana", "ls", "Raw Data")
    assert r.exit_code == 1 and "no folder 'Raw Data'" in r.stderr
    r = dm.ok("share", "Raw Data", "ana", "--read")
    assert "granted 'ana' read on 'Raw Data'" in r.stderr
    assert [i["name"] for i in dm.json("--user", "ana", "ls", "Raw Data")] == ["a.csv"]
    assert dm.json("access", "Raw Data") == [{"user": "ana", "level": "read"}]
    r = dm("--user", "ana", "put", str(files / "a.csv"), "Raw Data")
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    dm.ok("share", "Raw Data", "ana", "--write")
    dm.ok("--user", "ana", "put", str(files / "a.csv"), "Raw Data")
    assert dm.json("ls", "Raw Data")[0]["version"] == 2
    dm.ok("share", "Raw Data", "ana", "--none")
    assert dm("--user", "ana", "ls", "Raw Data").exit_code == 1


def test_share_needs_exactly_one_level(dm: Any) -> None:
    dm.ok("folder", "create", "A")
    dm.ok("user", "create", "ana")
    for flags in ([], ["--read", "--write"]):
        r = dm("share", "A", "ana", *flags)
        assert r.exit_code == 1 and "exactly one of --read, --write, --admin or --none" in r.stderr


def test_public(dm: Any, files: Path) -> None:
    dm.ok("put", "-p", str(files / "a.csv"), "Open")
    dm.ok("user", "create", "ana")
    r = dm.ok("public", "Open", "--on")
    assert "now public" in r.stderr
    assert dm.json("--user", "ana", "ls", "Open")[0]["name"] == "a.csv"
    dm.ok("public", "Open", "--off")
    assert dm("--user", "ana", "ls", "Open").exit_code == 1
    assert dm("public", "Open").exit_code == 2  # --on or --off is required: a usage error


def test_tokens(dm: Any) -> None:
    dm.ok("user", "create", "ana")
    r = dm.ok("token", "create", "--user", "ana", "--name", "laptop", "--expires-in", "30")
    token = r.stdout.strip()
    assert token.startswith("dm_") and "\n" not in token
    assert token not in r.stderr and "shown only now" in r.stderr and "expires" in r.stderr
    new = dm.json("--user", "ana", "token", "create")
    assert new["user"] == "ana" and new["token"].startswith("dm_") and new["expires_at"] is None
    r = dm.ok("token", "revoke", str(new["id"]))
    assert f"revoked token {new['id']}" in r.stderr
    r = dm("--user", "ana", "token", "create", "--user", "admin")
    assert r.exit_code == 1 and "site admin" in r.stderr
