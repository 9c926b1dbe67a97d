"""The ``datamill`` command: a thin shell over :class:`datamill.client.Client`.

Global options (before the command) choose where to work: a local home (``--home``, ``--profile``,
acting as ``--user``) or a server (``--url`` + ``--token``). Each noun has its module:
:mod:`~datamill.cli.folders`, :mod:`~datamill.cli.items`, :mod:`~datamill.cli.events`,
:mod:`~datamill.cli.users`, :mod:`~datamill.cli.server`, ...; :mod:`~datamill.cli.commands` says
which module holds which command. A module is imported only when one of its commands runs (or its
help is shown): a start-up pays for the one command it runs, not for all of them.

The root command and its error boundary live in :mod:`datamill.cli.root` (Typer); this package loads
it only when a command runs: ``datamill --help`` is written by :mod:`datamill.cli.help_page` from the
command table without Typer, Click or Rich.
"""

import sys
from typing import Any


def main() -> None:
    """The console entry point."""
    from datamill.cli import help_page

    if help_page.is_root_help(sys.argv[1:]) and help_page.print_root_help():
        return
    from datamill.cli.root import run

    run()


def __getattr__(name: str) -> Any:
    # `from datamill.cli import app` (and the other names of datamill.cli.root) load Typer on use only.
    if name in ("app", "DatamillGroup", "COMMANDS", "EXIT_INTERRUPTED"):
        from datamill.cli import root as module

        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["COMMANDS", "DatamillGroup", "app", "main"]
