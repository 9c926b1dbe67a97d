"""Watched directories: files that appear or change in a directory land as item versions in a folder.

One implementation for both sides: ``datamill watch`` drives a :class:`Watcher` over a
:class:`~datamill.client.Client` (embedded or over HTTP), and a ``directory`` dataflow drives one
over the store on the server's own machine (:mod:`datamill.dataflows.directory`). Each gives it a
:class:`Landing`: where files go and what is already there.

The rules, the same on both sides:

* **Stable first.** A file lands once its size and modification time have stayed the same for
  ``stable_seconds`` (a file still being written keeps changing them).
* **Only what is asked for.** Hidden files and directories (a name starting with ``.``) are
  skipped; ``include`` / ``exclude`` are regular expressions searched in the path relative to the
  watched directory (``run-7/a.csv``). What a rule left out is counted and reported, never silent.
* **Subfolders kept.** ``DIR/run-7/a.csv`` lands as ``FOLDER/run-7/a.csv``.
* **Nothing sent twice.** Before a file is sent, the item's current version in the folder is
  looked up (one listing of the whole folder tree at the first landing, then one per new
  folder). When that version is the one a watcher landed from this very file (its ``watch``
  metadata names the same path, size, mtime and the current digest), the file is not even
  read; otherwise same size and same content digest means it is already there. So a restarted
  watcher resumes without re-sending (or re-reading), and a file touched but unchanged makes no
  new version.
* **Changes caught.** The file is stat-ed before it is read and after it landed; if it changed
  in between, what landed is an intermediate state and the file is queued again, to land as a
  new version once stable. A file that vanishes is reported; it is not an error.
* **Large files streamed.** Files above :data:`SMALL_FILE` are streamed to the landing; small
  ones go up in batches of up to :data:`BATCH_FILES` files (:data:`BATCH_BYTES` bytes) across
  folders: one sync and one transaction per batch embedded, however many folders it spans.

Each landed item records where it came from in its metadata under ``watch``: the path relative
to the watched directory, the file's size and mtime, its digest (small files), and (for a
dataflow) the dataflow's name.
"""

from __future__ import annotations

import math
import os
import re
import stat as stat_mod
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from datamill.errors import DatamillError, InvalidInput, NotFound
from datamill.records import ItemInfo
from datamill.store.blobs.base import digest_bytes, hasher
from datamill.store.names import check_name, join_path

__all__ = [
    "BATCH_FILES",
    "DEFAULT_STABLE_SECONDS",
    "SMALL_FILE",
    "Known",
    "Landing",
    "WatchEvent",
    "WatchRules",
    "Watcher",
]

#: Files up to this size are read whole and sent in batches; larger ones are streamed.
SMALL_FILE = 256 * 1024
#: Small files per batch (across folders). Larger batches save syncs but not time: on ext4 the
#: file creates of a long unsynced batch slow down more than the syncs saved (measured: 1,000 per
#: batch was slower than 100 per folder; 200 across folders was faster than both).
BATCH_FILES = 200
#: Bytes of small files per batch: a batch of files near :data:`SMALL_FILE` stays small in memory.
BATCH_BYTES = 32 * 1024 * 1024
#: How long a file must stay unchanged before it lands, by default.
DEFAULT_STABLE_SECONDS = 2.0
#: Metadata key under which a landed item records its origin.
META_KEY = "watch"

#: ``(size, mtime in ns)``: what "unchanged" compares.
Signature = tuple[int, int]


@dataclass(frozen=True)
class WatchRules:
    """What a watcher takes and when: include/exclude regexes, stability interval, polling, existing files."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    stable_seconds: float = DEFAULT_STABLE_SECONDS
    #: poll the file system instead of OS notifications (network file systems)
    poll: bool = False
    #: how often to poll, in seconds
    poll_interval: float = 0.5
    #: land files already there when watching starts (else only new or changed ones)
    existing: bool = True
    _inc: tuple[re.Pattern[str], ...] = field(default=(), init=False, repr=False, compare=False)
    _exc: tuple[re.Pattern[str], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "_inc", tuple(_compile(p, "include") for p in self.include))
        object.__setattr__(self, "_exc", tuple(_compile(p, "exclude") for p in self.exclude))
        for key in ("stable_seconds", "poll_interval"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InvalidInput(f"{key}: must be a number of seconds >= 0, not {value!r}", field=key)
        if self.poll_interval == 0:
            raise InvalidInput("poll_interval: must be more than 0 seconds", field="poll_interval")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> WatchRules:
        """Rules from a dataflow's ``watch`` settings; unknown keys are refused."""
        data = dict(data or {})
        known = ("include", "exclude", "stable_seconds", "poll", "poll_interval", "existing")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InvalidInput(f"watch: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
        for key in ("include", "exclude"):
            value = data.get(key, ())
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise InvalidInput(f"watch.{key}: must be a list of regular expressions", field=key)
            data[key] = tuple(value)
        for key in ("poll", "existing"):
            if key in data and not isinstance(data[key], bool):
                raise InvalidInput(f"watch.{key}: must be true or false", field=key)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The rules as JSON-able settings (what :meth:`from_dict` reads)."""
        return {
            "include": list(self.include),
            "exclude": list(self.exclude),
            "stable_seconds": self.stable_seconds,
            "poll": self.poll,
            "poll_interval": self.poll_interval,
            "existing": self.existing,
        }

    def left_out(self, rel: str) -> str | None:
        """Why the file at relative path ``rel`` is not taken (``hidden``, ``excluded``), or None."""
        if any(part.startswith(".") for part in rel.split("/")):
            return "hidden"
        if self._inc and not any(p.search(rel) for p in self._inc):
            return "excluded"
        if any(p.search(rel) for p in self._exc):
            return "excluded"
        return None


def _compile(pattern: str, key: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InvalidInput(f"{key}: {pattern!r} is not a regular expression ({exc})", field=key) from None


@dataclass(frozen=True)
class WatchEvent:
    """Something that happened to one file: ``kind`` is one of :data:`EVENT_KINDS`."""

    kind: str
    path: str
    size: int = 0
    detail: str = ""
    item: str = ""
    version: int | None = None


#: ``uploaded``: landed as a new version; ``unchanged``: the current version already holds it;
#: ``changed``: it changed while being sent, queued again; ``vanished``: gone before it landed;
#: ``hidden`` / ``excluded``: left out by the rules; ``failed``: refused (a bad name, unreadable).
EVENT_KINDS = ("uploaded", "unchanged", "changed", "vanished", "hidden", "excluded", "failed")


@dataclass(frozen=True)
class SmallFile:
    """A small file read whole, ready to land."""

    name: str
    data: bytes
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Known:
    """An item's current version as a watcher sees it: digest, size and the item's ``watch`` metadata."""

    digest: str
    size: int
    watch: Mapping[str, Any] | None = None

    def holds(self, rel: str, st: os.stat_result) -> bool:
        """Whether this version was landed from the file ``rel`` as it is now (same size, mtime; its digest).

        The recorded digest must be the current version's: a version written by someone else
        leaves the item's ``watch`` metadata behind, and must not pass for the watched file.
        """
        w = self.watch
        return (
            w is not None
            and w.get("path") == rel
            and w.get("digest") == self.digest
            and w.get("size") == st.st_size == self.size
            and w.get("mtime") == st.st_mtime
        )

    @classmethod
    def of(cls, digest: str, size: int, metadata: Mapping[str, Any] | None) -> Known:
        """From an item's current digest, size and metadata."""
        w = (metadata or {}).get(META_KEY)
        return cls(digest, size, w if isinstance(w, Mapping) else None)

    @classmethod
    def by_name(cls, items: Iterable[ItemInfo]) -> dict[str, Known]:
        """The current versions of items of one folder, by item name."""
        return {i.name: cls.of(i.digest, i.size, i.metadata) for i in items}

    @classmethod
    def by_folder(cls, items: Iterable[ItemInfo]) -> dict[str, dict[str, Known]]:
        """The current versions of items of a folder tree, by folder and item name."""
        out: dict[str, dict[str, Known]] = {}
        for i in items:
            out.setdefault(i.folder, {})[i.name] = cls.of(i.digest, i.size, i.metadata)
        return out


class Landing(Protocol):
    """Where a watcher's files go: a folder tree, through a client or the store."""

    def current(self, folder: str) -> dict[str, Known]:
        """The current versions of the items in ``folder`` by name ({} if it does not exist)."""

    def current_tree(self, folder: str) -> dict[str, dict[str, Known]]:
        """The current versions of the items in ``folder`` and every folder below it, by folder and name."""

    def land_folders(self, batches: list[tuple[str, list[SmallFile]]]) -> list[list[tuple[str, int]]]:
        """Store small files as new versions in their folders (created if missing); ``(digest, version)`` each.

        One call for many folders: embedded, one sync and one transaction for all of them.
        """

    def land_stream(
        self,
        folder: str,
        name: str,
        stream: BinaryIO,
        size: int,
        metadata: dict[str, Any],
        progress: Callable[[int], None] | None,
    ) -> tuple[str, int, int]:
        """Stream one file as a new version in ``folder`` (created if missing); ``(digest, size, version)``."""


def _signature(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_mtime_ns)


class Watcher:
    """Lands the files of directory ``root`` into ``folder`` through a :class:`Landing`, by :class:`WatchRules`.

    ``on_event`` hears of every file (:class:`WatchEvent`); ``progress`` of every byte sent;
    ``origin`` is added to each item's ``watch`` metadata (a dataflow puts its name there).
    Use :meth:`run_once` to land what is there and return, :meth:`run` to keep watching.
    """

    def __init__(
        self,
        root: str | Path,
        folder: str,
        landing: Landing,
        rules: WatchRules | None = None,
        on_event: Callable[[WatchEvent], None] | None = None,
        progress: Callable[[int], None] | None = None,
        origin: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = check_directory(root)
        self._root = str(self.root)
        self.folder = join_path(folder)
        if not self.folder:
            raise InvalidInput("FOLDER is empty: the root is not a folder; name one, e.g. 'Raw Data'")
        self.landing = landing
        self.rules = rules or WatchRules()
        self.on_event = on_event
        self.progress = progress
        self.origin = dict(origin or {})
        self.clock = clock
        self.counts: Counter[str] = Counter()
        #: relative path -> (signature, since when it has had it): files waiting to be stable
        self._pending: dict[str, tuple[Signature, float]] = {}
        #: relative path -> signature it had when it last landed (or was found already there)
        self._settled: dict[str, Signature] = {}
        #: paths reported as left out (each reported once)
        self._left_out: set[str] = set()
        #: folder -> name -> (digest, size): the current versions, looked up once per folder
        self._known: dict[str, dict[str, Known]] = {}
        #: relative path -> its stat when found stable (used, and dropped, when it lands)
        self._stats: dict[str, os.stat_result] = {}
        #: relative directory -> the folder its files land in (None: a part is not a valid name)
        self._folders: dict[str, str | None] = {}
        #: whether the first landing listed the whole folder tree (later new folders are listed one by one)
        self._listed_tree = False
        #: set once :meth:`run` watches: changes made from then on are seen
        self.started = threading.Event()

    # ------------------------------------------------------------------ what is there

    def _emit(self, kind: str, rel: str, **kw: Any) -> None:
        self.counts[kind] += 1
        if self.on_event is not None:
            self.on_event(WatchEvent(kind, rel, **kw))

    def _files(self, top: Path, prefix: str) -> Iterable[tuple[str, os.stat_result]]:
        """``(relative path, stat)`` of the regular files below ``top`` the rules take (links to dirs not followed)."""
        try:
            entries = list(os.scandir(top))
        except FileNotFoundError:
            return
        except PermissionError:
            self._emit("failed", prefix or ".", detail="directory not readable")
            return
        for entry in entries:
            rel = f"{prefix}/{entry.name}" if prefix else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                if is_dir:
                    if entry.name.startswith("."):
                        self._leave_out(rel, "hidden")
                        continue
                    yield from self._files(Path(entry.path), rel)
                    continue
                st = entry.stat()
            except FileNotFoundError:
                continue
            if not stat_mod.S_ISREG(st.st_mode):
                continue
            why = self.rules.left_out(rel)
            if why is not None:
                self._leave_out(rel, why)
                continue
            yield rel, st

    def _leave_out(self, rel: str, why: str) -> None:
        if rel not in self._left_out:
            self._left_out.add(rel)
            self._emit(why, rel)

    def scan(self, below: str = "") -> None:
        """Look at every file (below the relative directory ``below``) and queue those new or changed."""
        top = self.root / below if below else self.root
        for rel, st in self._files(top, below):
            self._see(rel, _signature(st))

    def baseline(self) -> None:
        """Take the files there now as landed: only later changes will land (``existing`` off)."""
        for rel, st in self._files(self.root, ""):
            self._settled[rel] = _signature(st)

    def _see(self, rel: str, sig: Signature) -> None:
        if self._settled.get(rel) == sig and rel not in self._pending:
            return
        old = self._pending.get(rel)
        if old is None or old[0] != sig:
            self._pending[rel] = (sig, self.clock())

    def notice(self, path: str | Path) -> None:
        """A file system event named ``path`` (absolute or relative to the root): look at it again."""
        p = Path(path)
        try:
            rel = (p.relative_to(self.root) if p.is_absolute() else p).as_posix()
        except ValueError:
            return
        if rel in ("", "."):
            return
        try:
            st = (self.root / rel).lstat()
        except (FileNotFoundError, NotADirectoryError):
            if self._pending.pop(rel, None) is not None:
                self._emit("vanished", rel, detail="removed before it was stable")
            return
        if stat_mod.S_ISDIR(st.st_mode):
            if self.rules.left_out(rel) != "hidden":
                self.scan(rel)  # a directory moved or copied in: its files may bring no events of their own
            return
        if not stat_mod.S_ISREG(st.st_mode):
            return
        why = self.rules.left_out(rel)
        if why is not None:
            self._leave_out(rel, why)
            return
        self._see(rel, _signature(st))

    @property
    def pending(self) -> int:
        """Files waiting to become stable."""
        return len(self._pending)

    def next_due(self) -> float | None:
        """Seconds until the next waiting file may be stable (None: nothing waits)."""
        if not self._pending:
            return None
        now = self.clock()
        return max(0.0, min(since + self.rules.stable_seconds - now for _, since in self._pending.values()))

    def settle(self) -> list[str]:
        """Look at the waiting files again; those unchanged for ``stable_seconds`` are returned, ready to land."""
        now = self.clock()
        ready = []
        root = str(self.root)
        for rel, (sig, since) in list(self._pending.items()):
            try:
                st = os.stat(os.path.join(root, rel))
                new = _signature(st)
            except (FileNotFoundError, NotADirectoryError):
                del self._pending[rel]
                self._emit("vanished", rel, detail="removed before it was stable")
                continue
            if new != sig:
                self._pending[rel] = (new, now)
            elif now - since >= self.rules.stable_seconds:
                ready.append(rel)
                self._stats[rel] = st  # what landing compares first, without another stat
        return sorted(ready)

    # ------------------------------------------------------------------ landing

    def _target(self, rel: str) -> tuple[str, str] | None:
        """``(folder, item name)`` where ``rel`` lands; None (reported) when a part is not a valid name."""
        parent, _, base = rel.rpartition("/")
        try:
            if parent not in self._folders:
                self._folders[parent] = None
                names = [check_name(p, "folder name") for p in parent.split("/")] if parent else []
                self._folders[parent] = join_path(self.folder, *names)
            folder = self._folders[parent]
            if folder is None:
                raise InvalidInput(f"the directory {parent!r} has a name that cannot be a folder name")
            return folder, check_name(base, "item name")
        except DatamillError as exc:
            self._emit("failed", rel, detail=exc.message)
            return None

    def _current(self, folder: str) -> dict[str, Known]:
        if folder not in self._known:
            self._known[folder] = dict(self.landing.current(folder))
        return self._known[folder]

    def _list_tree(self, folders: Iterable[str]) -> None:
        """At the first landing: what the whole folder tree holds, in one listing instead of one per folder.

        Folders it does not name hold nothing yet. Later landings list a folder new to the
        watcher on its own, when it is first needed (it may have been filled meanwhile).
        """
        if self._listed_tree:
            return
        self._listed_tree = True
        tree = self.landing.current_tree(self.folder)
        for folder in folders:
            self._known.setdefault(folder, dict(tree.get(folder, {})))

    def land(self, rels: Iterable[str]) -> None:
        """Land the (stable) files ``rels``: small ones in batches across folders, large ones streamed."""
        by_folder: dict[str, list[tuple[str, str]]] = {}
        for rel in rels:
            self._pending.pop(rel, None)
            target = self._target(rel)
            if target is not None:
                by_folder.setdefault(target[0], []).append((rel, target[1]))
        self._list_tree(by_folder)
        batch: dict[str, list[tuple[str, SmallFile, Signature]]] = {}
        files_in, bytes_in = 0, 0
        for folder, files in by_folder.items():
            known = self._current(folder)
            for rel, name in files:
                small = self._prepare(rel, name, known)
                if small is None:
                    continue
                if small[0] is None:
                    self._land_large(folder, rel, name, known)
                    continue
                batch.setdefault(folder, []).append((rel, small[0], small[1]))
                files_in, bytes_in = files_in + 1, bytes_in + len(small[0].data)
                if files_in >= BATCH_FILES or bytes_in >= BATCH_BYTES:
                    self._land_batch(batch)
                    batch, files_in, bytes_in = {}, 0, 0
        self._land_batch(batch)

    def _metadata(self, rel: str, st: os.stat_result, digest: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"path": rel, "size": st.st_size, "mtime": st.st_mtime, **self.origin}
        if digest is not None:
            meta["digest"] = digest
        return {META_KEY: meta}

    def _prepare(self, rel: str, name: str, known: dict[str, Known]) -> tuple[SmallFile | None, Signature] | None:
        """Read a small file (``(SmallFile, sig)``) or size up a large one (``(None, sig)``); None: nothing to send."""
        path = os.path.join(self._root, rel)  # a str: pathlib costs more than the read of a small file
        have = known.get(name)
        st = self._stats.pop(rel, None)
        try:
            if st is None:
                st = os.stat(path)
            if have is not None and have.holds(rel, st):
                # Landed from this very file as it is now: not even read (a restart resumes fast).
                self._unchanged(rel, _signature(st), st.st_size)
                return None
            if st.st_size > SMALL_FILE:
                if have is not None and have.size == st.st_size and _file_digest(Path(path)) == have.digest:
                    self._unchanged(rel, _signature(st), st.st_size)
                    return None
                return None, _signature(st)
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self._emit("vanished", rel, detail="removed before it was read")
            return None
        except OSError as exc:
            self._emit("failed", rel, detail=f"cannot read it: {exc.strerror or exc}")
            return None
        sig = _signature(st)
        digest = digest_bytes(data)
        if have is not None and have.size == len(data) and digest == have.digest:
            self._unchanged(rel, sig, len(data))
            return None
        return SmallFile(name, data, self._metadata(rel, st, digest)), sig

    def _unchanged(self, rel: str, sig: Signature, size: int) -> None:
        self._settled[rel] = sig
        self._emit("unchanged", rel, size=size)

    def _land_batch(self, batch: dict[str, list[tuple[str, SmallFile, Signature]]]) -> None:
        if not batch:
            return
        folders = list(batch)
        results = self.landing.land_folders([(folder, [f for _, f, _ in batch[folder]]) for folder in folders])
        for folder, landed in zip(folders, results, strict=True):
            known = self._known[folder]
            for (rel, small, sig), (digest, version) in zip(batch[folder], landed, strict=True):
                known[small.name] = Known(digest, len(small.data))
                if self.progress is not None:
                    self.progress(len(small.data))
                self._after(rel, sig, len(small.data), folder, small.name, version)

    def _land_large(self, folder: str, rel: str, name: str, known: dict[str, Known]) -> None:
        path = self.root / rel
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                sig = _signature(st)
                digest, size, version = self.landing.land_stream(
                    folder, name, f, st.st_size, self._metadata(rel, st), self.progress
                )
        except FileNotFoundError:
            self._emit("vanished", rel, detail="removed before it was read")
            return
        except OSError as exc:
            self._emit("failed", rel, detail=f"cannot read it: {exc.strerror or exc}")
            return
        known[name] = Known(digest, size)
        self._after(rel, sig, size, folder, name, version)

    def _after(self, rel: str, sig: Signature, size: int, folder: str, name: str, version: int) -> None:
        """A file landed with signature ``sig`` when read: settled, or queued again if it changed since."""
        item = f"{folder}/{name}"  # both already checked names
        self._emit("uploaded", rel, size=size, item=item, version=version)
        try:
            now_sig = _signature(os.stat(os.path.join(self._root, rel)))
        except FileNotFoundError:
            self._settled[rel] = sig
            return
        self._settled[rel] = sig
        if now_sig != sig:
            # What landed may be a half-written state: land the file again once it is stable.
            self._pending[rel] = (now_sig, self.clock())
            self._emit("changed", rel, size=now_sig[0], item=item, detail="changed while it was sent; queued again")

    # ------------------------------------------------------------------ loops

    def step(self) -> None:
        """Land what has become stable."""
        ready = self.settle()
        if ready:
            self.land(ready)

    def run_once(self, stop: threading.Event | None = None, on_tick: Callable[[], None] | None = None) -> Counter[str]:
        """Land every file there now (waiting for each to be stable), then return the counts."""
        stop = stop or threading.Event()
        self.scan()
        while self._pending and not stop.is_set():
            self.step()
            if on_tick is not None:
                on_tick()
            due = self.next_due()
            if due:
                # Stability is a matter of time passing: nothing else to wait on.
                stop.wait(min(due, 0.5))
        return self.counts

    def run(self, stop: threading.Event, on_tick: Callable[[], None] | None = None) -> Counter[str]:
        """Watch until ``stop`` is set: OS notifications (or polling with ``rules.poll``) name what to look at.

        ``on_tick`` is called after each round (a progress display refreshes there).
        """
        if self.rules.poll:
            return self._poll(stop, on_tick)
        import watchfiles

        tick = int(1000 * min(max(self.rules.stable_seconds / 2, 0.05), 1.0))
        if not self.rules.existing:
            self.baseline()
        first = True
        for changes in watchfiles.watch(
            self.root,
            watch_filter=None,  # no hidden filters: the rules decide, and report what they leave out
            debounce=min(200, tick),
            step=min(50, tick),
            rust_timeout=tick,
            yield_on_timeout=True,
            stop_event=stop,
            raise_interrupt=False,
            force_polling=False,
            recursive=True,
            ignore_permission_denied=True,
        ):
            if first:
                first = False
                self.started.set()
                if self.rules.existing:
                    # After the watch started, so that nothing created meanwhile is missed.
                    self.scan()
            for _change, path in changes:
                self.notice(path)
            if not self.root.is_dir():
                raise NotFound(f"the watched directory {self.root.name!r} went away; watching stopped")
            self.step()
            if on_tick is not None:
                on_tick()
        return self.counts

    def _poll(self, stop: threading.Event, on_tick: Callable[[], None] | None) -> Counter[str]:
        """Polling: look at the whole tree every ``poll_interval`` seconds.

        Our own scan rather than watchfiles' polling observer, which compares modification times
        in whole seconds: a file rewritten within the second it was created would be missed.
        """
        if self.rules.existing:
            self.scan()
        else:
            self.baseline()
        self.started.set()
        while not stop.is_set():
            if not self.root.is_dir():
                raise NotFound(f"the watched directory {self.root.name!r} went away; watching stopped")
            self.scan()
            self.step()
            if on_tick is not None:
                on_tick()
            stop.wait(self.rules.poll_interval)
        return self.counts


def _file_digest(path: Path) -> str:
    h = hasher()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"blake3:{h.hexdigest()}"


def check_directory(root: str | Path) -> Path:
    """``root`` as an absolute path to an existing, readable directory; :class:`NotFound` or :class:`InvalidInput`."""
    if isinstance(root, str) and not root.strip():
        raise InvalidInput("DIR is empty; give the directory to watch")
    path = Path(root).expanduser()
    if not path.exists():
        raise NotFound(f"directory {str(root)!r} does not exist; create it or check the path", path=str(root))
    if not path.is_dir():
        raise InvalidInput(f"{str(root)!r} is not a directory; watch the directory that holds the files")
    if not os.access(path, os.R_OK | os.X_OK):
        raise InvalidInput(f"directory {str(root)!r} is not readable by this process; check its permissions")
    return path.resolve()
