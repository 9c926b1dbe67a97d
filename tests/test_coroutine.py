"""Synchronous calls that run coroutines, made where an event loop already runs.

A Jupyter cell runs on the kernel's event loop, and an ``async`` step on the inline executor runs
on the scheduler's: ``asyncio.run`` refuses both ("cannot be called from a running event loop"),
which is what ``dm.run(...)`` in a notebook and every ``async`` step of ``pipeline.run(...)`` (the
inline executor is its default) used to fail with. Each test is a real run or a real interrupt.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

import datamill
from datamill.coroutine import run_to_end
from datamill.pipeline import Pipeline, step

T = TypeVar("T")


def in_a_running_loop(fn: Callable[[], T]) -> T:
    """``fn()`` called as a notebook cell calls code: synchronously, on a thread whose loop runs.

    ``run_until_complete`` rather than ``asyncio.run``, which would take Ctrl-C for itself.
    """

    async def cell() -> T:
        asyncio.get_running_loop()  # the point: a loop is running here
        return fn()

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(cell())
    finally:
        loop.close()


@step
async def shout(item: Path) -> str:
    await asyncio.sleep(0)
    return item.read_text().upper()


SHOUT = Pipeline("shout", steps=[shout])


@pytest.mark.parametrize("executor", ["inline", "local"])
def test_an_async_step_runs_on_each_executor(executor: str) -> None:
    with SHOUT.run([("a.txt", b"hello")], executor=executor) as result:
        assert list(result.outputs.values()) == ["HELLO"]


def test_a_notebook_cell_runs_a_pipeline_and_a_recorded_run(tmp_path: Path) -> None:
    def cell() -> tuple[Any, Any]:
        with SHOUT.run([("a.txt", b"hi")]) as quick:
            shouted = list(quick.outputs.values())
        dm = datamill.connect(tmp_path / "home")
        dm.create_folder("in")
        dm.create_folder("out")
        dm.put("in", "b.txt", b"there")
        run = dm.run("tests.test_coroutine:SHOUT", "in", dest="out")
        return shouted, run

    shouted, run = in_a_running_loop(cell)
    assert shouted == ["HI"]
    assert run.status == "succeeded", run.error
    assert run.counts == {"succeeded": 1}


def test_an_error_of_the_coroutine_reaches_the_caller() -> None:
    async def fail() -> None:
        raise ValueError("bad input: say what to do")

    with pytest.raises(ValueError, match="say what to do"):
        in_a_running_loop(lambda: run_to_end(fail()))


def test_an_interrupt_cancels_the_coroutine_then_propagates() -> None:
    """Ctrl-C (a notebook's "interrupt kernel") while the call waits: the coroutine is cancelled,
    cleans up, and the caller gets ``KeyboardInterrupt``, as under ``asyncio.run``."""
    started = threading.Event()
    seen: list[str] = []

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        finally:
            seen.append("cleaned up")

    def interrupt_once_started() -> None:
        assert started.wait(60), "the coroutine never started"
        # To the main thread, as a terminal's Ctrl-C reaches it: Python raises KeyboardInterrupt there.
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    assert threading.current_thread() is threading.main_thread()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    sender = threading.Thread(target=interrupt_once_started)
    sender.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            in_a_running_loop(lambda: run_to_end(forever()))
    finally:
        sender.join()
    assert seen == ["cancelled", "cleaned up"]
