"""Steps that print, log and write to file descriptors, for the task-log capture tests (by file reference)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from datamill.pipeline import InputFile, Pipeline, command_step, step

HERE = Path(__file__).resolve()


def ref(name: str) -> str:
    """The reference of pipeline ``name`` in this file."""
    return f"{HERE}:{name}"


@step
def noisy(item: InputFile) -> str:
    """Prints to stdout and stderr, logs a warning, and leaves a line without its newline."""
    name = item.name
    print(f"print {name}")
    print(f"error {name}", file=sys.stderr)
    logging.getLogger("noisy").warning("warned %s", name)
    sys.stdout.write(f"partial {name}")
    return name


noisy_pipeline = Pipeline("noisy", [noisy])


@step
def low_level(item: InputFile) -> str:
    """Writes to file descriptors 1 and 2 directly, and from a child process (captured by the pool)."""
    os.write(1, f"fd1 {item.name}\n".encode())
    os.write(2, f"fd2 {item.name}\n".encode())
    subprocess.run([sys.executable, "-c", f"print('child {item.name}')"], check=True)
    return item.name


low_level_pipeline = Pipeline("low-level", [noisy, low_level])


@step
def unflushed(item: InputFile) -> str:
    """Leaves a line without its newline on fd 2, and has a thread print a line that Python's own
    buffer of stdout holds when the step returns (a thread does not inherit the call's context)."""
    os.write(2, f"fd2 tail {item.name}".encode())
    printer = threading.Thread(target=print, args=(f"thread {item.name}",))
    printer.start()
    printer.join()
    return item.name


@step
def quiet(unflushed: str) -> str:
    """Writes nothing: its log stays empty, even right after a step that left bytes behind."""
    return unflushed


unflushed_pipeline = Pipeline("unflushed", [unflushed, quiet])

#: Two inline tasks meet here on every line, so their prints interleave in time.
_meet = threading.Barrier(2, timeout=30)


@step(timeout=60)  # with a timeout the inline executor runs each task in a thread of its own
def together(item: InputFile) -> str:
    """Prints three lines in lockstep with another task running at the same time in this process."""
    for i in range(3):
        _meet.wait()
        print(f"{item.name} line {i}")
        logging.getLogger("together").warning("%s record %d", item.name, i)
    return item.name


together_pipeline = Pipeline("together", [together])


@step
def gated(item: InputFile, *, gate: str = "") -> str:
    """Prints a line, waits until the file ``gate`` exists, prints another."""
    print(f"before the gate {item.name}", flush=True)
    while not Path(gate).exists():
        time.sleep(0.02)
    print(f"after the gate {item.name}")
    return item.name


gated_pipeline = Pipeline("gated", [gated])

shout = command_step("shout", ["sh", "-c", 'echo "out $0"; echo "err $0" >&2', "{input}"], publish=False)
command_pipeline = Pipeline("command", [shout])
