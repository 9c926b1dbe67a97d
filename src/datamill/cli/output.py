"""Output: results on stdout (a table, or JSON with ``--json``), chatter on stderr.

Consoles are made per call so that they follow ``sys.stdout``/``sys.stderr`` as they are when the
command runs (a test runner swaps them).

Rich is loaded only for what needs it (progress bars, a table that must fold to fit a terminal, text
whose width Rich must measure): a table of plain ASCII that fits is laid out here exactly as Rich would
lay it out, and a message is written as it is, which saves a short command (``datamill ls``) ~40 % of
its start-up.
"""

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import typer

if TYPE_CHECKING:
    from rich.console import Console

#: Transfers larger than this get a progress bar (when stderr is a terminal).
PROGRESS_THRESHOLD = 1_000_000


#: Width of tables written to a pipe or a file: wide enough that no row is ever folded.
PIPE_WIDTH = 100_000


def stdout() -> "Console":
    """A console on stdout, for results.

    Rich assumes 80 columns when stdout is no terminal; a table piped to ``grep`` or saved to a
    file would then fold its rows. There it is as wide as its content (unless ``COLUMNS`` says
    otherwise).
    """
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(highlight=False, soft_wrap=False, width=PIPE_WIDTH)
    return console


def stderr(min_width: int = 0) -> "Console":
    """A console on stderr, for progress and messages; at least ``min_width`` columns wide."""
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    if console.width < min_width:
        console = Console(stderr=True, highlight=False, width=min_width)
    return console


#: Text Rich would show as it is: printable ASCII (one column a character), spaces and newlines.
_PLAIN = re.compile(r"[\x20-\x7e\n]*")
#: Control characters Rich drops from text it prints (bell, backspace, vertical tab, form feed, CR).
_RICH_DROPS = dict.fromkeys((7, 8, 11, 12, 13))


def say(message: str) -> None:
    """One line of chatter on stderr (``created folder ...``); never mixed into results."""
    text = message.translate(_RICH_DROPS)
    if _PLAIN.fullmatch(text):
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
        return
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
    """``1234567`` -> ``"1.2 MB"`` (powers of 1000, as ``rich.filesize.decimal`` writes them)."""
    if size is None:
        return "-"
    if size == 1:
        return "1 byte"
    if size < 1000:
        return f"{size:,} bytes"
    unit = 1000
    for suffix in ("kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"):  # noqa: B007 - the last one stays
        unit *= 1000
        if size < unit:
            break
    return f"{1000 * size / unit:,.1f} {suffix}"


def human_time(ts: float | None) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS``."""
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def human_value(value: Any) -> str:
    """A metadata value for a table: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], empty: str = "") -> None:
    """A table on stdout; when there are no rows, ``empty`` on stderr instead."""
    table = TableStream(columns)
    table.add(rows)
    if not table.widths and empty:
        say(empty)


def _right(name: str) -> bool:
    return name in {"version", "size", "seq", "id"}


class TableStream:
    """A table printed in parts, as its rows arrive (``datamill ls`` prints a page at a time).

    The first part is printed as :func:`print_table` prints a whole table; each later part without
    the header, its columns at least as wide as before (so they stay aligned unless a later row is
    wider). A table of plain ASCII that fits is laid out here, exactly as Rich lays it out; anything
    else (a terminal's bold header, wide characters, folding to fit) is left to Rich.
    """

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        #: The columns' widths so far; empty until a row was printed.
        self.widths: list[int] = []

    def add(self, rows: Iterable[Sequence[Any]]) -> None:
        """Print ``rows`` (with the header, if they are the first)."""
        cells = [[str(c) for c in row] for row in rows]
        if not cells:
            return
        shown = cells if self.widths else [self.columns, *cells]
        widths = [max(len(row[i]) for row in shown) for i in range(len(self.columns))]
        widths = [max([w, *self.widths[i : i + 1]]) for i, w in enumerate(widths)]
        if not self._plain(shown, widths):
            self._rich(cells, header=not self.widths)
        self.widths = widths

    def _plain(self, rows: list[list[str]], widths: list[int]) -> bool:
        width = _plain_width()
        if width is None or sum(widths) + 2 * (len(widths) - 1) > width:
            return False  # a terminal's bold header, or Rich folds the cells to fit
        if not all(_PLAIN.fullmatch(c) and "\n" not in c for row in rows for c in row):
            return False
        out = []
        for row in rows:
            out.append(
                "  ".join(
                    c.rjust(w) if _right(n) else c.ljust(w) for n, c, w in zip(self.columns, row, widths, strict=True)
                )
            )
        sys.stdout.write("".join(line + "\n" for line in out))
        sys.stdout.flush()
        return True

    def _rich(self, rows: list[list[str]], header: bool) -> None:
        from rich.table import Table  # here, not at the top: a command that prints no table does not load it
        from rich.text import Text

        table = Table(box=None, pad_edge=False, header_style="bold", show_header=header)
        for i, name in enumerate(self.columns):
            justify: Literal["left", "right"] = "right" if _right(name) else "left"
            previous = self.widths[i] if self.widths else None
            table.add_column(Text(name), justify=justify, overflow="fold", min_width=previous)
        for row in rows:
            # Cells are Text, never markup: a name like "[red]x" or ":smile:" is shown as it is (and Rich's
            # emoji table, which times like 10:54:21 would consult, is never loaded).
            table.add_row(*(Text(c) for c in row))
        stdout().print(table)


def _plain_width() -> int | None:
    """The width a plain table on stdout may take (None: stdout is a terminal; Rich prints there)."""
    if sys.stdout.isatty():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() else PIPE_WIDTH


def print_json_items(items: Iterable[Any]) -> None:
    """A JSON array on stdout written item by item as they come: the text :func:`print_json` writes."""
    first = True
    for item in items:
        text = json.dumps(item, indent=2, ensure_ascii=False, default=_plain).replace("\n", "\n  ")
        sys.stdout.write(("[\n  " if first else ",\n  ") + text)
        first = False
    sys.stdout.write("[]\n" if first else "\n]\n")
    sys.stdout.flush()


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
