"""What every executor shares: calls, messages, the reporter, the ``Executor`` interface, the registry.

An executor runs a *call* and knows nothing about steps, pipelines or runs: the scheduler turns a
task into a :class:`PythonCall` or a :class:`CommandCall`, hands it to
:meth:`Executor.run` together with a callback for the messages the work sends while it runs, and
gets back the call's result or one of four outcomes:

* :class:`~datamill.errors.StepFailed` — the function raised, or the command exited non-zero;
* :class:`~datamill.errors.TaskTimeout` — the call ran past its timeout and was stopped;
* :class:`~datamill.errors.WorkerCrashed` — the process running the call died under it;
* :class:`asyncio.CancelledError` — the awaiting task was cancelled; the work was stopped.

``get_executor("local", workers=4)`` builds one by name.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Literal

from datamill.errors import ConfigError, StepFailed

__all__ = [
    "EXECUTORS",
    "Call",
    "CommandCall",
    "ContainerCall",
    "ContainerMount",
    "DagsterCall",
    "Executor",
    "HttpCall",
    "HttpResponse",
    "LogMessage",
    "Message",
    "OnMessage",
    "ProgressMessage",
    "PythonCall",
    "Reporter",
    "get_executor",
]


@dataclass(frozen=True, eq=False)
class PythonCall:
    """Call ``fn(reporter, *args, **kwargs)`` and return what it returns.

    ``fn``, ``args`` and ``kwargs`` must be picklable with cloudpickle (lambdas and closures are) and
    the return value with cloudpickle too: the local pool ships them to and from worker processes.
    """

    fn: Callable[..., Any]
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class CommandCall:
    """Run ``argv`` as a subprocess; its stdout and stderr lines become log messages.

    ``cwd`` is the working directory (``None``: the executor's). ``env`` holds variables set on top of
    the executor's own environment (``None``: inherit it unchanged), so ``PATH`` and the like stay.
    With ``merge_stderr`` stderr goes down the stdout pipe: the lines come in the order the command
    wrote them and none is prefixed, as on a terminal (command steps log this way).
    """

    argv: Sequence[str]
    cwd: str | None = None
    env: Mapping[str, str] | None = None
    merge_stderr: bool = False


@dataclass(frozen=True)
class ContainerMount:
    """A host path seen inside a container at ``target``; read-only unless ``writable``."""

    source: str
    target: str
    writable: bool = False


@dataclass(frozen=True, eq=False)
class ContainerCall:
    """Run ``image`` as a container (podman, or the Docker CLI); its output lines become log messages.

    ``command`` replaces the image's default command; ``None`` keeps it, with ``args`` appended
    (the image's entrypoint, or its default command when it has none, gets them). ``name`` is the
    container's name (unique per attempt, so leftovers can be found). ``env`` is set in the
    container; ``secret_env`` too, but through an env file (never on a command line), and each
    ``secret_files`` entry is mounted read-only at ``/run/secrets/<name>``. ``network`` is ``none``
    unless asked; ``cpus``, ``memory`` (``"512m"``) and ``gpus`` (``"all"``, a count, or device
    indices ``"0,1"``) limit what it may use.
    """

    image: str
    name: str
    command: Sequence[str] | None = None
    args: Sequence[str] = ()
    mounts: Sequence[ContainerMount] = ()
    workdir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    secret_files: Mapping[str, str] = field(default_factory=dict, repr=False)
    network: str = "none"
    cpus: float | None = None
    memory: str | None = None
    gpus: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class DagsterCall:
    """Run a Dagster job in a worker subprocess: ``python -m datamill.dagster.runner request``.

    ``request`` is the path of the JSON request (:class:`datamill.pipeline.dagster_job.DagsterJob`
    ``.request``); the worker writes its outcome to the request's ``result`` path. ``python`` is
    the interpreter to run (one with ``datamill[dagster]`` installed); ``env`` holds variables set
    on top of the executor's own environment.
    """

    request: str
    python: str
    cwd: str | None = None
    env: Mapping[str, str] | None = None


@dataclass(frozen=True, eq=False)
class HttpCall:
    """Send one HTTP request (an HTTP app step's task) and return an :class:`HttpResponse`.

    ``body`` is sent as is, or the file at ``body_path`` is streamed. A connection error or a status in
    ``retry_statuses`` is retried ``retries`` times, waiting ``backoff`` seconds and doubling after each.
    ``app`` names the service for the executor's per-app limit of ``concurrency`` requests at once.
    Headers are never logged (they may carry secrets).
    """

    url: str
    method: str = "POST"
    params: Sequence[tuple[str, str]] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    body_path: str | None = None
    retries: int = 0
    backoff: float = 0.5
    retry_statuses: frozenset[int] = frozenset(range(500, 600))
    app: str = ""
    concurrency: int | None = None


@dataclass(frozen=True)
class HttpResponse:
    """What an :class:`HttpCall` got back: the last response, after any retries (``attempts`` counts them)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    attempts: int = 1
    seconds: float = 0.0

    @property
    def content_type(self) -> str:
        """The response's media type without parameters (``application/json``), or ``""``."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


#: Anything an executor may be asked to run; :meth:`Executor.supports` says which it takes.
Call = PythonCall | CommandCall | ContainerCall | DagsterCall | HttpCall


@dataclass(frozen=True, slots=True)
class ProgressMessage:
    """The work says how far it got: ``fraction`` in 0..1 and an optional human ``message``."""

    fraction: float
    message: str
    #: seconds since the epoch when the work sent it (not when it arrived)
    time: float
    kind: Literal["progress"] = field(default="progress", init=False)


@dataclass(frozen=True, slots=True)
class LogMessage:
    """One line of the work's log (a command's stderr lines start with ``"stderr: "``)."""

    line: str
    #: seconds since the epoch when the work sent it (not when it arrived)
    time: float
    kind: Literal["log"] = field(default="log", init=False)


#: What a running call sends back; tell them apart by ``kind`` or ``isinstance``.
Message = ProgressMessage | LogMessage

#: The callback :meth:`Executor.run` hands messages to, in the event loop thread, in the order sent.
OnMessage = Callable[[Message], None]


class Reporter:
    """What a :class:`PythonCall`'s function gets as its first argument, to report progress and log lines.

    It works the same in every process: inline it calls the scheduler's callback, in a worker it
    sends the message down the worker's pipe. Safe to call from threads the function starts.
    ``Reporter(messages.append)`` is handy for calling a step function directly in a test.
    """

    __slots__ = ("_clock", "_emit")

    def __init__(self, emit: Callable[[Message], None], clock: Callable[[], float] = time.time) -> None:
        self._emit = emit
        self._clock = clock

    def progress(self, fraction: float, message: str = "") -> None:
        """Report that ``fraction`` (clamped to 0..1) of the work is done, e.g. ``progress(0.5, "row 500")``."""
        self._emit(ProgressMessage(min(1.0, max(0.0, float(fraction))), str(message), self._clock()))

    def log(self, line: str) -> None:
        """Add ``line`` (a trailing newline is dropped) to the task's log."""
        self._emit(LogMessage(str(line).removesuffix("\n"), self._clock()))


def deliver(on_message: OnMessage, message: Message) -> None:
    """Hand ``message`` to ``on_message``; an exception there is reported to the event loop, not to the work.

    A bug in the scheduler's callback must neither fail the user's step nor kill a worker's reader.
    """
    try:
        on_message(message)
    except Exception as exc:
        asyncio.get_running_loop().call_exception_handler(
            {"message": "executor: on_message callback raised", "exception": exc}
        )


def step_failed(error_type: str, text: str, traceback_text: str) -> StepFailed:
    """The :class:`StepFailed` for a function that raised: ``"ValueError: boom"``, traceback in ``detail``."""
    message = f"{error_type}: {text}" if text else error_type
    return StepFailed(message, error_type=error_type, traceback=traceback_text)


def step_failed_from(exc: BaseException) -> StepFailed:
    """:func:`step_failed` for an exception caught right here (its traceback is formatted now)."""
    return step_failed(type(exc).__name__, str(exc), "".join(traceback.format_exception(exc)))


class Executor(ABC):
    """Runs calls. One instance serves one event loop, between :meth:`start` and :meth:`close`.

    Usable as ``async with executor: ...``, which starts and closes it.
    """

    #: the name it is registered under in :data:`EXECUTORS`
    name: ClassVar[str]
    #: whether a call cancelled (or running at :meth:`close`) is certainly stopped once :meth:`close`
    #: returned; False where it may go on in the background (a thread, a remote cluster's worker):
    #: a scheduler stopping gracefully then leaves its tasks to their leases instead of requeueing them
    stops_calls: ClassVar[bool] = True

    @property
    def capacity(self) -> int | None:
        """How many calls run at once; more wait inside :meth:`run`. ``None``: no limit of its own."""
        return None

    @property
    def in_flight(self) -> int | None:
        """How many calls a caller should keep handed to :meth:`run` at once (a pool that sends work
        in chunks wants more than its capacity); ``None``: the caller decides."""
        return None

    # Not abstract: most executors have nothing to start or close.
    async def start(self) -> None:
        """Get ready to run calls (start worker processes, ...). Idempotent."""

    async def close(self) -> None:
        """Stop whatever :meth:`start` started; calls still running are stopped. Idempotent."""

    @abstractmethod
    def supports(self, call: Call) -> bool:
        """True if :meth:`run` accepts ``call`` (a :class:`PythonCall`, a :class:`CommandCall`, ...)."""

    @abstractmethod
    async def run(self, call: Call, on_message: OnMessage, timeout: float | None = None) -> Any:
        """Run ``call`` and return its result.

        ``on_message`` gets the call's progress and log messages as they come, in the event loop
        thread and in the order the call sent them. ``timeout`` (seconds) counts from when the call
        starts, not from when it waits for a free worker. Raises ``StepFailed``, ``TaskTimeout`` or
        ``WorkerCrashed``; if the awaiting task is cancelled the work is stopped and
        ``asyncio.CancelledError`` propagates. A call it does not support raises ``TypeError``.
        """

    def _check(self, call: Call) -> None:
        """Refuse a call this executor does not run: that is a scheduler bug, not a step failure."""
        if not self.supports(call):
            raise TypeError(f"the {self.name!r} executor cannot run a {type(call).__name__}")

    async def __aenter__(self) -> Executor:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


#: Executor name -> ``"module:Class"``. Imported on use, so asking for "inline" never imports
#: multiprocessing machinery, and a plugin can add itself here (entry points can come later).
EXECUTORS: dict[str, str] = {
    "inline": "datamill.executors.inline:InlineExecutor",
    "local": "datamill.executors.local:LocalExecutor",
    "command": "datamill.executors.command:CommandExecutor",
    "container": "datamill.executors.container:ContainerExecutor",
    "dagster": "datamill.executors.dagster:DagsterExecutor",
    "http": "datamill.executors.http:HttpExecutor",
    "dask": "datamill.executors.dask:DaskExecutor",
}


def get_executor(name: str, **options: Any) -> Executor:
    """The executor registered as ``name``, built with ``options``: ``get_executor("local", workers=4)``.

    An unknown name or option raises :class:`~datamill.errors.ConfigError` saying what is known.
    """
    try:
        target = EXECUTORS[name]
    except KeyError:
        known = ", ".join(sorted(EXECUTORS))
        raise ConfigError(
            f"Unknown executor {name!r}. Set executor to one of: {known}.", key="executor", value=name
        ) from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        accepted = ", ".join(inspect.signature(cls).parameters) or "none"
        raise ConfigError(
            f"Executor {name!r} got bad options ({exc}). Options it takes: {accepted}.", key="executor", value=name
        ) from None
    executor: Executor = cls(**options)
    return executor
