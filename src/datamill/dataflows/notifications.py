"""Webhook notifications for dataflow runs, delivered from the event log.

The notifier reads ``run.finished`` events after its cursor; for a run of a dataflow with
webhooks it records one delivery per URL **in the same transaction** that advances the cursor,
so none is lost across restarts. Deliveries are POSTed (JSON) and retried with exponential
backoff until a 2xx answer or ``MAX_ATTEMPTS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from datamill import events
from datamill.db.models import Cursor, Dataflow, Delivery, Event, Run
from datamill.events import EventKind
from datamill.home import Home

log = logging.getLogger("datamill.notifications")

CURSOR = "notifier"
MAX_ATTEMPTS = 10
#: Seconds past a request's timeout that a claimed delivery stays with the process that claimed it.
CLAIM_SLACK_SECONDS = 30.0
BACKOFF_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0
#: The events deliveries are queued for: a run's end (``run.finished``); others' commits wake nothing here.
FAMILIES = ("run",)


class Notifier:
    """Queues and delivers webhook notifications."""

    def __init__(
        self,
        home: Home,
        clock: Callable[[], float] = time.time,
        timeout: float = 10.0,
        base_url: str | None = None,
    ) -> None:
        self.home = home
        self.clock = clock
        self.timeout = timeout
        self.base_url = base_url

    def queue(self) -> int:
        """Record deliveries for runs finished since the cursor; returns how many were recorded."""
        with self.home.db.read() as conn:
            # Usually no run has finished: say so without taking the write lock.
            seen = conn.execute(select(Cursor.seq).where(Cursor.name == CURSOR)).scalar() or 0
            finished = select(Event.seq).where(Event.seq > seen, Event.kind == EventKind.RUN_FINISHED).limit(1)
            if conn.execute(finished).first() is None:
                return 0
        with self.home.db.write() as conn:
            ins = pg_insert(Cursor) if conn.dialect.name == "postgresql" else sqlite_insert(Cursor)
            conn.execute(ins.values(name=CURSOR, seq=0).on_conflict_do_nothing(index_elements=["name"]))
            # FOR UPDATE: notifiers of several processes take turns; each records what the last left.
            cursor = conn.execute(select(Cursor.seq).where(Cursor.name == CURSOR).with_for_update()).scalar_one()
            rows = conn.execute(
                select(Event)
                .where(Event.seq > cursor, Event.kind == EventKind.RUN_FINISHED)
                .order_by(Event.seq)
                .limit(500)
            ).all()
            latest = conn.execute(select(Event.seq).order_by(Event.seq.desc()).limit(1)).scalar() or cursor
            if rows and len(rows) == 500:
                latest = rows[-1].seq
            n = 0
            now = self.clock()
            for ev in rows:
                if ev.dataflow_id is None:
                    continue
                flow = conn.execute(select(Dataflow.name, Dataflow.config).where(Dataflow.id == ev.dataflow_id)).first()
                if flow is None:
                    continue
                hooks = (flow.config or {}).get("webhooks") or []
                if not hooks:
                    continue
                payload = self._payload(conn, ev, flow.name)
                for url in hooks:
                    conn.execute(
                        insert(Delivery).values(
                            dataflow_id=ev.dataflow_id,
                            run_id=ev.run_id,
                            event_seq=ev.seq,
                            url=url,
                            payload=payload,
                            status="pending",
                            attempts=0,
                            next_attempt_at=now,
                            created_at=now,
                        )
                    )
                    n += 1
            conn.execute(update(Cursor).where(Cursor.name == CURSOR).values(seq=latest))
            return n

    def _payload(self, conn: Any, ev: Any, flow_name: str) -> dict[str, Any]:
        run = conn.execute(select(Run).where(Run.id == ev.run_id)).first()
        status = ev.data.get("status")
        base = (self.base_url or f"http://{self.home.settings.host}:{self.home.settings.port}").rstrip("/")
        return {
            "event": "run.failed" if status == "failed" else "run.finished",
            "dataflow": flow_name,
            "run": ev.run_id,
            "status": status,
            "counts": ev.data.get("counts", {}),
            "reason": run.reason if run is not None else None,
            "requested_at": run.requested_at if run is not None else None,
            "finished_at": ev.ts,
            "links": {
                "run": f"{base}/api/v1/runs/{ev.run_id}",
                "dataflow": f"{base}/api/v1/dataflows/{flow_name}",
            },
        }

    def deliver_due(self) -> int:
        """POST every delivery that is due; returns how many succeeded."""
        now = self.clock()
        due = self._claim(now)
        if not due:
            return 0  # building an HTTP client costs ~100 ms of CPU (TLS setup): only when needed
        ok = 0
        with httpx.Client(timeout=self.timeout) as http:
            for d in due:
                error: str | None = None
                try:
                    headers = {"User-Agent": "datamill-webhook", "X-Datamill-Delivery": str(d.id)}
                    resp = http.post(d.url, json=d.payload, headers=headers)
                    if not 200 <= resp.status_code < 300:
                        error = f"HTTP {resp.status_code}"
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                self._record(d, error)
                ok += error is None
        return ok

    def _claim(self, now: float) -> list[Any]:
        """Take the due deliveries for this process: each is sent by one notifier, whichever runs.

        Claimed rows get ``next_attempt_at`` pushed past the request's timeout: a process that dies
        mid-send leaves them to be sent again once that passes (a receiver can tell a repeat by
        ``X-Datamill-Delivery``); SKIP LOCKED lets notifiers of other processes take other rows.
        """
        with self.home.db.read() as conn:
            waiting = conn.execute(
                select(Delivery.id).where(Delivery.status == "pending", Delivery.next_attempt_at <= now).limit(1)
            ).first()
        if waiting is None:
            return []  # usually nothing is due: say so without the write lock
        with self.home.db.write() as conn:
            due = conn.execute(
                select(Delivery)
                .where(Delivery.status == "pending", Delivery.next_attempt_at <= now)
                .order_by(Delivery.id)
                .limit(100)
                .with_for_update(skip_locked=True)
            ).all()
            if due:
                lease = now + self.timeout + CLAIM_SLACK_SECONDS
                conn.execute(update(Delivery).where(Delivery.id.in_([d.id for d in due])).values(next_attempt_at=lease))
        return list(due)

    def _record(self, d: Any, error: str | None) -> None:
        now = self.clock()
        attempts = d.attempts + 1
        with self.home.db.write() as conn:
            if error is None:
                values: dict[str, Any] = {"status": "delivered", "attempts": attempts, "delivered_at": now}
            elif attempts >= MAX_ATTEMPTS:
                values = {"status": "failed", "attempts": attempts, "last_error": error}
                log.warning("webhook %s for run %s gave up after %d attempts: %s", d.url, d.run_id, attempts, error)
            else:
                delay = min(BACKOFF_CAP_SECONDS, BACKOFF_SECONDS * 2 ** (attempts - 1))
                values = {"attempts": attempts, "last_error": error, "next_attempt_at": now + delay}
            conn.execute(update(Delivery).where(Delivery.id == d.id).values(**values))

    def deliveries(self, dataflow_id: int | None = None) -> list[dict[str, Any]]:
        """Recorded deliveries (newest first)."""
        with self.home.db.read() as conn:
            q = select(Delivery).order_by(Delivery.id.desc()).limit(200)
            if dataflow_id is not None:
                q = q.where(Delivery.dataflow_id == dataflow_id)
            return [
                {
                    "id": d.id,
                    "run": d.run_id,
                    "url": d.url,
                    "status": d.status,
                    "attempts": d.attempts,
                    "last_error": d.last_error,
                    "payload": d.payload,
                }
                for d in conn.execute(q)
            ]

    def next_due(self) -> float | None:
        """Seconds until the next pending delivery is due."""
        with self.home.db.read() as conn:
            t = conn.execute(
                select(Delivery.next_attempt_at).where(Delivery.status == "pending").order_by(Delivery.next_attempt_at)
            ).scalar()
        return None if t is None else max(0.0, t - self.clock())

    async def serve(self, stop: asyncio.Event, poll: float = 1.0) -> None:
        """Queue and deliver until ``stop`` is set.

        Runs finish only with new events: deliveries are queued when the log grew since the last
        pass, and looked for again only while some are pending (an idle server reads nothing).
        """
        seen = -1
        due: float | None = None
        last = -events.PACE_SECONDS  # when the last pass for new events began (monotonic)
        while not stop.is_set():
            try:
                cursor = await asyncio.to_thread(self.home.events.latest, FAMILIES)
                if cursor != seen:
                    if time.monotonic() < last + events.PACE_SECONDS:  # events keep coming: take them together
                        await events.pace(last, stop)
                        cursor = await asyncio.to_thread(self.home.events.latest, FAMILIES)
                    last = time.monotonic()
                    await asyncio.to_thread(self.queue)
                    due = await asyncio.to_thread(self.next_due)
                    seen = cursor
                elif due is not None:  # pending deliveries: another process may have sent them
                    due = await asyncio.to_thread(self.next_due)
                if due is not None and due <= 0:
                    await asyncio.to_thread(self.deliver_due)
                    due = await asyncio.to_thread(self.next_due)
            except Exception:
                # The database may be unreachable for a while: the service must outlive that.
                log.exception("notification pass failed; trying again")
                seen = -1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll)
                continue
            timeout = poll if due is None else min(poll, max(due, 0.01))
            await self.home.events.wait_or_stop(cursor, timeout, stop, FAMILIES)
