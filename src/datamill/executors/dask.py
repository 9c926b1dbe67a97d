"""The Dask executor: Python calls run on the workers of a Dask cluster (``executor = "dask"``).

``DaskExecutor(address="tcp://host:8786")`` connects to a running ``dask scheduler`` (started by
hand, by ``dask-jobqueue`` on SLURM/PBS or by ``dask-kubernetes``); without an address it starts a
``LocalCluster`` of worker processes on this machine (``workers`` of them, one thread each), on
loopback only and without a dashboard.

What the local pool promises holds here, through Dask's own machinery rather than ours:

* **messages**: a call's ``reporter.progress()``/``reporter.log()`` and what it prints travel as
  Dask *events* (``Worker.log_event`` → scheduler → this client's topic subscription), in the
  order sent; a last marker event tells the executor that every message of the call has arrived.
* **failures**: the function's exception comes back as :class:`~datamill.errors.StepFailed` with
  its traceback; a worker that dies under a call gives :class:`~datamill.errors.WorkerCrashed`,
  so the engine counts one more attempt and retries it elsewhere (as the step's ``retries``
  allow). Dask must not retry on its own behind the engine's back: a cluster this executor starts
  has ``distributed.scheduler.allowed-failures = 0``, and an external scheduler should be started
  with ``DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0`` (the README's deployment guide does).
* **timeouts and cancellation**: the future is cancelled; a call already running cannot be
  interrupted inside a thread, so the worker running it is restarted by its nanny (with one thread
  per worker, the recommended shape, nothing else runs there).

Files: a call's arguments name paths in the scheduler's work directories. With a blob store on
this machine (``file://``), workers read and write them in place: they must see the home's
directory (the same machine, or a shared file system as on most HPC clusters). With an S3 blob
store (``blobs``, ``blob_url``), nothing is shared: each Python step's input files travel through
the store to a directory of the worker's own and its outputs come back the same way
(:mod:`.shipping`); workers take the S3 credentials from their own environment. Steps over values
need nothing shared either way. Workers need datamill (and the steps' own modules) importable.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from datamill.errors import ConfigError, TaskTimeout, Unavailable, WorkerCrashed
from datamill.store.blobs import BlobStore

from . import shipping
from .base import Call, Executor, LogMessage, Message, OnMessage, ProgressMessage, PythonCall, Reporter, deliver
from .base import step_failed as make_step_failed

__all__ = ["DaskExecutor"]

#: How long to wait, after a call's result, for its last messages to arrive (they travel apart).
MESSAGES_GRACE = 5.0


@dataclass
class _Pending:
    on_message: OnMessage
    done: asyncio.Event = field(default_factory=asyncio.Event)


class DaskExecutor(Executor):
    """Runs :class:`PythonCall` s on a Dask cluster; see the module's text."""

    name = "dask"
    #: Dask does not interrupt a task that runs on a worker when its future is cancelled
    stops_calls = False

    def __init__(
        self,
        address: str | None = None,
        workers: int = 0,
        threads_per_worker: int = 1,
        clock: Callable[[], float] = time.time,
        connect_timeout: float = 30.0,
        blobs: BlobStore | None = None,
        blob_url: str = "",
    ) -> None:
        self.address = address or None
        #: the home's blob store; with a spec (S3), step calls are shipped through it
        self._blobs = blobs
        self._spec = shipping.spec_of(blobs, blob_url) if blobs is not None else None
        self.connect_timeout = connect_timeout
        self.workers = workers
        self.threads_per_worker = threads_per_worker
        self._clock = clock
        self._client: Any = None
        self._cluster: Any = None
        self._topic = f"datamill-{uuid.uuid4().hex[:12]}"
        self._pending: dict[str, _Pending] = {}
        self._capacity: int | None = None
        self._lock = asyncio.Lock()

    @property
    def capacity(self) -> int | None:
        """The cluster's worker threads when it started (workers may join later)."""
        return self._capacity

    def supports(self, call: Call) -> bool:
        """Only Python calls."""
        return isinstance(call, PythonCall)

    async def start(self) -> None:
        """Connect to the scheduler (or start a local cluster) and subscribe to the calls' messages."""
        async with self._lock:
            if self._client is not None:
                return
            try:
                import dask
                from distributed import Client, LocalCluster
            except ImportError:
                raise ConfigError(
                    "executor = 'dask' needs Dask: install datamill[dask]", key="executor", value="dask"
                ) from None
            if self.address is None:
                import os

                n = self.workers or os.cpu_count() or 1
                with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                    self._cluster = await LocalCluster(
                        n_workers=n,
                        threads_per_worker=self.threads_per_worker,
                        processes=True,
                        host="127.0.0.1",
                        dashboard_address=None,
                        asynchronous=True,
                    )
                address = self._cluster
            else:
                address = self.address
            try:
                self._client = await asyncio.wait_for(
                    Client(address, asynchronous=True, timeout=self.connect_timeout), self.connect_timeout + 30
                )
            except (OSError, TimeoutError) as exc:
                await self._close_cluster()
                raise Unavailable(
                    f"cannot reach the Dask scheduler at {self.address}: {type(exc).__name__}; "
                    "check the address (dask_scheduler setting) and that `dask scheduler` runs"
                ) from None
            self._client.subscribe_topic(self._topic, self._on_event)
            threads = await self._client.run_on_scheduler(_threads)
            self._capacity = max(int(threads), 1)

    async def close(self) -> None:
        """Disconnect (and stop the cluster this executor started)."""
        async with self._lock:
            client, self._client = self._client, None
            if client is not None:
                with contextlib.suppress(Exception):
                    client.unsubscribe_topic(self._topic)
                with contextlib.suppress(Exception):
                    await client.close()
            await self._close_cluster()

    async def _close_cluster(self) -> None:
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            with contextlib.suppress(Exception):
                await cluster.close()

    def _on_event(self, event: tuple[float, Any]) -> None:
        _, msg = event
        if not isinstance(msg, dict):
            return
        pending = self._pending.get(str(msg.get("key")))
        if pending is None:
            return
        kind = msg.get("kind")
        if kind == "end":
            pending.done.set()
        elif kind == "log":
            deliver(pending.on_message, LogMessage(str(msg.get("line", "")), float(msg.get("time", 0))))
        elif kind == "progress":
            message = ProgressMessage(float(msg.get("fraction", 0)), str(msg.get("message", "")), float(msg["time"]))
            deliver(pending.on_message, message)

    async def run(self, call: Call, on_message: OnMessage, timeout: float | None = None) -> Any:
        """Run ``call`` on a worker; see the module's text for failures, timeouts and cancellation."""
        self._check(call)
        assert isinstance(call, PythonCall)
        await self.start()
        client = self._client
        key = f"datamill-call-{uuid.uuid4().hex}"
        fn, args = call.fn, call.args
        step_call = shipping.shipped_args(call) if self._spec is not None else None
        if step_call is not None:  # workers elsewhere: the files go through the blob store
            shipped = await asyncio.to_thread(shipping.ship, step_call, self._blobs)  # type: ignore[arg-type]
            fn, args = shipping.run_shipped, (shipped, self._spec)
        pending = self._pending[key] = _Pending(on_message)
        future = client.submit(_on_worker, fn, args, call.kwargs, self._topic, key, key=key, pure=False)
        try:
            try:
                async with asyncio.timeout(timeout):
                    outcome = await future
            except TimeoutError:
                await self._stop(future, key)
                raise TaskTimeout(
                    f"The task ran past its timeout of {timeout:g} s and was stopped (its Dask worker was "
                    "restarted). Raise the step's timeout or make it faster.",
                    timeout=timeout,
                ) from None
            except asyncio.CancelledError:
                await asyncio.shield(self._stop(future, key))
                raise
            except Exception as exc:
                if type(exc).__name__ == "KilledWorker":
                    raise WorkerCrashed(
                        "The Dask worker running the task died (killed, out of memory, or its machine went away). "
                        "The task was stopped; it is retried as the step's retries allow.",
                    ) from None
                raise
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pending.done.wait(), MESSAGES_GRACE)
        finally:
            self._pending.pop(key, None)
        if outcome[0] == "ok":
            if step_call is not None:
                result, back = outcome[1]
                return await asyncio.to_thread(shipping.land, result, back, step_call.output_dir, self._blobs)  # type: ignore[arg-type]
            return outcome[1]
        _, error_type, text, tb = outcome
        raise make_step_failed(error_type, text, tb)

    async def _stop(self, future: Any, key: str) -> None:
        """Cancel the call; restart the worker it is running on, since a running thread cannot be stopped."""
        client = self._client
        if client is None:
            return
        worker = None
        with contextlib.suppress(Exception):
            worker = await client.run_on_scheduler(_processing_on, key=key)
        with contextlib.suppress(Exception):
            await client.cancel([future], force=True)
        if worker:
            with contextlib.suppress(Exception):
                await client.restart_workers([worker], timeout=60, raise_for_error=False)


def _threads(dask_scheduler: Any) -> int:
    """On the scheduler: the worker threads of the cluster now."""
    return sum(ws.nthreads for ws in dask_scheduler.workers.values())


def _processing_on(dask_scheduler: Any, key: str) -> str | None:
    """On the scheduler: the address of the worker running ``key``, if it is running."""
    ts = dask_scheduler.tasks.get(key)
    if ts is None or ts.processing_on is None:
        return None
    return str(ts.processing_on.address)


def _on_worker(fn: Callable[..., Any], args: Any, kwargs: Any, topic: str, key: str) -> tuple[Any, ...]:
    """On a worker: run the call, sending its messages as events; the outcome as a tuple (never raises)."""
    from distributed import get_worker

    from .capture import task_output

    worker = get_worker()

    def emit(message: Message) -> None:
        if isinstance(message, LogMessage):
            worker.log_event(topic, {"key": key, "kind": "log", "line": message.line, "time": message.time})
        else:
            worker.log_event(
                topic,
                {
                    "key": key,
                    "kind": "progress",
                    "fraction": message.fraction,
                    "message": message.message,
                    "time": message.time,
                },
            )

    reporter = Reporter(emit)
    try:
        with task_output(reporter.log):
            result = fn(reporter, *args, **kwargs)
        return ("ok", result)
    except (Exception, SystemExit) as exc:
        return ("error", type(exc).__name__, str(exc), "".join(traceback.format_exception(exc)))
    finally:
        worker.log_event(topic, {"key": key, "kind": "end"})
