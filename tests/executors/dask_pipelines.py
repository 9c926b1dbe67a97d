"""Pipelines for the Dask tests, loaded by file reference so the cluster's workers can load them too.

``die_once`` kills the worker process running its first execution of each item (SIGKILL: what an
out-of-memory killer or a lost machine does) and succeeds after; ``upper`` is a plain per-item step;
``shout`` writes a file output and says where it ran (for workers that share no file system).
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

from datamill.pipeline import Context, InputFile, Pipeline, step

PIPELINES = Path(__file__).resolve()


def ref(name: str) -> str:
    """The reference of pipeline ``name`` in this file."""
    return f"{PIPELINES}:{name}"


def executions(marks: str | Path, stem: str) -> int:
    """How many times a step ran for ``stem``."""
    d = Path(marks)
    return sum(1 for p in d.iterdir() if p.name.split(".", 1)[0] == stem) if d.exists() else 0


@step
def die_once(item: InputFile, *, marks: str = "") -> str:
    """The item's text upper-cased, after killing its own worker the first time."""
    d = Path(marks)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{item.ref.stem}.{uuid.uuid4().hex}").write_text(str(os.getpid()))
    if executions(d, item.ref.stem) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return item.read_text().upper()


@step
def upper(item: InputFile) -> str:
    """The item's text upper-cased, and the pid that did it."""
    return f"{item.read_text().upper()} by {os.getpid()}"


@step
def shout(item: InputFile, ctx: Context, *, home: str = "") -> None:
    """The item's bytes upper-cased as the file ``loud.txt``, and ``where.json``: where the step ran."""
    ctx.output("loud.txt").write_bytes(item.read_bytes().upper())
    where = {"input": str(item.path), "home_visible": Path(home).exists(), "pid": os.getpid()}
    ctx.output("where.json").write_text(json.dumps(where))


dies = Pipeline("dies", steps=[die_once.configure(retries=1, retry_backoff=0.05)])
plain = Pipeline("plain", steps=[upper])
shouts = Pipeline("shouts", steps=[shout])
