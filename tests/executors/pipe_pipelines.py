"""Pipelines and calls for the local pool's pipe tests, in a module of their own: a worker imports
it (by file reference, or by name for the plain calls) without the test suite's helpers.

``grow`` returns a value as big as its ``pad`` parameter: with a big parameter, every call carries
big arguments to a worker and brings a big result back, both ways at once on the same pipe.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from datamill.executors import Reporter
from datamill.pipeline import InputFile, Pipeline, step

PIPELINES = Path(__file__).resolve()


def ref(name: str) -> str:
    """The reference of pipeline ``name`` in this file."""
    return f"{PIPELINES}:{name}"


@step
def grow(item: InputFile, *, pad: str = "") -> bytes:
    """The item's bytes repeated to the size of ``pad`` (a parameter as big as the value returned)."""
    data = item.read_bytes()
    return data * (len(pad) // max(1, len(data)))


big_values = Pipeline("big_values", steps=[grow])


def kill_mid_result(reporter: Reporter, marks: str, size: int) -> bytes:
    """Returns ``size`` bytes; on its first execution its worker SIGKILLs itself once it has written
    half of that result to the pipe (part of the message sent, the rest not).

    The worker writes a message's bytes with ``os.write`` (one frame, see ``worker._Outbox``):
    patched here, in this worker only (it dies with the patch), to write half of the result and
    then die. A thread watching for the write to start missed it when the parent drained the pipe
    before that thread got the processor back.
    """
    first = not os.listdir(marks)
    Path(marks, f"run.{os.getpid()}").touch()
    if first:
        write = os.write

        def half_then_die(fd: int, buf: Any) -> int:
            if len(buf) >= size:  # the result's message, not a small one
                write(fd, memoryview(buf)[: len(buf) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return write(fd, buf)

        os.write = half_then_die
    return b"r" * size


def pad_task(reporter: Reporter, i: int, pad: bytes, die: bool = False) -> bytes:
    """A short call with big arguments and a result as big; may SIGKILL its own worker. It works for
    about 8 ms: short enough to go in chunks, long enough that its result goes back at once (while
    the rest of its chunk runs), as a step's would."""
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.008)
    return bytes([i]) * len(pad)
