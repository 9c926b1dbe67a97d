"""The command executor: a :class:`CommandCall` runs as a subprocess in a process group of its own.

Every line the command writes becomes a log message as it is written: stdout lines as they are,
stderr lines prefixed ``"stderr: "`` (or, with ``CommandCall.merge_stderr``, both in one stream as
written, unprefixed). The result is the exit code, 0; any other exit raises ``StepFailed`` with the
code and the last stderr lines. A failure's ``detail["reason"]`` says which it was: ``exited``,
``not_found``, ``not_executable``, ``not_started``, ``no_cwd`` or ``empty``.

The command starts a new session (``start_new_session=True``), so it and everything it starts form
one process group that can be stopped as a whole: on a timeout or a cancellation the group gets
SIGTERM, then SIGKILL after ``kill_grace`` seconds. When the command exits, whatever it left running
in its group (``sleep 100 &``) is killed too, so a task never leaves processes behind; a program that
must outlive its task has to start its own session (``setsid``), as daemons do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from datamill.errors import StepFailed, TaskTimeout

from .base import Call, CommandCall, Executor, LogMessage, OnMessage, deliver

__all__ = ["CommandExecutor"]

#: how many of the last stderr lines a failure keeps in its ``detail``
_STDERR_TAIL = 20
#: lines longer than this are cut into pieces rather than buffered without limit
_MAX_LINE = 1 << 20


class CommandExecutor(Executor):
    """Runs :class:`CommandCall` s as subprocesses; see the module docstring.

    ``kill_grace``: seconds between SIGTERM and SIGKILL when stopping a command, and how long the
    output of an exited command may stay open (held by a child it left behind) before that child
    is killed. ``slots``: how many commands run at once (more wait inside :meth:`run`, their
    timeout not yet counting); ``None``: no limit.
    """

    name = "command"

    def __init__(
        self, kill_grace: float = 2.0, clock: Callable[[], float] = time.time, slots: int | None = None
    ) -> None:
        self.kill_grace = kill_grace
        self._clock = clock
        self._slots = slots
        self._free = asyncio.Semaphore(slots) if slots is not None else None

    @property
    def capacity(self) -> int | None:
        """``slots``: how many commands run at once."""
        return self._slots

    def supports(self, call: Call) -> bool:
        """Only commands."""
        return isinstance(call, CommandCall)

    async def run(self, call: Call, on_message: OnMessage, timeout: float | None = None) -> int:
        """Run the command; return 0, or raise ``StepFailed``/``TaskTimeout`` (see :meth:`Executor.run`)."""
        self._check(call)
        assert isinstance(call, CommandCall)
        if self._free is None:
            return await self._run(call, on_message, timeout)
        async with self._free:
            return await self._run(call, on_message, timeout)

    async def _run(self, call: CommandCall, on_message: OnMessage, timeout: float | None) -> int:
        argv = [str(a) for a in call.argv]
        if not argv:
            raise StepFailed("The command is empty. Give the program to run and its arguments.", reason="empty")
        if call.cwd is not None and not os.path.isdir(call.cwd):
            raise StepFailed(
                f"The working directory {call.cwd!r} of the command does not exist. Create it or fix the step's cwd.",
                cwd=call.cwd,
                reason="no_cwd",
            )
        env = None if call.env is None else {**os.environ, **call.env}
        loop = asyncio.get_running_loop()
        protocol = _OutputLines(loop, on_message, self._clock, tail_fd=1 if call.merge_stderr else 2)
        try:
            transport, _ = await loop.subprocess_exec(
                lambda: protocol,
                *argv,
                cwd=call.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if call.merge_stderr else subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise StepFailed(
                f"Program not found: {argv[0]!r}. Check that it is installed and on the PATH "
                f"(PATH={(env or os.environ).get('PATH', '')!r}), or give its full path.",
                argv=argv,
                reason="not_found",
            ) from None
        except PermissionError:
            raise StepFailed(
                f"Program {argv[0]!r} cannot be run: permission denied. Make it executable (chmod +x).",
                argv=argv,
                reason="not_executable",
            ) from None
        except OSError as exc:
            raise StepFailed(
                f"Program {argv[0]!r} could not be started: {exc}.", argv=argv, reason="not_started"
            ) from None

        pgid = transport.get_pid()  # the command leads its own group: its pid is the group id
        try:
            try:
                async with asyncio.timeout(timeout):
                    code = await asyncio.shield(protocol.exited)
            except TimeoutError:
                await self._stop(pgid, protocol)
                raise TaskTimeout(
                    f"The command ran past its timeout of {timeout:g} s; it and its children were killed. "
                    "Raise the step's timeout or make it faster.",
                    timeout=timeout,
                    argv=argv,
                ) from None
            except asyncio.CancelledError:
                await self._stop(pgid, protocol)
                raise
            # Exited. Read the rest of its output, unless a child it left behind holds the pipes open:
            # then that child is killed (as it would be anyway, below) and the pipes close.
            await _wait(protocol.closed, self.kill_grace)
            _killpg(pgid, signal.SIGKILL)
            await _wait(protocol.closed, self.kill_grace)
        finally:
            _killpg(pgid, signal.SIGKILL)  # nothing of the task may outlive it, however run() ends
            transport.close()
        if code != 0:
            raise _failed(argv, code, list(protocol.stderr_tail))
        return 0

    async def _stop(self, pgid: int, protocol: _OutputLines) -> None:
        """SIGTERM the command's group, give it ``kill_grace`` seconds to exit, then SIGKILL the group."""
        _killpg(pgid, signal.SIGTERM)
        try:
            await _wait(protocol.exited, self.kill_grace)
        finally:  # also when cancelled again while waiting
            _killpg(pgid, signal.SIGKILL)
        await _wait(protocol.exited, self.kill_grace)  # reaped


class _OutputLines(asyncio.SubprocessProtocol):
    """Turns a subprocess's output into log messages, line by line, and tells when it exited."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_message: OnMessage, clock: Callable[[], float], tail_fd: int = 2
    ) -> None:
        self.on_message = on_message
        self.clock = clock
        self.transport: asyncio.SubprocessTransport | None = None
        self.buffers = {1: bytearray()} if tail_fd == 1 else {1: bytearray(), 2: bytearray()}
        #: whose last lines a failure reports: stderr, or stdout when stderr is merged into it
        self.tail_fd = tail_fd
        self.stderr_tail: deque[str] = deque(maxlen=_STDERR_TAIL)
        #: the exit code (negative: killed by that signal), once the process has exited and been reaped
        self.exited: asyncio.Future[int] = loop.create_future()
        #: done once stdout and stderr are both closed (every process holding them has exited)
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        buffer = self.buffers[fd]
        buffer += data
        if b"\n" in data:
            *lines, rest = buffer.split(b"\n")
            buffer[:] = rest
            for line in lines:
                self._line(fd, line)
        while len(buffer) >= _MAX_LINE:  # a huge line: pass it on in pieces rather than hold it all
            self._line(fd, buffer[:_MAX_LINE])
            del buffer[:_MAX_LINE]

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        buffer = self.buffers.pop(fd, None)
        if buffer:  # the last line lacked its newline
            self._line(fd, buffer)
        if not self.buffers and not self.closed.done():
            self.closed.set_result(None)

    def process_exited(self) -> None:
        assert self.transport is not None
        code = self.transport.get_returncode()
        if not self.exited.done():
            self.exited.set_result(code if code is not None else -1)

    def _line(self, fd: int, raw: bytes | bytearray) -> None:
        line = raw.decode("utf-8", errors="replace").removesuffix("\r")
        if fd == self.tail_fd:
            self.stderr_tail.append(line)
        if fd == 2:
            line = "stderr: " + line
        deliver(self.on_message, LogMessage(line, self.clock()))


async def _wait(future: asyncio.Future[Any], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``future``, leaving it alone (not cancelled) if it is not done."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(future), timeout)


def _killpg(pgid: int, sig: int) -> None:
    """Signal a whole process group; a group that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _failed(argv: list[str], code: int, stderr_tail: list[str]) -> StepFailed:
    """The StepFailed for a command that exited with ``code`` (negative: killed by that signal)."""
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    last = next((line for line in reversed(stderr_tail) if line.strip()), "")
    message = f"Command {argv[0]!r} {how}" + (f": {last}" if last else " (nothing on stderr)")
    return StepFailed(
        message + ". See the task's log for its output.", exit_code=code, stderr=stderr_tail, argv=argv, reason="exited"
    )
