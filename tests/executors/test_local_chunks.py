"""The local pool's chunks: short calls go to workers many at a time, a long call does not hold the
calls queued behind it, a cancelled call that has not started never runs, and a worker that dies in
the middle of a chunk fails only the call it was running."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from datamill.errors import StepFailed, WorkerCrashed
from datamill.executors import Message, PythonCall, Reporter
from datamill.executors.local_wire import plain_result, step_result
from datamill.pipeline.inputs import InputRef
from datamill.pipeline.runner import ItemInput, OutputFile, StepCall, StepResult, child_parts

from .test_contract import ignore


def task(reporter: Reporter, i: int, marks: str = "", gate: str = "", die: bool = False) -> int:
    """One kind of call, short unless told otherwise: leaves a mark per execution, may wait for
    ``gate`` to exist (reporting "waiting" first), or SIGKILL its own worker."""
    if marks:
        Path(marks, f"{i}.{time.monotonic_ns()}").write_text(str(os.getpid()))
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    if gate:
        reporter.progress(0.0, f"waiting {os.getpid()}")
        while not os.path.exists(gate):  # the task's own work: it runs until the test opens the gate
            time.sleep(0.005)
    return i


#: in a worker: whether leaves_output made its stdout buffered already
_BUFFERED: list[bool] = []


def leaves_output(reporter: Reporter, i: int) -> int:
    """A short call that leaves a line without its newline on fd 2, and has a thread print a line
    that Python's buffer of stdout still holds when it returns (fd 1 gets it only when flushed)."""
    if not _BUFFERED:
        # Python's stdout as it is by default, buffered (PYTHONUNBUFFERED may be set here); the
        # next call's output capture wraps it again
        sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), encoding="utf-8")  # noqa: SIM115
        _BUFFERED.append(True)
    os.write(2, f"tail {i}".encode())
    printer = threading.Thread(target=print, args=(f"thread {i}",))
    printer.start()
    printer.join()
    return i


def runs_of(marks: Path) -> dict[int, int]:
    """How many times each call ran."""
    counts: dict[int, int] = {}
    for p in marks.iterdir():
        i = int(p.name.split(".")[0])
        counts[i] = counts.get(i, 0) + 1
    return counts


async def warm_up(executor: Any) -> None:
    """Teach the pool that ``task`` calls are short (a kind of call not seen yet goes one at a time)."""
    # A worker's first call imports this module, and a loaded machine may stall any call: go on
    # until the running mean says "short" (it forgets an outlier within tens of calls).
    for _ in range(100):
        await asyncio.gather(*(executor.run(PythonCall(task, (i,)), ignore) for i in range(40)))
        if executor.chunk_size(("tests.executors.test_local_chunks", "task", None)) > 1:
            return
    raise AssertionError("task calls never looked short to the pool")


async def started(messages: list[Message]) -> int:
    """Wait for the gated call's "waiting" message; the pid of the worker running it."""
    while not messages:
        await asyncio.sleep(0.005)
    return int(messages[0].message.split()[1])  # type: ignore[union-attr]


@pytest.fixture
def pool(make_harness: Callable[..., Any]) -> Any:
    return make_harness("local", workers=2)


def test_short_calls_go_in_chunks(pool: Any) -> None:
    async def scenario() -> list[int]:
        await warm_up(pool.executor)
        pool.executor.chunks.clear()
        return await asyncio.gather(*(pool.executor.run(PythonCall(task, (i,)), ignore) for i in range(400)))

    assert pool.run(scenario()) == list(range(400))
    chunks = pool.executor.chunks
    assert sum(size * n for size, n in chunks.items()) == 400  # every call went out once
    assert max(chunks) > 1 and sum(chunks.values()) < 400  # fewer sends than calls


def test_each_call_of_a_chunk_gets_the_output_it_left_behind(pool: Any) -> None:
    """A worker reads a call's last bytes with the next call's claim (one look at the pipes for
    both): the bytes a call wrote, left without a newline or in Python's buffer, are its own all the
    same (the buffer is flushed before that look)."""
    kind = ("tests.executors.test_local_chunks", "leaves_output", None)

    async def scenario() -> dict[int, list[str]]:
        logs: dict[int, list[str]] = {}

        def call(i: int) -> Any:
            lines = logs.setdefault(i, [])
            return pool.executor.run(PythonCall(leaves_output, (i,)), lambda m: lines.append(m.line))

        for _ in range(100):
            await asyncio.gather(*(call(-1 - i) for i in range(40)))
            if pool.executor.chunk_size(kind) > 1:
                break
        pool.executor.chunks.clear()
        logs.clear()
        assert await asyncio.gather(*(call(i) for i in range(200))) == list(range(200))
        return logs

    logs = pool.run(scenario())
    chunks = pool.executor.chunks
    assert max(chunks) > 1  # calls followed each other in a worker's chunk
    for i in range(200):
        assert sorted(logs[i]) == [f"stderr: tail {i}", f"thread {i}"], i


def test_a_new_kind_of_call_goes_one_at_a_time(pool: Any) -> None:
    async def scenario() -> list[int]:
        return await asyncio.gather(*(pool.executor.run(PythonCall(task, (i,)), ignore) for i in range(2)))

    assert pool.run(scenario()) == [0, 1]
    assert pool.executor.chunks == {1: 2}  # both workers got one: nothing known about its duration yet


def test_a_long_call_does_not_hold_short_ones_hostage(pool: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"

    async def scenario() -> None:
        ex = pool.executor
        await warm_up(ex)
        messages: list[Message] = []
        long = asyncio.ensure_future(ex.run(PythonCall(task, (-1,), {"gate": str(gate)}), messages.append))
        short = [asyncio.ensure_future(ex.run(PythonCall(task, (i,)), ignore)) for i in range(200)]
        # The long call went out first, with short ones queued behind it in its worker's chunk:
        # they are taken back and run by the other worker while it waits for the gate.
        assert await asyncio.gather(*short) == list(range(200))
        assert not long.done()
        assert ex.stolen > 0
        gate.touch()
        assert await long == -1

    pool.run(scenario())


def check_withdrawn_and_killed(ex: Any, procs: Any, marks: Path, killed: int, got: list[int]) -> None:
    """After calls 0-4 were cancelled queued and call 100 running: 5-9 ran once each elsewhere, 0-4
    never, and the worker that ran 100 is gone."""
    assert got == [5, 6, 7, 8, 9]
    assert procs.eventually(lambda: not procs.alive(killed))
    assert killed not in ex.pids
    ran = runs_of(marks)
    assert all(i not in ran for i in range(5))  # the withdrawn calls never ran
    assert all(ran[i] == 1 for i in range(5, 10)) and ran[100] == 1


def test_cancelling_calls_mid_chunk(make_harness: Callable[..., Any], tmp_path: Path, procs: Any) -> None:
    one = make_harness("local", workers=1)
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()

    async def scenario() -> tuple[int, list[int]]:
        ex = one.executor
        await warm_up(ex)
        ex.chunks.clear()  # the warm-up's chunks (one may have held 11 calls too) are not this test's
        messages: list[Message] = []
        long = asyncio.ensure_future(
            ex.run(PythonCall(task, (100,), {"gate": str(gate), "marks": str(marks)}), messages.append)
        )
        rest = [asyncio.ensure_future(ex.run(PythonCall(task, (i,), {"marks": str(marks)}), ignore)) for i in range(10)]
        worker = await started(messages)  # the others wait behind it in the same chunk
        assert ex.chunks[11] == 1
        for job in rest[:5]:
            job.cancel()  # queued, not started: withdrawn, and the worker goes on
        await asyncio.gather(*rest[:5], return_exceptions=True)
        assert ex.pids == [worker]
        long.cancel()  # running: its worker (and process group) is killed; the calls behind it run elsewhere
        got = await asyncio.gather(*rest[5:])
        assert long.cancelled()
        return worker, got

    killed, got = one.run(scenario())
    check_withdrawn_and_killed(one.executor, procs, marks, killed, got)


def test_submitted_calls_cancelled_mid_chunk(make_harness: Callable[..., Any], tmp_path: Path, procs: Any) -> None:
    """``submit`` (the scheduler's way in, no asyncio task per call): its handles cancel as ``run``'s
    awaiting tasks do: a queued call is withdrawn and never runs, a running one's worker is killed."""
    one = make_harness("local", workers=1)
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()

    async def scenario() -> tuple[int, list[int], list[bool]]:
        ex = one.executor
        await warm_up(ex)
        messages: list[Message] = []
        long = ex.submit(PythonCall(task, (100,), {"gate": str(gate), "marks": str(marks)}), messages.append)
        rest = [ex.submit(PythonCall(task, (i,), {"marks": str(marks)}), ignore) for i in range(10)]
        worker = await started(messages)
        cancelled = [job.cancel() for job in rest[:5]]
        assert ex.pids == [worker]
        assert long.cancel()
        got = await asyncio.gather(*(job.future for job in rest[5:]))
        assert not long.cancel()  # cancelled already
        assert long.future.cancelled() and all(job.future.cancelled() for job in rest[:5])
        return worker, got, cancelled

    killed, got, cancelled = one.run(scenario())
    assert cancelled == [True] * 5
    check_withdrawn_and_killed(one.executor, procs, marks, killed, got)


def test_a_worker_killed_mid_chunk_fails_only_its_call(make_harness: Callable[..., Any], tmp_path: Path) -> None:
    one = make_harness("local", workers=1)
    marks = tmp_path / "marks"
    marks.mkdir()

    async def scenario() -> list[Any]:
        ex = one.executor
        await warm_up(ex)
        calls = [PythonCall(task, (i,), {"marks": str(marks), "die": i == 10}) for i in range(30)]
        return await asyncio.gather(*(ex.run(c, ignore) for c in calls), return_exceptions=True)

    results = one.run(scenario())
    assert max(one.executor.chunks) > 1
    assert isinstance(results[10], WorkerCrashed) and "SIGKILL" in str(results[10])
    assert [r for i, r in enumerate(results) if i != 10] == [i for i in range(30) if i != 10]
    ran = runs_of(marks)
    assert ran[10] == 1  # the call that killed its worker is not run again by the pool
    # Every other call ran; one whose result died with the worker before it was sent ran again.
    assert set(ran) == set(range(30))
    assert len(one.executor.pids) == 1


def test_a_function_goes_to_each_worker_once(pool: Any) -> None:
    """Calls of one closure carry a number, not the closure: it is sent once per worker, and
    closures made per call (each a new function) still run with their own values."""
    base = 1000

    def shared(reporter: Reporter, i: int) -> int:
        return base + i

    def made(k: int) -> Callable[..., int]:
        return lambda reporter: k * 2

    async def scenario() -> tuple[list[int], list[int]]:
        same = await asyncio.gather(*(pool.executor.run(PythonCall(shared, (i,)), ignore) for i in range(200)))
        sent = pool.executor.constants_sent
        fresh = await asyncio.gather(*(pool.executor.run(PythonCall(made(k)), ignore) for k in range(30)))
        return same, [sent, *fresh]

    same, (sent, *fresh) = pool.run(scenario())
    assert same == [1000 + i for i in range(200)]
    assert 1 <= sent <= 2  # the one function, to at most each of the two workers
    assert fresh == [k * 2 for k in range(30)]


def test_big_results_cross_whole(pool: Any) -> None:
    """Results larger than a socket's buffer and than one read of it arrive whole, each to its call."""

    def big(reporter: Reporter, i: int) -> bytes:
        return bytes([i]) * (700_000 * (1 + i % 3))

    async def scenario() -> list[bytes]:
        return await asyncio.gather(*(pool.executor.run(PythonCall(big, (i,)), ignore) for i in range(12)))

    got = pool.run(scenario())
    assert got == [bytes([i]) * (700_000 * (1 + i % 3)) for i in range(12)]


def test_step_calls_cross_the_wire_whole() -> None:
    """A ``StepCall`` goes as one flat tuple (no class named per dataclass): every field comes back
    equal, paths as paths, for per-item and aggregate calls, with a step's bytes as a constant."""
    from dataclasses import replace

    from datamill.executors import local_wire
    from datamill.pipeline.inputs import InputRef
    from datamill.pipeline.runner import ItemInput, StepCall, run_step

    ref = InputRef(1, 2, "raw", "a.csv", 3, "blake3:" + "ab" * 32, 11, "text/csv", {"k": "v"})
    item = ItemInput(ref, "/w/task-1-1/in/a.csv", "/blobs/ab/ab")
    base = StepCall(
        step="s",
        output_dir=Path("/w/task-1-1/out"),
        scratch_dir=Path("/w/task-1-1/scratch"),
        pipeline_ref="p.py:pipe",
        params={"x": 1},
        item=item,
        task_id="s:raw/a.csv",
        in_memory=True,
    )

    class OtherItem(ItemInput):
        pass

    calls = [
        base,
        replace(base, item=None, items=(item, replace(item, path=Path("/w/in/1/a.csv"), source=None))),
        replace(base, pipeline_ref=None, step_bytes=b"a pickled step"),
        replace(base, item=OtherItem(ref, None)),  # not flattened: pickled as usual
    ]
    numbering = local_wire.Constants()
    for call in calls:
        payload, _names, sets = numbering.call(run_step, (call,), {})
        local_wire.remember(numbering.data)
        fn, (got,), _kwargs = local_wire.call_parts(payload, local_wire.hold(tuple(dict(sets)), dict(sets)))
        assert fn is run_step
        assert got == call and type(got.item) is type(call.item)
        assert type(got.output_dir) is type(call.output_dir) and type(got.scratch_dir) is type(call.scratch_dir)
        assert [type(i.path) for i in got.items] == [type(i.path) for i in call.items]


#: step parameters that pickle far bigger than SHARED_MIN_BYTES (a lookup table)
BIG_PARAMS = {"table": {f"i{i:03}": f"entry {i} " + "v" * 30 for i in range(2000)}}


def test_big_step_parameters_cross_the_wire_once() -> None:
    """A step's big parameters are a shared set: pickled once for every call with the same mapping,
    sent with a call only when the worker does not keep them, and unpickled there once."""
    from datamill.executors import local_wire
    from datamill.pipeline.runner import StepCall, run_step

    # This process plays a fresh worker: what an earlier test's calls left kept here is forgotten.
    local_wire._kept = local_wire.SharedSets()
    local_wire._holders.clear()
    params = dict(BIG_PARAMS)
    dirs = {"output_dir": Path("/o"), "scratch_dir": Path("/s"), "pipeline_ref": "p.py:p"}
    calls = [StepCall(step="s", params=params, **dirs), StepCall(step="t", params=params, **dirs)]  # type: ignore[arg-type]
    small = StepCall(step="s", params={"x": 1}, **dirs)  # type: ignore[arg-type]
    numbering = local_wire.Constants()
    (p1, _n1, sets1), (p2, _n2, sets2) = (numbering.call(run_step, (c,), {}) for c in calls)
    # each call names its step's template (small) and the one parameter set, pickled once (the same
    # bytes) for both calls
    big, (t1, template1) = sets1
    big2, (t2, template2) = sets2
    assert big == big2 and t1 != t2 and len(big[1]) >= local_wire.SHARED_MIN_BYTES
    assert len(template1) < 1000 and len(template2) < 1000
    assert len(p1) < 1000  # the payload names the set instead of carrying it
    p3, _n3, sets3 = numbering.call(run_step, (small,), {})
    assert len(sets3) == 1 and len(sets3[0][1]) < 1000  # only its template: the parameters are in it
    (number, data) = big
    first = local_wire.hold((number, t1), {number: data, t1: template1})  # the chunk that brought it
    second = local_wire.hold((number, t2), {t2: template2})  # a later chunk: the worker keeps it
    _fn, (got1,), _ = local_wire.call_parts(p1, first)
    _fn, (got2,), _ = local_wire.call_parts(p2, second)
    _fn, (got3,), _ = local_wire.call_parts(p3, local_wire.hold(tuple(dict(sets3)), dict(sets3)))
    assert got1.params == BIG_PARAMS and got2.params is got1.params  # unpickled once in this worker
    assert (got1.step, got2.step, got3.step) == ("s", "t", "s")
    assert got3.params == {"x": 1}
    with pytest.raises(RuntimeError, match="neither sent nor kept"):
        local_wire.hold((number + 100,), {})


def test_shared_sets_keep_the_last_used_within_their_bounds() -> None:
    """The account the parent keeps of a worker and the worker's own take the same steps: the last
    used sets are kept, within the count and the bytes; the set in use is never the one let go."""
    from datamill.executors.local_wire import SHARED_MAX_BYTES, SHARED_MAX_SETS, SharedSets

    parent, worker = SharedSets(), SharedSets()
    steps = [*range(SHARED_MAX_SETS), 0, SHARED_MAX_SETS]  # 0 used again, then one too many
    for n in steps:
        assert parent.use(n, 10) == worker.use(n, 10)
    assert list(parent.sizes) == [*range(2, SHARED_MAX_SETS), 0, SHARED_MAX_SETS]  # 1, the least recent, went
    held, gone = parent.use(999, SHARED_MAX_BYTES + 1)  # bigger than the bound alone: kept, the rest go
    assert not held and list(parent.sizes) == [999] and len(gone) == SHARED_MAX_SETS
    assert parent.use(999, 0) == (True, [])


def look_up_calls(tmp_path: Path, tables: list[dict[str, Any]]) -> list[Any]:
    """One ``look_up`` call per entry of ``tables``, its parameter mapping (one template per mapping)."""
    from datamill.pipeline.inputs import InputRef
    from datamill.pipeline.runner import ItemInput, StepCall
    from tests.engine.pipelines import ref

    calls = []
    for i, table in enumerate(tables):
        path = tmp_path / f"i{i:03}.txt"
        path.write_text(f"item {i}")
        item = InputRef(1, 2, "raw", path.name, 1, "blake3:" + "ab" * 32, 6, "text/plain", {})
        out = tmp_path / f"out{i}"
        calls.append(
            StepCall(
                step="look_up",
                output_dir=out / "o",
                scratch_dir=out / "s",
                pipeline_ref=ref("lookups"),
                params=table,
                item=ItemInput(item, path),
                in_memory=True,
            )
        )
    return calls


def test_big_step_parameters_go_to_each_worker_once(pool: Any, tmp_path: Path) -> None:
    """Many calls of a step with one big parameter mapping: each worker is sent it once at most."""
    from datamill.pipeline.runner import run_step

    calls = look_up_calls(tmp_path, [dict(BIG_PARAMS)] * 24)  # one mapping for every call

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(pool.executor.run(PythonCall(run_step, (c,)), ignore) for c in calls))

    results = pool.run(scenario())
    assert [r.outputs[0].data for r in results] == [f"item {i}=entry {i} {'v' * 30}".encode() for i in range(24)]
    # the parameters and the step's template, once each to each of the (at most) two workers that ran calls
    assert 2 <= pool.executor.shared_sent <= 4


def test_a_restarted_worker_is_sent_the_template_it_lacks(make_harness: Callable[..., Any], tmp_path: Path) -> None:
    """A step's template goes to a worker once; the worker started in place of a killed one has
    none, and the next calls of the step bring it along: none is lost or run with another's."""
    from datamill.pipeline.runner import run_step

    one = make_harness("local", workers=1)
    params = {"table": {f"i{i:03}": f"entry {i}" for i in range(40)}}
    calls = look_up_calls(tmp_path, [params] * 40)

    async def scenario() -> tuple[list[Any], int, list[Any]]:
        ex = one.executor
        first = await asyncio.gather(*(ex.run(PythonCall(run_step, (c,)), ignore) for c in calls[:20]))
        sent = ex.shared_sent
        (old,) = ex.pids
        os.kill(old, signal.SIGKILL)
        while ex.pids in ([old], []):  # until the pool has started a worker in its place
            await asyncio.sleep(0.005)
        later = await asyncio.gather(*(ex.run(PythonCall(run_step, (c,)), ignore) for c in calls[20:]))
        return first, sent, later

    first, sent, later = one.run(scenario())
    want = [f"item {i}=entry {i}".encode() for i in range(40)]
    assert [r.outputs[0].data for r in first + later] == want
    assert sent == 1  # the first worker had the template once for its 20 calls
    assert one.executor.shared_sent == 2  # and the worker that took over was sent it too


def test_templates_let_go_are_sent_again(make_harness: Callable[..., Any], tmp_path: Path) -> None:
    """More templates than a worker keeps: the least recently used is let go (by the worker and by
    the parent's account of it alike) and sent again with the next call that needs it."""
    from datamill.executors.local_wire import SHARED_MAX_SETS
    from datamill.pipeline.runner import run_step

    one = make_harness("local", workers=1)
    tables = [{"table": {f"i{i:03}": f"entry {i} of table {i}"}} for i in range(SHARED_MAX_SETS + 4)]
    calls = look_up_calls(tmp_path, tables)
    (tmp_path / "again").mkdir()
    again = look_up_calls(tmp_path / "again", [tables[0], tables[-1]])

    async def scenario() -> list[Any]:
        ex = one.executor
        # one after the other: each call's template is new to the worker, in this order
        got = [await ex.run(PythonCall(run_step, (c,)), ignore) for c in calls]
        got += [await ex.run(PythonCall(run_step, (c,)), ignore) for c in again]
        return got

    got = one.run(scenario())
    n = len(tables)
    assert [r.outputs[0].data for r in got[:n]] == [f"item {i}=entry {i} of table {i}".encode() for i in range(n)]
    # the first table's template was let go (the last one's is kept): the first goes again
    assert [r.outputs[0].data for r in got[n:]] == [b"item 0=entry 0 of table 0", b"item 1=?"]
    assert one.executor.shared_sent == n + 1


def test_late_withdrawals_do_not_pile_up_in_a_worker(make_harness: Callable[..., Any]) -> None:
    """A call cancelled after its worker finished it (its result not read yet) is withdrawn too late:
    the worker has claimed it, so the withdrawal can never match again and the worker drops it
    instead of holding it for its life."""
    one = make_harness("local", workers=1)
    rounds = 30

    async def scenario() -> tuple[int, list[bool]]:
        ex = one.executor
        await warm_up(ex)
        cancelled = []
        for i in range(rounds):
            job = ex.submit(PythonCall(task, (i,)), ignore)
            await asyncio.sleep(0)  # the pool sends it: it has its seq now
            assert job.seq > 0
            # Without yielding to the loop (which would read the result): wait for the worker to finish it.
            deadline = time.monotonic() + 120
            while next(iter(ex.worker_states().values()))[1] < job.seq:
                assert time.monotonic() < deadline, "the worker never finished the call"
                time.sleep(0.001)
            cancelled.append(job.cancel())  # its withdrawal reaches the worker after its claim
        # The next calls' claims read those withdrawals.
        assert await asyncio.gather(*(ex.run(PythonCall(task, (i,)), ignore) for i in range(3))) == [0, 1, 2]
        (held,) = (state[2] for state in ex.worker_states().values())
        return held, cancelled

    held, cancelled = one.run(scenario())
    assert cancelled == [True] * rounds  # every one was withdrawn while the pool still waited for it
    assert held == 0


def test_a_call_withdrawn_after_its_claim_and_skipped_runs_all_the_same(
    make_harness: Callable[..., Any], tmp_path: Path
) -> None:
    """The race of a steal: the worker claims a call, the parent writes its withdrawal and reads that
    claim (so keeps the call as the worker's), then the worker reads the withdrawal and skips the call.
    The state is made here as that race leaves it: a withdrawal in the worker's control pipe for a call
    the parent still counts as the worker's. The call must still run, once, and its caller get its result."""
    from datamill.executors.local_wire import withdraw
    from datamill.executors.worker import SKIP

    one = make_harness("local", workers=1)
    marks = tmp_path / "marks"
    marks.mkdir()
    gate = tmp_path / "gate"

    async def scenario() -> tuple[int, int, int]:
        ex = one.executor
        await warm_up(ex)
        messages: list[Message] = []
        first = ex.submit(PythonCall(task, (0,), {"marks": str(marks), "gate": str(gate)}), messages.append)
        await started(messages)  # the worker runs the gated call: the next one waits behind it
        second = ex.submit(PythonCall(task, (1,), {"marks": str(marks)}), ignore)
        while second.seq <= 0:  # sent to the worker, queued behind the gated call
            await asyncio.sleep(0.005)
        (worker,) = ex._all
        assert second.seq in worker.outstanding
        assert withdraw(worker.control.fileno(), SKIP, [second.seq]) == 1
        gate.touch()
        got = await asyncio.wait_for(asyncio.gather(first.future, second.future), 120)
        return got[0], got[1], ex.resent

    a, b, resent = one.run(scenario())
    assert (a, b) == (0, 1)
    assert resent == 1  # the worker skipped it, the pool sent it again
    assert runs_of(marks) == {0: 1, 1: 1}


def test_any_ended_wakes_at_each_end_and_at_a_cancel(pool: Any, tmp_path: Path) -> None:
    """The one future a scheduler waits on for a pool's submitted calls: resolved once one of them
    ended (each call's future is done by the time its waiter runs), at a cancel too, and a fresh
    one after that."""
    gate = tmp_path / "gate"

    async def scenario() -> None:
        ex = pool.executor
        await warm_up(ex)
        jobs = [ex.submit(PythonCall(task, (i,)), ignore) for i in range(20)]
        while not all(job.future.done() for job in jobs):
            wake = ex.any_ended()
            assert ex.any_ended() is wake  # one for every waiter until it is resolved
            before = sum(job.future.done() for job in jobs)
            await asyncio.wait_for(wake, 60)
            assert sum(job.future.done() for job in jobs) > before
        assert [job.future.result() for job in jobs] == list(range(20))
        messages: list[Message] = []
        long = ex.submit(PythonCall(task, (100,), {"gate": str(gate)}), messages.append)
        await started(messages)
        wake = ex.any_ended()
        assert not wake.done()
        assert long.cancel()
        assert wake.done() and ex.any_ended() is not wake

    pool.run(scenario())


def echo_call(reporter: Reporter, call: StepCall) -> StepCall:
    """What the worker made of a call handed over by its fields (``submit_step``)."""
    return call


def test_a_step_call_handed_over_by_its_fields_is_the_step_call_they_make(pool: Any, tmp_path: Path) -> None:
    """``submit_step`` sends a step's call as plain data pickled with its chunk; the worker makes
    the same ``StepCall`` the scheduler would have sent whole: template, directories as paths (sent
    as strings or parsed parts), the item and items (paths as sent: strings stay strings, paths stay
    paths), no upstream values."""
    ref = InputRef(7, 8, "raw", "a.txt", 1, "blake3:ab", 3, "text/plain", {"k": [1, "v"]})
    other = InputRef(9, 10, "raw", "b.txt", 2, "blake3:cd", 4, "text/csv", {})
    params = {"salt": "x"}
    base = str(tmp_path / "task-1-1")

    async def scenario() -> list[Any]:
        ex = pool.executor
        jobs = [
            ex.submit_step(
                echo_call,
                (
                    ("tiny", "some/pipeline.py:p", None, params, True),
                    (f"{base}/out", child_parts(tmp_path, "task-1-1", "scratch")),
                    (ref, f"{base}/in/a.txt", tmp_path / "blob"),
                    ((other, None, "/blobs/cd"),) if i else (),
                    f"tiny[raw/a.txt]#{i}",
                ),
                ignore,
            )
            for i in range(2)
        ]
        assert all(job is not None for job in jobs)
        return [await job.future for job in jobs]

    got = pool.run(scenario())
    for i, call in enumerate(got):
        assert call == StepCall(
            step="tiny",
            output_dir=Path(f"{base}/out"),
            scratch_dir=Path(f"{base}/scratch"),
            pipeline_ref="some/pipeline.py:p",
            params=params,
            item=ItemInput(ref, f"{base}/in/a.txt", tmp_path / "blob"),
            items=(ItemInput(other, None, "/blobs/cd"),) if i else (),
            task_id=f"tiny[raw/a.txt]#{i}",
            in_memory=True,
        )
        assert type(call.item.path) is str and type(call.item.source) is type(tmp_path)  # type: ignore[union-attr]


def test_step_calls_of_steps_taking_turns_each_get_their_own_template(make_harness: Callable[..., Any]) -> None:
    """The pool looks up what a template names once for a row of calls with the same template
    object: calls of steps that take turns, templates seen again after others, and a template
    whose big parameters are a shared set each reach the worker as their own step and parameters,
    and the shared set goes to the one worker once however its calls are interleaved."""
    one = make_harness("local", workers=1)
    ref = InputRef(7, 8, "raw", "a.txt", 1, "blake3:ab", 3, "text/plain", {})
    big = {"table": {f"i{i:04}": f"entry {i}" for i in range(2000)}}  # pickled > SHARED_MIN_BYTES
    a = ("a", "p.py:p", None, {"salt": "a"}, True)
    b = ("b", "p.py:p", None, {"salt": "b"}, True)
    c = ("c", "p.py:p", None, big, True)
    order = [a, a, b, a, c, c, b, b, c, a, c]

    async def scenario() -> list[Any]:
        ex = one.executor
        got = []
        # each call in a turn of its own (a chunk each): the rows of one template broken by turns
        for i, t in enumerate(reversed(order)):
            job = ex.submit_step(echo_call, (t, ("/o", "/s"), (ref, None, None), (), f"u{i}"), ignore)
            assert job is not None
            got.append(await job.future)
        # then all in one turn: short calls now, sent in chunks holding rows of each template
        jobs = [
            ex.submit_step(echo_call, (t, ("/o", "/s"), (ref, None, None), (), f"t{i}"), ignore)
            for i, t in enumerate(order)
        ]
        assert all(job is not None for job in jobs)
        return got + list(await asyncio.gather(*(job.future for job in jobs)))

    got = one.run(scenario())
    want = list(reversed(order)) + order
    assert [(call.step, call.params) for call in got] == [(t[0], t[3]) for t in want]
    assert [call.task_id for call in got] == [f"u{i}" for i in range(len(order))] + [f"t{i}" for i in range(len(order))]
    # three templates, and c's parameters as a set of their own: each sent to the worker once
    assert one.executor.shared_sent == 4


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("not this one")


def test_a_step_call_whose_data_does_not_pickle_fails_alone(pool: Any, tmp_path: Path) -> None:
    """A chunk is pickled in one go; a call whose plain data does not pickle fails with why, and
    the calls sent with it run."""
    bad = InputRef(1, 1, "raw", "a.txt", 1, "blake3:ab", 3, "text/plain", {"k": Unpicklable()})
    good = InputRef(2, 2, "raw", "b.txt", 1, "blake3:cd", 3, "text/plain", {})

    async def scenario() -> list[Any]:
        ex = pool.executor
        jobs = [
            ex.submit_step(echo_call, (("s", "p.py:p", None, {}, True), ("/o", "/s"), (r, None, None), (), "t"), ignore)
            for r in (good, bad, good)
        ]
        return await asyncio.gather(*(job.future for job in jobs), return_exceptions=True)

    first, failed, last = pool.run(scenario())
    assert first.item.ref == good and last.item.ref == good
    assert isinstance(failed, StepFailed)
    assert "could not be pickled" in failed.message and "not this one" in failed.message


def test_a_step_call_not_of_the_plain_form_is_left_to_submit(pool: Any) -> None:
    """Items of a subclass of ``InputRef`` (or metadata that is not a dict) are not plain data:
    ``submit_step`` says so (None) and the call goes through ``submit`` as a ``StepCall``."""

    class MyRef(InputRef):
        pass

    ref = MyRef(1, 1, "raw", "a.txt", 1, "blake3:ab", 3, "text/plain", {})
    template = ("s", "p.py:p", None, {}, True)
    job = pool.executor.submit_step(echo_call, (template, ("/o", "/s"), (ref, None, None), (), "t"), ignore)
    assert job is None


class _Name(str):
    """A str of our own: a result field that is not plain data."""


def step_results(reporter: Reporter, i: int, base: str) -> StepResult:
    """A step's result: plain fields for even ``i``; for odd ``i`` a field of a class of its own."""
    name = "out" if i % 2 == 0 else _Name("out")
    data = None if i % 3 == 0 else f'"{i}"'.encode()
    return StepResult(outputs=(OutputFile(name, Path(base, str(i), "out"), "application/json", "json", data),))


def test_step_results_come_back_whole_as_plain_data_or_pickled(pool: Any, tmp_path: Path) -> None:
    """A step's result of plain fields comes back as plain data in its batch (``plain_result``), any
    other one pickled by itself, as before: both are the same ``StepResult`` in the parent."""
    plain = plain_result(step_results(None, 2, str(tmp_path)))  # type: ignore[arg-type]
    assert plain is not None and step_result(plain) == step_results(None, 2, str(tmp_path))  # type: ignore[arg-type]
    assert plain_result(step_results(None, 1, str(tmp_path))) is None  # type: ignore[arg-type]
    assert plain_result(7) is None

    async def scenario() -> list[StepResult]:
        calls = [pool.executor.run(PythonCall(step_results, (i, str(tmp_path))), ignore) for i in range(24)]
        return await asyncio.gather(*calls)

    got = pool.run(scenario())
    assert got == [step_results(None, i, str(tmp_path)) for i in range(24)]  # type: ignore[arg-type]
    assert all(type(r.outputs[0].path) is type(tmp_path) for r in got)
    assert [type(r.outputs[0].name) for r in got] == [str if i % 2 == 0 else _Name for i in range(24)]
