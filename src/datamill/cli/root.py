"""The root command: Typer's app with the global options, the lazy command list and the error boundary.

All errors pass one boundary, :meth:`DatamillGroup.invoke`: a :class:`~datamill.errors.DatamillError`
becomes ``error: <message>`` on stderr and exit status 1; the traceback appears only with ``-v``.

The CLI modules deliberately do without ``from __future__ import annotations``: Typer reads every
command's annotations on each start, and evaluating them from strings costs ~0.2 s a run.
"""

import os
import sys
import traceback
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from datamill.cli import coercion
from datamill.cli.commands import COMMANDS, LazyCommands
from datamill.cli.context import State
from datamill.cli.help_page import ROOT_HELP
from datamill.cli.output import say
from datamill.errors import DatamillError

#: Exit status for a command stopped with Ctrl-C (128 + SIGINT), as shells use.
EXIT_INTERRUPTED = 130


class DatamillGroup(TyperGroup):
    """The root command: loads its commands lazily; its :meth:`invoke` is the CLI's one error boundary."""

    context_class = coercion.QuickContext

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands()  # type: ignore[assignment]  # read-only: commands come from COMMANDS

    def list_commands(self, ctx: Any) -> list[str]:
        """The names, without loading any module."""
        return list(COMMANDS)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """The full help, listing the commands from their summaries (no command module is imported)."""
        commands = self.commands
        assert isinstance(commands, LazyCommands)
        commands.summaries = True
        try:
            super().format_help(ctx, formatter)
        finally:
            commands.summaries = False

    def invoke(self, ctx: Any) -> Any:  # a typer Context; typed Any to match TyperGroup.invoke
        """Run the chosen command, turning every error into one line on stderr and an exit status."""
        try:
            try:
                return super().invoke(ctx)
            finally:
                if isinstance(ctx.obj, State):
                    ctx.obj.close()
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # explicit exits and usage errors: Typer reports them
        except DatamillError as exc:
            _fail(ctx, exc.message)
        except KeyboardInterrupt:
            say("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            _quiet_broken_pipe()
            raise typer.Exit(1) from None
        except OSError as exc:  # a local file the user named: missing, not writable, a directory, ...
            what = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
            _fail(ctx, what)
        except Exception as exc:
            _fail(ctx, f"unexpected {type(exc).__name__}: {exc}", hint=True)


def _verbose(ctx: typer.Context) -> bool:
    return bool(ctx.params.get("verbose")) or (isinstance(ctx.obj, State) and ctx.obj.verbose)


def _fail(ctx: typer.Context, message: str, hint: bool = False) -> None:
    """Report an error: the traceback with ``-v``, then one line; exit 1."""
    verbose = _verbose(ctx)
    if verbose:
        traceback.print_exc(file=sys.stderr)
    elif hint:
        message += " (run again with -v for the traceback)"
    say(f"error: {message}")
    raise typer.Exit(1)


def _quiet_broken_pipe() -> None:
    # The reader went away (`datamill events --json | head -1`); point stdout at /dev/null so that
    # the interpreter's final flush does not raise again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


app = typer.Typer(
    cls=DatamillGroup,
    name="datamill",
    help=ROOT_HELP,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[
        str | None,
        typer.Option("--home", metavar="DIR", envvar="DATAMILL_HOME", help="Home directory to work on."),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option("--profile", metavar="NAME", envvar="DATAMILL_PROFILE", help="Profile in datamill.toml."),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option("--url", metavar="URL", envvar="DATAMILL_URL", help="Server to talk to instead of a local home."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", metavar="TOKEN", envvar="DATAMILL_TOKEN", help="API token for --url (never printed)."),
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(
            "--user", metavar="NAME", envvar="DATAMILL_USER", help="Act as this user on a local home (default admin)."
        ),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option("-v", "--verbose", envvar="DATAMILL_VERBOSE", help="Show tracebacks of errors."),
    ] = False,
) -> None:
    """datamill: folders of versioned items, with dataflows built in."""
    ctx.obj = State(home=home, profile=profile, url=url, token=token, user=user, verbose=verbose)


def run() -> None:
    """Run the command line in ``sys.argv`` through Typer."""
    app(prog_name="datamill")


__all__ = ["COMMANDS", "DatamillGroup", "app", "run"]
