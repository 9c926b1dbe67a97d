"""The runs, tasks and dataflows routes over raw HTTP: tokens, the JSON error shape, text logs, long poll.

The server here runs no services: runs are recorded over HTTP and executed by an embedded client
on the same home (``tests/client`` covers a server that executes them itself).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from datamill.api import ServerHandle
from datamill.client.local import LocalClient
from datamill.client.remote import RemoteClient
from datamill.errors import NotFound
from datamill.home import Home

COUNTING = Path(__file__).resolve().parents[1] / "client" / "counting_pipeline.py"
REF = f"{COUNTING}:pipeline"


@pytest.fixture
def folders(local: LocalClient) -> LocalClient:
    local.create_folder("Raw")
    local.create_folder("Out")
    local.put("Raw", "a.txt", b"1\n2\n")
    local.put("Raw", "b.txt", b"3\n")
    return local


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"ok", "status", "code", "error", "detail"}
    assert body["ok"] is False and body["status"] == status and body["code"] == code
    assert body["error"]
    return body


def test_routes_need_a_token(server: ServerHandle) -> None:
    for method, path in (
        ("GET", "/runs"),
        ("POST", "/runs"),
        ("GET", "/runs/1"),
        ("POST", "/plan"),
        ("GET", "/tasks/1/logs"),
        ("GET", "/dataflows"),
        ("POST", "/dataflows/x/start"),
    ):
        assert_error(httpx.request(method, server.url + "/api/v1" + path), 401, "unauthorized")


def test_submit_read_wait_and_logs(http: httpx.Client, folders: LocalClient) -> None:
    plan = http.post("/plan", json={"pipeline": REF, "folder": "Raw"})
    assert plan.status_code == 200 and plan.json()["counts"] == {"cached": 0, "run": 2, "pending": 1}

    r = http.post("/runs", json={"pipeline": REF, "folder": "Raw", "dest": "Out", "reason": "api"})
    assert r.status_code == 201
    run_id = r.json()["id"]
    t0 = time.monotonic()
    queued = http.get(f"/runs/{run_id}", params={"wait": 0.3})
    assert queued.json()["status"] == "queued" and time.monotonic() - t0 >= 0.25  # nothing executes it here
    assert [x["id"] for x in http.get("/runs", params={"status": "queued"}).json()] == [run_id]

    folders.execute(run_id)
    done = http.get(f"/runs/{run_id}", params={"wait": 5}).json()
    assert done["status"] == "succeeded" and done["reason"] == "api" and done["counts"] == {"succeeded": 3}
    tasks = http.get(f"/runs/{run_id}/tasks").json()
    assert [t["planned_id"] for t in tasks] == ["count[Raw/a.txt]", "count[Raw/b.txt]", "total"]
    assert http.get(f"/tasks/{tasks[0]['id']}").json()["status"] == "succeeded"
    assert http.get(f"/tasks/{tasks[0]['id']}/why").json()["step"] == "count"
    logs = http.get(f"/tasks/{tasks[0]['id']}/logs", params={"follow": True})
    assert logs.headers["content-type"].startswith("text/plain")
    assert "counting a.txt" in logs.text

    assert http.post(f"/runs/{run_id}/cancel").json() == {"ok": True, "cancelled": False}
    assert_error(http.post(f"/runs/{run_id}/retry"), 400, "invalid_input")
    assert_error(http.get("/runs/999"), 404, "not_found")
    assert_error(http.get("/tasks/999/logs"), 404, "not_found")
    assert_error(
        http.post("/runs", json={"pipeline": "no_such_module_here:p", "folder": "Raw"}), 400, "invalid_pipeline"
    )
    assert_error(http.post("/runs", json={"folder": "Raw"}), 422, "invalid_request")
    body = assert_error(
        http.post("/runs", json={"pipeline": REF, "folder": "Raw", "require_scheduler": True}), 409, "conflict"
    )
    assert "no scheduler" in body["error"]


def test_dataflow_routes(http: httpx.Client, folders: LocalClient) -> None:
    r = http.post("/dataflows", json={"name": "counts", "source": "Raw", "dest": "Out", "pipeline": REF})
    assert r.status_code == 201 and r.json()["state"] == "stopped"
    assert [f["name"] for f in http.get("/dataflows").json()] == ["counts"]
    assert http.patch("/dataflows/counts", json={"params": {"scale": 2}}).json()["version"] == 2
    assert http.post("/dataflows/counts/start").json()["state"] == "running"
    assert_error(http.delete("/dataflows/counts"), 409, "conflict")
    run = http.post("/dataflows/counts/run")
    assert run.status_code == 201
    stopped = http.post("/dataflows/counts/stop", params={"cancel": True}).json()
    assert stopped["state"] == "stopped" and run.json()["id"] in stopped["cancelled"]
    assert [v["version"] for v in http.get("/dataflows/counts/history").json()] == [1, 2]
    assert http.get("/dataflows/counts").json()["recent_runs"][0]["status"] == "cancelled"
    assert http.delete("/dataflows/counts").json() == {"ok": True}
    assert_error(http.get("/dataflows/counts"), 404, "not_found")

    folders.create_folder("Raw/sub")
    inside = {"name": "loop", "source": "Raw", "dest": "Raw/sub", "pipeline": REF}
    assert "inside the source" in assert_error(http.post("/dataflows", json=inside), 400, "invalid_dataflow")["error"]
    no_dest = {"name": "nodest", "source": "Raw", "pipeline": REF}
    assert_error(http.post("/dataflows", json=no_dest), 400, "invalid_dataflow")
    assert_error(http.patch("/dataflows/nope", json={}), 404, "not_found")


def test_other_users_see_nothing_of_it(
    http: httpx.Client, folders: LocalClient, user_client: Callable[..., RemoteClient]
) -> None:
    run_id = http.post("/runs", json={"pipeline": REF, "folder": "Raw", "dest": "Out"}).json()["id"]
    http.post("/dataflows", json={"name": "counts", "source": "Raw", "dest": "Out", "pipeline": REF})
    ana = user_client("ana")
    folders.add_pipeline("counting", REF)  # ana, not a site admin, chooses pipelines by name
    assert ana.runs() == [] and ana.dataflows() == []
    for call in (
        lambda: ana.run_info(run_id),
        lambda: ana.tasks(run_id),
        lambda: ana.cancel_run(run_id),
        lambda: ana.dataflow("counts"),
        lambda: ana.start_dataflow("counts"),
        lambda: ana.run_dataflow("counts"),
        lambda: ana.plan("counting", "Raw"),
    ):
        with pytest.raises(NotFound):
            call()


def test_a_task_shows_its_parameters_stored_once(http: httpx.Client, folders: LocalClient, home: Home) -> None:
    """A task's parameters come back whole in the task views, though its step's tasks share one row."""
    scale = 7
    r = http.post(
        "/runs",
        json={"pipeline": REF, "folder": "Raw", "dest": "Out", "params": {"scale": scale}},
    )
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    folders.execute(run_id)
    assert http.get(f"/runs/{run_id}", params={"wait": 5}).json()["status"] == "succeeded"
    tasks = {t["planned_id"]: t for t in http.get(f"/runs/{run_id}/tasks").json()}
    assert tasks["count[Raw/a.txt]"]["params"] == {"scale": scale}
    assert tasks["count[Raw/b.txt]"]["params"] == {"scale": scale}
    assert tasks["total"]["params"] == {}
    one = http.get(f"/tasks/{tasks['count[Raw/b.txt]']['id']}").json()
    assert one["params"] == {"scale": scale} and "params_digest" not in one
    assert http.get(f"/tasks/{one['id']}/why").json()["parts"]["params"] == {"scale": scale}
    with home.db.read() as conn:
        digests = (
            conn.exec_driver_sql(
                "SELECT params_digest FROM tasks WHERE run_id = ? ORDER BY id"
                if home.db.is_sqlite
                else "SELECT params_digest FROM tasks WHERE run_id = %s ORDER BY id",
                (run_id,),
            )
            .scalars()
            .all()
        )
        sets = conn.exec_driver_sql("SELECT count(*) FROM params").scalar_one()
    assert digests[0] == digests[1] is not None and digests[2] is None and sets == 1
