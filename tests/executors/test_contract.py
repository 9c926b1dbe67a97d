"""The executor contract: what every executor does, run against each of them, by kind of call.

:class:`CallContract` holds what every executor does whatever it runs (a value on success, log lines
in order, a failure as ``StepFailed``, timeouts and cancellation stopping the work and leaving the
executor usable, refusing other kinds of call); a :class:`CallKind` makes its calls for one kind of
call: Python functions (:data:`PYTHON`), commands (:data:`COMMAND`) and containers (:class:`ContainerKind`,
busybox under real podman). :class:`ExecutorContract` adds what executors of Python calls do; each
executor is a small subclass naming it and its kind, plus the tests that only make sense for that
executor (worker crashes for the local pool, threads for inline).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import cloudpickle
import pytest

from datamill.errors import Cancelled, ConfigError, StepFailed, TaskTimeout, WorkerCrashed
from datamill.executors import (
    CommandCall,
    ContainerCall,
    LogMessage,
    Message,
    ProgressMessage,
    PythonCall,
    Reporter,
    get_executor,
)
from datamill.executors.local import LocalExecutor

# Ship this module's functions to worker processes by value: a worker then needs neither this
# module nor pytest importable, and starts running them at once.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# -- the functions the tests run (the first argument is always the Reporter) --------------------


def add(reporter: Reporter, a: int, b: int = 0, *, times: int = 1) -> int:
    return (a + b) * times


def nested(reporter: Reporter) -> dict[str, Any]:
    return {"rows": [1, 2.5, "three", None], "ok": True, "shape": (2, 3)}


def chatty(reporter: Reporter, n: int) -> str:
    for i in range(n):
        reporter.progress(i / n, f"step {i}")
        reporter.log(f"line {i}")
    return "done"


def boom(reporter: Reporter) -> None:
    raise ValueError("boom at row 7")


def exits(reporter: Reporter) -> None:
    sys.exit(2)


def hang(reporter: Reporter, seconds: float = 30.0) -> None:
    """A call that does not end by itself; it announces its pid first, then keeps reporting."""
    reporter.log(f"started in {os.getpid()}")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
        reporter.progress(0.0, "still waiting")


def pid(reporter: Reporter) -> int:
    return os.getpid()


def tagged(reporter: Reporter, i: int) -> int:
    reporter.log(f"call {i}")
    return i * i


def burn(reporter: Reporter) -> int:
    sum(i * i for i in range(300_000))
    return os.getpid()


def log_then_exit(reporter: Reporter, code: int) -> None:
    reporter.log("about to exit")
    reporter.progress(0.5, "half")
    os._exit(code)


def segfault(reporter: Reporter) -> None:
    ctypes.string_at(0)


def sigkill_self(reporter: Reporter) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def unpicklable_result(reporter: Reporter) -> Any:
    return threading.Lock()


def ignore(message: Message) -> None:
    pass


def started_in(messages: list[Message]) -> int:
    """The pid a :func:`hang` call announced."""
    first = messages[0]
    assert isinstance(first, LogMessage)
    return int(first.line.rsplit(" ", 1)[1])


async def run_until_started(
    executor: Any, call: PythonCall, timeout: float | None = None
) -> tuple[asyncio.Task[Any], list[Message]]:
    """Start ``call`` (a :func:`hang`) as a task and return once its first message arrived."""
    messages: list[Message] = []
    started = asyncio.Event()

    def on_message(message: Message) -> None:
        messages.append(message)
        started.set()

    task = asyncio.ensure_future(executor.run(call, on_message, timeout))
    await started.wait()
    return task, messages


# -- kinds of call -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallKind:
    """The contract's calls of one kind; ``hang(tag)`` announces itself with a first log line and
    does not end by itself (``tag`` names it where a kind needs a name: a container)."""

    name: str
    #: a call that succeeds, and what the executor returns for it
    succeed: Callable[[], tuple[Any, Any]]
    #: a call that logs ``n`` lines, and the lines
    say: Callable[[int], tuple[Any, list[str]]]
    #: a call that fails (raises, exits non-zero): StepFailed
    fail: Callable[[], Any]
    hang: Callable[[str], Any]
    #: a call of another kind: refused
    other: Callable[[], Any]


def _say(reporter: Reporter, n: int) -> int:
    for i in range(n):
        reporter.log(f"line {i}")
    return n


PYTHON = CallKind(
    "python",
    succeed=lambda: (PythonCall(add, (2, 3)), 5),
    say=lambda n: (PythonCall(_say, (n,)), [f"line {i}" for i in range(n)]),
    fail=lambda: PythonCall(boom),
    hang=lambda tag: PythonCall(hang),
    other=lambda: CommandCall(["true"]),
)

_SAY_SH = "i=0; while [ $i -lt {n} ]; do echo line $i; i=$((i+1)); done"

COMMAND = CallKind(
    "command",
    succeed=lambda: (CommandCall(["true"]), 0),
    say=lambda n: (CommandCall(["sh", "-c", _SAY_SH.format(n=n)]), [f"line {i}" for i in range(n)]),
    fail=lambda: CommandCall(["sh", "-c", "echo failing; exit 3"]),
    # exec: the announced pid is the process that hangs
    hang=lambda tag: CommandCall(["sh", "-c", "echo started in $$; exec sleep 60"]),
    other=lambda: PythonCall(add, (1,)),
)


def container_kind(image: str, prefix: str) -> CallKind:
    """Container calls of ``image`` (busybox), named ``<prefix><unique>`` (a hanging one: ``<prefix><tag>``)."""

    def named(command: list[str], name: str | None = None) -> ContainerCall:
        return ContainerCall(image, name or f"{prefix}{uuid.uuid4().hex[:10]}", command=command)

    return CallKind(
        "container",
        succeed=lambda: (named(["true"]), 0),
        say=lambda n: (named(["sh", "-c", _SAY_SH.format(n=n)]), [f"line {i}" for i in range(n)]),
        fail=lambda: named(["sh", "-c", "echo failing; exit 3"]),
        hang=lambda tag: named(["sh", "-c", "echo started; exec sleep 60"], f"{prefix}{tag}"),
        other=lambda: PythonCall(add, (1,)),
    )


class CallContract:
    """The tests every executor passes with the calls it runs. Subclasses set ``executor`` and ``kind``
    (or override the ``kind_of`` fixture when making calls needs a fixture)."""

    executor: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}
    kind: ClassVar[CallKind]

    @pytest.fixture(scope="class")
    def ex(self, make_class_harness: Callable[..., Any]) -> Any:
        """One executor for the whole class: the contract includes that it keeps working after a
        failure, a timeout or a cancellation, whatever ran on it before."""
        return make_class_harness(self.executor, **self.options)

    @pytest.fixture
    def calls(self) -> CallKind:
        """The calls this executor runs."""
        return self.kind

    def check_stopped(self, tag: str, messages: list[Message], procs: Any) -> None:
        """After a timeout or cancellation of ``calls.hang(tag)``: its work no longer runs (where the
        executor can tell); ``messages`` are what it sent."""

    def test_a_call_succeeds_with_its_value(self, ex: Any, calls: CallKind) -> None:
        call, expected = calls.succeed()
        assert ex.call(call)[0] == expected

    def test_log_lines_arrive_in_order(self, ex: Any, calls: CallKind) -> None:
        call, lines = calls.say(30)
        _, messages = ex.call(call)
        assert [m.line for m in messages if isinstance(m, LogMessage)] == lines
        times = [m.time for m in messages]
        assert times == sorted(times)

    def test_a_failure_fails_the_step_and_the_executor_goes_on(self, ex: Any, calls: CallKind) -> None:
        with pytest.raises(StepFailed) as info:
            ex.call(calls.fail())
        assert not isinstance(info.value, (TaskTimeout, WorkerCrashed))
        call, expected = calls.succeed()
        assert ex.call(call)[0] == expected

    def test_timeout_stops_the_work_and_the_executor_goes_on(self, ex: Any, calls: CallKind, procs: Any) -> None:
        tag = f"t{uuid.uuid4().hex[:8]}"

        async def scenario() -> list[Message]:
            task, messages = await run_until_started(ex.executor, calls.hang(tag), timeout=1.5)
            with pytest.raises(TaskTimeout, match=r"timeout of 1\.5 s"):
                await task
            return messages

        self.check_stopped(tag, ex.run(scenario()), procs)
        call, expected = calls.succeed()
        assert ex.call(call, timeout=60)[0] == expected
        assert ex.call(calls.succeed()[0])[0] == expected

    def test_cancelling_the_awaiting_task_stops_the_work(self, ex: Any, calls: CallKind, procs: Any) -> None:
        tag = f"c{uuid.uuid4().hex[:8]}"

        async def scenario() -> list[Message]:
            # A timeout, so that inline runs it in a thread: in the loop thread nothing could cancel it.
            task, messages = await run_until_started(ex.executor, calls.hang(tag), timeout=60)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return messages

        self.check_stopped(tag, ex.run(scenario()), procs)
        call, expected = calls.succeed()
        assert ex.call(call)[0] == expected

    def test_supports_its_kind_of_call_only(self, ex: Any, calls: CallKind) -> None:
        assert ex.executor.supports(calls.succeed()[0])
        other = calls.other()
        assert not ex.executor.supports(other)
        with pytest.raises(TypeError, match=f"cannot run a {type(other).__name__}"):
            ex.run(ex.executor.run(other, ignore))


class ExecutorContract(CallContract):
    """What executors of :class:`PythonCall` s do besides (values, arguments, messages, tracebacks)."""

    kind = PYTHON

    def test_returns_the_value(self, ex: Any) -> None:
        assert ex.call(PythonCall(nested)) == (nested(Reporter(ignore)), [])

    def test_passes_args_and_kwargs(self, ex: Any) -> None:
        result, _ = ex.call(PythonCall(add, (2,), {"b": 3, "times": 10}))
        assert result == 50

    def test_runs_lambdas_and_closures(self, ex: Any) -> None:
        offset = 41
        result, _ = ex.call(PythonCall(lambda reporter, x: x + offset, (1,)))
        assert result == 42

    def test_messages_arrive_in_order(self, ex: Any) -> None:
        result, messages = ex.call(PythonCall(chatty, (50,)))
        assert result == "done"
        expected: list[tuple[Any, ...]] = []
        for i in range(50):
            expected += [("progress", i / 50, f"step {i}"), ("log", f"line {i}")]
        got = [
            (m.kind, m.fraction, m.message) if isinstance(m, ProgressMessage) else (m.kind, m.line) for m in messages
        ]
        assert got == expected
        times = [m.time for m in messages]
        assert times == sorted(times)
        assert abs(times[0] - time.time()) < 60

    def test_raising_function_fails_the_step(self, ex: Any) -> None:
        with pytest.raises(StepFailed) as info:
            ex.call(PythonCall(boom))
        error = info.value
        assert type(error) is StepFailed  # not a timeout, not a crash
        assert "ValueError" in error.message and "boom at row 7" in error.message
        assert error.detail["error_type"] == "ValueError"
        assert "raise ValueError" in error.detail["traceback"]
        assert "in boom" in error.detail["traceback"]

    def test_sys_exit_fails_the_step_and_nothing_else(self, ex: Any) -> None:
        with pytest.raises(StepFailed, match="SystemExit"):
            ex.call(PythonCall(exits))
        assert ex.call(PythonCall(add, (1, 1)))[0] == 2

    def test_a_short_timeout(self, ex: Any) -> None:
        with pytest.raises(TaskTimeout, match=r"timeout of 0\.3 s"):
            ex.call(PythonCall(hang), timeout=0.3)
        assert ex.call(PythonCall(add, (1, 2)), timeout=30)[0] == 3

    def test_many_concurrent_calls(self, ex: Any) -> None:
        async def scenario() -> tuple[list[int], list[list[Message]]]:
            messages: list[list[Message]] = [[] for _ in range(200)]
            results = await asyncio.gather(
                *(ex.executor.run(PythonCall(tagged, (i,)), messages[i].append) for i in range(200))
            )
            return results, messages

        results, messages = ex.run(scenario())
        assert results == [i * i for i in range(200)]
        for i, got in enumerate(messages):
            assert [m.line for m in got if isinstance(m, LogMessage)] == [f"call {i}"]

    def test_a_failing_callback_does_not_fail_the_call(self, ex: Any) -> None:
        errors: list[dict[str, Any]] = []
        ex.loop.set_exception_handler(lambda loop, context: errors.append(context))

        def on_message(message: Message) -> None:
            raise RuntimeError("scheduler bug")

        try:
            assert ex.run(ex.executor.run(PythonCall(chatty, (2,)), on_message)) == "done"
        finally:
            ex.loop.set_exception_handler(None)
        assert len(errors) == 4 and isinstance(errors[0]["exception"], RuntimeError)

    def test_refuses_container_calls_too(self, ex: Any) -> None:
        call = ContainerCall("localhost/x:1", "n", command=["true"])
        assert not ex.executor.supports(call)
        with pytest.raises(TypeError, match="cannot run a ContainerCall"):
            ex.run(ex.executor.run(call, ignore))


class TestInline(ExecutorContract):
    executor = "inline"

    def test_without_timeout_runs_in_the_loop_thread(self, ex: Any) -> None:
        def where(reporter: Reporter) -> int:
            return threading.get_ident()

        assert ex.call(PythonCall(where))[0] == threading.get_ident()
        assert ex.call(PythonCall(where), timeout=30)[0] != threading.get_ident()

    def test_an_abandoned_thread_stops_at_its_next_report(self, ex: Any) -> None:
        stopped = threading.Event()

        def slow(reporter: Reporter) -> None:
            try:
                hang(reporter)
            finally:
                stopped.set()

        with pytest.raises(TaskTimeout, match="cannot kill"):
            ex.call(PythonCall(slow), timeout=0.2)
        assert stopped.wait(10)


class TestLocal(ExecutorContract):
    executor = "local"
    options = {"workers": 2}

    def check_stopped(self, tag: str, messages: list[Message], procs: Any) -> None:
        # Killed and reaped by its parent (the fork server): not even a zombie is left.
        pid = started_in(messages)
        assert procs.eventually(lambda: procs.state(pid) is None), f"worker {pid} is still there"

    def test_capacity_is_the_number_of_workers(self, ex: Any) -> None:
        assert ex.executor.capacity == 2 and len(ex.executor.pids) == 2

    def test_timeout_kills_the_worker_and_the_pool_goes_on(self, ex: Any, procs: Any) -> None:
        async def scenario() -> int:
            task, messages = await run_until_started(ex.executor, PythonCall(hang), timeout=0.5)
            with pytest.raises(TaskTimeout) as info:
                await task
            assert info.value.detail["pid"] == started_in(messages)
            return started_in(messages)

        killed = ex.run(scenario())
        assert procs.eventually(lambda: not procs.alive(killed))
        assert killed not in ex.executor.pids and len(ex.executor.pids) == 2
        assert ex.call(PythonCall(add, (1, 2)))[0] == 3

    def test_os_exit_is_a_crash_and_the_pool_goes_on(self, ex: Any) -> None:
        messages: list[Message] = []
        with pytest.raises(WorkerCrashed, match="exited with code 3") as info:
            ex.run(ex.executor.run(PythonCall(log_then_exit, (3,)), messages.append))
        assert info.value.detail["exit_code"] == 3
        # What it sent before dying still arrives, in order.
        assert [m.kind for m in messages] == ["log", "progress"]
        assert len(ex.executor.pids) == 2
        assert ex.call(PythonCall(add, (1, 2)))[0] == 3

    def test_segfault_is_a_crash(self, ex: Any) -> None:
        with pytest.raises(WorkerCrashed, match="SIGSEGV") as info:
            ex.call(PythonCall(segfault))
        assert "Segmentation fault" in info.value.detail["traceback"]  # the worker's fault report
        assert "in segfault" in info.value.detail["traceback"]
        assert ex.call(PythonCall(add, (1, 2)))[0] == 3

    def test_sigkill_is_a_crash(self, ex: Any) -> None:
        with pytest.raises(WorkerCrashed, match="SIGKILL"):
            ex.call(PythonCall(sigkill_self))
        assert ex.call(PythonCall(add, (1, 2)))[0] == 3

    def test_a_crash_fails_only_its_own_task(self, ex: Any) -> None:
        async def scenario() -> list[Any]:
            calls = [PythonCall(add, (i,)) for i in range(30)]
            calls[10] = PythonCall(log_then_exit, (5,))
            return await asyncio.gather(*(ex.executor.run(c, ignore) for c in calls), return_exceptions=True)

        results = ex.run(scenario())
        assert isinstance(results[10], WorkerCrashed)
        assert [r for i, r in enumerate(results) if i != 10] == [i for i in range(30) if i != 10]

    def test_workers_are_reused(self, make_harness: Callable[..., Any]) -> None:
        ex = make_harness("local", workers=1)
        pids = {ex.call(PythonCall(pid))[0] for _ in range(5)}
        assert pids == set(ex.executor.pids)

    def test_two_workers_run_in_parallel(self, ex: Any) -> None:
        async def scenario() -> list[int]:
            return await asyncio.gather(
                ex.executor.run(PythonCall(burn), ignore), ex.executor.run(PythonCall(burn), ignore)
            )

        first, second = ex.run(scenario())
        assert first != second and {first, second} == set(ex.executor.pids)

    def test_calls_wait_for_a_free_worker(self, make_harness: Callable[..., Any]) -> None:
        ex = make_harness("local", workers=1)

        async def scenario() -> list[int]:
            return await asyncio.gather(*(ex.executor.run(PythonCall(add, (i, 1)), ignore) for i in range(20)))

        assert ex.run(scenario()) == [i + 1 for i in range(20)]

    def test_an_unpicklable_argument_fails_the_step(self, ex: Any) -> None:
        with pytest.raises(StepFailed, match="could not be pickled"):
            ex.call(PythonCall(add, (threading.Lock(),)))

    def test_an_unpicklable_result_fails_the_step_not_the_worker(self, make_harness: Callable[..., Any]) -> None:
        ex = make_harness("local", workers=1)
        before = ex.executor.pids
        with pytest.raises(StepFailed, match="return value could not be pickled"):
            ex.call(PythonCall(unpicklable_result))
        assert ex.executor.pids == before

    def test_close_stops_every_worker(self, make_harness: Callable[..., Any], procs: Any) -> None:
        ex = make_harness("local", workers=2)
        with pytest.raises(WorkerCrashed):  # a crash and a timeout on the way: their replacements too
            ex.call(PythonCall(sigkill_self))
        with pytest.raises(TaskTimeout):
            ex.call(PythonCall(hang), timeout=0.2)
        pids = ex.executor.pids
        ex.run(ex.executor.close())
        # close() waited for the fork server to reap each worker: no process, no zombie.
        assert [p for p in pids if procs.state(p) is not None] == []
        assert ex.executor.pids == []

    def test_close_cancels_running_calls(self, make_harness: Callable[..., Any], procs: Any) -> None:
        ex = make_harness("local", workers=1)

        async def scenario() -> tuple[int, BaseException | None]:
            task, messages = await run_until_started(ex.executor, PythonCall(hang))
            waiting = asyncio.ensure_future(ex.executor.run(PythonCall(add, (1,)), ignore))
            await asyncio.sleep(0)  # let it start waiting for the (only, busy) worker
            await ex.executor.close()
            return started_in(messages), (await asyncio.gather(task, waiting, return_exceptions=True))

        worker, outcomes = ex.run(scenario())
        assert [type(o) for o in outcomes] == [Cancelled, Cancelled]
        assert procs.state(worker) is None

    def test_spawn_start_method(self, make_harness: Callable[..., Any]) -> None:
        ex = make_harness("local", workers=1, start_method="spawn")
        assert ex.call(PythonCall(add, (1, 2)))[0] == 3


class TestCommand(CallContract):
    """The command executor with commands (its own tests: tests/executors/test_command.py)."""

    executor = "command"
    kind = COMMAND

    def check_stopped(self, tag: str, messages: list[Message], procs: Any) -> None:
        pid = started_in(messages)
        assert procs.eventually(lambda: not procs.alive(pid)), f"command {pid} still runs"


@pytest.mark.slow
class TestContainer(CallContract):
    """The container executor with busybox containers under real podman (tests/containers has the rest)."""

    executor = "container"
    prefix = f"dmcontract{uuid.uuid4().hex[:6]}-"
    options = {"name_prefix": prefix}

    @pytest.fixture
    def calls(self) -> CallKind:
        from tests.containers.conftest import ensure_busybox

        return container_kind(ensure_busybox(), self.prefix)

    def check_stopped(self, tag: str, messages: list[Message], procs: Any) -> None:
        from tests.containers.conftest import containers_named

        assert isinstance(messages[0], LogMessage) and messages[0].line == "started"
        # removed before the call ended: no container of that name, running or not
        assert containers_named(f"{self.prefix}{tag}") == []


def test_get_executor_knows_the_built_in_names() -> None:
    assert get_executor("inline").name == "inline"
    assert isinstance(get_executor("local", workers=3), LocalExecutor)
    assert get_executor("command").name == "command"
    assert get_executor("container").name == "container"
    assert get_executor("dask", address="tcp://127.0.0.1:8786").name == "dask"


def test_get_executor_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="command, container, dagster, dask, http, inline, local"):
        get_executor("spark")


def test_get_executor_bad_option() -> None:
    with pytest.raises(ConfigError, match="workers"):
        get_executor("local", wrkers=2)
    with pytest.raises(ConfigError, match="workers"):
        get_executor("local", workers=-1)


def test_reporter_outside_any_executor() -> None:
    messages: list[Message] = []
    assert chatty(Reporter(messages.append, clock=lambda: 123.0), 1) == "done"
    assert messages == [ProgressMessage(0.0, "step 0", 123.0), LogMessage("line 0", 123.0)]
    Reporter(messages.append).progress(7)
    assert messages[-1].fraction == 1.0  # type: ignore[union-attr]
