"""``datamill folder create/ls/rm/mv/meta``."""

from __future__ import annotations

from typing import Any


def test_create_and_list(dm: Any) -> None:
    r = dm.ok("folder", "create", "Raw Data/2026", "--meta", "project=alpha", "--meta", "n=3")
    assert r.stdout == ""
    assert "created folder 'Raw Data/2026'" in r.stderr
    top = dm.json("folder", "ls")
    assert [f["path"] for f in top] == ["Raw Data"]
    (sub,) = dm.json("folder", "ls", "Raw Data")
    assert sub["path"] == "Raw Data/2026"
    assert sub["metadata"] == {"project": "alpha", "n": 3}
    human = dm.ok("folder", "ls", "Raw Data").stdout
    assert "2026" in human and "admin" in human


def test_create_twice(dm: Any) -> None:
    dm.ok("folder", "create", "A")
    r = dm("folder", "create", "A")
    assert r.exit_code == 1
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    dm.ok("folder", "create", "A", "--exist-ok")


def test_rm_needs_recursive_when_not_empty(dm: Any, files: Any) -> None:
    dm.ok("put", "-p", str(files / "a.csv"), "A/B")
    r = dm("folder", "rm", "A")
    assert r.exit_code == 1
    assert "--recursive" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr
    r = dm.ok("folder", "rm", "A", "--recursive")
    assert "deleted folder 'A' and 1 item" in r.stderr
    assert dm.json("folder", "ls") == []


def test_rm_empty(dm: Any) -> None:
    dm.ok("folder", "create", "Empty")
    dm.ok("folder", "rm", "Empty")
    assert dm.json("folder", "ls") == []


def test_mv_and_rename(dm: Any) -> None:
    dm.ok("folder", "create", "Inbox/run-7")
    dm.ok("folder", "create", "Raw Data")
    r = dm.ok("folder", "mv", "Inbox/run-7", "Raw Data", "--name", "run-007")
    assert "'Raw Data/run-007'" in r.stderr
    assert [f["path"] for f in dm.json("folder", "ls", "Raw Data")] == ["Raw Data/run-007"]
    dm.ok("folder", "mv", "Raw Data/run-007", "/")
    assert sorted(f["path"] for f in dm.json("folder", "ls")) == ["Inbox", "Raw Data", "run-007"]


def test_folder_meta(dm: Any) -> None:
    dm.ok("folder", "create", "A", "--meta", "draft=true")
    assert dm.json("folder", "meta", "A") == {"draft": True}
    r = dm.ok("folder", "meta", "A", "owner=ana", "retention=30", "--unset", "draft")
    assert r.stdout == "" and "updated metadata" in r.stderr
    assert dm.json("folder", "meta", "A") == {"owner": "ana", "retention": 30}
    human = dm.ok("folder", "meta", "A").stdout
    assert "owner" in human and "ana" in human


def test_missing_folder(dm: Any) -> None:
    r = dm("folder", "ls", "Nope")
    assert r.exit_code == 1
    assert r.stderr == "error: no folder 'Nope', or you may not see it\n"
