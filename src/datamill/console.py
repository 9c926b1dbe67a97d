"""The ``datamill`` command's entry point: loads the CLI, and turns a Ctrl-C into one line.

Loading the CLI imports most of datamill and its dependencies, which takes seconds on a busy
machine; a Ctrl-C in that time would otherwise print the traceback of whatever import it hit.
Once the CLI runs, its own error boundary (:class:`datamill.cli.root.DatamillGroup`) reports it.
"""

import sys

#: Exit status for a command stopped with Ctrl-C (128 + SIGINT), as shells use.
EXIT_INTERRUPTED = 130


def main() -> None:
    """Run the ``datamill`` command; exit 130 with one line on stderr when interrupted."""
    try:
        from datamill.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
