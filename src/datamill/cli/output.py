"""Output: results on stdout (a Rich table, or JSON with ``--json``), chatter on stderr.

Consoles are made per call so that they follow ``sys.stdout``/``sys.stderr`` as they are when the
command runs (a test runner swaps them).
"""

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import typer
from rich.console import Console
from rich.filesize import decimal

#: Transfers larger than this get a progress bar (when stderr is a terminal).
PROGRESS_THRESHOLD = 1_000_000


#: Width of tables written to a pipe or a file: wide enough that no row is ever folded.
PIPE_WIDTH = 100_000


def stdout() -> Console:
    """A console on stdout, for results.

    Rich assumes 80 columns when stdout is no terminal; a table piped to ``grep`` or saved to a
    file would then fold its rows. There it is as wide as its content (unless ``COLUMNS`` says
    otherwise).
    """
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(highlight=False, soft_wrap=False, width=PIPE_WIDTH)
    return console


def stderr(min_width: int = 0) -> Console:
    """A console on stderr, for progress and messages; at least ``min_width`` columns wide."""
    console = Console(stderr=True, highlight=False)
    if console.width < min_width:
        console = Console(stderr=True, highlight=False, width=min_width)
    return console


def say(message: str) -> None:
    """One line of chatter on stderr (``created folder ...``); never mixed into results."""
    stderr().print(message, markup=False, emoji=False, soft_wrap=True)


def _plain(obj: Any) -> Any:
    """What JSON cannot hold as it is: a record as its ``to_dict()``, anything else as text."""
    to_dict = getattr(obj, "to_dict", None)
    return to_dict() if callable(to_dict) else str(obj)


def print_json(data: Any) -> None:
    """``data`` (records included) as indented JSON on stdout."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=_plain))


def print_json_line(data: Any) -> None:
    """``data`` as one line of JSON on stdout, flushed (for streams read line by line)."""
    typer.echo(json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=_plain))


def human_size(size: int | None) -> str:
    """``1234567`` -> ``"1.2 MB"``."""
    return "-" if size is None else decimal(size)


def human_time(ts: float | None) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS``."""
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def human_value(value: Any) -> str:
    """A metadata value for a table: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], empty: str = "") -> None:
    """A table on stdout; when there are no rows, ``empty`` on stderr instead."""
    rows = list(rows)
    if not rows:
        if empty:
            say(empty)
        return
    from rich.table import Table  # here, not at the top: a command that prints no table does not load it
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in columns:
        justify: Literal["left", "right"] = "right" if name in {"version", "size", "seq", "id"} else "left"
        table.add_column(Text(name), justify=justify, overflow="fold")
    for row in rows:
        # Cells are Text, never markup: a name like "[red]x" or ":smile:" is shown as it is (and Rich's
        # emoji table, which times like 10:54:21 would consult, is never loaded).
        table.add_row(*(Text(str(c)) for c in row))
    stdout().print(table)


def print_mapping(data: dict[str, Any], empty: str = "") -> None:
    """A ``key  value`` table of a dict (metadata), sorted by key."""
    print_table(["key", "value"], [(k, human_value(v)) for k, v in sorted(data.items())], empty)


def show_or_change_metadata(
    changes: dict[str, Any],
    unset: Sequence[str],
    change: Callable[[], Any],
    current: Callable[[], Any],
    what: Callable[[Any], str],
    as_json: bool,
) -> None:
    """``meta`` commands (folders and items alike): apply changes if any were given, else show.

    ``change``/``current`` return an object with ``.metadata``; ``what`` names it for messages.
    """
    if changes or unset:
        info = change()
        say(f"updated metadata of {what(info)}")
        if as_json:
            print_json(info.metadata)
        return
    info = current()
    if as_json:
        print_json(info.metadata)
    else:
        print_mapping(info.metadata, empty=f"{what(info)} has no metadata")


@contextmanager
def transfer_progress(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A progress callback ``(nbytes) -> None`` showing a bar on stderr for large transfers.

    The bar is shown only when ``total`` exceeds :data:`PROGRESS_THRESHOLD` and stderr is a
    terminal; otherwise the callback does nothing, so logs stay clean.
    """
    console = stderr()
    if total <= PROGRESS_THRESHOLD or not console.is_terminal:
        yield lambda n: None
        return
    # Loaded here, for the few transfers that show a bar, rather than on every start.
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
