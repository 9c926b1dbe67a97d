"""Batches: a named selection of items that a pipeline runs over (what Chowda's users called a batch).

A batch is made from folders, a search, a pasted list of item paths, or another batch's outputs;
it remembers the items (by id: a renamed item stays in it), the pipeline, its parameters and the
destination folder. ``start`` runs the pipeline over the items' current versions; ``status`` is the
per-item by per-step grid (status and progress of each task) with counts of items completed,
successful and unstarted; ``retry`` reruns only what failed (a new run where everything that
succeeded is reused from the cache); ``duplicate`` makes a new batch of the same selection;
``zip_chunks`` streams every published output as a zip.

Who sees what: a batch is visible to its owner, site admins, and users who may read its
destination folder; each sees only the items (and the outputs) of folders they may read, so a
batch never reveals the names of items its viewer may not read. Only the owner (or an admin)
starts, retries or deletes it.
"""

from __future__ import annotations

import re
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, cast

from sqlalchemy import Connection, delete, insert, select, update

from datamill.dataflows.records import BatchCell, BatchCounts, BatchInfo, BatchRow, BatchStatus
from datamill.db.models import Batch
from datamill.engine import registry
from datamill.engine.engine import Engine, resolve_pipeline
from datamill.engine.params import split_params
from datamill.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from datamill.home import Home
from datamill.pipeline.inputs import InputRef
from datamill.records import DONE_OK, FINISHED_TASK, TaskStatus
from datamill.store import lookups
from datamill.store.access import Actor, Level, level_on, require
from datamill.store.names import join_path, split_path
from datamill.store.store import ItemInfo
from datamill.store.visibility import Visibility

__all__ = ["BatchCell", "BatchCounts", "BatchInfo", "BatchRow", "BatchSource", "BatchStatus", "Batches"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
#: The most items one batch holds (a pasted list, a search): runs of more are split into batches.
MAX_ITEMS = 100_000
#: Bytes per chunk of a streamed zip.
_ZIP_CHUNK = 1 << 16


@dataclass(frozen=True)
class BatchSource:
    """Where a new batch's items come from (any combination; duplicates are dropped, order kept).

    ``folders``: every item in them (``recursive``: and below); ``search``: ``{"folder", "name"
    (a glob), "metadata"}`` as ``datamill find`` takes it; ``paths``: item paths (a pasted list);
    ``batch``: the published outputs of that batch's latest run.
    """

    folders: Sequence[str] = ()
    recursive: bool = False
    search: Mapping[str, Any] | None = None
    paths: Sequence[str] = ()
    batch: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """What the batch records about how it was made."""
        out: dict[str, Any] = {}
        if self.folders:
            out["folders"] = list(self.folders)
            out["recursive"] = self.recursive
        if self.search:
            out["search"] = dict(self.search)
        if self.paths:
            out["paths"] = len(self.paths)
        if self.batch:
            out["batch"] = self.batch
        return out


def _shown_source(vis: Visibility, source: dict[str, Any]) -> dict[str, Any]:
    """How a batch was made, as ``vis``'s actor may see it: folders they may not read are hidden.

    A reader of the destination sees the batch, not necessarily the folders its items came from.
    """
    out = dict(source)
    if out.get("folders"):
        out["folders"] = [vis.folder(str(f)) for f in out["folders"]]
    search = out.get("search")
    if isinstance(search, Mapping) and search.get("folder"):
        out["search"] = {**search, "folder": vis.folder(str(search["folder"]))}
    return out


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidInput(
            f"batch name {str(name)[:100]!r} is not valid: 1-100 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit",
            field="name",
        )
    return name


def item_status(cells: Sequence[BatchCell]) -> str:
    """An item's overall status from its cells: unstarted, running, succeeded or failed."""
    if not cells:
        return "unstarted"
    statuses = [c.status for c in cells]
    if all(s in FINISHED_TASK for s in statuses):
        return "succeeded" if all(s in DONE_OK for s in statuses) else "failed"
    if all(s == TaskStatus.QUEUED for s in statuses) and not any(c.progress for c in cells):
        return "unstarted"
    return "running"


def count(rows: Sequence[BatchRow]) -> BatchCounts:
    """The counts of a grid."""
    by = [r.status for r in rows]
    ok, failed = by.count("succeeded"), by.count("failed")
    return BatchCounts(len(rows), ok + failed, ok, failed, by.count("running"), by.count("unstarted"))


class Batches:
    """The batches of a home; every method acts for an actor and checks what it may see and do."""

    def __init__(self, home: Home, engine: Engine | None = None) -> None:
        self.home = home
        self.engine = engine or Engine(home)

    # ------------------------------------------------------------------ reading

    def _row(self, conn: Connection, actor: Actor, name: str) -> Batch:
        """The batch ``name`` if ``actor`` may see it; one answer for missing and hidden."""
        found = conn.execute(select(Batch.__table__).where(Batch.name == name)).first()
        row = _as_batch(found._mapping) if found is not None else None
        if row is None or not self._visible(conn, actor, row):
            raise NotFound(f"no batch {str(name)[:100]!r}, or you may not see it; `datamill batch ls` lists yours")
        return row

    @staticmethod
    def _visible(conn: Connection, actor: Actor, row: Batch) -> bool:
        return actor.is_admin or row.owner_id == actor.id or level_on(conn, actor, row.dest) >= Level.READ

    @staticmethod
    def _require_owner(actor: Actor, row: Batch, what: str) -> None:
        if not (actor.is_admin or row.owner_id == actor.id):
            raise PermissionDenied(f"only the owner of batch {row.name!r} (or a site admin) may {what} it")

    @staticmethod
    def _readable_items(conn: Connection, actor: Actor, ids: Iterable[int]) -> dict[int, str]:
        """``{item id: path}`` of the items of ``ids`` that still exist and ``actor`` may read, in ``ids`` order."""
        wanted = list(ids)
        found = lookups.item_places(conn, wanted)
        levels: dict[str, bool] = {}
        out: dict[int, str] = {}
        for item_id in wanted:
            if item_id not in found:
                continue
            folder, name = found[item_id]
            if folder not in levels:
                levels[folder] = level_on(conn, actor, folder) >= Level.READ
            if levels[folder]:
                out[item_id] = join_path(folder, name)
        return out

    def _info(self, conn: Connection, actor: Actor, row: Batch) -> BatchInfo:
        items = self._readable_items(conn, actor, row.items)
        grid = self._grid(actor, row, list(items.values()))
        return BatchInfo(
            id=row.id,
            name=row.name,
            owner=lookups.user_name(conn, row.owner_id) if row.owner_id is not None else None,
            pipeline=row.pipeline,
            params=dict(row.params or {}),
            dest=row.dest,
            description=row.description,
            source=_shown_source(Visibility(conn, actor), dict(row.source or {})),
            items=list(items.values()),
            runs=list(row.runs or []),
            status=grid.run_status or "new",
            counts=grid.counts,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def all(self, actor: Actor) -> list[BatchInfo]:
        """The batches ``actor`` may see, by name."""
        with self.home.db.read() as conn:
            rows = [_as_batch(r._mapping) for r in conn.execute(select(Batch.__table__).order_by(Batch.name))]
            return [self._info(conn, actor, r) for r in rows if self._visible(conn, actor, r)]

    def get(self, actor: Actor, name: str) -> BatchInfo:
        """One batch, with its counts."""
        with self.home.db.read() as conn:
            return self._info(conn, actor, self._row(conn, actor, name))

    def status(self, actor: Actor, name: str) -> BatchStatus:
        """The per-item by per-step grid of the batch's latest run, for the items ``actor`` may read."""
        with self.home.db.read() as conn:
            row = self._row(conn, actor, name)
            items = self._readable_items(conn, actor, row.items)
        return self._grid(actor, row, list(items.values()))

    def _grid(self, actor: Actor, row: Batch, items: list[str]) -> BatchStatus:
        run_id = row.runs[-1] if row.runs else None
        if run_id is None:
            rows = [BatchRow(path, "unstarted") for path in items]
            return BatchStatus(row.name, None, None, [], count(rows), rows)
        run = self.engine.get_run(actor, run_id)
        tasks = self.engine.tasks(actor, run_id)
        steps = list(dict.fromkeys(t.step for t in tasks))
        by_item: dict[str, list[BatchCell]] = {}
        for t in tasks:
            if t.item_name is None:
                continue
            by_item.setdefault(t.item_name, []).append(
                BatchCell(t.step, t.status, t.progress, t.id, t.message or "", t.error)
            )
        grid = [BatchRow(path, item_status(by_item.get(path, [])), by_item.get(path, [])) for path in items]
        return BatchStatus(row.name, run_id, run.status, steps, count(grid), grid)

    # ------------------------------------------------------------------ making

    def _select(self, actor: Actor, source: BatchSource) -> list[ItemInfo]:
        """The items ``source`` names, each readable by ``actor`` (else NotFound naming what was given)."""
        store = self.home.store
        found: list[ItemInfo] = []
        for folder in source.folders:
            found += (
                store.find_items(actor, folder, recursive=True) if source.recursive else store.list_items(actor, folder)
            )
        if source.search:
            s = dict(source.search)
            unknown = set(s) - {"folder", "name", "metadata", "recursive"}
            if unknown or "folder" not in s:
                raise InvalidInput(
                    "search must be {'folder': ..., 'name': glob, 'metadata': {...}, 'recursive': bool}"
                    + (f"; unknown keys: {', '.join(sorted(unknown))}" if unknown else "; 'folder' is missing"),
                    field="search",
                )
            found += store.find_items(actor, s["folder"], s.get("name"), s.get("metadata"), s.get("recursive", True))
        for path in source.paths:
            found.append(store.get_item(actor, path))
        if source.batch:
            found += self._outputs_as_items(actor, source.batch)
        unique: dict[int, ItemInfo] = {}
        for i in found:
            unique.setdefault(i.id, i)
        return list(unique.values())

    def _outputs_as_items(self, actor: Actor, name: str) -> list[ItemInfo]:
        """The items the latest run of batch ``name`` published, as ``actor`` may read them."""
        return [self.home.store.get_item(actor, path) for path, _vid in self.outputs(actor, name)]

    def create(
        self,
        actor: Actor,
        name: str,
        pipeline: str,
        dest: str,
        source: BatchSource,
        params: Mapping[str, Any] | None = None,
        description: str = "",
    ) -> BatchInfo:
        """Record a new batch (not started) of the items ``source`` selects.

        Raises:
            InvalidInput: a bad name, no items selected, or too many.
            Conflict: a batch of that name exists.
            NotFound: a folder, item or batch of ``source`` you may not read, or the destination.
            UnknownPipeline: ``pipeline`` is not registered (site admins may give a reference).
            InvalidPipeline: the pipeline does not load, or ``params`` do not fit its steps.
        """
        _check_name(name)
        dest = "/".join(split_path(dest))
        items = self._select(actor, source)
        if not items:
            raise InvalidInput(
                f"batch {name!r} would have no items: the folders, search, list or batch given select none",
                field="items",
            )
        if len(items) > MAX_ITEMS:
            raise InvalidInput(f"batch {name!r} would have {len(items)} items; at most {MAX_ITEMS}", field="items")
        with self.home.db.read() as conn:
            choice = registry.choose(conn, actor, pipeline)
        # Loaded once now, so a batch that cannot run is refused when it is made, not when it starts.
        split_params(resolve_pipeline(choice), params)
        now = time.time()
        with self.home.db.write() as conn:
            if lookups.readable_folder_id(conn, actor, dest) is None:
                raise NotFound(f"no destination folder {dest!r}, or you may not see it; create it first", path=dest)
            require(conn, actor, dest, Level.WRITE)
            if conn.execute(select(Batch.id).where(Batch.name == name)).first() is not None:
                raise Conflict(f"a batch named {name!r} exists; choose another name", name=name)
            row = Batch(
                name=name,
                owner_id=actor.id,
                pipeline=choice.name or pipeline,
                params=dict(params or {}),
                dest=dest,
                items=[i.id for i in items],
                source=source.to_dict(),
                runs=[],
                description=description,
                created_at=now,
                updated_at=now,
            )
            conn.execute(insert(Batch).values(**_columns(row)))
        return self.get(actor, name)

    def duplicate(self, actor: Actor, name: str, new_name: str) -> BatchInfo:
        """A new batch (owned by ``actor``, not started) of the items of ``name`` that ``actor`` may read."""
        with self.home.db.read() as conn:
            row = self._row(conn, actor, name)
            items = self._readable_items(conn, actor, row.items)
        return self.create(
            actor,
            new_name,
            row.pipeline,
            row.dest,
            BatchSource(paths=list(items.values())),
            row.params,
            row.description,
        )

    def delete(self, actor: Actor, name: str) -> None:
        """Forget a batch; its runs and outputs stay."""
        with self.home.db.write() as conn:
            row = self._row(conn, actor, name)
            self._require_owner(actor, row, "delete")
            conn.execute(delete(Batch).where(Batch.id == row.id))

    # ------------------------------------------------------------------ running

    def _inputs(self, conn: Connection, actor: Actor, row: Batch) -> list[InputRef]:
        readable = self._readable_items(conn, actor, row.items)
        missing = len(row.items) - len(readable)
        if missing:
            raise PermissionDenied(
                f"batch {row.name!r}: {missing} of its items are gone or not readable by you; "
                "duplicate the batch to run over the ones you may read",
            )
        out: list[InputRef] = []
        for path in readable.values():
            i = self.home.store.get_item(actor, path)
            out.append(
                InputRef(i.id, i.version_id, i.folder, i.name, i.version, i.digest, i.size, i.content_type, i.metadata)
            )
        return out

    def start(self, actor: Actor, name: str, executor: str | None = None) -> int:
        """Run the batch's pipeline over its items' current versions; the run's id (queued)."""
        with self.home.db.read() as conn:
            row = self._row(conn, actor, name)
            self._require_owner(actor, row, "start")
            inputs = self._inputs(conn, actor, row)
        run_id = self.engine.submit(
            actor,
            row.pipeline,
            inputs,
            dest=row.dest,
            params=row.params,
            reason=f"batch {row.name}",
            executor=executor,
        )
        self._add_run(row.id, run_id)
        return run_id

    def retry(self, actor: Actor, name: str) -> int:
        """Rerun only what failed in the batch's latest run (the rest is reused); the new run's id."""
        with self.home.db.read() as conn:
            row = self._row(conn, actor, name)
            self._require_owner(actor, row, "retry")
        if not row.runs:
            raise InvalidInput(f"batch {name!r} was never started; start it with `datamill batch start {name}`")
        latest = self.engine.get_run(actor, row.runs[-1])
        if latest.status not in ("failed", "cancelled"):
            raise InvalidInput(
                f"batch {name!r} has nothing to retry: its latest run ({latest.id}) is {latest.status}; "
                "only failed or cancelled runs are retried"
            )
        run_id = self.engine.retry(actor, row.runs[-1])
        self._add_run(row.id, run_id)
        return run_id

    def _add_run(self, batch_id: int, run_id: int) -> None:
        with self.home.db.write() as conn:
            runs = conn.execute(select(Batch.runs).where(Batch.id == batch_id)).scalar_one()
            conn.execute(
                update(Batch).where(Batch.id == batch_id).values(runs=[*(runs or []), run_id], updated_at=time.time())
            )

    # ------------------------------------------------------------------ outputs

    def outputs(self, actor: Actor, name: str) -> list[tuple[str, int]]:
        """``(path, version id)`` of every output the batch's latest run published that ``actor`` may read."""
        with self.home.db.read() as conn:
            row = self._row(conn, actor, name)
            readable = set(self._readable_items(conn, actor, row.items).values())
        if not row.runs:
            return []
        out: dict[str, int] = {}
        tasks = self.engine.tasks(actor, row.runs[-1])
        with self.home.db.read() as conn:
            for t in tasks:
                if t.item_name is not None and t.item_name not in readable:
                    continue  # derived from an item the caller may not read: its name would tell
                for o in t.outputs:
                    if o.version_id is None:
                        continue
                    found = lookups.version_in_place(conn, o.version_id)
                    if found is None or level_on(conn, actor, found.folder) < Level.READ:
                        continue
                    out.setdefault(join_path(found.folder, found.item_name), o.version_id)
        return sorted(out.items())

    def zip_chunks(self, actor: Actor, name: str) -> Iterator[bytes]:
        """Every published output of the batch as a zip, streamed in chunks (paths inside: relative to the
        destination folder). Access is checked before the first chunk."""
        outputs = self.outputs(actor, name)
        with self.home.db.read() as conn:
            dest = self._row(conn, actor, name).dest
        return _zip(self.home, actor, dest, outputs)


def _zip(home: Home, actor: Actor, dest: str, outputs: list[tuple[str, int]]) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(cast(IO[bytes], sink), "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path, _vid in outputs:
            version, chunks = home.store.iter_bytes(actor, path, _number_of(home, _vid))
            inside = path[len(dest) + 1 :] if path.startswith(dest + "/") else path
            info = zipfile.ZipInfo(inside, time.localtime(version.created_at)[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=version.size >= 1 << 31) as member:
                for chunk in chunks:
                    member.write(chunk)
                    if sink.size() >= _ZIP_CHUNK:
                        yield sink.take()
            yield sink.take()
    yield sink.take()


def _number_of(home: Home, version_id: int) -> int | None:
    with home.db.read() as conn:
        found = lookups.version_in_place(conn, version_id)
    return int(found.number) if found is not None else None


class _Sink:
    """A write-only, unseekable file the zip writes into; the bytes are taken out as they come."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._pos = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._size += len(data)
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        pass

    def size(self) -> int:
        return self._size

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts, self._size = [], 0
        return data


def _as_batch(values: Mapping[Any, Any]) -> Batch:
    """A row of the batches table as a (detached) :class:`Batch`."""
    return Batch(**{str(k): v for k, v in values.items()})


def _columns(row: Batch) -> dict[str, Any]:
    names = ("name", "owner_id", "pipeline", "params", "dest", "items", "source", "runs", "description")
    return {n: getattr(row, n) for n in (*names, "created_at", "updated_at")}
