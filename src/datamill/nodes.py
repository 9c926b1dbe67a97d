"""Nodes: the processes of one deployment (servers and workers), each seen recently or not.

Every ``datamill up`` and ``datamill worker`` registers itself in ``nodes`` when it starts (its
name is the scheduler's lease owner: host, pid and a random part), renews ``seen_at`` every
:data:`HEARTBEAT_SECONDS` while it runs and removes its row when it stops cleanly. A process that
died keeps its row with an old ``seen_at``: ``datamill doctor`` names it, and the leases it held
(tasks, directory dataflows) pass to the others as they expire. Rows are only for display: no
correctness depends on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update

from datamill._version import __version__
from datamill.db.database import Database, head_revision
from datamill.db.models import Node

log = logging.getLogger("datamill.nodes")

#: How often a running process renews its row.
HEARTBEAT_SECONDS = 5.0
#: A row not renewed for this long belongs to a process that is gone (or cannot reach the database).
STALE_SECONDS = 30.0
#: Roles: ``server`` (API + services), ``api`` (API only), ``worker`` (services, no HTTP).
ROLES = ("server", "api", "worker")


@dataclass(frozen=True)
class NodeInfo:
    """One registered process."""

    name: str
    role: str
    host: str
    pid: int
    version: str
    schema: str
    url: str | None
    started_at: float
    seen_at: float

    def alive(self, now: float | None = None) -> bool:
        """Whether it renewed its row recently."""
        return (time.time() if now is None else now) - self.seen_at < STALE_SECONDS


def register(db: Database, name: str, role: str, url: str | None = None) -> None:
    """Add (or replace) this process's row."""
    now = time.time()
    values = {
        "name": name,
        "role": role,
        "host": os.uname().nodename,
        "pid": os.getpid(),
        "version": __version__,
        "schema": head_revision() or "",
        "url": url,
        "started_at": now,
        "seen_at": now,
    }
    with db.write() as conn:
        conn.execute(delete(Node).where(Node.name == name))
        conn.execute(insert(Node).values(**values))


def beat(db: Database, name: str) -> None:
    """Renew this process's row."""
    with db.write() as conn:
        conn.execute(update(Node).where(Node.name == name).values(seen_at=time.time()))


def forget(db: Database, name: str) -> None:
    """Remove this process's row (a clean stop)."""
    with db.write() as conn:
        conn.execute(delete(Node).where(Node.name == name))


def list_nodes(db: Database) -> list[NodeInfo]:
    """Every registered process, by role then name."""
    with db.read() as conn:
        rows = conn.execute(select(Node).order_by(Node.role, Node.name)).all()
    return [NodeInfo(r.name, r.role, r.host, r.pid, r.version, r.schema, r.url, r.started_at, r.seen_at) for r in rows]


class Heartbeat:
    """Registers a process, renews it until stopped, and removes it on a clean stop."""

    def __init__(self, db: Database, name: str, role: str, url: str | None = None) -> None:
        self.db = db
        self.name = name
        self.role = role
        self.url = url

    async def serve(self, stop: asyncio.Event) -> None:
        """Register, then renew every :data:`HEARTBEAT_SECONDS` until ``stop`` is set; then forget."""
        await asyncio.to_thread(register, self.db, self.name, self.role, self.url)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), HEARTBEAT_SECONDS)
                if stop.is_set():
                    break
                try:
                    await asyncio.to_thread(beat, self.db, self.name)
                except Exception:
                    # The database may be away for a while; the next beat tries again.
                    log.warning("could not renew node %s; trying again", self.name)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(forget, self.db, self.name)
