"""The client interface: one set of methods, whether datamill is embedded or on a server.

:class:`Client` declares the primitives each transport implements; composite operations
(uploading a whole directory, downloading to a file with verification) are written once here
on top of them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from datamill.client.ignore import walk as walk_files
from datamill.errors import BlobCorrupted, DatamillError, InvalidInput, NotFound
from datamill.records import FINISHED_RUN, EventRecord, FolderInfo, GroupInfo, ItemInfo, NewToken, VersionInfo
from datamill.refs import absolute_ref
from datamill.store.blobs import hasher
from datamill.store.names import check_name, join_path, split_path
from datamill.store.records import AccessGrant, UserInfo

if TYPE_CHECKING:  # annotations only; the remote client imports them where it makes one
    from datamill.dataflows.records import BatchInfo, BatchStatus, DataflowInfo, DataflowVersionInfo
    from datamill.engine.records import PipelineInfo, PlanInfo, RunInfo, TaskInfo, WhyInfo

__all__ = ["BATCH_FILES", "SMALL_FILE", "Client", "ProgressFn", "absolute_ref", "wait_until"]

#: Files up to this size are uploaded in batches by :meth:`Client.put_path`.
SMALL_FILE = 256 * 1024
#: Files per batch.
BATCH_FILES = 500

#: Called with the number of bytes just transferred.
ProgressFn = Callable[[int], None]


def _write_stream(chunks: Iterator[bytes], fd: int, progress: ProgressFn | None) -> bool:
    """Have a stream that can write itself into a file (``write_to(fd, progress) -> bool``, as the
    remote client's downloads) do so; False when it cannot (then it has not been read)."""
    write_to = getattr(chunks, "write_to", None)
    return bool(write_to is not None and write_to(fd, progress))


def _create_part_file(target: Path) -> tuple[int, str]:
    """A new, uniquely named temporary file beside ``target``, opened for writing.

    Created with mode 0666 so that the umask decides its permissions, as for any file a program
    makes (``mkstemp`` would make every download 0600, whatever the user's umask).
    """
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.part"
        try:
            # Readable too: an embedded download hashes what it copied into it.
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {target}")


class Client(ABC):
    """Folders, items, versions, metadata, users and events, through some transport."""

    #: True when :meth:`iter_bytes` raises ``BlobCorrupted`` itself at the end of a bad stream.
    verified_streams: bool = False

    # --- identity -------------------------------------------------------------------------
    @abstractmethod
    def whoami(self) -> UserInfo:
        """The user this client acts as."""

    # --- folders --------------------------------------------------------------------------
    @abstractmethod
    def create_folder(
        self,
        path: str,
        parents: bool = True,
        exist_ok: bool = False,
        metadata: Mapping[str, Any] | None = None,
    ) -> FolderInfo:
        """Create a folder (and missing parents)."""

    @abstractmethod
    def folder(self, path: str) -> FolderInfo:
        """One folder."""

    @abstractmethod
    def list_folders(self, path: str = "") -> list[FolderInfo]:
        """Subfolders of ``path``; the top level for ``""``."""

    @abstractmethod
    def move_folder(self, path: str, new_parent: str, new_name: str | None = None) -> FolderInfo:
        """Move (and optionally rename) a folder."""

    def rename_folder(self, path: str, new_name: str) -> FolderInfo:
        """Rename a folder in place."""
        parent = path.strip("/").rsplit("/", 1)[0] if "/" in path.strip("/") else ""
        return self.move_folder(path, parent, new_name)

    @abstractmethod
    def delete_folder(self, path: str, recursive: bool = False) -> int:
        """Delete a folder; returns how many items went with it."""

    @abstractmethod
    def set_folder_metadata(
        self, path: str, set_: Mapping[str, Any] | None = None, unset: Iterable[str] = ()
    ) -> FolderInfo:
        """Set/unset folder metadata keys."""

    @abstractmethod
    def share(self, path: str, user: str, level: str) -> None:
        """Grant ``user`` read, write or admin (or none) on a folder."""

    @abstractmethod
    def share_group(self, path: str, group: str, level: str) -> None:
        """Grant ``group`` read, write or admin (or none) on a folder; every member gets it."""

    @abstractmethod
    def set_public(self, path: str, public: bool) -> None:
        """Switch public read on a folder."""

    @abstractmethod
    def access_list(self, path: str) -> list[AccessGrant]:
        """Grants made on a folder."""

    # --- items ----------------------------------------------------------------------------
    @abstractmethod
    def put(
        self,
        folder: str,
        name: str,
        data: bytes | BinaryIO,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
        size: int | None = None,
    ) -> VersionInfo:
        """Upload bytes as a new version of ``folder/name``."""

    @abstractmethod
    def item(self, path: str) -> ItemInfo:
        """An item with its current version."""

    @abstractmethod
    def list_items(self, folder: str) -> list[ItemInfo]:
        """Items of a folder, by name."""

    @abstractmethod
    def items_page(
        self, folder: str, cursor: str | None = None, limit: int = 1000, sort: str = "name", descending: bool = False
    ) -> tuple[list[ItemInfo], str | None]:
        """One page of a folder's items after ``cursor``, and the cursor of the next (None: no more).

        Sort by ``name``, ``updated``, ``size`` or ``version`` (ties by name); a cursor continues only
        the folder and order it came from.
        """

    def iter_item_pages(
        self, folder: str, limit: int = 1000, sort: str = "name", descending: bool = False, then: int | None = None
    ) -> Iterator[list[ItemInfo]]:
        """A folder's items, page by page, each page read when the previous one has been used.

        The first page holds up to ``limit`` items, the later ones up to ``then`` (default ``limit``):
        a small first page shows something soon, larger later ones save requests.
        """
        cursor: str | None = None
        size = limit
        while True:
            items, cursor = self.items_page(folder, cursor, size, sort, descending)
            yield items
            if cursor is None:
                return
            size = then or limit

    @abstractmethod
    def versions(self, path: str) -> list[VersionInfo]:
        """All versions of an item."""

    @abstractmethod
    def version(self, path: str, version: int | None = None) -> VersionInfo:
        """One version (the current one by default)."""

    @abstractmethod
    def iter_bytes(self, path: str, version: int | None = None) -> tuple[VersionInfo, Iterator[bytes]]:
        """A version's info and its bytes in chunks."""

    @abstractmethod
    def set_metadata(self, path: str, set_: Mapping[str, Any] | None = None, unset: Iterable[str] = ()) -> ItemInfo:
        """Set/unset item metadata keys (no new version)."""

    @abstractmethod
    def find(
        self,
        folder: str,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        recursive: bool = True,
    ) -> list[ItemInfo]:
        """Items below ``folder`` by name glob and metadata."""

    @abstractmethod
    def delete_item(self, path: str) -> None:
        """Delete an item and its versions."""

    # --- users ----------------------------------------------------------------------------
    @abstractmethod
    def create_user(self, name: str, password: str | None = None, admin: bool = False) -> UserInfo:
        """Create a user (site admins only)."""

    @abstractmethod
    def list_users(self) -> list[UserInfo]:
        """All users (site admins only)."""

    @abstractmethod
    def create_token(self, user: str | None = None, name: str = "", ttl: float | None = None) -> NewToken:
        """A new token for ``user`` (yourself by default; others need a site admin)."""

    @abstractmethod
    def revoke_token(self, token_id: int) -> None:
        """Revoke one of your tokens (or anyone's, as a site admin)."""

    # --- groups ---------------------------------------------------------------------------
    @abstractmethod
    def create_group(self, name: str) -> GroupInfo:
        """Create a group; you become its first group admin."""

    @abstractmethod
    def groups(self) -> list[GroupInfo]:
        """The groups you are a member of (every group for a site admin), by name."""

    @abstractmethod
    def group(self, name: str) -> GroupInfo:
        """One group with its members and folder grants (members and site admins only)."""

    @abstractmethod
    def delete_group(self, name: str) -> int:
        """Delete a group (group admins and site admins); returns how many folder grants went with it."""

    @abstractmethod
    def add_group_member(self, group: str, user: str, admin: bool | None = None) -> GroupInfo:
        """Add ``user`` to a group, or change whether they are a group admin (group admins only).

        ``admin`` None adds an ordinary member and leaves an existing member's flag as it is.
        """

    @abstractmethod
    def remove_group_member(self, group: str, user: str) -> None:
        """Remove ``user`` from a group (group admins, site admins, or the member themselves)."""

    # --- events ---------------------------------------------------------------------------
    @abstractmethod
    def events(self, since: int = 0, limit: int = 1000, kinds: Iterable[str] | None = None) -> list[EventRecord]:
        """Events after ``since`` that you may see."""

    @abstractmethod
    def wait_events(self, since: int, timeout: float) -> bool:
        """Block until there may be events after ``since`` (or ``timeout`` passes)."""

    def follow(
        self, since: int = 0, kinds: Iterable[str] | None = None, stop: Callable[[], bool] | None = None
    ) -> Iterator[EventRecord]:
        """Yield events as they are appended, starting after ``since``, until ``stop()`` is true."""
        cursor = since
        kinds = list(kinds) if kinds else None
        while not (stop and stop()):
            batch = self.events(cursor, 1000, kinds)
            for ev in batch:
                cursor = max(cursor, ev.seq)
                yield ev
            if not batch:
                self.wait_events(cursor, 1.0)

    # --- pipelines ------------------------------------------------------------------------
    @abstractmethod
    def pipelines(self) -> list[PipelineInfo]:
        """The registered pipelines, by name (with their ``steps``, or the ``error`` that stops one loading).

        ``origin`` is ``package`` (an installed package's entry point) or ``admin``; site admins
        also see each one's ``ref``.
        """

    @abstractmethod
    def add_pipeline(self, name: str, ref: str, description: str = "") -> PipelineInfo:
        """Register the pipeline ``ref`` (checked: it must load) under ``name`` (site admins only)."""

    @abstractmethod
    def remove_pipeline(self, name: str) -> None:
        """Remove a pipeline a site admin registered (site admins only)."""

    # --- runs -----------------------------------------------------------------------------
    # A pipeline is a registered name (``datamill pipelines ls``) or, for site admins only, a
    # reference: ``module:attr``, ``path/file.py:attr`` or ``path/file.yaml``; a file path that
    # exists here is sent as an absolute path (see :func:`absolute_ref`).

    @abstractmethod
    def plan(
        self,
        pipeline_ref: str,
        folder: str,
        params: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> PlanInfo:
        """A dry run over the items of ``folder``: which tasks would run and which are cached.

        The plan's ``tasks`` are ``{"id", "step", "item", "deps", "params", "key", "outputs", "decision"}``, each
        with its ``decision`` (``run``, ``cached``, or ``pending`` until its inputs are known).
        """

    @abstractmethod
    def submit_run(
        self,
        pipeline_ref: str,
        folder: str,
        dest: str | None = None,
        params: Mapping[str, Any] | None = None,
        force: bool = False,
        reason: str = "",
        executor: str | None = None,
    ) -> int:
        """Record a run (queued) over the items of ``folder``; returns its id.

        A scheduler executes it: the server's (``datamill up``), or :meth:`LocalClient.execute`.
        """

    @abstractmethod
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
        """Submit a run and wait for its end; returns the finished run (as :meth:`run_info`).

        Embedded, the run executes in this process; on a server, the server's scheduler runs it.
        ``on_start(run_id)`` is called once the run is recorded (to watch it from another thread).
        """

    @abstractmethod
    def runs(self, limit: int = 50, status: str | None = None) -> list[RunInfo]:
        """Runs you may see, newest first (``status``: queued, running, succeeded, failed, cancelled)."""

    @abstractmethod
    def run_info(self, run_id: int) -> RunInfo:
        """A run with its task counts: ``counts`` by status and ``steps`` (step -> status -> n)."""

    @abstractmethod
    def tasks(self, run_id: int) -> list[TaskInfo]:
        """A run's tasks, in plan order."""

    @abstractmethod
    def task(self, task_id: int) -> TaskInfo:
        """One task, with its outputs."""

    @abstractmethod
    def cancel_run(self, run_id: int) -> bool:
        """Ask for a run to be cancelled; False if it had already ended."""

    @abstractmethod
    def retry_run(self, run_id: int) -> int:
        """Resume a failed or cancelled run as a new run (finished tasks are cached); its id."""

    @abstractmethod
    def why(self, task_id: int) -> WhyInfo:
        """Why a task ran or was cached: its key parts and what differs from the nearest earlier task."""

    @abstractmethod
    def logs(self, task_id: int, follow: bool = False) -> Iterator[str]:
        """A task's log text in chunks; with ``follow``, until the task ends."""

    @abstractmethod
    def wait_run(self, run_id: int, timeout: float | None = None) -> RunInfo:
        """Block until a run has ended (or ``timeout`` passes); the run as :meth:`run_info` returns it."""

    def watch_run(self, run_id: int, interval: float = 0.2) -> Iterator[RunInfo]:
        """Yield the run (as :meth:`run_info`) every ``interval`` seconds, the last time once it has ended."""
        while True:
            info = self.run_info(run_id)
            yield info
            if info.status in FINISHED_RUN:
                return
            time.sleep(interval)

    # --- dataflows ------------------------------------------------------------------------
    @abstractmethod
    def create_dataflow(
        self,
        name: str,
        source: str,
        dest: str,
        pipeline: str | None = None,
        trigger: str = "new-items",
        params: Mapping[str, Any] | None = None,
        description: str = "",
        webhooks: Iterable[str] | None = None,
        kind: str = "workflow",
        directory: str | None = None,
        watch: Mapping[str, Any] | None = None,
        image: str | None = None,
        recursive: bool = False,
    ) -> DataflowInfo:
        """Create a dataflow (stopped) from ``source`` into ``dest``; it is validated before it is saved.

        Its implementation is ``pipeline``, or ``image``: a container image whose default command
        gets each item's file and an output directory (it must match the ``allowed_images`` setting).
        ``kind="directory"`` (site admins only) lands the files of the server directory ``directory``
        in ``dest`` by the rules ``watch`` (include, exclude, stable_seconds, poll, poll_interval,
        existing); ``source`` and ``pipeline`` are then "". With ``recursive``, items landed in the
        source's subfolders fire the dataflow too, and each output lands in the destination's
        subfolder mirroring its item's (``SOURCE/run-7/a.csv`` -> ``DEST/run-7/...``).
        """

    @abstractmethod
    def dataflows(self) -> list[DataflowInfo]:
        """The dataflows you may see, by name."""

    @abstractmethod
    def dataflow(self, name: str) -> DataflowInfo:
        """One dataflow: configuration, state, version, next fire times (cron) and ``recent_runs``."""

    @abstractmethod
    def create_stream_dataflow(
        self,
        name: str,
        topic: str,
        dest: str,
        broker: Mapping[str, Any] | None = None,
        description: str = "",
        partial_timeout_s: float | None = None,
    ) -> DataflowInfo:
        """Create a stream dataflow (stopped): files arriving on Kafka ``topic`` in OpenMSIStream's format land
        in ``dest``. ``broker`` fields (bootstrap, security_protocol, sasl_mechanism, sasl_username,
        sasl_password) override the server's ``kafka_*`` settings; the password is never shown back."""

    @abstractmethod
    def edit_dataflow(self, name: str, **changes: Any) -> DataflowInfo:
        """Change a dataflow's configuration (a new version): ``source``, ``dest``, ``pipeline``,
        ``image``, ``trigger``, ``params``, ``description``, ``webhooks``, ``directory``, ``watch``, ``recursive``; None
        leaves a field as it is. A new ``image`` replaces the pipeline, a new ``pipeline`` the image."""

    @abstractmethod
    def start_dataflow(self, name: str) -> DataflowInfo:
        """Mark a dataflow running: its trigger then runs in the server (``datamill up``)."""

    @abstractmethod
    def stop_dataflow(self, name: str, cancel: bool = False) -> DataflowInfo:
        """Stop a dataflow; with ``cancel``, also cancel its runs in flight (listed in ``cancelled``)."""

    @abstractmethod
    def run_dataflow(self, name: str) -> int | None:
        """Record one run of a dataflow over the current contents of its source; its id (None: no items).

        As with :meth:`submit_run`, a scheduler executes it.
        """

    @abstractmethod
    def dataflow_history(self, name: str) -> list[DataflowVersionInfo]:
        """Every configuration version of a dataflow, oldest first, with the runs made under it."""

    @abstractmethod
    def delete_dataflow(self, name: str) -> None:
        """Remove a stopped dataflow (refused while it runs); its runs and results stay."""

    # --- batches -------------------------------------------------------------------------------
    @abstractmethod
    def create_batch(
        self,
        name: str,
        pipeline: str,
        dest: str,
        *,
        folders: Iterable[str] = (),
        recursive: bool = False,
        search: Mapping[str, Any] | None = None,
        paths: Iterable[str] = (),
        from_batch: str | None = None,
        params: Mapping[str, Any] | None = None,
        description: str = "",
    ) -> BatchInfo:
        """A new batch (not started): the items of ``folders`` (``recursive``), of a ``search``
        (``{"folder", "name", "metadata"}``), of item ``paths``, and the outputs of ``from_batch``."""

    @abstractmethod
    def batches(self) -> list[BatchInfo]:
        """The batches you may see, by name."""

    @abstractmethod
    def batch(self, name: str) -> BatchInfo:
        """One batch with its counts."""

    @abstractmethod
    def batch_status(self, name: str) -> BatchStatus:
        """The per-item by per-step grid (status, progress) of a batch's latest run."""

    @abstractmethod
    def start_batch(self, name: str, executor: str | None = None) -> int:
        """Record a run over the batch's items; its id (executed as :meth:`submit_run`'s runs are)."""

    @abstractmethod
    def retry_batch(self, name: str) -> int:
        """Rerun only what failed in the batch's latest run; the new run's id."""

    @abstractmethod
    def duplicate_batch(self, name: str, new_name: str) -> BatchInfo:
        """A new batch of the same items (those you may read), pipeline and parameters."""

    @abstractmethod
    def delete_batch(self, name: str) -> None:
        """Forget a batch; its runs and outputs stay."""

    @abstractmethod
    def batch_zip(self, name: str) -> Iterator[bytes]:
        """Every output the batch's latest run published, as a zip, in chunks."""

    def download_batch(self, name: str, dest: str | Path) -> int:
        """Write the batch's outputs as a zip file at ``dest``; its size in bytes."""
        target = Path(dest)
        size = 0
        partial = target.with_name(target.name + ".partial")
        with open(partial, "wb") as f:
            for chunk in self.batch_zip(name):
                f.write(chunk)
                size += len(chunk)
        partial.replace(target)
        return size

    # --- where runs execute ------------------------------------------------------------------
    #: True when runs recorded through this client execute in this process (:meth:`execute`);
    #: False when a server's scheduler executes them.
    embedded: bool = False

    @abstractmethod
    def execute(self, run_id: int, executor: str | None = None, workers: int | None = None) -> RunInfo:
        """See a recorded run to its end; returns it (as :meth:`run_info`).

        Embedded, this process executes it (Ctrl-C cancels it); on a server, the server's
        scheduler does and this waits for it.
        """

    # --- provenance -----------------------------------------------------------------------
    @abstractmethod
    def lineage(
        self, path: str, version: int | None = None, down: bool = False, depth: int | None = None, fmt: str = "tree"
    ) -> str:
        """An item version's lineage (what it came from; with ``down``, what came from it) as text:
        ``tree``, ``json``, ``prov-json`` or ``prov-n``. Items you may not read appear as not visible."""

    @abstractmethod
    def export_crate(self, path: str, dest: str | Path, version: int | None = None) -> None:
        """Write the RO-Crate of the run that made an item version at ``dest``: a directory, or a ``.zip`` file."""

    def close(self) -> None:
        """Release what the client holds."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- composite operations, written once ------------------------------------------------
    def get(self, path: str, version: int | None = None) -> bytes:
        """All bytes of a (small) item version."""
        _, chunks = self.iter_bytes(path, version)
        return b"".join(chunks)

    def download(
        self,
        path: str,
        dest: str | Path,
        version: int | None = None,
        progress: ProgressFn | None = None,
        parents: bool = True,
    ) -> VersionInfo:
        """Stream a version to ``dest`` (a file, or a directory to put it in), verifying its digest.

        Writes to a temporary file beside ``dest`` and renames it at the end, so a broken or
        corrupted transfer never leaves a partial file under the real name. The file gets the
        mode any new file gets here (0666 less the umask). A missing directory of ``dest`` is
        created when ``parents`` is true, else :class:`NotFound` is raised before any transfer.
        """
        target = Path(dest)
        if not parents and not target.is_dir() and not target.parent.is_dir():
            raise NotFound(
                f"directory {str(target.parent)!r} does not exist on this machine; create it first, "
                "or pass --parents to create missing directories",
                path=str(target.parent),
            )
        info, chunks = self.iter_bytes(path, version)
        if target.is_dir():
            target = target / info.name
        target.parent.mkdir(parents=True, exist_ok=True)
        # A stream that verifies itself (the embedded store's) needs no second hash here.
        h = None if self.verified_streams else hasher()
        fd, tmp = _create_part_file(target)
        try:
            with os.fdopen(fd, "wb") as f:
                if self._copy_version(info, f.fileno(), progress):
                    chunks, h = iter(()), None  # written and verified; the stream is never read
                elif h is None and _write_stream(chunks, f.fileno(), progress):
                    chunks = iter(())  # written by the stream itself (a remote one: in the kernel), checked
                for chunk in chunks:
                    if h is not None:
                        h.update(chunk)
                    f.write(chunk)
                    if progress:
                        progress(len(chunk))
            if h is not None and f"blake3:{h.hexdigest()}" != info.digest:
                raise BlobCorrupted(
                    f"the bytes received for {path!r} do not match digest {info.digest}; try again",
                    digest=info.digest,
                )
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return info

    def _copy_version(self, info: VersionInfo, fd: int, progress: ProgressFn | None) -> bool:
        """Write the bytes of ``info`` into ``fd`` (open for reading and writing), verified, if this
        client can do better than streaming them (the embedded one: a kernel copy); else False.

        Raises :class:`BlobCorrupted` after writing bytes that do not match the digest.
        """
        return False

    def put_path(
        self,
        src: str | Path,
        folder: str,
        metadata: Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
        on_file: Callable[[Path, VersionInfo], None] | None = None,
        parents: bool = True,
        on_skip: Callable[[Path], None] | None = None,
    ) -> list[VersionInfo]:
        """Upload a file, or a directory with its subfolders kept, into ``folder``.

        A directory's files are those :func:`datamill.client.ignore.walk` keeps: no version
        control, virtual environments or datamill homes, nor what its ``.datamillignore`` names;
        each path left out is passed to ``on_skip``. A missing ``folder`` is created with its
        parents when ``parents`` is true, else :class:`NotFound` is raised. Folders this call
        created are removed again if it fails or is interrupted while they are still empty.
        """
        if isinstance(src, str) and not src.strip():
            raise InvalidInput("an empty path names no file or directory; give the path to upload")
        src = Path(src)
        if not src.exists():
            raise NotFound(f"{src} does not exist on this machine", path=str(src))
        created: list[str] = []
        known: set[str] = set()
        try:
            self._ensure_folder(folder, parents, known, created)
            if src.is_file():
                files = [(src, folder)]
            elif src.is_dir():
                base = join_path(folder, check_name(src.resolve().name, "folder name"))
                files = [(path, join_path(base, *parts)) for path, parts in walk_files(src, on_skip)]
            else:
                raise InvalidInput(f"{src} is neither a file nor a directory")
            return self._put_files(files, metadata, progress, on_file, known, created)
        except BaseException:
            self._remove_if_empty(created)
            raise

    def _put_files(
        self,
        files: list[tuple[Path, str]],
        metadata: Mapping[str, Any] | None,
        progress: ProgressFn | None,
        on_file: Callable[[Path, VersionInfo], None] | None,
        known: set[str],
        created: list[str],
    ) -> list[VersionInfo]:
        out = []
        batch: list[tuple[Path, str]] = []

        def flush() -> None:
            # Small files of one folder go up together: one sync and one transaction per batch.
            if not batch:
                return
            self._ensure_folder(batch[0][1], True, known, created)
            infos = self.put_many(batch[0][1], [(p.name, p.read_bytes()) for p, _ in batch], metadata=metadata)
            for (p, _), info in zip(batch, infos, strict=True):
                out.append(info)
                if progress:
                    progress(info.size)
                if on_file:
                    on_file(p, info)
            batch.clear()

        for path, target in files:
            size = path.stat().st_size
            if size <= SMALL_FILE and (not batch or batch[0][1] == target) and len(batch) < BATCH_FILES:
                batch.append((path, target))
                continue
            flush()
            if size <= SMALL_FILE:
                batch.append((path, target))
                continue
            self._ensure_folder(target, True, known, created)
            with open(path, "rb") as f:
                info = self.put(target, path.name, f, metadata=metadata, progress=progress, size=size)
            out.append(info)
            if on_file:
                on_file(path, info)
        flush()
        return out

    def _ensure_folder(self, path: str, parents: bool, known: set[str], created: list[str]) -> None:
        """Make sure folder ``path`` exists; record in ``created`` (parents first) the folders made here."""
        path = join_path(*split_path(path))
        if not path or path in known:
            return
        try:
            self.folder(path)
        except NotFound:
            if not parents:
                raise NotFound(
                    f"folder {path!r} does not exist (or you may not see it); check the name, create it "
                    "first (`datamill folder create`), or pass -p/--parents to create missing folders",
                    path=path,
                ) from None
            missing = [path]
            parent = path.rpartition("/")[0]
            while parent and parent not in known:
                try:
                    self.folder(parent)
                    break
                except NotFound:
                    missing.append(parent)
                    parent = parent.rpartition("/")[0]
            self.create_folder(path, parents=True, exist_ok=True)
            created.extend(reversed(missing))
            known.update(missing)
        known.add(path)

    def _remove_if_empty(self, created: list[str]) -> None:
        """Delete the folders in ``created`` (deepest first) that are still empty; best effort."""
        for path in reversed(created):
            with contextlib.suppress(DatamillError):  # refused (NotEmpty) once anything landed in it
                self.delete_folder(path, recursive=False)

    def put_many(
        self,
        folder: str,
        files: list[tuple[str, bytes]],
        metadata: Mapping[str, Any] | None = None,
        item_metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[VersionInfo]:
        """Upload several small files into one folder; a transport may do it in one go.

        ``item_metadata`` (one mapping or None per file) is merged over ``metadata`` for that file.
        """
        if item_metadata is not None and len(item_metadata) != len(files):
            raise InvalidInput(f"item_metadata: {len(item_metadata)} entries for {len(files)} files; give one per file")
        per = item_metadata if item_metadata is not None else [None] * len(files)
        return [
            self.put(folder, name, data, metadata={**(metadata or {}), **(m or {})} or None)
            for (name, data), m in zip(files, per, strict=True)
        ]


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout``; for scripts and examples, not the engine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
