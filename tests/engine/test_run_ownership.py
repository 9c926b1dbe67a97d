"""One scheduler drives a run at a time (:mod:`datamill.engine.ownership`): others take other runs, and a
run whose driver died is taken over once its lease lapses. Exactly-once stays with the task leases.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import update

from datamill.db.models import Task
from datamill.engine import ownership
from datamill.engine.scheduler import Scheduler
from datamill.service import Service
from tests.helpers import add_user, open_home, wait_for

from .engine_world import World
from .pipelines import ref

#: Generous: a loaded machine may be slow. Nothing here asserts how long anything took.
TIMEOUT = 120.0


def test_a_run_lease_is_held_by_one_owner_until_released_or_lapsed(db_world: World) -> None:
    db_world.put("a.txt", "item a")
    run_id = db_world.submit(ref("basic"), params={"marks": ""})
    db = db_world.home.db
    with db.write() as conn:
        assert ownership.claim(conn, run_id, "a", 30)
    with db.write() as conn:
        assert not ownership.claim(conn, run_id, "b", 30)  # a's lease is live
        assert ownership.claim(conn, run_id, "a", 30)  # a renews
    with db.read() as conn:
        assert ownership.owner_of(conn, run_id) == "a"
        assert ownership.owned_elsewhere(conn, [run_id], "b") == {run_id}
        assert ownership.owned_elsewhere(conn, [run_id], "a") == set()
    with db.write() as conn:
        assert ownership.renew(conn, "b", 30, [run_id]) == {run_id}  # b holds nothing to renew
        ownership.release(conn, run_id, "b")  # not b's: nothing happens
        assert ownership.owner_of(conn, run_id) == "a"
        ownership.release(conn, run_id, "a")
    with db.write() as conn:
        assert ownership.claim(conn, run_id, "b", 30)
    with db.write() as conn:  # a lease that lapsed is anyone's
        assert ownership.claim(conn, run_id, "a", 30, now=time.time() + 31)


def test_only_one_of_racing_claims_wins(db_world: World) -> None:
    db_world.put("a.txt", "item a")
    run_id = db_world.submit(ref("basic"), params={"marks": ""})
    barrier = threading.Barrier(4)
    won: list[str] = []

    def claim(owner: str) -> None:
        barrier.wait(30)
        with db_world.home.db.write() as conn:
            if ownership.claim(conn, run_id, owner, 30):
                won.append(owner)

    threads = [threading.Thread(target=claim, args=(f"o{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(won) == 1, won


def _serve_until_done(homes: list[object], run_ids: list[int], world: World) -> list[Scheduler]:
    """Serve with one scheduler per home (threads, as processes would) until every run has ended."""
    schedulers: list[Scheduler] = []
    errors: list[BaseException] = []

    def ended() -> bool:
        return all(world.engine.get_run(world.admin, r)["status"] not in ("queued", "running") for r in run_ids)

    async def serve(home: object) -> None:
        stop = asyncio.Event()
        async with Scheduler(home, "inline") as sched:  # type: ignore[arg-type]
            schedulers.append(sched)
            server = asyncio.create_task(sched.serve(stop))
            while not await asyncio.to_thread(ended):
                await asyncio.to_thread(world.home.events.wait, world.home.events.latest(), 1.0)
            stop.set()
            await server

    def go(home: object) -> None:
        try:
            asyncio.run(serve(home))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(h,), daemon=True) for h in homes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return schedulers


def test_serving_schedulers_drive_each_run_once(tmp_path: Path, db_url: str) -> None:
    world = World(open_home(tmp_path / "home", db_url))
    for i in range(6):
        world.put(f"i{i}.txt", f"item {i}")
    run_ids = [world.submit(ref("basic"), params={"marks": str(tmp_path / f"marks{r}")}) for r in range(3)]
    homes = [open_home(tmp_path / "home", db_url) for _ in range(3)]
    try:
        schedulers = _serve_until_done(homes, run_ids, world)
    finally:
        for h in homes:
            h.close()
    for run_id in run_ids:
        assert world.engine.get_run(world.admin, run_id)["status"] == "succeeded"
        owners = Counter(e.data["owner"] for e in world.events("task.started", run_id))
        assert len(owners) == 1, owners  # one driver: no scheduler raced another for its tasks
        tasks = world.tasks(run_id)
        assert world.per_task("task.finished", run_id) == {t.id: 1 for t in tasks.values()}
    assert sum(s.stats["plans"] for s in schedulers) == len(run_ids)  # each run planned once, by its owner
    with world.home.db.read() as conn:
        left = {r: ownership.owner_of(conn, r) for r in run_ids}
    # Released when their drivers ended.
    assert left == dict.fromkeys(run_ids), (left, [(s.owner, s.stats) for s in schedulers])
    world.check_fold()
    world.home.close()


def test_a_run_whose_driver_died_is_taken_over(tmp_path: Path, db_url: str) -> None:
    world = World(open_home(tmp_path / "home", db_url))
    world.put("a.txt", "item a")
    run_id = world.submit(ref("basic"), params={"marks": str(tmp_path / "marks")})
    with world.home.db.write() as conn:  # a worker claimed it, then died: its lease is live a while
        assert ownership.claim(conn, run_id, "dead-worker", 300)
    home = open_home(tmp_path / "home", db_url)
    try:
        sched = Scheduler(home, "inline")
        assert sched.pending_runs() == []  # another scheduler drives it
        with world.home.db.write() as conn:  # ... until its lease lapses
            assert ownership.claim(conn, run_id, "dead-worker", 1, now=time.time() - 10)
        assert sched.pending_runs() == [run_id]
        schedulers = _serve_until_done([home], [run_id], world)
    finally:
        home.close()
    assert world.engine.get_run(world.admin, run_id)["status"] == "succeeded"
    assert schedulers[0].stats["plans"] == 1
    world.check_fold()
    world.home.close()


def test_an_owner_with_long_tasks_asks_for_help(tmp_path: Path, db_url: str) -> None:
    world = World(open_home(tmp_path / "home", db_url))
    for name in ("a", "b", "c"):
        world.put(f"{name}.txt", f"item {name}")
    run_id = world.submit(ref("basic"), params={"marks": str(tmp_path / "marks")})
    (first, *_) = sorted(t.id for t in world.tasks(run_id).values())
    now = time.time()
    with world.home.db.write() as conn:  # the owner holds one task, started now; the others queue
        assert ownership.claim(conn, run_id, "owner", 300)
        conn.execute(update(Task).where(Task.id == first).values(status="running", lease_owner="owner", started_at=now))
    home = open_home(tmp_path / "home", db_url)
    try:
        helper = Scheduler(home, "inline")
        with world.home.db.write() as conn:
            assert ownership.ask_for_help(conn, "owner", [run_id], now + 1) == set()  # not long yet
        assert helper.pending_runs() == []
        with world.home.db.write() as conn:
            assert ownership.ask_for_help(conn, "owner", [run_id], now + 60) == {run_id}
        assert helper.pending_runs() == [run_id]  # the run is anyone's to drive too
        assert helper._take_run(run_id) is False  # helping: the lease stays the owner's
        with world.home.db.read() as conn:
            assert ownership.owner_of(conn, run_id) == "owner"
        with world.home.db.write() as conn:
            conn.execute(update(Task).where(Task.id == first).values(status="succeeded"))
            assert ownership.ask_for_help(conn, "owner", [run_id], now + 60) == set()  # none of its own is long
        assert helper.pending_runs() == []
    finally:
        home.close()
        world.home.close()


def test_an_idle_scheduler_beside_a_busy_one_looks_for_runs_per_run_event_not_per_task(
    tmp_path: Path, postgres_db_url: str
) -> None:
    """A scheduler serving beside another process driving a run wakes for the run's events (queued,
    started, finished), not for each commit of its tasks' events: it looks for runs a handful of
    times and reads nothing per commit (PostgreSQL's notifications tell the head and the families).

    Counted, not timed: its looks and its statements against the driver's commits. Its periodic look
    for expired leases (``poll``) is put out of the test's reach."""
    world = World(open_home(tmp_path / "home", postgres_db_url))
    for i in range(100):  # tasks that end apart, over seconds: many commits, not all within one
        world.put(f"i{i:03}.txt", "sleep 0.05")
    idle_home = open_home(tmp_path / "home", postgres_db_url)  # another process, as far as events go
    statements, commits = Counter[str](), Counter[str]()
    sa_event.listen(idle_home.db.engine, "before_cursor_execute", lambda *_a: statements.update(["sql"]))
    sa_event.listen(world.home.db.write_engine, "commit", lambda *_a: commits.update(["commit"]))
    looked = threading.Event()
    stop: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None
    idle = Scheduler(idle_home, "inline")
    errors: list[BaseException] = []

    async def serve() -> None:
        nonlocal stop, loop
        stop, loop = asyncio.Event(), asyncio.get_running_loop()
        async with idle:
            server = asyncio.create_task(idle.serve(stop, poll=3600))
            while not idle.stats["looks"]:
                await asyncio.sleep(0.01)
            looked.set()
            await server

    def go() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:
            errors.append(exc)
            looked.set()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    try:
        assert looked.wait(TIMEOUT) and not errors, errors
        before, looks_before = statements["sql"], idle.stats["looks"]
        commits.clear()
        # Driven in this process (its run lease taken as it is recorded): the idle scheduler keeps off.
        run = world.run(ref("basic"), params={"marks": ""})
        assert run["status"] == "succeeded"
        # The idle scheduler has heard of every commit of the run before it is counted.
        assert idle_home.events.wait(world.home.events.latest() - 1, TIMEOUT)
        run_events = len([e for e in world.home.events.read(0, 10_000) if e.kind.startswith("run.")])
        looks, reads = idle.stats["looks"] - looks_before, statements["sql"] - before
    finally:
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(TIMEOUT)
        idle_home.close()
    assert not errors, errors
    assert idle.stats["drives"] == 0  # the run was never its own
    assert commits["commit"] >= 20, commits  # many commits of task events ...
    assert looks <= run_events + 1, (looks, run_events)  # ... and a look per run event at most
    # pending runs in 3 statements a look, the head read once (the watcher's start): no read per commit
    assert reads <= 4 * looks + 2, (reads, looks, commits)
    world.home.close()


class _Serving:
    """A scheduler serving in a thread and event loop of its own (as another process's would), until
    :meth:`close` stops it gracefully (what SIGTERM does to ``datamill worker``).

    ``poll`` and ``lease_seconds`` put its timed look (for lapsed leases and runs given up) out of
    the test's reach: only events wake it."""

    def __init__(self, home: Any, executor: str, **options: Any) -> None:
        self.scheduler = Scheduler(home, executor, lease_seconds=3600, **options)
        self.errors: list[BaseException] = []
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._go, daemon=True)
        self._thread.start()

    async def _serve(self) -> None:
        self._stop, self._loop = asyncio.Event(), asyncio.get_running_loop()
        async with self.scheduler:
            await self.scheduler.serve(self._stop, poll=3600)

    def _go(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self.errors.append(exc)

    def started_by_me(self, world: World, run_id: int) -> list[Any]:
        return [e for e in world.events("task.started", run_id) if e.data["owner"] == self.scheduler.owner]

    def close(self) -> None:
        wait_for("the scheduler's loop", lambda: self._loop is not None or self.errors, timeout=TIMEOUT)
        if self._thread.is_alive() and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive()
        assert not self.errors, self.errors


def test_a_run_whose_scheduler_stops_gracefully_is_taken_over_at_once(tmp_path: Path, db_url: str) -> None:
    """``datamill worker`` stopped mid-run: its running tasks are requeued and its run lease given back
    with a ``run.released`` event, which wakes the other scheduler: it drives the run to its end
    without its timed look (out of reach here) and without waiting for any lease to lapse."""
    world = World(open_home(tmp_path / "home", db_url))
    gate = tmp_path / "gate"
    for name in ("a", "b", "c"):
        world.put(f"{name}.txt", f"wait {gate}")
    run_id = world.submit(ref("basic"), params={"marks": str(tmp_path / "marks")})
    home_a, home_b = open_home(tmp_path / "home", db_url), open_home(tmp_path / "home", db_url)
    a = b = None
    try:
        a = _Serving(home_a, "local", workers=1)
        wait_for("a drives the run", lambda: a.started_by_me(world, run_id) or a.errors, timeout=TIMEOUT)
        b = _Serving(home_b, "local", workers=1)
        wait_for("b looks for runs", lambda: b.scheduler.stats["looks"] or b.errors, timeout=TIMEOUT)
        assert b.scheduler.stats["drives"] == 0  # a drives it
        a.close()
        wait_for("b runs the run's tasks", lambda: b.started_by_me(world, run_id) or b.errors, timeout=TIMEOUT)
        gate.touch()
        wait_for("the run's end", lambda: world.events("run.finished", run_id) or b.errors, timeout=TIMEOUT)
        b.close()
    finally:
        gate.touch()
        for serving in (a, b):
            if serving is not None:
                serving.close()
        home_a.close()
        home_b.close()
    assert world.engine.get_run(world.admin, run_id)["status"] == "succeeded"
    (released,) = world.events("run.released", run_id)
    assert released.data["owner"] == a.scheduler.owner
    (queued,) = world.events("run.queued", run_id)
    assert released.folder_id == queued.folder_id  # filed under the run's folder: read permission applies
    outsider = Service(world.home, add_user(world.home, "outsider"))  # may read no folder of the run's
    assert outsider.events(kinds=["run.released", "task.reclaimed"]) == []
    assert [e.seq for e in Service(world.home, world.admin).events(kinds=["run.released"])] == [released.seq]
    # a's tasks went back to the queue in the same commit, before b started any task
    reclaimed = world.events("task.reclaimed", run_id)
    assert reclaimed and {e.data["previous_owner"] for e in reclaimed} == {a.scheduler.owner}
    assert max(e.seq for e in reclaimed) < released.seq < min(e.seq for e in b.started_by_me(world, run_id))
    tasks = world.tasks(run_id)
    assert world.per_task("task.finished", run_id) == {t.id: 1 for t in tasks.values()}
    world.check_fold()
    world.home.close()


def test_an_owner_asking_for_help_is_helped_at_once(tmp_path: Path, db_url: str) -> None:
    """The owner's ask for help is a ``run.help_wanted`` event: a serving scheduler helps at once,
    without its timed look (out of reach here). Asked again, it is not told again."""
    world = World(open_home(tmp_path / "home", db_url))
    for name in ("a", "b", "c"):
        world.put(f"{name}.txt", f"item {name}")
    run_id = world.submit(ref("basic"), params={"marks": ""})
    (first, *_) = sorted(t.id for t in world.tasks(run_id).values())
    now = time.time()
    with world.home.db.write() as conn:  # the owner holds one task, started now; the others queue
        assert ownership.claim(conn, run_id, "owner", 3600)
        conn.execute(
            update(Task)
            .where(Task.id == first)
            .values(status="running", lease_owner="owner", lease_expires=now + 3600, started_at=now)
        )
    home = open_home(tmp_path / "home", db_url)
    helper = None
    try:
        helper = _Serving(home, "inline")
        wait_for("the helper looks for runs", lambda: helper.scheduler.stats["looks"] or helper.errors, timeout=TIMEOUT)
        assert helper.scheduler.stats["drives"] == 0  # the owner drives it
        for _ in range(2):
            with world.home.db.write() as conn:
                assert ownership.ask_for_help(conn, "owner", [run_id], now + 60) == {run_id}
        wait_for("the helper's tasks", lambda: helper.started_by_me(world, run_id) or helper.errors, timeout=TIMEOUT)
    finally:
        if helper is not None:
            helper.close()
        home.close()
    (asked,) = world.events("run.help_wanted", run_id)  # once, not at every renewal
    outsider = Service(world.home, add_user(world.home, "outsider"))  # may read no folder of the run's
    assert outsider.events(kinds=["run.help_wanted"]) == []
    assert asked.data["owner"] == "owner"
    assert asked.seq < min(e.seq for e in helper.started_by_me(world, run_id))
    with world.home.db.read() as conn:
        assert ownership.owner_of(conn, run_id) == "owner"  # helped: the lease stays the owner's
    world.home.close()
