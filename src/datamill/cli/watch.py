"""``datamill watch DIR FOLDER``: land the files of a directory in a folder as they appear or change.

The watching itself is :class:`datamill.dataflows.watcher.Watcher`, the same one a ``directory``
dataflow runs on the server; here it lands files through the :class:`~datamill.client.Client`
of this invocation (a local home, or a server with ``--url`` and ``--token``).
"""

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

import typer

from datamill.cli.context import get_client, get_state
from datamill.cli.output import human_size, print_json, say, stderr
from datamill.client import Client
from datamill.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from datamill.dataflows.watcher import Known, SmallFile, WatchEvent

PANEL = "Items"


class ClientLanding:
    """Where ``datamill watch`` lands files: folders reached through a :class:`Client`."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._exists: set[str] = set()

    def current(self, folder: str) -> "dict[str, Known]":
        """The current versions in ``folder`` ({} when it does not exist yet)."""
        try:
            items = self.client.list_items(folder)
        except NotFound:
            return {}
        self._exists.add(folder)
        from datamill.dataflows.watcher import Known

        return Known.by_name(items)

    def current_tree(self, folder: str) -> "dict[str, dict[str, Known]]":
        """The current versions in ``folder`` and below, by folder ({} when it does not exist yet)."""
        try:
            items = self.client.find(folder, recursive=True)
        except NotFound:
            return {}
        from datamill.dataflows.watcher import Known

        out = Known.by_folder(items)
        self._exists.update(out)
        return out

    def _ensure(self, folder: str) -> None:
        if folder not in self._exists:
            self.client.create_folder(folder, parents=True, exist_ok=True)
            self._exists.add(folder)

    def land_folders(self, batches: "list[tuple[str, list[SmallFile]]]") -> list[list[tuple[str, int]]]:
        """Small files of several folders: embedded, one sync and one transaction for all; else a request per folder."""
        if getattr(self.client, "embedded", False):
            # The embedded client is the service itself: its store takes every folder at once.
            store, actor = self.client.store, self.client.actor  # type: ignore[attr-defined]
            new = [f for f, _ in batches if f not in self._exists]
            infos = store.put_folders(
                actor,
                [(folder, [(f.name, f.data) for f in files], [f.metadata for f in files]) for folder, files in batches],
                create=bool(new),
            )
            self._exists.update(new)
            return [[(i.digest, i.version) for i in landed] for landed in infos]
        out = []
        for folder, files in batches:
            self._ensure(folder)
            infos = self.client.put_many(
                folder, [(f.name, f.data) for f in files], item_metadata=[f.metadata for f in files]
            )
            out.append([(i.digest, i.version) for i in infos])
        return out

    def land_stream(
        self,
        folder: str,
        name: str,
        stream: BinaryIO,
        size: int,
        metadata: dict[str, Any],
        progress: Callable[[int], None] | None,
    ) -> tuple[str, int, int]:
        """One large file, streamed."""
        self._ensure(folder)
        info = self.client.put(folder, name, stream, metadata=metadata, progress=progress, size=size)
        return info.digest, info.size, info.version


#: Events printed even without -v: the ones a user must hear of.
_ALWAYS = frozenset({"changed", "vanished", "failed"})


def _line(ev: "WatchEvent") -> str:
    if ev.kind == "uploaded":
        return f"  {ev.path} -> {ev.item} v{ev.version} ({human_size(ev.size)})"
    if ev.kind in ("hidden", "excluded"):
        return f"  {ev.path} left out ({ev.kind})"
    return f"  {ev.path}: {ev.kind}" + (f" ({ev.detail})" if ev.detail else "")


def _summary(counts: dict[str, int], sent: int) -> str:
    n = counts.get("uploaded", 0)
    parts = [f"uploaded {n} file{'s' if n != 1 else ''} ({human_size(sent)})"]
    for kind, label in (
        ("unchanged", "already there"),
        ("changed", "changed while sent"),
        ("vanished", "vanished"),
        ("hidden", "hidden left out"),
        ("excluded", "excluded by --include/--exclude"),
        ("failed", "failed"),
    ):
        if counts.get(kind):
            parts.append(f"{counts[kind]} {label}")
    return ", ".join(parts)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM end watching cleanly (the file being sent finishes first)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: object) -> None:
        stop.set()

    for s in old:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def watch(
    ctx: typer.Context,
    directory: Annotated[str, typer.Argument(metavar="DIR", help="The directory to watch (with its subdirectories).")],
    folder: Annotated[
        str, typer.Argument(metavar="FOLDER", help="Where files land; subdirectories become subfolders.")
    ],
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include",
            metavar="REGEX",
            help="Take only files whose path relative to DIR matches (searched), repeatable: any may match.",
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", metavar="REGEX", help="Leave out files whose relative path matches, repeatable."),
    ] = None,
    stable: Annotated[
        float,
        typer.Option(
            "--stable",
            metavar="SECONDS",
            min=0,
            help="A file lands once its size and modification time stayed the same this long.",
        ),
    ] = 2.0,
    poll: Annotated[
        bool,
        typer.Option("--poll", help="Poll instead of OS notifications (NFS, SMB and other network file systems)."),
    ] = False,
    poll_interval: Annotated[
        float, typer.Option("--poll-interval", metavar="SECONDS", min=0.01, help="How often --poll looks.")
    ] = 0.5,
    existing: Annotated[
        bool,
        typer.Option(
            "--existing/--no-existing",
            help="Land the files already in DIR at start (those already in FOLDER with the same content are "
            "not sent again), or only files that appear or change later.",
        ),
    ] = True,
    once: Annotated[
        bool, typer.Option("--once", help="Land what is in DIR now (once stable), then exit; for scripts.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="At the end, print the counts as JSON on stdout.")] = False,
) -> None:
    """Upload the files of DIR into FOLDER as they appear or change, until Ctrl-C (or `--once`).

    Files land once stable (unchanged for `--stable` seconds); `DIR/run-7/a.csv` lands as
    `FOLDER/run-7/a.csv`. Hidden files and directories (`.name`) are skipped. A file already in
    FOLDER with the same content is not sent again, so a restarted watch resumes where it was;
    a changed file becomes a new version. Each item records its path relative to DIR and its
    modification time in its metadata under `watch`. Examples:

        datamill watch /data/xrd "Raw Data/xrd" --include '\\.csv$' --exclude '^tmp/'
        datamill --url http://lab:8765 --token $T watch /mnt/nfs/out "Raw Data" --poll --once
    """
    from datamill.dataflows.watcher import Watcher, WatchRules

    if once and not existing:
        raise InvalidInput("--once with --no-existing would land nothing; drop one of them")
    rules = WatchRules(
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        stable_seconds=stable,
        poll=poll,
        poll_interval=poll_interval,
        existing=existing,
    )
    client = get_client(ctx)
    verbose = get_state(ctx).verbose
    sent = [0]
    console = stderr()
    live = console.is_terminal

    def on_event(ev: "WatchEvent") -> None:
        if ev.kind == "uploaded":
            sent[0] += ev.size
        if verbose or ev.kind in _ALWAYS:
            console.print(_line(ev), markup=False, soft_wrap=True, highlight=False)

    watcher = Watcher(directory, folder, ClientLanding(client), rules, on_event=on_event)
    stop = threading.Event()
    with _stop_on_signals(stop), _status(live, watcher, sent) as refresh:
        if once:
            counts = watcher.run_once(stop, on_tick=refresh)
        else:
            say(f"watching {directory} -> {folder.strip('/')!r} (Ctrl-C to stop)")
            counts = watcher.run(stop, on_tick=refresh)
    if json_:
        print_json({**{k: 0 for k in ("uploaded", "unchanged", "changed", "vanished", "failed")}, **counts})
    say(_summary(counts, sent[0]) + (f" into {folder.strip('/')!r}" if counts.get("uploaded") else ""))
    if counts.get("failed"):
        raise typer.Exit(1)


@contextlib.contextmanager
def _status(live: bool, watcher: Any, sent: list[int]) -> Iterator[Callable[[], None]]:
    """A one-line live status on stderr (a terminal only): counts, bytes sent, files waiting."""
    if not live:
        yield lambda: None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=stderr(), transient=True) as progress:
        task = progress.add_task("watching", total=None)

        def refresh() -> None:
            c = watcher.counts
            progress.update(
                task,
                description=f"{c.get('uploaded', 0)} uploaded ({human_size(sent[0])}), "
                f"{c.get('unchanged', 0)} already there, {watcher.pending} waiting to be stable",
            )

        yield refresh


def register(app: typer.Typer) -> None:
    """Add ``datamill watch`` to the root command."""
    app.command("watch", rich_help_panel=PANEL)(watch)
