"""``datamill --help`` written from the command table, without loading Typer, Click or Rich.

Typer renders help with Rich, whose help module loads markdown-it and pygments: ~45 % of the
command's start-up, for a page whose content is fixed (the root's options here, the commands in
:data:`~datamill.cli.commands.COMMANDS`). :func:`render` lays that page out as Typer does — panels
in box-drawing characters, summaries wrapped at the terminal's width — and
tests/test_light_imports.py checks that it is Typer's page, character for character, at several widths.

Only where the plain page is certainly Typer's is it used (:func:`page_width`): output that is no
terminal (a terminal gets Typer's colours), no variable that changes Rich's behaviour, and at least
:data:`MIN_WIDTH` columns (narrower, Rich folds the option table in ways not copied here).
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from typing import NamedTuple

from datamill.cli.commands import COMMANDS

#: The root command's help (Markdown, as Typer is given it).
ROOT_HELP = (
    "datamill: folders of versioned items, with dataflows built in.\n\n"
    "Works on a local home directory (default `./.datamill`) or, with `--url` and `--token`, on a "
    "server started with `datamill up`. Listings take `--json`; results go to stdout, messages to stderr."
)
USAGE = "Usage: datamill [OPTIONS] COMMAND [ARGS]..."
#: The narrowest page written here; below it Typer writes the page.
MIN_WIDTH = 70
#: Variables under which Rich or Typer write a page differently (colours forced, a width imposed, ...).
RICH_VARIABLES = ("FORCE_COLOR", "PY_COLORS", "GITHUB_ACTIONS", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "TERMINAL_WIDTH")


class RootOption(NamedTuple):
    """A global option as the root's help lists it."""

    long: str
    short: str
    metavar: str
    help: str
    envvar: str


#: The root's options in the order Typer lists them (the root command in datamill/cli/app.py declares
#: the same; the help test compares the pages).
ROOT_OPTIONS = (
    RootOption("--home", "", "DIR", "Home directory to work on.", "DATAMILL_HOME"),
    RootOption("--profile", "", "NAME", "Profile in datamill.toml.", "DATAMILL_PROFILE"),
    RootOption("--url", "", "URL", "Server to talk to instead of a local home.", "DATAMILL_URL"),
    RootOption("--token", "", "TOKEN", "API token for --url (never printed).", "DATAMILL_TOKEN"),
    RootOption("--user", "", "NAME", "Act as this user on a local home (default admin).", "DATAMILL_USER"),
    RootOption("--verbose", "-v", "<bool>", "Show tracebacks of errors.", "DATAMILL_VERBOSE"),
    RootOption("--help", "-h", "<bool>", "Show this message and exit.", ""),
)


def _markdown(text: str) -> str:
    # The summaries use no Markdown but code spans, which Rich shows without their backticks.
    return re.sub(r"`([^`]*)`", r"\1", text)


def _wrap(text: str, width: int) -> list[str]:
    # Rich wraps at spaces and folds a word longer than the line, as textwrap does.
    return textwrap.wrap(text, width, break_on_hyphens=False) or [""]


def _terminal_width() -> int:
    # Rich asks stdin, stdout and stderr in turn, then COLUMNS overrides; 80 when none answers.
    width = 0
    for fd in (0, 1, 2):
        try:
            width = os.get_terminal_size(fd).columns
            break
        except (OSError, ValueError):
            continue
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit():
        width = int(columns)
    return width or 80


def page_width() -> int | None:
    """The width to write the page at, or None where Typer must write it (see the module's docstring)."""
    if any(os.environ.get(name) for name in RICH_VARIABLES) or os.environ.get("TERM") in ("dumb", "unknown"):
        return None
    try:
        if sys.stdout.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    width = _terminal_width()
    return width if width >= MIN_WIDTH else None


def _panel(title: str, rows: list[str], width: int) -> list[str]:
    top = f"╭─ {title} "
    out = [top + "─" * (width - 1 - len(top)) + "╮"]
    out += [f"│ {row.ljust(width - 4)} │" for row in rows]
    out.append("╰" + "─" * (width - 2) + "╯")
    return out


def _options_rows(inner: int) -> list[str]:
    widths = [max(len(o.long) for o in ROOT_OPTIONS), max(len(o.short) for o in ROOT_OPTIONS), 0, 0]
    widths.append(max(len(o.metavar) for o in ROOT_OPTIONS))
    # Six columns (long, short, negative long and short, type, help), two spaces between each.
    lead = sum(widths) + 2 * len(widths)
    rows = []
    for o in ROOT_OPTIONS:
        lines = _wrap(o.help, inner - lead)
        if o.envvar:
            lines += _wrap(f"[env var: {o.envvar}]", inner - lead)
        cells = [o.long, o.short, "", "", o.metavar]
        rows.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + "  " + lines[0])
        rows += [" " * lead + line for line in lines[1:]]
    return rows


def _command_panels(inner: int) -> list[str]:
    name_width = max(len(name) for name in COMMANDS)
    panels: dict[str, list[str]] = {}
    for name, entry in COMMANDS.items():
        lines = _wrap(_markdown(entry.summary), inner - name_width - 2)
        rows = panels.setdefault(entry.panel, [])
        rows.append(name.ljust(name_width) + "  " + lines[0])
        rows += [" " * (name_width + 2) + line for line in lines[1:]]
    out: list[str] = []
    for title, rows in panels.items():
        out += _panel(title, rows, inner + 4)
    return out


def render(width: int) -> str:
    """The root's help page, ``width`` columns wide (every line padded to it, as Rich writes it)."""
    text = width - 2
    blank = " " * width
    lines = [blank, f" {USAGE.ljust(text)} ", blank]
    for paragraph in ROOT_HELP.split("\n\n"):
        lines += [f" {line.ljust(text)} " for line in _wrap(_markdown(paragraph), text)]
        lines.append(blank)
    lines += _panel("Options", _options_rows(width - 4), width)
    lines += _command_panels(width - 4)
    lines.append("")  # Typer ends the page with an empty line
    return "".join(line + "\n" for line in lines)


def is_root_help(argv: list[str]) -> bool:
    """Whether ``argv`` (the arguments after ``datamill``) asks for the root's help and nothing else."""
    return argv in (["--help"], ["-h"])


def print_root_help() -> bool:
    """Write the page on stdout if it can be written here; whether it was."""
    width = page_width()
    if width is None:
        return False
    sys.stdout.write(render(width))
    sys.stdout.flush()
    return True
