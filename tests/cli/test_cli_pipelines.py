"""``datamill pipelines ls|add|rm`` and running registered pipelines by name on a local home."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from datamill.engine.registry import ENTRY_POINT_GROUP

COUNTING = Path(__file__).resolve().parents[1] / "client" / "counting_pipeline.py"


def _error(result: Any) -> str:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr


def test_admins_register_pipelines_and_users_run_them_by_name(dm: Any, tmp_path: Path) -> None:
    # The installed package's pipeline is registered by its entry point.
    listed = dm.json("pipelines", "ls")
    assert [(p["name"], p["origin"], p["ref"]) for p in listed] == [
        ("tabular", "package", "datamill.demo.pipeline:tabular")
    ]
    assert ENTRY_POINT_GROUP == "datamill.pipelines"
    table = dm.ok("pipelines", "ls").stdout
    assert "tabular" in table and "package datamill" in table

    # A relative path is registered as the absolute path of the file it names here.
    work = tmp_path / "work"
    (work / "pipelines").mkdir(parents=True)
    shutil.copy(COUNTING, work / "pipelines" / "counting.py")
    old = Path.cwd()
    os.chdir(work)
    try:
        made = dm.json("pipelines", "add", "counting", "pipelines/counting.py:pipeline", "--description", "lines")
    finally:
        os.chdir(old)
    assert made["ref"] == f"{work}/pipelines/counting.py:pipeline" and made["description"] == "lines"
    assert "already" in _error(dm("pipelines", "add", "counting", str(COUNTING)))
    assert "not valid" in _error(dm("pipelines", "add", "a:b", f"{COUNTING}:pipeline"))
    assert "does not load" not in dm.ok("pipelines", "ls").stdout

    dm.ok("user", "create", "ana")
    dm.ok("--user", "ana", "folder", "create", "In")
    dm.ok("--user", "ana", "folder", "create", "Out")
    (tmp_path / "a.txt").write_text("1\n2\n")
    dm.ok("--user", "ana", "put", str(tmp_path / "a.txt"), "In")
    assert "only a site admin" in _error(dm("--user", "ana", "pipelines", "add", "x", f"{COUNTING}:pipeline"))
    assert "only a site admin" in _error(dm("--user", "ana", "pipelines", "rm", "counting"))
    assert [p["name"] for p in dm.json("--user", "ana", "pipelines", "ls")] == ["counting", "tabular"]
    assert all("ref" not in p for p in dm.json("--user", "ana", "pipelines", "ls"))

    run = dm.json("--user", "ana", "run", "counting", "--on", "In", "--to", "Out", "--executor", "inline")
    assert run["status"] == "succeeded"
    refused = _error(dm("--user", "ana", "run", f"{COUNTING}:pipeline", "--on", "In", "--executor", "inline"))
    assert "no registered pipeline" in refused and "datamill pipelines ls" in refused
    # The embedded CLI acts as the admin: a reference on one's own disk keeps working.
    assert dm.json("run", f"{COUNTING}:pipeline", "--on", "In", "--executor", "inline")["status"] == "succeeded"

    assert "installed package" in _error(dm("pipelines", "rm", "tabular"))
    dm.ok("pipelines", "rm", "counting")
    assert "no registered pipeline" in _error(dm("pipelines", "rm", "counting"))
    assert "no registered pipeline" in _error(dm("--user", "ana", "plan", "counting", "--on", "In"))
    events = [json.loads(line) for line in dm.ok("events", "--json").stdout.splitlines()]  # JSON lines
    kinds = [e["kind"] for e in events if e["kind"].startswith("pipeline.")]
    assert kinds == ["pipeline.registered", "pipeline.removed"]
