"""``datamill run``, ``plan``, ``why``, ``logs`` and ``datamill runs ...`` on a local home, and ``run`` on a server."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datamill.api import ServerHandle
from tests.cli.conftest import one_line_error
from tests.helpers import open_home, serve

COUNTING = Path(__file__).resolve().parents[1] / "client" / "counting_pipeline.py"
REF = f"{COUNTING}:pipeline"
INLINE = ("--executor", "inline")


def test_run_succeeds_then_reuses_the_cache(raw: Any) -> None:
    info = raw.json("run", REF, "--on", "Raw", "--to", "Out", *INLINE)
    assert info["status"] == "succeeded"
    assert info["counts"] == {"succeeded": 3}
    assert info["steps"] == {"count": {"succeeded": 2}, "total": {"succeeded": 1}}
    assert raw.json("ls", "Out")

    again = raw.ok("run", REF, "--on", "Raw", "--to", "Out", *INLINE)
    assert re.match(r"run 2 succeeded in [\d.]+ s: 3 tasks \(3 cached\)", again.stdout)
    assert "count" in again.stdout and "total" in again.stdout

    scaled = raw.json("run", REF, "--on", "Raw", "-p", "count.scale=3", *INLINE)
    assert scaled["params"]["user"] == {"count.scale": 3}
    assert scaled["counts"] == {"succeeded": 3}


def test_run_with_a_failing_step_exits_1_naming_the_task(raw: Any, tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("boom\n")
    raw.ok("put", "-p", str(tmp_path / "c.txt"), "Raw")
    r = raw("run", REF, "--on", "Raw", "--to", "Out", "--json", *INLINE)
    message = one_line_error(r)
    task_id = json.loads(raw.ok("runs", "show", "1", "--json").stdout)["tasks"][2]["id"]
    assert f"count[Raw/c.txt] (task {task_id})" in message
    assert "ValueError: c.txt holds boom" in message
    assert f"`datamill logs {task_id}`" in message
    assert json.loads(r.stdout)["status"] == "failed"  # the JSON still comes out on stdout

    log = raw.ok("logs", str(task_id)).stdout
    assert "counting c.txt" in log and "ValueError" in log

    retried = raw("runs", "retry", "1", *INLINE)  # executes here: the same failure again
    assert "run 2 retries run 1" in retried.stderr
    assert "run 2 failed" in one_line_error(retried)
    show = raw.json("runs", "show", "2")
    assert show["parent_run_id"] == 1 and show["steps"]["count"] == {"cached": 2, "failed": 1}
    assert [r["status"] for r in raw.json("runs", "ls", "--status", "failed")] == ["failed", "failed"]


def test_malformed_yaml_pipeline_names_file_and_line(raw: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsteps:\n  - name: count\n    run: x.py:count\n    retries: -1\n")
    message = one_line_error(raw("run", str(bad), "--on", "Raw", *INLINE))
    assert "bad.yaml line 5" in message and "retries" in message
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: bad\nsteps: [\n")
    assert "broken.yaml line 3" in one_line_error(raw("plan", str(broken), "--on", "Raw"))
    assert raw.json("runs", "ls") == []


def test_yaml_pipeline_by_relative_path(raw: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pipe.yaml").write_text(
        f"name: counting-yaml\nsteps:\n  - name: count\n    run: {COUNTING}:count\n    params: {{scale: 2}}\n"
    )
    monkeypatch.chdir(tmp_path)
    info = raw.json("run", "pipe.yaml", "--on", "Raw", *INLINE)
    assert info["status"] == "succeeded" and info["pipeline"] == "counting-yaml"
    assert info["pipeline_ref"] == str(tmp_path / "pipe.yaml")  # made absolute: it works from anywhere


def test_plan_runs_show_logs_why(raw: Any) -> None:
    plan = raw.json("plan", REF, "--on", "Raw")
    assert plan["counts"] == {"cached": 0, "run": 2, "pending": 1}
    human = raw.ok("plan", REF, "--on", "Raw")
    assert "count[Raw/a.txt]" in human.stdout and "2 to run, 0 cached, 1 pending" in human.stderr

    raw.ok("run", REF, "--on", "Raw", "--to", "Out", *INLINE)
    assert raw.json("plan", REF, "--on", "Raw")["counts"] == {"cached": 3, "run": 0, "pending": 0}
    raw.ok("run", REF, "--on", "Raw", *INLINE)

    runs = raw.json("runs", "ls")
    assert [r["id"] for r in runs] == [2, 1]
    assert "succeeded" in raw.ok("runs", "ls").stdout
    show = raw.json("runs", "show", "1")
    assert show["status"] == "succeeded" and show["dest_folder"] == "Out"
    assert [t["planned_id"] for t in show["tasks"]] == ["count[Raw/a.txt]", "count[Raw/b.txt]", "total"]
    human_show = raw.ok("runs", "show", "1").stdout
    assert "count[Raw/b.txt]" in human_show and "succeeded" in human_show

    first = show["tasks"][0]["id"]
    assert "counting a.txt" in raw.ok("logs", str(first)).stdout
    assert "counting a.txt" in raw.ok("logs", str(first), "--follow").stdout
    why = raw.json("why", str(first))
    assert why["task"] == first and why["status"] == "succeeded" and why["parts"]["step"] == "count"
    cached = raw.json("runs", "show", "2")["tasks"][0]["id"]
    assert raw.json("why", str(cached))["explanation"].startswith("cached")
    assert "cached" in raw.ok("why", str(cached)).stdout

    assert raw.json("runs", "watch", "1")["status"] == "succeeded"
    assert "has already ended (succeeded)" in raw.ok("runs", "cancel", "1").stderr
    assert "only failed or cancelled" in one_line_error(raw("runs", "retry", "1"))
    assert "no run 99" in one_line_error(raw("runs", "show", "99"))
    assert "no task 99" in one_line_error(raw("logs", "99"))
    assert "KEY=VALUE" in one_line_error(raw("plan", REF, "--on", "Raw", "-p", "scale"))
    assert "no folder" in one_line_error(raw("run", REF, "--on", "Nope", *INLINE))


@pytest.fixture
def served(raw: Any) -> Iterator[tuple[Any, ServerHandle, str]]:
    """The same home served with its scheduler; commands then go through ``--url``."""
    home = open_home(raw.home, executor="inline")
    try:
        with serve(home, services=True) as server:
            yield raw, server, home.admin_token() or ""
    finally:
        home.close()


def test_run_against_a_server(served: tuple[Any, ServerHandle, str]) -> None:
    dm, server, token = served
    remote = ("--url", server.url, "--token", token)
    info = json.loads(dm.ok(*remote, "run", REF, "--on", "Raw", "--to", "Out", "--json", home=False).stdout)
    assert info["status"] == "succeeded" and info["counts"] == {"succeeded": 3}
    assert [r["id"] for r in json.loads(dm.ok(*remote, "runs", "ls", "--json", home=False).stdout)] == [info["id"]]
    show = json.loads(dm.ok(*remote, "runs", "show", str(info["id"]), "--json", home=False).stdout)
    assert show["tasks"][0]["status"] == "succeeded"
    assert "counting a.txt" in dm.ok(*remote, "logs", str(show["tasks"][0]["id"]), home=False).stdout

    dm.ok("flow", "create", "counts", "--source", "Raw", "--to", "Out", "--pipeline", REF, "--trigger", "manual")
    queued = dm.ok(*remote, "flow", "run", "counts", home=False)
    assert "queued on the server" in queued.stderr
    run_id = re.search(r"runs watch (\d+)", queued.stderr)
    assert run_id is not None
    watched = json.loads(dm.ok(*remote, "runs", "watch", run_id.group(1), "--json", home=False).stdout)
    assert watched["status"] == "succeeded" and watched["dataflow_id"] is not None
