"""The background services of a running datamill: scheduler, triggers, notifier, directory watchers,
stream consumers.

Starting them also removes the containers a crashed server of this home left running (see
:meth:`~datamill.engine.scheduler.Scheduler.sweep_containers`).

``datamill up`` starts them inside the server process (in the app's lifespan); tests and
benchmarks may start them on their own with :class:`Services`.

The scheduler's task lease (how long a task claimed by a process that died stays claimed before
another takes it over) is ``lease_seconds``; when not given, the home's ``lease_seconds`` setting
(``DATAMILL_LEASE_SECONDS``, default 30 s). Crash-recovery tests set a short one so that reclaims
happen quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from datamill.dataflows.directory import DirectoryFlows
from datamill.dataflows.ingest import StreamIngest
from datamill.dataflows.notifications import Notifier
from datamill.dataflows.triggers import Triggers
from datamill.engine.engine import Engine
from datamill.engine.scheduler import Scheduler
from datamill.home import Home
from datamill.nodes import Heartbeat

log = logging.getLogger("datamill.services")


class Services:
    """Runs the scheduler, the dataflow triggers, the webhook notifier and the directory watchers as asyncio tasks."""

    def __init__(
        self,
        home: Home,
        executor: str | None = None,
        workers: int | None = None,
        lease_seconds: float | None = None,
        base_url: str | None = None,
        role: str = "server",
    ) -> None:
        self.home = home
        self.engine = Engine(home)
        # The scheduler shares its event loop with the server's requests (inline calls run in threads).
        self.scheduler = Scheduler(home, executor, workers=workers, lease_seconds=lease_seconds, shares_loop=True)
        # Runs its triggers record go straight to this process's scheduler, with what driving them needs.
        self.triggers = Triggers(home, self.engine, scheduler=self.scheduler)
        self.notifier = Notifier(home, base_url=base_url)
        self.directories = DirectoryFlows(home, lease_seconds=lease_seconds)
        self.streams = StreamIngest(home)
        # Named as the scheduler's lease owner, so `datamill doctor` can tie tasks to processes.
        self.heartbeat = Heartbeat(home.db, self.scheduler.owner, role, base_url)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start every service; returns at once."""
        self._stop = asyncio.Event()
        await self.scheduler.start()
        self._tasks = [
            asyncio.create_task(self._guard("scheduler", self.scheduler.serve(self._stop))),
            asyncio.create_task(self._guard("triggers", self.triggers.serve(self._stop))),
            asyncio.create_task(self._guard("notifier", self.notifier.serve(self._stop))),
            asyncio.create_task(self._guard("directories", self.directories.serve(self._stop))),
            # a crashed server's containers: removed now, beside the other services (podman is slow)
            asyncio.create_task(self._guard("container sweep", self.scheduler.sweep_containers())),
            asyncio.create_task(self._guard("streams", self.streams.serve(self._stop))),
            asyncio.create_task(self._guard("heartbeat", self.heartbeat.serve(self._stop))),
        ]

    async def _guard(self, name: str, coro: object) -> None:
        try:
            await coro  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the %s service stopped with an error", name)

    async def stop(self) -> None:
        """Stop the services; the runs the scheduler was driving are handed back for another scheduler
        (or the next start) to take over at once (:meth:`Scheduler.close`)."""
        self._stop.set()
        for t in self._tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(t), timeout=2.0)
        for t in self._tasks:
            t.cancel()
        await asyncio.to_thread(self.directories.close)
        await self.scheduler.close()
        self._tasks = []
