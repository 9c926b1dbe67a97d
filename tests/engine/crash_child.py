"""A scheduler to kill: submits a run of ``peritem`` over ``Raw`` and drives it with the local executor.

``python -m tests.engine.crash_child HOME DB_URL MARKS`` (the repository root on ``PYTHONPATH``)
prints the run id, then drives the run with 1 s leases until it ends (or until the test SIGKILLs
this process, which is the point).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from datamill.engine.scheduler import Scheduler
from tests.helpers import open_home

from .engine_world import World
from .pipelines import ref


async def drive(world: World, run_id: int) -> None:
    async with Scheduler(world.home, "local", workers=2, lease_seconds=1.0) as scheduler:
        await scheduler.run_until_idle([run_id])


def main(home: str, db_url: str, marks: str) -> None:
    world = World(open_home(Path(home), db_url))
    run_id = world.submit(ref("peritem"), params={"marks": marks}, executor="local")
    print(run_id, flush=True)
    asyncio.run(drive(world, run_id))


if __name__ == "__main__":
    main(*sys.argv[1:4])
