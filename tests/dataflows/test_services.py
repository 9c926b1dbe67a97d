"""The services together (scheduler, triggers, notifier) in this process: settings and a database outage."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from datamill.config import load_settings
from datamill.errors import ConfigError
from datamill.home import Home
from datamill.services import Services
from tests.helpers import check_fold, open_home, until

from .flow_world import FlowWorld

LEASE_ENV = "DATAMILL_LEASE_SECONDS"


def test_the_lease_comes_from_the_environment(tmp_path: Path) -> None:
    # The settings registry reads it like every other DATAMILL_* variable, and from datamill.toml.
    assert load_settings(environ={}).lease_seconds == 30.0
    assert load_settings(environ={LEASE_ENV: " 1.5 "}).lease_seconds == 1.5
    for bad in ("0", "-3", "soon", "nan"):
        with pytest.raises(ConfigError, match=LEASE_ENV):
            load_settings(environ={LEASE_ENV: bad})
    toml = tmp_path / "datamill.toml"
    toml.write_text("[defaults]\nlease_seconds = 2\n")
    assert load_settings(config_file=toml, environ={}).lease_seconds == 2.0
    toml.write_text("[defaults]\nlease_seconds = true\n")
    with pytest.raises(ConfigError, match="lease_seconds must be a positive number"):
        load_settings(config_file=toml, environ={})


def test_services_use_the_lease_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LEASE_ENV, "2.5")  # read when the home's settings are loaded
    home = Home(load_settings(home=str(tmp_path / "home"), demo=False))
    try:
        assert Services(home, executor="inline").scheduler.lease_seconds == 2.5
        assert Services(home, executor="inline", lease_seconds=7).scheduler.lease_seconds == 7
    finally:
        home.close()


@pytest.mark.postgres
def test_the_services_outlive_a_database_outage(tmp_path: Path, postgres_db_url: str) -> None:
    """No connection to the database for a few seconds: afterwards the dataflow goes on by itself."""
    home = open_home(tmp_path / "home", postgres_db_url)
    w = FlowWorld(home)
    parts = urlsplit(postgres_db_url)
    name = parts.path.lstrip("/")
    server = urlunsplit(parts._replace(path="/postgres"))

    def outage(on: bool) -> None:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                    sql.Identifier(name), sql.SQL("false" if on else "true")
                )
            )
            if on:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))

    async def go() -> None:
        services = Services(home, executor="inline")
        await services.start()
        try:
            w.put("a.txt", "a")
            await until("the first output", lambda: "a.echo.bin" in w.out())
            outage(True)
            await asyncio.sleep(2.5)  # every pass of every service fails meanwhile
            outage(False)
            w.put("b.txt", "b")  # for the triggers
            await until("the output of an item landed after the outage", lambda: "b.echo.bin" in w.out())
            asked = w.triggers.run_now("flow", w.admin)  # recorded elsewhere: for the scheduler to find
            assert asked is not None
            await until("the run asked for", lambda: w.run(asked)["status"] == "succeeded")
        finally:
            await services.stop()

    try:
        w.create()
        w.start()
        asyncio.run(go())
        assert w.flows.get(w.admin, "flow").state == "running"  # the outage was not the dataflow's fault
        assert w.read("b.echo.bin") == b"v1:b"
    finally:
        outage(False)
        home.close()


def test_idle_services_wait_for_events_instead_of_reading(tmp_path: Path) -> None:
    """A running dataflow with nothing landing: the services read next to nothing (issue 13's idle server).

    Before, each service read the database on every turn of its loop (~20 statements a second);
    now a quiet window holds at most the lease look of the scheduler, the node heartbeat and the
    one read of the log's head after it (a count, whatever the machine's speed: a slower machine
    turns fewer times).
    """
    from sqlalchemy import event

    home = open_home(tmp_path / "home")
    w = FlowWorld(home)
    seen: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if not statement.startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            seen.append(statement.split()[0] + " " + " ".join(statement.split()[1:6]))

    engines = list({id(e): e for e in (home.db.engine, home.db.write_engine)}.values())

    async def go() -> None:
        services = Services(home, executor="inline")
        await services.start()
        try:
            w.put("a.txt", "a")
            await until("the first output", lambda: "a.echo.bin" in w.out())
            await until("the run ended", lambda: all(r.status == "succeeded" for r in w.engine.list_runs(w.admin)))
            await asyncio.sleep(1.0)  # the run's end reaches every service
            for e in engines:
                event.listen(e, "before_cursor_execute", count)
            await asyncio.sleep(4.0)
            for e in engines:
                event.remove(e, "before_cursor_execute", count)
        finally:
            await services.stop()

    try:
        w.create()
        w.start()
        asyncio.run(go())
        # lease look (2), heartbeat (1) and the head after it (1), with room for one more of each
        assert len(seen) <= 8, seen
    finally:
        home.close()


def test_a_run_the_trigger_records_is_handed_to_the_scheduler(tmp_path: Path) -> None:
    """The trigger hands each run it records to the scheduler of its process (issue 13's latency).

    The run lease, the plan and the task rows are taken in the transaction that records the run:
    the scheduler plans no run itself, and gives the lease back when the run ends. A key whose step
    failed before is still looked up and skipped, though the trigger's plan found no cached result.
    """
    from sqlalchemy import func, select

    from datamill.db.models import RunOwner

    from .flow_pipelines import ref

    home = open_home(tmp_path / "home")
    w = FlowWorld(home)
    services = Services(home, executor="inline")

    def ended(count: int) -> bool:
        found = w.engine.list_runs(w.admin)
        return len(found) >= count and all(r["status"] not in ("queued", "running") for r in found)

    async def go() -> None:
        await services.start()
        try:
            await until("the run of the items there at the start", lambda: ended(1))
            w.put("c.txt", "c")
            await until("the run of the new item", lambda: ended(2))
        finally:
            await services.stop()

    try:
        w.put("a.txt", "a")
        w.put("bad.txt", "fail: not like the others")
        w.create(pipeline=ref("echo_all"))
        w.start()
        asyncio.run(go())
        first, second = sorted(r["id"] for r in w.engine.list_runs(w.admin))
        assert w.run(first)["status"] == "failed"
        assert services.scheduler.stats["plans"] == 0  # both were handed over with their plans
        assert services.scheduler.stats["drives"] == 2
        run = w.run(second)
        assert (run["status"], run["counts"]) == ("succeeded", {"skipped": 1, "cached": 1, "succeeded": 2})
        bad = {t.planned_id: t for t in w.engine.tasks(w.admin, second)}["echo[Raw/bad.txt]"]
        assert (bad.status, bad.note) == ("skipped", f"failed earlier (see run {first})")
        assert w.read("c.echo.bin") == b"v1:c"
        with home.db.read() as conn:
            assert conn.execute(select(func.count()).select_from(RunOwner)).scalar_one() == 0
        check_fold(home)
    finally:
        home.close()
