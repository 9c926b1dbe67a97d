"""``datamill doctor`` (what it says of a healthy and of a broken deployment) and ``datamill worker``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datamill.cli import app
from datamill.engine.engine import Engine
from datamill.nodes import STALE_SECONDS, list_nodes, register
from tests.conftest import S3Server
from tests.engine.pipelines import ref
from tests.helpers import open_home, wait_for

ROOT = Path(__file__).resolve().parents[2]


def doctor(home: Path, db_url: str, **env: str) -> tuple[int, dict[str, dict[str, str]]]:
    full = {"DATAMILL_DATABASE_URL": db_url, "DATAMILL_DEMO": "false", **env}
    result = CliRunner().invoke(app, ["--home", str(home), "doctor", "--json"], env=full, catch_exceptions=False)
    return result.exit_code, {c["name"]: c for c in json.loads(result.stdout)}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DATAMILL_"):
            monkeypatch.delenv(name)


def test_a_healthy_home(tmp_path: Path, db_url: str) -> None:
    open_home(tmp_path / "home", db_url).close()
    code, checks = doctor(tmp_path / "home", db_url)
    assert code == 0, checks
    assert [c["status"] for c in checks.values()] == ["ok"] * 6, checks
    assert ("SQLite" if db_url.startswith("sqlite") else "PostgreSQL") in checks["database"]["message"]
    assert "read back verified" in checks["blob store"]["message"]


def test_an_empty_database_and_waiting_runs_are_named(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    code, checks = doctor(tmp_path / "home", url)
    assert code == 1 and checks["schema"]["status"] == "fail"
    assert "`datamill up` creates them" in checks["schema"]["message"]

    home = open_home(tmp_path / "home")
    try:
        home.store.create_folder(home.admin, "/Raw")
        home.store.put(home.admin, "/Raw", "a.txt", b"x")
        engine = Engine(home)
        engine.submit(home.admin, ref("basic"), engine.inputs_from_folder(home.admin, "/Raw"), source="/Raw")
        register(home.db, "old-host:1:abc", "worker")
        home.db.engine.dispose()
        with home.db.write() as conn:  # a worker that stopped renewing long ago
            conn.exec_driver_sql(f"UPDATE nodes SET seen_at = {time.time() - STALE_SECONDS - 60}")
    finally:
        home.close()
    code, checks = doctor(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'datamill.db'}")
    assert code == 1
    processes = checks["processes"]
    assert processes["status"] == "fail"
    assert "old-host:1:abc" in processes["message"] and "1 runs wait but no server or worker" in processes["message"]


def test_a_blob_store_with_wrong_credentials(tmp_path: Path, s3_server: S3Server) -> None:
    open_home(tmp_path / "home").close()
    env = {
        "DATAMILL_BLOB_URL": f"s3://{s3_server.new_bucket()}/x",
        "DATAMILL_S3_ENDPOINT_URL": s3_server.endpoint,
        "DATAMILL_S3_REGION": "us-east-1",
        "DATAMILL_S3_ACCESS_KEY_ID": s3_server.access_key,
        "DATAMILL_S3_SECRET_ACCESS_KEY": "not-the-secret",
    }
    code, checks = doctor(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'datamill.db'}", **env)
    assert code == 1
    assert checks["blob store"]["status"] == "fail"
    assert "refused the credentials" in checks["blob store"]["message"]
    assert "not-the-secret" not in json.dumps(checks)
    env["DATAMILL_S3_SECRET_ACCESS_KEY"] = s3_server.secret_key
    code, checks = doctor(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'datamill.db'}", **env)
    assert checks["blob store"]["status"] == "ok", checks


@pytest.mark.slow
def test_a_worker_runs_what_is_queued_and_leaves_cleanly(tmp_path: Path, db_url: str) -> None:
    home = open_home(tmp_path / "home", db_url)
    try:
        home.store.create_folder(home.admin, "/Raw")
        for name in ("a", "b"):
            home.store.put(home.admin, "/Raw", f"{name}.txt", f"item {name}".encode())
        engine = Engine(home)
        run_id = engine.submit(home.admin, ref("basic"), engine.inputs_from_folder(home.admin, "/Raw"), source="/Raw")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DATAMILL_")},
            "DATAMILL_DATABASE_URL": db_url,
            "DATAMILL_EXECUTOR": "inline",
            "PYTHONPATH": str(ROOT),
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "datamill.cli", "--home", str(tmp_path / "home"), "worker"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            def succeeded() -> bool:
                assert worker.poll() is None, worker.communicate()[1]
                return engine.get_run(home.admin, run_id)["status"] == "succeeded"

            wait_for("the run to succeed", succeeded, 120)
            (node,) = wait_for("the worker's node", lambda: list_nodes(home.db))
            assert node.role == "worker" and node.pid == worker.pid
        finally:
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert "datamill worker stopped" in err
        assert list_nodes(home.db) == []  # a clean stop removes its row
    finally:
        home.close()
