"""``datamill doctor``: check a deployment and say what is wrong and what to do.

Each check is independent and never changes data a user made: the database (reachable, which
server), the schema (at the migrations this datamill ships), the blob store (a probe blob of
random bytes written, read back verified and removed), the executor (a Dask scheduler reachable,
its workers), the processes of the deployment (``nodes``: servers and workers seen recently, any
that stopped renewing, runs waiting with nobody to run them) and their versions.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, select

from datamill._version import __version__
from datamill.config import Settings, mask_url
from datamill.coroutine import run_to_end
from datamill.db.database import Database, Keepalives, head_revision
from datamill.db.models import Run
from datamill.errors import DatamillError
from datamill.nodes import STALE_SECONDS, NodeInfo, list_nodes

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``ok``, ``warn`` (works, but look at it) or ``fail`` (broken)."""

    name: str
    status: Status
    message: str

    def to_dict(self) -> dict[str, str]:
        """The check as JSON."""
        return {"name": self.name, "status": self.status, "message": self.message}


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in order; a check that cannot run (the database is down) says why."""
    checks: list[Check] = []
    db = Database(settings.resolved_database_url, Keepalives.of(settings))
    try:
        checks.append(_guarded("database", lambda: _database(db, settings)))
        database_ok = checks[-1].status != "fail"
        if database_ok:
            checks.append(_guarded("schema", lambda: _schema(db)))
        checks.append(_guarded("blob store", lambda: _blobs(settings)))
        checks.append(_guarded("executor", lambda: _executor(settings)))
        if database_ok and checks[1].status != "fail":
            nodes = list_nodes(db)
            checks.append(_guarded("processes", lambda: _processes(db, nodes)))
            checks.append(_guarded("versions", lambda: _versions(nodes)))
    finally:
        db.dispose()
    return checks


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    try:
        return check()
    except DatamillError as exc:
        return Check(name, "fail", exc.message)
    except Exception as exc:  # a check must report, never crash the doctor
        return Check(name, "fail", f"{type(exc).__name__}: {exc}")


def _database(db: Database, settings: Settings) -> Check:
    where = mask_url(settings.resolved_database_url)
    try:
        with db.read() as conn:
            if db.is_sqlite:
                version = conn.exec_driver_sql("select sqlite_version()").scalar()
                return Check("database", "ok", f"SQLite {version} at {where}")
            version = conn.exec_driver_sql("show server_version").scalar()
    except DatamillError:
        return Check(
            "database",
            "fail",
            f"cannot connect to {where}: check database_url, and that the server runs and accepts us",
        )
    return Check("database", "ok", f"PostgreSQL {version} at {where}")


def _schema(db: Database) -> Check:
    head = head_revision()
    try:
        with db.read() as conn:
            rows = [r[0] for r in conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()]
    except DatamillError:
        return Check(
            "schema", "fail", "the database has no datamill tables: `datamill up` creates them on its first start"
        )
    if rows == [head]:
        return Check("schema", "ok", f"at {head}, the newest this datamill ({__version__}) knows")
    return Check(
        "schema",
        "fail",
        f"the database is at {', '.join(rows) or 'nothing'}, this datamill ({__version__}) expects {head}: "
        "upgrade every server and worker to one version, then start one (`datamill up` migrates)",
    )


def _blobs(settings: Settings) -> Check:
    from datamill.store.blobs import digest_bytes, open_blob_store

    store = open_blob_store(settings.resolved_blob_url, settings)
    where = mask_url(settings.resolved_blob_url)
    try:
        probe = f"datamill doctor probe {uuid.uuid4()} {time.time()}".encode()
        started = time.perf_counter()
        info = store.put(probe)
        if info.digest != digest_bytes(probe) or store.read(info.digest) != probe:
            return Check("blob store", "fail", f"{where} gave back other bytes than were written: check the store")
        store.delete(info.digest)  # random bytes: no version refers to them
        took = (time.perf_counter() - started) * 1000
    finally:
        store.close()
    return Check("blob store", "ok", f"{where}: a probe blob written, read back verified and removed in {took:.0f} ms")


def _executor(settings: Settings) -> Check:
    name = settings.executor
    if name != "dask":
        workers = settings.workers or os.cpu_count() or 1
        detail = f", {workers} worker processes per server or worker" if name == "local" else ""
        return Check("executor", "ok", f"{name}{detail}")
    if not settings.dask_scheduler:
        return Check("executor", "ok", "dask, a local cluster per server or worker (dask_scheduler is empty)")
    return _dask(settings.dask_scheduler)


def _dask(address: str) -> Check:
    try:
        from distributed import Client
    except ImportError:
        return Check("executor", "fail", "executor = dask but Dask is not installed: install datamill[dask]")

    async def probe() -> tuple[int, int]:
        async with Client(address, asynchronous=True, timeout=10) as client:
            info: dict[str, Any] = client.scheduler_info()
            workers = info.get("workers", {})
            return len(workers), sum(int(w.get("nthreads", 1)) for w in workers.values())

    try:
        workers, threads = run_to_end(probe())
    except (OSError, TimeoutError):
        return Check("executor", "fail", f"cannot reach the Dask scheduler at {address}: is `dask scheduler` running?")
    if workers == 0:
        return Check(
            "executor", "warn", f"the Dask scheduler at {address} has no workers: start `dask worker {address}`"
        )
    return Check("executor", "ok", f"dask at {address}: {workers} workers, {threads} threads")


def _processes(db: Database, nodes: list[NodeInfo]) -> Check:
    now = time.time()
    alive = [n for n in nodes if n.alive(now)]
    gone = [n for n in nodes if not n.alive(now)]
    running = [n for n in alive if n.role in ("server", "worker")]
    with db.read() as conn:
        waiting = conn.execute(
            select(func.count()).select_from(Run).where(Run.status.in_(("queued", "running")))
        ).scalar()
    counts = ", ".join(f"{sum(1 for n in alive if n.role == r)} {r}" for r in ("server", "api", "worker"))
    parts = [f"alive: {counts}"]
    status: Status = "ok"
    if gone:
        status = "warn"
        names = ", ".join(f"{n.role} {n.name} (last seen {now - n.seen_at:.0f} s ago)" for n in gone)
        parts.append(
            f"not seen for over {STALE_SECONDS:.0f} s: {names}; if stopped for good, its tasks pass to the others as "
            "their leases expire"
        )
    if waiting and not running:
        status = "fail"
        parts.append(f"{waiting} runs wait but no server or worker runs them: start `datamill worker` or `datamill up`")
    return Check("processes", status, "; ".join(parts))


def _versions(nodes: list[NodeInfo]) -> Check:
    head = head_revision() or ""
    alive = [n for n in nodes if n.alive()]
    odd = [n for n in alive if n.version != __version__ or n.schema != head]
    if not odd:
        return Check("versions", "ok", f"every live process runs datamill {__version__} (schema {head})")
    names = ", ".join(f"{n.role} {n.name}: {n.version} (schema {n.schema})" for n in odd)
    return Check("versions", "warn", f"this is datamill {__version__} (schema {head}), but {names}: upgrade them")
