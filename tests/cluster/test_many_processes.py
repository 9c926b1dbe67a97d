"""Many processes on one PostgreSQL and one S3 bucket: 3 API servers (``up --api-only``) and 3
``datamill worker`` processes, a new-items dataflow, 1,000 items landed through the servers while it
runs, one worker and one server killed with SIGKILL midway.

Afterwards each item has exactly one result, each task finished once, no run is left open, and
every SSE client of a surviving server saw every ``item.created`` event of the source and the
destination (LISTEN/NOTIFY carries events written by other processes to every server).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from datamill.client.remote import RemoteClient
from datamill.db.models import Run, Task
from datamill.errors import DatamillError
from datamill.home import Home
from datamill.store import lookups
from tests.cluster.pipelines import PIPELINES
from tests.conftest import S3Server
from tests.helpers import all_events, finished_per_task, free_port, open_home, wait_for

ROOT = Path(__file__).resolve().parents[2]
ITEMS = 1000
BATCH = 50  # items per upload request: 20 requests, spread over the servers
KILL_AFTER = ITEMS // 2


class Proc:
    """A ``datamill`` subprocess whose output goes to a file (a pipe nobody reads would fill and block it)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "datamill.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def alive(self) -> bool:
        """True while it runs; fails the test with its output if it ended."""
        assert self.popen.poll() is None, f"{self.log.name} ended:\n{self.log.read_text(errors='replace')[-3000:]}"
        return True

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(30)

    def stop(self) -> int:
        """SIGTERM, then its exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(60)


class Watcher(threading.Thread):
    """An SSE client of one server, collecting the ``seq`` of every ``item.created`` event it is sent."""

    def __init__(self, url: str, token: str, since: int) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.since = url, token, since
        self.seen: set[int] = set()
        self.connected = threading.Event()
        self.status = 0

    def run(self) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(None, connect=10)) as c,
                c.stream(
                    "GET",
                    f"{self.url}/api/v1/events/stream",
                    params={"since": self.since, "kinds": "item.created"},
                    headers={"Authorization": f"Bearer {self.token}"},
                ) as r,
            ):
                self.status = r.status_code
                self.connected.set()
                for line in r.iter_lines():
                    if line.startswith("id: "):
                        self.seen.add(int(line[4:]))
        except httpx.HTTPError:
            pass  # its server was killed or stopped: what it saw up to then stays in `seen`
        finally:
            self.connected.set()


@pytest.fixture
def cluster_env(postgres_db_url: str, s3_server: S3Server) -> dict[str, str]:
    """The environment every process of the deployment shares: one database, one bucket."""
    return {
        "DATAMILL_DATABASE_URL": postgres_db_url,
        "DATAMILL_BLOB_URL": f"s3://{s3_server.new_bucket()}/cluster",
        "DATAMILL_S3_ENDPOINT_URL": s3_server.endpoint,
        "DATAMILL_S3_REGION": "us-east-1",
        "DATAMILL_S3_ACCESS_KEY_ID": s3_server.access_key,
        "DATAMILL_S3_SECRET_ACCESS_KEY": s3_server.secret_key,
    }


@pytest.fixture
def setup_home(tmp_path: Path, cluster_env: dict[str, str]) -> Iterator[Home]:
    """A home on the deployment's database and bucket: makes the schema and the admin (and its token)."""
    settings = {k.removeprefix("DATAMILL_").lower(): v for k, v in cluster_env.items()}
    home = open_home(tmp_path / "setup", settings.pop("database_url"), **settings)
    try:
        yield home
    finally:
        home.close()


def _ids(home: Home, path: str) -> int:
    with home.db.read() as conn:
        folder_id = lookups.folder_id(conn, path)
    assert folder_id is not None
    return folder_id


@pytest.mark.slow
# Its waits fail once the deployment stops moving (progress=...); this bounds only a hang, with room
# for a thousand tasks through six processes on two loaded cores.
@pytest.mark.timeout(900)
def test_three_servers_three_workers_one_database(
    tmp_path: Path, cluster_env: dict[str, str], setup_home: Home
) -> None:
    home = setup_home
    token = home.admin_token()
    assert token
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DATAMILL_")},
        **cluster_env,
        "DATAMILL_DEMO": "false",
        "DATAMILL_EXECUTOR": "inline",  # tasks run in the worker processes: little CPU on a small machine
        "DATAMILL_LEASE_SECONDS": "3",  # the killed worker's tasks are taken over after 3 s
        "PYTHONPATH": str(ROOT),
        "PYTHONFAULTHANDLER": "1",
    }
    ports = [free_port() for _ in range(3)]
    servers = [
        Proc(
            ["--home", str(tmp_path / f"api{i}"), "up", "--api-only", "--no-demo", "--port", str(port)],
            env,
            tmp_path / f"api{i}.log",
        )
        for i, port in enumerate(ports)
    ]
    workers = [Proc(["--home", str(tmp_path / f"w{i}"), "worker"], env, tmp_path / f"w{i}.log") for i in range(3)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    clients = [RemoteClient(u, token) for u in urls]
    watchers: list[Watcher] = []
    killed = -1  # the worker killed midway
    try:

        def answers(i: int) -> bool:
            servers[i].alive()
            try:
                return clients[i].whoami().name == "admin"
            except DatamillError:
                return False

        for i in range(3):
            wait_for(f"server {i} to answer", lambda i=i: answers(i), 60, poll=0.1)
        clients[0].create_folder("in")
        clients[1].create_folder("out")
        clients[2].create_dataflow("upper", "in", "out", f"{PIPELINES}:single")
        assert clients[0].start_dataflow("upper").state == "running"
        start = home.events.latest()
        watchers = [Watcher(u, token, start) for u in urls]
        for w in watchers:
            w.start()
            w.connected.wait(30)
            assert w.status == 200

        held = tmp_path / "held"  # item-0000's first execution never ends (tests/cluster/pipelines.py)

        def holder() -> str | None:
            """The owner (``host:pid:tag``) that started item-0000's task first, once its step runs."""
            if not held.exists():
                return None
            with home.db.read() as conn:
                task_id = conn.execute(select(Task.id).where(Task.item_name.like("%item-0000.txt"))).scalar()
            starts = [e for e in all_events(home, "task.started") if e.task_id == task_id]
            return str(starts[0].data["owner"]) if starts else None

        live = [0, 1, 2]
        for b in range(ITEMS // BATCH):
            if b * BATCH == KILL_AFTER:
                # Midway, while the dataflow works: the worker stuck in item-0000 and a server die without a word.
                pid = int(wait_for("a worker to run item-0000", holder, 60, poll=0.1).split(":")[-2])
                killed = next(i for i, w in enumerate(workers) if w.popen.pid == pid)
                workers[killed].kill()
                servers[0].kill()
                live = [1, 2]
            client = clients[live[b % len(live)]]
            names = [f"item-{b * BATCH + k:04d}.txt" for k in range(BATCH)]
            client.put_many("in", [(n, f"hold {held}".encode() if n == "item-0000.txt" else n.encode()) for n in names])

        in_id, out_id = _ids(home, "in"), _ids(home, "out")

        def finished() -> bool:
            for p in (*servers[1:], *(w for i, w in enumerate(workers) if i != killed)):
                p.alive()
            with home.db.read() as conn:
                open_runs = conn.execute(select(Run.id).where(Run.status.in_(["queued", "running"]))).all()
            return not open_runs and len(home.store.list_items(home.admin, "out")) == ITEMS

        def done_so_far() -> tuple[int, int]:
            """Results landed and runs ended: the dataflow moves while either grows."""
            with home.db.read() as conn:
                ended = conn.execute(select(Run.id).where(Run.status.not_in(["queued", "running"]))).all()
            return len(home.store.list_items(home.admin, "out")), len(ended)

        wait_for(f"{ITEMS} results and no open run", finished, 90, poll=0.2, progress=done_so_far)

        outputs = home.store.list_items(home.admin, "out")
        assert sorted(i.name for i in outputs) == sorted(f"item-{k:04d}.upper.txt" for k in range(ITEMS)), (
            "one result per item"
        )
        assert {i.version for i in outputs} == {1}, "a result written twice"
        with home.db.read() as conn:
            tasks = conn.execute(select(Task.id, Task.status, Task.item_name)).all()
            runs = conn.execute(select(Run.id, Run.status)).all()
        assert len(tasks) == ITEMS and {t.status for t in tasks} == {"succeeded"}
        assert {r.status for r in runs} == {"succeeded"}
        per_task = finished_per_task(home)
        assert per_task == dict.fromkeys((t.id for t in tasks), 1), "a task finished more than once"
        (first,) = [t.id for t in tasks if str(t.item_name).endswith("item-0000.txt")]
        starts = [e for e in all_events(home, "task.started") if e.task_id == first]
        assert len(starts) == 2, "item-0000 was not taken over from the killed worker"
        assert f":{workers[killed].popen.pid}:" in starts[0].data["owner"]
        assert f":{workers[killed].popen.pid}:" not in starts[1].data["owner"]

        created = {e.seq for e in all_events(home, "item.created") if e.seq > start and e.folder_id in (in_id, out_id)}
        assert len(created) == 2 * ITEMS
        for i in (1, 2):
            wait_for(
                f"server {i}'s SSE client to see every item.created event",
                lambda i=i: created <= watchers[i].seen,
                60,
                poll=0.1,
                progress=lambda i=i: len(watchers[i].seen),
            )
            assert watchers[i].seen - created == set()
    finally:
        for c in clients:
            c.close()
        codes = [p.stop() for p in servers] + [w.stop() for i, w in enumerate(workers) if i != killed]
        for w in watchers:
            w.join(30)
    assert codes[1:] == [0] * 4, [p.log.read_text()[-2000:] for p in (*servers, *workers)]
