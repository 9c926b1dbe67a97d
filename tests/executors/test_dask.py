"""The Dask executor against a real ``dask scheduler`` and two ``dask worker`` processes over TCP on loopback.

The executor contract (values, messages in order, failures, timeouts, cancellation) runs against it
as against the local pool; then what only a cluster does: a worker killed under a call is a
:class:`WorkerCrashed` (Dask does not quietly retry it: the scheduler runs with
``allowed-failures = 0``), and the cluster goes on with the worker's replacement.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from datamill.errors import Unavailable, WorkerCrashed
from datamill.executors import Message, PythonCall, get_executor
from tests.conftest import S3Server
from tests.engine.engine_world import World
from tests.executors.dask_pipelines import ref as dask_ref
from tests.executors.test_contract import (
    ExecutorContract,
    add,
    hang,
    ignore,
    run_until_started,
    started_in,
)
from tests.helpers import free_port, open_home

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


class DaskCluster:
    """A scheduler and its workers, each a process of its own; ``address`` is the scheduler's."""

    def __init__(self, address: str, procs: list[subprocess.Popen[bytes]]) -> None:
        self.address = address
        self.procs = procs


def _wait_for_workers(address: str, n: int, timeout: float = 120) -> None:
    from distributed import Client

    with Client(address, timeout=timeout) as client:
        client.wait_for_workers(n, timeout=timeout)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """``dask scheduler`` + 2 x ``dask worker --nthreads 1`` (with nannies), loopback only, no dashboards."""
    yield from _cluster(tmp_path_factory.mktemp("dask"), {})


#: Runs a worker in a mount namespace of its own with an empty /tmp: it cannot see the homes the
#: tests make there (nor their work directories), as a worker on another machine could not.
APART = ["unshare", "--map-root-user", "--mount", "sh", "-c", 'mount -t tmpfs none /tmp && exec "$@"', "apart"]


@pytest.fixture(scope="module")
def apart_cluster(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[DaskCluster]:
    """Like :func:`dask_cluster`, but its workers share no file system with the tests (see :data:`APART`);
    they reach the blob store (S3) with credentials from their own environment."""
    probe = subprocess.run([*APART, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.fail(f"user and mount namespaces are needed (unshare): {probe.stderr.decode(errors='replace')}")
    yield from _cluster(tmp_path_factory.mktemp("dask-apart"), s3_server.aws_env(), APART)


def _cluster(logs: Path, extra_env: dict[str, str], wrap: list[str] | None = None) -> Iterator[DaskCluster]:
    bindir = Path(sys.executable).parent
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {
        **os.environ,
        **extra_env,
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0",
        # The workers import the tests' modules (functions shipped by reference) and datamill.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str]) -> None:
        with open(logs / f"{name}.log", "wb") as out:
            # cwd: the tests may stand in a temporary directory a worker apart cannot see
            procs.append(
                subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=ROOT)
            )

    start(
        "scheduler", [str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    )
    for i in range(2):
        start(
            f"worker{i}",
            [
                *(wrap or []),
                str(bindir / "dask"),
                "worker",
                address,
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
            ],
        )
    try:
        try:
            _wait_for_workers(address, 2)
        except Exception:
            text = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in logs.iterdir())
            pytest.fail(f"the Dask cluster did not start:\n{text}")
        yield DaskCluster(address, procs)
    finally:
        for p in procs:
            with_group(p, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                with_group(p, signal.SIGKILL)
                p.wait(10)


def with_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


class TestDask(ExecutorContract):
    executor = "dask"

    @pytest.fixture(scope="class")
    def ex(self, make_class_harness: Callable[..., Any], dask_cluster: DaskCluster) -> Any:
        return make_class_harness("dask", address=dask_cluster.address)

    def check_stopped(self, tag: str, messages: list[Message], procs: Any) -> None:
        # The worker process that ran it was restarted by its nanny: that process is gone.
        pid = started_in(messages)
        assert procs.eventually(lambda: not procs.alive(pid), timeout=60), f"worker {pid} still runs"

    def test_capacity_is_the_clusters_threads(self, ex: Any) -> None:
        assert ex.executor.capacity == 2

    def test_a_killed_worker_is_a_crash_and_the_cluster_goes_on(self, ex: Any) -> None:
        async def scenario() -> int:
            task, messages = await run_until_started(ex.executor, PythonCall(hang))
            worker = started_in(messages)
            os.kill(worker, signal.SIGKILL)
            with pytest.raises(WorkerCrashed, match="Dask worker running the task died"):
                await task
            return worker

        ex.run(scenario())
        # The nanny starts a replacement; calls keep running on the cluster.
        assert ex.call(PythonCall(add, (20, 22)))[0] == 42

    def test_calls_spread_over_both_workers(self, ex: Any, dask_cluster: DaskCluster) -> None:
        _wait_for_workers(dask_cluster.address, 2)  # a worker killed or restarted earlier is back

        def whoami(reporter: Any, i: int) -> int:
            time.sleep(0.2)
            return os.getpid()

        async def scenario() -> list[int]:
            return await asyncio.gather(*(ex.executor.run(PythonCall(whoami, (i,)), ignore) for i in range(6)))

        assert len(set(ex.run(scenario()))) == 2


def test_an_unreachable_scheduler_is_named(make_harness: Callable[..., Any]) -> None:
    executor = get_executor("dask", address=f"tcp://127.0.0.1:{free_port()}", connect_timeout=2.0)
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(Unavailable, match="cannot reach the Dask scheduler"):
            loop.run_until_complete(asyncio.wait_for(executor.start(), 120))
    finally:
        loop.run_until_complete(executor.close())
        loop.close()


# ------------------------------------------------------------------------------ through the engine


@pytest.fixture
def dask_world(tmp_path: Path, dask_cluster: DaskCluster) -> Iterator[World]:
    home = open_home(tmp_path / "home", dask_scheduler=dask_cluster.address)
    try:
        yield World(home)
    finally:
        home.close()


def test_a_pipeline_runs_on_the_cluster_and_a_rerun_is_cached(dask_world: World) -> None:
    for name in ("a", "b", "c"):
        dask_world.put(f"{name}.txt", f"item {name}")
    first = dask_world.run(dask_ref("plain"), executor="dask")
    assert first["status"] == "succeeded", first
    out = dask_world.out()
    assert sorted(out) == ["a.upper.txt", "b.upper.txt", "c.upper.txt"]
    text = dask_world.read("a.upper.txt").decode()
    assert text.startswith("ITEM A by ") and int(text.rsplit(" ", 1)[1]) != os.getpid()  # ran on a worker
    second = dask_world.run(dask_ref("plain"), executor="dask")
    tasks = dask_world.tasks(second["id"])
    assert {t.status for t in tasks.values()} == {"cached"}  # same keys: nothing computed twice
    assert [len(dask_world.versions(n)) for n in sorted(out)] == [1, 1, 1]


def test_a_worker_killed_mid_task_is_one_more_attempt(
    dask_world: World, dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    dask_world.put("a.txt", "lost worker")
    run = dask_world.run(dask_ref("dies"), executor="dask", params={"marks": str(marks)})
    assert run["status"] == "succeeded", run
    (task,) = dask_world.tasks(run["id"]).values()
    assert (task.status, task.attempts) == ("succeeded", 2)
    assert dask_world.per_task("task.retrying", run["id"])[task.id] == 1
    assert dask_world.per_task("task.finished", run["id"])[task.id] == 1
    (version,) = dask_world.versions("a.die_once.txt")  # one output, made by the attempt that finished
    assert version.task_id == task.id
    assert dask_world.read("a.die_once.txt") == b"LOST WORKER"
    dask_world.check_fold()
    _wait_for_workers(dask_cluster.address, 2)  # the nanny replaced the killed worker


def test_files_go_through_s3_to_workers_that_share_no_file_system(
    tmp_path: Path, apart_cluster: DaskCluster, s3_server: S3Server
) -> None:
    home_dir = tmp_path / "home"
    home = open_home(
        home_dir,
        blob_url=f"s3://{s3_server.new_bucket()}/apart",
        s3_endpoint_url=s3_server.endpoint,
        s3_region="us-east-1",
        s3_access_key_id=s3_server.access_key,
        s3_secret_access_key=s3_server.secret_key,
        dask_scheduler=apart_cluster.address,
    )
    world = World(home)
    try:
        big = b"datamill " * 20_000  # 180 kB: more than travels inside a call, so by S3 both ways
        world.put("a.txt", big)
        run = world.run(dask_ref("shouts"), executor="dask", params={"home": str(home_dir)})
        assert run["status"] == "succeeded", run
        (task,) = world.tasks(run["id"]).values()
        outs = {o.name: o for o in task.outputs}
        assert sorted(outs) == ["loud.txt", "where.json"]
        assert outs["loud.txt"].inline is None  # kept as a blob, in the bucket
        assert home.blobs.read(outs["loud.txt"].digest) == big.upper()
        where = json.loads(outs["where.json"].inline or b"{}")
        assert where["home_visible"] is False  # the worker could not have read the home's files
        assert not where["input"].startswith(str(home_dir)) and where["pid"] != os.getpid()
        world.check_fold()
    finally:
        home.close()
