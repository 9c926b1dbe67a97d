"""The embedded client: works directly on a home directory, with the same access checks as the API.

Everything but running in this process is the :class:`~datamill.service.Service` the API's routes
call too; this adds executing a run here and waiting for one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from datamill.client.base import Client, ProgressFn
from datamill.coroutine import run_to_end
from datamill.engine.records import RunInfo
from datamill.engine.runs import FINISHED_RUN
from datamill.home import Home
from datamill.records import VersionInfo
from datamill.service import Service, dataflow_changes
from datamill.store.access import Actor
from datamill.store.records import ItemInfo

__all__ = ["FOLLOW_POLL_SECONDS", "LocalClient", "dataflow_changes"]

#: Longest wait between two looks at a run another process executes (new events end it sooner).
FOLLOW_POLL_SECONDS = 1.0


class LocalClient(Service, Client):
    """A client on a local :class:`~datamill.home.Home`, acting as one user (the admin by default)."""

    #: the store's reader verifies every full read against the digest
    verified_streams = True
    embedded = True

    def __init__(self, home: Home, actor: Actor | None = None, owns_home: bool = False, serving: bool = False) -> None:
        super().__init__(home, actor, serving)
        self._owns_home = owns_home

    def _copy_version(self, info: VersionInfo, fd: int, progress: ProgressFn | None) -> bool:
        # The version was read with the caller's access checked; its blob is copied by the kernel.
        self.store.blobs.copy_to(info.digest, fd, progress)
        return True

    def close(self) -> None:
        if self._owns_home:
            self.home.close()

    def items_page(
        self, folder: str, cursor: str | None = None, limit: int = 1000, sort: str = "name", descending: bool = False
    ) -> tuple[list[ItemInfo], str | None]:
        batch = self.items_after(folder, cursor, limit, sort, descending)
        return batch.items, batch.next

    def as_user(self, name: str) -> LocalClient:
        """A client on the same home acting as another user (to try access rules)."""
        return LocalClient(self.home, self.home.actor(name))

    def run(
        self,
        pipeline_ref: str,
        folder: str,
        dest: str | None = None,
        params: Mapping[str, Any] | None = None,
        force: bool = False,
        executor: str | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> RunInfo:
        executor = executor or self.home.settings.executor
        run_id = self.submit_run(pipeline_ref, folder, dest, params, force, executor=executor)
        if on_start is not None:
            on_start(run_id)
        return self.execute(run_id, executor)

    def execute(self, run_id: int, executor: str | None = None, workers: int | None = None) -> RunInfo:
        """Execute a recorded run in this process until it ends; returns it (as :meth:`run_info`).

        What ``Engine.run`` does after submitting. A ``datamill up`` on the same home may execute
        some or all of its tasks meanwhile: this waits for those too, so the run has ended on return.
        Ctrl-C cancels the run (its running tasks here are marked cancelled at once).
        """
        self.run_info(run_id)  # access check: a run you may not see is not yours to execute
        from datamill.engine.scheduler import Scheduler

        sched = Scheduler(self.home, executor or self.home.settings.executor, workers=workers)

        async def go() -> None:
            async with sched:
                while True:
                    await sched.run_until_idle([run_id])
                    if await self._follow_elsewhere(sched, run_id):
                        break
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                # Ctrl-C arrived while the scheduler was closing, which waits through cancellation:
                # let asyncio.run turn it into KeyboardInterrupt all the same.
                raise asyncio.CancelledError

        try:
            run_to_end(go())
        except KeyboardInterrupt:
            self._abandon(run_id, sched.owner)
            raise
        return self.run_info(run_id)

    async def _follow_elsewhere(self, sched: Any, run_id: int) -> bool:
        """Wait while another scheduler (a ``datamill up`` on this home) holds the run's remaining tasks.

        True once the run has ended; False when it has queued tasks again (requeued because the
        scheduler holding them died and their leases expired, or made ready by its progress), which
        this process then drives itself. Whoever executes a run, the caller sees it to its end.
        """
        events = self.home.events
        while True:
            cursor = await asyncio.to_thread(events.latest)
            await asyncio.to_thread(sched.pending_runs)  # requeues the tasks of a scheduler that died
            status, queued = await asyncio.to_thread(self._run_progress, run_id)
            if status in FINISHED_RUN:
                return True
            if queued:
                return False
            await asyncio.to_thread(events.wait, cursor, FOLLOW_POLL_SECONDS)

    def _run_progress(self, run_id: int) -> tuple[str, bool]:
        """A run's status, and whether it has queued tasks."""
        from sqlalchemy import select

        from datamill.db.models import Run, Task
        from datamill.engine import runs

        with self.home.db.read() as conn:
            status = conn.execute(select(Run.status).where(Run.id == run_id)).scalar_one()
            queued = conn.execute(
                select(Task.id).where(Task.run_id == run_id, Task.status == runs.TaskStatus.QUEUED).limit(1)
            ).first()
        return str(status), queued is not None

    def _abandon(self, run_id: int, owner: str) -> None:
        """Cancel a run whose in-process scheduler was interrupted, ending the tasks it held."""
        from sqlalchemy import select

        from datamill.db.models import Task
        from datamill.engine import runs

        with self.home.db.write() as conn:
            folder_id = runs.run_folder_id(conn, run_id)
            held = conn.execute(
                select(Task.id).where(
                    Task.run_id == run_id, Task.lease_owner == owner, Task.status == runs.TaskStatus.RUNNING
                )
            ).scalars()
            for tid in list(held):
                runs.finish_task(conn, tid, run_id, runs.TaskStatus.CANCELLED, folder_id, error="interrupted")
            runs.request_cancel(conn, run_id, self.actor.id, folder_id)
            runs.finish_run_if_done(conn, run_id, folder_id)

    def wait_run(self, run_id: int, timeout: float | None = None) -> RunInfo:
        deadline = None if timeout is None else time.monotonic() + timeout
        events = self.home.events
        while True:
            cursor = events.latest()
            info = self.run_info(run_id)
            if info.status in FINISHED_RUN:
                return info
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                return info
            events.wait(cursor, left)
