"""Helpers for the executor tests: an event loop harness around a started executor, and process checks."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from datamill.executors import Executor, Message, get_executor

T = TypeVar("T")


class Harness:
    """A started executor and the event loop it lives on; ``run`` drives a coroutine to completion."""

    def __init__(self, executor: Executor, loop: asyncio.AbstractEventLoop) -> None:
        self.executor = executor
        self.loop = loop

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    def call(self, call: Any, timeout: float | None = None) -> tuple[Any, list[Message]]:
        """Run one call; return its result and the messages it sent."""
        messages: list[Message] = []
        result = self.run(self.executor.run(call, messages.append, timeout))
        return result, messages


def _harness_factory() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(name: str, **options: Any) -> Harness:
        loop = asyncio.new_event_loop()
        executor = get_executor(name, **options)
        loop.run_until_complete(executor.start())
        harness = Harness(executor, loop)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        loop = harness.loop
        loop.run_until_complete(harness.executor.close())
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending))
        loop.close()


@pytest.fixture
def make_harness() -> Iterator[Callable[..., Harness]]:
    """``make_harness("local", workers=1)``: a started executor on a fresh loop, closed after the test."""
    yield from _harness_factory()


@pytest.fixture(scope="class")
def make_class_harness() -> Iterator[Callable[..., Harness]]:
    """Like ``make_harness``, but closed after the test class: for tests that share one executor (a
    worker process takes a moment to start, and each test starting its own adds up)."""
    yield from _harness_factory()


class Procs:
    """Process checks, read from /proc (Linux)."""

    @staticmethod
    def state(pid: int) -> str | None:
        """The process's state letter from /proc ("R", "S", "Z" for a zombie, ...), or None if it is gone."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return None
        return stat.rpartition(")")[2].split()[0]

    @staticmethod
    def alive(pid: int) -> bool:
        """True if ``pid`` runs (a zombie does not count: it is dead, just not reaped by its parent)."""
        return Procs.state(pid) not in (None, "Z")

    @staticmethod
    def group_members(pgid: int) -> list[int]:
        """Live (non-zombie) processes in process group ``pgid``."""
        members = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
        return members

    @staticmethod
    def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate`` until true or ``timeout``: only for waiting on the kernel (a killed process
        being reaped by a parent that is not us), never to synchronise with our own code."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


@pytest.fixture
def procs() -> Procs:
    """Process checks: ``procs.alive(pid)``, ``procs.group_members(pgid)``, ``procs.eventually(pred)``."""
    return Procs()
