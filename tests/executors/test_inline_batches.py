"""The inline executor's batch size (``in_flight``) follows how long its calls take, and its per-call
output capture still catches every line when most calls print nothing."""

from __future__ import annotations

import asyncio
import time

from datamill.executors import LogMessage, Message, PythonCall, Reporter
from datamill.executors.inline import MAX_IN_FLIGHT, MIN_IN_FLIGHT, InlineExecutor


def quiet(reporter: Reporter, n: int) -> int:
    return n + 1


def slow(reporter: Reporter, seconds: float) -> str:
    time.sleep(seconds)
    return "done"


def chatty(reporter: Reporter, text: str) -> str:
    print(text, end="")  # no newline: the last partial line must reach the log when the call ends
    return text


async def _run(ex: InlineExecutor, call: PythonCall, messages: list[Message] | None = None) -> object:
    sink: list[Message] = [] if messages is None else messages
    return await ex.run(call, sink.append)


def test_in_flight_is_left_to_the_scheduler_until_a_call_ran() -> None:
    assert InlineExecutor().in_flight is None
    assert InlineExecutor(threaded=True).in_flight is None


def test_slow_calls_are_handed_over_a_few_at_a_time() -> None:
    ex = InlineExecutor()

    async def main() -> None:
        for _ in range(3):
            assert await _run(ex, PythonCall(slow, (0.03,))) == "done"

    asyncio.run(main())
    # Each call took at least 30 ms: 50 ms batches hold one or two of them, so the floor applies.
    assert ex.mean_seconds is not None and ex.mean_seconds >= 0.03
    assert ex.in_flight == MIN_IN_FLIGHT


def test_trivial_calls_are_handed_over_by_the_thousand() -> None:
    ex = InlineExecutor()

    async def main() -> list[object]:
        return [await _run(ex, PythonCall(quiet, (i,))) for i in range(50)]

    assert asyncio.run(main()) == list(range(1, 51))
    assert ex.mean_seconds is not None
    # As fast as trivial calls are on a quiet machine (a few microseconds each): the ceiling.
    ex.mean_seconds = 5e-6
    assert ex.in_flight == MAX_IN_FLIGHT


def test_threaded_executor_keeps_the_scheduler_default() -> None:
    ex = InlineExecutor(threaded=True)

    async def main() -> object:
        return await _run(ex, PythonCall(quiet, (1,)))

    assert asyncio.run(main()) == 2
    assert ex.in_flight is None


def test_quiet_calls_between_printing_ones_lose_no_line() -> None:
    ex = InlineExecutor()
    first: list[Message] = []
    second: list[Message] = []

    async def main() -> None:
        await _run(ex, PythonCall(quiet, (1,)))
        await _run(ex, PythonCall(chatty, ("one\ntwo",)), first)
        await _run(ex, PythonCall(quiet, (2,)))
        await _run(ex, PythonCall(chatty, ("three",)), second)

    asyncio.run(main())
    assert [m.line for m in first if isinstance(m, LogMessage)] == ["one", "two"]
    assert [m.line for m in second if isinstance(m, LogMessage)] == ["three"]
