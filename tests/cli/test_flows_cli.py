"""``datamill flow create|ls|show|edit|start|stop|run|history|rm`` on a local home."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.cli.conftest import one_line_error

COUNTING = Path(__file__).resolve().parents[1] / "client" / "counting_pipeline.py"
REF = f"{COUNTING}:pipeline"


def test_flow_lifecycle(raw: Any) -> None:
    created = raw.ok(
        "flow",
        "create",
        "counts",
        "--source",
        "Raw",
        "--to",
        "Out",
        "--pipeline",
        REF,
        "--param",
        "scale=2",
        "--description",
        "line counts",
        "--webhook",
        "http://127.0.0.1:9/hook",
    )
    assert "created dataflow 'counts' (stopped)" in created.stderr and created.stdout == ""
    (listed,) = raw.json("flow", "ls")
    assert (listed["name"], listed["state"], listed["trigger"]) == ("counts", "stopped", "new-items")
    assert listed["version"] == 1
    assert listed["params"] == {"scale": 2} and listed["webhooks"] == ["http://127.0.0.1:9/hook"]
    assert "counts" in raw.ok("flow", "ls").stdout

    assert "params: no step of pipeline 'counting' has a parameter 'nope'" in one_line_error(
        raw("flow", "edit", "counts", "--param", "nope=1")
    )
    assert "version 2" in raw.ok("flow", "edit", "counts", "--description", "counts of lines").stderr
    assert "unchanged (version 2)" in raw.ok("flow", "edit", "counts", "--description", "counts of lines").stderr
    edited = raw.json("flow", "edit", "counts", "--param", "count.scale=3", "--trigger", "manual")
    assert edited["version"] == 3 and edited["params"] == {"scale": 2, "count.scale": 3}

    ran = raw.json("flow", "run", "counts", "--executor", "inline")  # executes here: no server needed
    assert ran["status"] == "succeeded" and ran["dataflow_version"] == 3
    assert raw.json("ls", "Out")
    show = raw.json("flow", "show", "counts")
    assert show["state"] == "stopped" and show["version"] == 3 and show["recent_runs"][0]["id"] == ran["id"]
    human = raw.ok("flow", "show", "counts").stdout
    assert "counts of lines" in human and "manual" in human and str(ran["id"]) in human

    started = raw.ok("flow", "start", "counts")
    assert "it runs while `datamill up` is running" in started.stderr
    assert raw.json("flow", "show", "counts")["state"] == "running"
    assert "stop it first" in one_line_error(raw("flow", "rm", "counts"))

    history = raw.json("flow", "history", "counts")
    assert [v["version"] for v in history] == [1, 2, 3]
    assert [r["id"] for r in history[2]["runs"]] == [ran["id"]]
    table = raw.ok("flow", "history", "counts").stdout
    assert "(created)" in table and "description" in table

    assert "stopped dataflow 'counts'" in raw.ok("flow", "stop", "counts", "--cancel").stderr
    assert raw.json("flow", "show", "counts")["state"] == "stopped"
    assert "removed dataflow 'counts'" in raw.ok("flow", "rm", "counts").stderr
    assert "no dataflow 'counts'" in one_line_error(raw("flow", "show", "counts"))
    assert raw.json("flow", "ls") == []


def test_flow_create_refusals(raw: Any) -> None:
    raw.ok("folder", "create", "Raw/derived")
    inside = raw("flow", "create", "loop", "--source", "Raw", "--to", "Raw/derived", "--pipeline", REF)
    assert "inside the source" in one_line_error(inside)
    unknown = raw("flow", "create", "x", "--source", "Raw", "--to", "Out", "--pipeline", "no_such_module_here:p")
    assert "pipeline" in one_line_error(unknown) and "no_such_module_here" in unknown.stderr
    missing = raw("flow", "create", "x", "--source", "Nope", "--to", "Out", "--pipeline", REF)
    assert "'Nope' does not exist" in one_line_error(missing)
    cron = raw("flow", "create", "x", "--source", "Raw", "--to", "Out", "--pipeline", REF, "--trigger", "cron:soon")
    assert "cron" in one_line_error(cron)
    assert raw.json("flow", "ls") == []

    raw.ok("flow", "create", "x", "--source", "Raw", "--to", "Out", "--pipeline", REF, "--trigger", "cron:*/5 * * * *")
    assert "exists" in one_line_error(raw("flow", "create", "x", "--source", "Raw", "--to", "Out", "--pipeline", REF))
    raw.ok("flow", "start", "x")
    assert len(raw.json("flow", "show", "x")["next_fire_times"]) == 3
    assert "next runs" in raw.ok("flow", "show", "x").stdout
    assert "no dataflow 'y'" in one_line_error(raw("flow", "run", "y"))


def test_flow_run_with_a_failing_item_and_stop_cancel(raw: Any, tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("boom\n")
    raw.ok("put", "-p", str(tmp_path / "c.txt"), "Raw")
    raw.ok("flow", "create", "counts", "--source", "Raw", "--to", "Out", "--pipeline", REF)
    failed = raw("flow", "run", "counts", "--executor", "inline")
    assert "count[Raw/c.txt]" in one_line_error(failed)
    raw.ok("folder", "create", "Empty")
    raw.ok("flow", "create", "idle", "--source", "Empty", "--to", "Out", "--pipeline", REF)
    assert "nothing to run" in raw.ok("flow", "run", "idle").stderr
