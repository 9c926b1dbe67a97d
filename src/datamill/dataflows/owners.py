"""Who runs a directory dataflow: one server at a time, under a lease it renews, and the status it reports.

Two servers on one database each keep their directory dataflows in step
(:class:`~datamill.dataflows.directory.DirectoryFlows`); before a server starts a watcher it
claims the dataflow's row in ``dataflow_owners``, which it may only do when the row is its own or
its lease expired. The owner renews the lease (and writes the watcher's live status there) every
second or so; a server that dies stops renewing, and once ``expires_at`` passes another server
claims the row and starts the watcher. Both claims are one conditional ``UPDATE`` (or an
``INSERT`` that only one can win), atomic on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, insert, or_, select, update

from datamill.db.models import DataflowOwner
from datamill.errors import AlreadyExists


def claim(db: Any, dataflow_id: int, owner: str, lease_seconds: float, status: dict[str, Any] | None = None) -> bool:
    """Take or renew ``owner``'s lease on the dataflow; False when another live owner holds it.

    ``status`` (when given) is written with the renewal: what the dataflow's record shows.
    """
    now = time.time()
    values: dict[str, Any] = {"owner": owner, "expires_at": now + lease_seconds, "updated_at": now}
    if status is not None:
        values["status"] = status
    with db.write() as conn:
        taken = conn.execute(
            update(DataflowOwner)
            .where(
                DataflowOwner.dataflow_id == dataflow_id,
                or_(DataflowOwner.owner == owner, DataflowOwner.expires_at < now),
            )
            .values(**values)
        ).rowcount
        if taken:
            return True
        if conn.execute(select(DataflowOwner.owner).where(DataflowOwner.dataflow_id == dataflow_id)).first():
            return False  # another server holds it, and its lease has not run out
    try:
        with db.write() as conn:
            conn.execute(
                insert(DataflowOwner).values(
                    dataflow_id=dataflow_id,
                    owner=owner,
                    expires_at=values["expires_at"],
                    updated_at=now,
                    status=status or {},
                )
            )
    except AlreadyExists:
        return False  # another server inserted it first
    return True


def release(db: Any, dataflow_id: int, owner: str, status: dict[str, Any] | None = None) -> None:
    """Give up ``owner``'s lease at once (the status stays, for ``flow show``); no-op if not the owner."""
    values: dict[str, Any] = {"expires_at": 0.0, "updated_at": time.time()}
    if status is not None:
        values["status"] = status
    with db.write() as conn:
        conn.execute(
            update(DataflowOwner)
            .where(DataflowOwner.dataflow_id == dataflow_id, DataflowOwner.owner == owner)
            .values(**values)
        )


def status_of(conn: Connection, dataflow_id: int) -> dict[str, Any] | None:
    """The status the dataflow's owner last reported, with ``owner`` and ``running`` (lease live); None if none."""
    row = conn.execute(
        select(DataflowOwner.owner, DataflowOwner.expires_at, DataflowOwner.status, DataflowOwner.updated_at).where(
            DataflowOwner.dataflow_id == dataflow_id
        )
    ).first()
    if row is None:
        return None
    return {
        **dict(row.status or {}),
        "owner": row.owner,
        "running": row.expires_at > time.time(),
        "reported_at": row.updated_at,
    }
