"""A scheduler that dies (SIGKILL, by its own hand) right after its N-th group commit.

``python -m tests.engine.group_crash_child HOME DB_URL MARKS N`` (the repository root on
``PYTHONPATH``) submits a run of ``peritem`` over ``Raw``, prints the run id, and drives it with
the inline executor under 1 s leases; once its N-th group commit has returned, the process kills
itself: a crash between two batches, with the next batch claimed and not run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from datamill.engine.scheduler import Scheduler
from tests.helpers import open_home

from .engine_world import World
from .pipelines import ref


async def drive(world: World, run_id: int, after: int) -> None:
    async with Scheduler(world.home, "inline", lease_seconds=1.0) as scheduler:
        commit = scheduler.recorder.commit
        count = 0

        def commit_then_die(*args: Any, **kwargs: Any) -> Any:
            nonlocal count
            got = commit(*args, **kwargs)
            count += 1
            if count >= after:
                os.kill(os.getpid(), signal.SIGKILL)
            return got

        scheduler.recorder.commit = commit_then_die  # type: ignore[method-assign]
        await scheduler.run_until_idle([run_id])


def main(home: str, db_url: str, marks: str, after: str) -> None:
    world = World(open_home(Path(home), db_url))
    run_id = world.submit(ref("peritem"), params={"marks": marks}, executor="inline")
    print(run_id, flush=True)
    asyncio.run(drive(world, run_id, int(after)))


if __name__ == "__main__":
    main(*sys.argv[1:5])
