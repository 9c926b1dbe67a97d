"""Runs and dataflows through the client: embedded (LocalClient) and over HTTP (RemoteClient).

The remote tests talk to a real server on loopback that runs its services, so a submitted run is
executed by the server's scheduler and a started dataflow by its triggers.
"""

from __future__ import annotations

import pytest

from datamill.api import start_background_server
from datamill.client.base import wait_until
from datamill.client.local import LocalClient
from datamill.client.remote import RemoteClient
from datamill.errors import (
    AlreadyExists,
    Conflict,
    InvalidDataflow,
    InvalidInput,
    InvalidPipeline,
    NotFound,
    PermissionDenied,
)
from datamill.home import Home

from .counting_pipeline import COUNTING_REF

# ---------------------------------------------------------------------------------- embedded runs


def test_plan_run_and_reuse(local: LocalClient) -> None:
    plan = local.plan(COUNTING_REF, "Raw")
    assert plan["pipeline"] == "counting"
    assert plan["counts"] == {"cached": 0, "run": 2, "pending": 1}
    assert [t["id"] for t in plan["tasks"]] == ["count[Raw/a.txt]", "count[Raw/b.txt]", "total"]

    started: list[int] = []
    info = local.run(COUNTING_REF, "Raw", "Out", on_start=started.append)
    assert started == [info["id"]]
    assert info["status"] == "succeeded"
    assert info["counts"] == {"succeeded": 3}
    assert info["steps"] == {"count": {"succeeded": 2}, "total": {"succeeded": 1}}
    assert local.list_items("Out")

    again = local.run(COUNTING_REF, "Raw", "Out")
    assert again["counts"] == {"cached": 3}
    assert local.plan(COUNTING_REF, "Raw")["counts"] == {"cached": 3, "run": 0, "pending": 0}
    scaled = local.run(COUNTING_REF, "Raw", "Out", params={"scale": 2})
    assert scaled["counts"] == {"succeeded": 3}
    assert scaled["params"]["user"] == {"scale": 2}

    assert [r["id"] for r in local.runs()] == [scaled["id"], again["id"], info["id"]]
    assert [r["id"] for r in local.runs(limit=1)] == [scaled["id"]]
    assert local.runs(status="failed") == []

    tasks = local.tasks(info["id"])
    assert [t["planned_id"] for t in tasks] == ["count[Raw/a.txt]", "count[Raw/b.txt]", "total"]
    first = local.task(tasks[0]["id"])
    assert first["status"] == "succeeded" and first["outputs"]
    assert "counting a.txt" in "".join(local.logs(first["id"]))
    assert "counting a.txt" in "".join(local.logs(first["id"], follow=True))  # ended: returns at once

    cached = local.tasks(again["id"])[0]
    assert local.why(cached["id"])["explanation"].startswith("cached")
    ran = local.why(local.tasks(scaled["id"])[0]["id"])
    assert ran["parts"]["params"] == {"scale": 2}
    assert "params" in ran["explanation"]


def test_failed_run_retry_and_cancel(local: LocalClient) -> None:
    succeeded = local.run(COUNTING_REF, "Raw", "Out")
    local.put("Raw", "c.txt", b"boom\n")
    failed = local.run(COUNTING_REF, "Raw", "Out")
    assert failed["status"] == "failed"
    bad = next(t for t in local.tasks(failed["id"]) if t["planned_id"] == "count[Raw/c.txt]")
    assert bad["status"] == "failed" and "boom" in bad["error"]
    assert "ValueError" in "".join(local.logs(bad["id"]))

    with pytest.raises(InvalidInput, match="only failed or cancelled"):
        local.retry_run(succeeded["id"])
    retried = local.retry_run(failed["id"])
    info = local.execute(retried)
    assert info["parent_run_id"] == failed["id"]
    assert info["status"] == "failed"  # the same inputs: the same failure; the others come from the cache
    assert info["steps"]["count"] == {"cached": 2, "failed": 1}

    queued = local.submit_run(COUNTING_REF, "Raw", "Out", reason="later")
    assert local.run_info(queued)["status"] == "queued"
    assert local.cancel_run(queued) is True
    assert local.run_info(queued)["status"] == "cancelled"
    assert local.cancel_run(queued) is False
    assert local.wait_run(queued, timeout=1)["status"] == "cancelled"


def test_errors_and_access(local: LocalClient) -> None:
    with pytest.raises(NotFound):
        local.run_info(999)
    with pytest.raises(NotFound):
        local.task(999)
    with pytest.raises(InvalidPipeline):
        local.plan("no_such_module_here:pipeline", "Raw")
    with pytest.raises(InvalidPipeline, match="known parameters"):
        local.plan(COUNTING_REF, "Raw", params={"nope": 1})

    run_id = local.run(COUNTING_REF, "Raw", "Out")["id"]
    local.create_user("ana")
    ana = local.as_user("ana")
    local.add_pipeline("counting", COUNTING_REF)  # ana, not a site admin, chooses pipelines by name
    assert ana.runs() == []
    with pytest.raises(NotFound):
        ana.run_info(run_id)
    with pytest.raises(NotFound):
        ana.tasks(run_id)
    with pytest.raises(NotFound):
        ana.plan("counting", "Raw")
    local.share("Raw", "ana", "read")
    assert [r["id"] for r in ana.runs()] == [run_id]  # she may read its source
    with pytest.raises(PermissionDenied):
        ana.cancel_run(local.submit_run(COUNTING_REF, "Raw", "Out"))
    with pytest.raises((PermissionDenied, NotFound)):
        ana.submit_run("counting", "Raw", "Out")  # no write on the destination


# ---------------------------------------------------------------------------------- embedded dataflows


def test_dataflow_lifecycle(local: LocalClient) -> None:
    info = local.create_dataflow("counts", "Raw", "Out", COUNTING_REF, description="line counts")
    assert (info["state"], info["version"], info["trigger"]) == ("stopped", 1, "new-items")
    assert [f["name"] for f in local.dataflows()] == ["counts"]
    assert local.dataflow("counts")["recent_runs"] == []

    assert local.edit_dataflow("counts", description="counts of lines")["version"] == 2
    assert local.edit_dataflow("counts", description="counts of lines")["version"] == 2  # no change, no version
    assert local.edit_dataflow("counts", params={"scale": 3}, trigger="manual")["version"] == 3
    with pytest.raises(InvalidDataflow, match="cannot change"):
        local.edit_dataflow("counts", colour="red")
    history = local.dataflow_history("counts")
    assert [v["version"] for v in history] == [1, 2, 3]
    assert history[2]["config"]["params"] == {"scale": 3}

    run_id = local.run_dataflow("counts")
    assert run_id is not None
    done = local.execute(run_id)
    assert done["status"] == "succeeded" and done["dataflow_version"] == 3
    assert local.dataflow("counts")["recent_runs"][0]["id"] == run_id
    assert local.dataflow_history("counts")[2]["runs"][0]["id"] == run_id

    assert local.start_dataflow("counts")["state"] == "running"
    with pytest.raises(Conflict, match="stop it first"):
        local.delete_dataflow("counts")
    queued = local.run_dataflow("counts")  # recorded; nothing executes it here
    stopped = local.stop_dataflow("counts", cancel=True)
    assert stopped["state"] == "stopped" and stopped["cancelled"] == [queued]
    assert local.run_info(queued or 0)["status"] == "cancelled"
    local.delete_dataflow("counts")
    with pytest.raises(NotFound):
        local.dataflow("counts")


def test_dataflow_validation(local: LocalClient) -> None:
    local.create_folder("Raw/derived")
    with pytest.raises(InvalidDataflow, match="inside the source"):
        local.create_dataflow("loop", "Raw", "Raw/derived", COUNTING_REF)
    with pytest.raises(InvalidDataflow, match="pipeline"):
        local.create_dataflow("nopipe", "Raw", "Out", "no_such_module_here:pipeline")
    with pytest.raises(InvalidDataflow, match="trigger"):
        local.create_dataflow("badcron", "Raw", "Out", COUNTING_REF, trigger="cron:every day")
    with pytest.raises(InvalidDataflow, match="webhooks"):
        local.create_dataflow("badhook", "Raw", "Out", COUNTING_REF, webhooks=["ftp://x"])
    assert local.dataflows() == []

    cron = local.create_dataflow("every5", "Raw", "Out", COUNTING_REF, trigger="cron:*/5 * * * *")
    assert cron["next_fire_times"] == []  # only while running
    local.start_dataflow("every5")
    fires = local.dataflow("every5")["next_fire_times"]
    assert len(fires) == 3 and fires == sorted(fires)
    with pytest.raises(AlreadyExists):
        local.create_dataflow("every5", "Raw", "Out", COUNTING_REF)

    local.create_user("bo")
    bo = local.as_user("bo")
    with pytest.raises(NotFound):
        bo.dataflow("every5")
    with pytest.raises(NotFound):
        bo.run_dataflow("every5")
    with pytest.raises(InvalidDataflow, match="does not exist"):
        bo.create_dataflow("mine", "Raw", "Out", COUNTING_REF)


# ---------------------------------------------------------------------------------- over HTTP


def test_remote_run_is_executed_by_the_servers_scheduler(remote: RemoteClient, local: LocalClient) -> None:
    assert remote.plan(COUNTING_REF, "Raw")["counts"] == {"cached": 0, "run": 2, "pending": 1}
    started: list[int] = []
    info = remote.run(COUNTING_REF, "Raw", "Out", params={"scale": 2}, on_start=started.append)
    assert info["status"] == "succeeded" and started == [info["id"]]
    assert info["counts"] == {"succeeded": 3}
    assert local.run_info(info["id"]) == info  # the same record either way

    run_id = remote.submit_run(COUNTING_REF, "Raw", "Out", reason="second")
    second = remote.wait_run(run_id, timeout=30)
    assert second["status"] == "succeeded" and second["reason"] == "second"
    assert second["counts"] == {"succeeded": 3}  # scale differs: not cached
    assert [r["id"] for r in remote.runs()] == [run_id, info["id"]]
    assert remote.runs(status="queued") == []

    tasks = remote.tasks(run_id)
    assert tasks == local.tasks(run_id)
    assert remote.task(tasks[0]["id"]) == local.task(tasks[0]["id"])
    assert "counting a.txt" in "".join(remote.logs(tasks[0]["id"]))
    assert "".join(remote.logs(tasks[0]["id"], follow=True)) == "".join(local.logs(tasks[0]["id"]))
    why = remote.why(tasks[0]["id"])
    assert why == local.why(tasks[0]["id"]) and "params" in why["explanation"]
    assert remote.cancel_run(run_id) is False

    remote.put("Raw", "c.txt", b"boom\n")
    failed = remote.run(COUNTING_REF, "Raw", "Out")
    assert failed["status"] == "failed" and failed["steps"]["count"] == {"cached": 2, "failed": 1}
    retried = remote.wait_run(remote.retry_run(failed["id"]), timeout=30)
    assert retried["parent_run_id"] == failed["id"] and retried["status"] == "failed"

    with pytest.raises(NotFound):
        remote.run_info(999)
    with pytest.raises(InvalidPipeline):
        remote.run("no_such_module_here:pipeline", "Raw")


def test_remote_dataflow_processes_a_dropped_item(remote: RemoteClient, local: LocalClient) -> None:
    created = remote.create_dataflow("counts", "Raw", "Out", COUNTING_REF, params={"scale": 10})
    assert created["state"] == "stopped" and created["params"] == {"scale": 10}
    assert remote.dataflows() == local.dataflows()
    assert remote.start_dataflow("counts")["state"] == "running"

    def finished_runs() -> list[dict]:
        return [r for r in remote.dataflow("counts")["recent_runs"] if r["status"] == "succeeded"]

    assert wait_until(lambda: len(finished_runs()) == 1, 30), remote.dataflow("counts")
    remote.put("Raw", "c.txt", b"1\n2\n3\n")
    assert wait_until(lambda: len(finished_runs()) == 2, 30), remote.dataflow("counts")
    newest = remote.run_info(finished_runs()[0]["id"])
    # An aggregate step sees every item, so the run covers them all; only c.txt's task is new.
    assert [i["name"] for i in newest["inputs"]] == ["a.txt", "b.txt", "c.txt"]
    assert newest["reason"].startswith("dataflow counts: 1 new or updated item")
    assert newest["steps"]["count"] == {"cached": 2, "succeeded": 1}
    assert any(i.name.startswith("c.") for i in remote.list_items("Out"))

    with pytest.raises(Conflict):
        remote.delete_dataflow("counts")
    assert remote.edit_dataflow("counts", description="tens")["version"] == 2
    assert [v["version"] for v in remote.dataflow_history("counts")] == [1, 2]
    stopped = remote.stop_dataflow("counts", cancel=True)
    assert stopped["state"] == "stopped" and isinstance(stopped["cancelled"], list)
    manual = remote.run_dataflow("counts")
    assert manual is not None and remote.wait_run(manual, timeout=30)["status"] == "succeeded"
    remote.delete_dataflow("counts")
    assert remote.dataflows() == []

    with pytest.raises(InvalidDataflow, match="inside the source"):
        local.create_folder("Raw/sub")
        remote.create_dataflow("loop", "Raw", "Raw/sub", COUNTING_REF)
    with pytest.raises(InvalidDataflow, match="pipeline"):
        remote.create_dataflow("nopipe", "Raw", "Out", "no_such_module_here:pipeline")
    with pytest.raises(NotFound):
        remote.dataflow("nope")


def test_remote_run_refused_when_the_server_runs_no_scheduler(home: Home, local: LocalClient) -> None:
    with start_background_server(home) as server, RemoteClient(server.url, home.admin_token()) as remote:
        assert isinstance(remote, RemoteClient)
        with pytest.raises(Conflict, match="no scheduler"):
            remote.run(COUNTING_REF, "Raw", "Out")
        assert remote.runs() == []  # nothing was recorded
        run_id = remote.submit_run(COUNTING_REF, "Raw", "Out")  # recording alone is fine
        assert remote.wait_run(run_id, timeout=0.2)["status"] == "queued"
