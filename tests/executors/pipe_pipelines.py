"""Pipelines and calls for the local pool's pipe tests, in a module of their own: a worker imports
it (by file reference, or by name for the plain calls) without the test suite's helpers.

``grow`` returns a value as big as its ``pad`` parameter: with a big parameter, every call carries
big arguments to a worker and brings a big result back, both ways at once on the same pipe.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

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
    """Returns ``size`` bytes; on its first execution it SIGKILLs its own worker while the worker
    is writing that result to the pipe (part of the message sent, the rest not)."""
    first = not os.listdir(marks)
    Path(marks, f"run.{os.getpid()}").touch()
    if first:
        main = threading.get_ident()

        def killer() -> None:
            while True:  # the call's own doing: it watches its worker's main thread, no timing
                frame = sys._current_frames().get(main)
                while frame is not None and frame.f_code.co_name != "_send":
                    frame = frame.f_back
                if frame is not None and len(frame.f_locals.get("buf", b"")) >= size:
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0.0005)  # and leaves it the interpreter meanwhile

        threading.Thread(target=killer, daemon=True).start()
    return b"r" * size


def pad_task(reporter: Reporter, i: int, pad: bytes, die: bool = False) -> bytes:
    """A short call with big arguments and a result as big; may SIGKILL its own worker. It works for
    about 8 ms: short enough to go in chunks, long enough that its result goes back at once (while
    the rest of its chunk runs), as a step's would."""
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.008)
    return bytes([i]) * len(pad)
