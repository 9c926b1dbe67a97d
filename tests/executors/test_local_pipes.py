"""The local pool's pipes: big arguments going to a worker while it sends big results back never
block both ends at once, and a worker killed in the middle of a message loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest

from datamill.errors import WorkerCrashed
from datamill.executors import PythonCall
from tests.engine.engine_world import World
from tests.helpers import world_of

from .pipe_pipelines import kill_mid_result, pad_task, ref
from .test_contract import ignore

#: bigger than a socket's buffers (about 200 KiB each way on Linux) many times over
BIG = 1 << 20


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from world_of(World, tmp_path / "home")


# Only against a hang (the pool used to block both ends of a pipe forever): a hung event loop swallows
# the signal method's exception, so the thread method dumps every stack and ends the session.
@pytest.mark.timeout(240, method="thread")
def test_big_arguments_and_big_results_at_once(world: World) -> None:
    """A pipeline whose step returns a value as big as its parameter: while a worker sends a result
    back, the next calls' arguments are being sent to it."""
    names = [f"{i:02}.txt" for i in range(24)]
    for name in names:
        world.put(name, "abcdefgh")
    run = world.run(ref("big_values"), executor="local", params={"pad": "x" * BIG}, dest=None, workers=2)
    assert run["status"] == "succeeded", run
    expected = "blake3:" + blake3.blake3(b"abcdefgh" * (BIG // 8)).hexdigest()
    tasks = world.tasks(run["id"]).values()
    assert sorted(str(t.item_name).rsplit("/", 1)[-1] for t in tasks) == names
    for t in tasks:
        assert t.attempts == 1
        assert [(o.digest, o.size) for o in t.outputs] == [(expected, BIG)]


@pytest.mark.timeout(240, method="thread")  # only against a hang
def test_a_worker_killed_while_writing_a_big_result_runs_the_call_again(
    make_harness: Callable[..., Any], tmp_path: Path
) -> None:
    one = make_harness("local", workers=1)
    marks = tmp_path / "marks"
    marks.mkdir()
    size = 8 * BIG
    before = one.executor.pids

    async def scenario() -> tuple[bytes, bytes]:
        got = await one.executor.run(PythonCall(kill_mid_result, (str(marks), size)), ignore)
        after = await one.executor.run(PythonCall(pad_task, (7, b"..")), ignore)  # the pool goes on
        return got, after

    got, after = one.run(scenario())
    assert got == b"r" * size and after == b"\x07\x07"
    runs = sorted(p.name for p in marks.iterdir())
    assert len(runs) == 2  # killed once mid-message, run again whole on a fresh worker
    assert f"run.{before[0]}" in runs and one.executor.pids != before


@pytest.mark.timeout(240, method="thread")  # only against a hang
def test_big_arguments_and_results_and_a_worker_death(make_harness: Callable[..., Any]) -> None:
    """Calls are made as earlier ones end (as a scheduler does), with big arguments and results both
    ways; one kills its worker while what the pool sends that worker waits in the parent."""
    pool = make_harness("local", workers=2)
    pad = b"p" * (BIG // 2)

    async def scenario() -> list[Any]:
        ex = pool.executor
        slots = asyncio.Semaphore(8)

        async def one(i: int) -> Any:
            async with slots:
                try:
                    return await ex.run(PythonCall(pad_task, (i, pad), {"die": i == 20}), ignore)
                except WorkerCrashed as exc:
                    return exc

        return await asyncio.gather(*(one(i) for i in range(48)))

    results = pool.run(scenario())
    assert isinstance(results[20], WorkerCrashed)
    assert [r for i, r in enumerate(results) if i != 20] == [bytes([i]) * len(pad) for i in range(48) if i != 20]
    assert len(pool.executor.pids) == 2
