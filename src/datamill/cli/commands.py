"""The root command's table of contents: which module holds each ``datamill`` command, and its summary.

``datamill ls`` imports :mod:`datamill.cli.items` and no other command module, and ``datamill --help``
imports none: the full list is drawn from :data:`COMMANDS` (each command's panel and the first
paragraph of its help, as Typer would show them). tests/test_light_imports.py checks that the table
matches the commands the modules register, name for name and line for line.
"""

from __future__ import annotations  # no commands here for Typer to read

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from typer.core import TyperCommand


class Entry(NamedTuple):
    """Where a root command lives and how the full help lists it."""

    #: The module under ``datamill.cli`` whose ``register(app)`` adds the command.
    module: str
    #: The help panel it is listed in.
    panel: str
    #: The first paragraph of its help (Markdown).
    summary: str


#: The root's commands, in the order ``datamill --help`` lists them (a panel shows where its first
#: command is).
COMMANDS: dict[str, Entry] = {
    "put": Entry(
        "items", "Items", "Upload files and whole directories into FOLDER (which must exist, unless `-p` is given)."
    ),
    "get": Entry("items", "Items", "Download an item (its current version, or `--version N`)."),
    "ls": Entry("items", "Items", "List the items of FOLDER: name, current version, size, type and last update."),
    "versions": Entry(
        "items", "Items", "List all versions of an item, oldest first: size, digest, who made it and how."
    ),
    "meta": Entry("items", "Items", "Show an item's metadata, or set and remove keys (no new version is made)."),
    "find": Entry("items", "Items", "Find items below FOLDER by name and metadata."),
    "rm": Entry("items", "Items", "Delete an item with all its versions."),
    "watch": Entry(
        "watch", "Items", "Upload the files of DIR into FOLDER as they appear or change, until Ctrl-C (or `--once`)."
    ),
    "events": Entry(
        "events", "Events", "Print the event log: every change, with its sequence number, time, kind and data."
    ),
    "share": Entry(
        "users",
        "Users and access",
        "Grant USER (or every member of `--group`) access to FOLDER and everything below it.",
    ),
    "public": Entry(
        "users", "Users and access", "Make FOLDER readable by every signed-in user (`--on`), or not (`--off`)."
    ),
    "access": Entry(
        "users",
        "Users and access",
        "List the grants made on FOLDER to users and groups (grants on folders above it also apply).",
    ),
    "whoami": Entry("users", "Users and access", "Show the user this command acts as."),
    "user": Entry("users", "Users and access", "Create and list users (site admins only)."),
    "token": Entry("users", "Users and access", "Create and revoke API tokens."),
    "group": Entry(
        "users",
        "Users and access",
        "Create groups, add and remove their members; share folders with them with `datamill share --group`.",
    ),
    "up": Entry(
        "server", "Server and settings", "Serve the home over HTTP: the REST API, the event stream and the web pages."
    ),
    "config": Entry(
        "server",
        "Server and settings",
        "Show the resolved settings, where each came from, and what the client connects to.",
    ),
    "worker": Entry(
        "server",
        "Server and settings",
        "Run the scheduler, dataflow triggers and notifier without serving HTTP, until Ctrl-C or SIGTERM.",
    ),
    "doctor": Entry(
        "server",
        "Server and settings",
        "Check a deployment: database and schema, blob store, executor, servers and workers, versions.",
    ),
    "blobs": Entry(
        "blobs", "Server and settings", "The home's blob store: move its blobs to S3, remove unreferenced ones."
    ),
    "run": Entry("runs", "Pipelines and runs", "Run a pipeline over the items of a folder, and wait for it to end."),
    "plan": Entry(
        "runs",
        "Pipelines and runs",
        "Show what a run would do, changing nothing: per task, whether it would run or be cached.",
    ),
    "why": Entry(
        "runs",
        "Pipelines and runs",
        "Explain why a task ran or was taken from the cache: its key's parts, and what differs from the "
        "nearest earlier task of the same step.",
    ),
    "logs": Entry(
        "runs",
        "Pipelines and runs",
        "Print a task's log (what it printed and logged); `--follow` streams it until the task ends.",
    ),
    "runs": Entry("runs", "Pipelines and runs", "List, show, watch, cancel and retry runs."),
    "pipelines": Entry(
        "pipelines",
        "Pipelines and runs",
        "Registered pipelines: the ones users run by name (site admins register and remove them).",
    ),
    "flow": Entry(
        "flows", "Pipelines and runs", "Dataflows: a pipeline run on what lands in a folder, results in another."
    ),
    "batch": Entry(
        "batches",
        "Pipelines and runs",
        "Batches: a named selection of items a pipeline runs over, with per-item status.",
    ),
    "lineage": Entry(
        "lineage", "Provenance", "Show an item version's provenance: the runs, tasks and input versions it came from."
    ),
    "folder": Entry("folders", "Folders", "Create, list, move and delete folders; edit their metadata."),
    "stream": Entry(
        "streams",
        "Dataflows",
        "Files through a Kafka topic in OpenMSIStream's chunk format (needs `pip install 'datamill[kafka]'`).",
    ),
}


def module_commands(module: str) -> dict[str, Any]:
    """The commands ``datamill.cli.<module>`` registers, built as Typer builds the root's own."""
    import typer  # here: the table itself is read without Typer (datamill.cli.help_page)
    import typer.main

    from datamill.cli import coercion

    scratch = typer.Typer(rich_markup_mode="markdown", add_completion=False, pretty_exceptions_enable=False)
    importlib.import_module(f"datamill.cli.{module}").register(scratch)
    commands = dict(typer.main.get_group(scratch).commands)
    for command in commands.values():
        coercion.install_tree(command)
    return commands


def summary_command(name: str) -> TyperCommand:
    """A stand-in for command ``name`` that only lists it: its name, panel and summary."""
    from typer.core import TyperCommand

    entry = COMMANDS[name]
    return TyperCommand(name, help=entry.summary, rich_help_panel=entry.panel, rich_markup_mode="markdown")


class LazyCommands(Mapping[str, Any]):
    """The root's commands by name (:data:`COMMANDS`); a command's module is loaded on first look-up.

    Click and Typer read a group's ``commands`` for the names (listing, "did you mean") and look a
    command up by name to run it; only the look-up needs the module. While :attr:`summaries` is set
    (the root's help being written), a command not loaded yet is given as its :func:`summary_command`.
    """

    def __init__(self) -> None:
        self._loaded: dict[str, Any] = {}
        self.summaries = False

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            entry = COMMANDS[name]  # KeyError: no such command, as for a dict
            if self.summaries:
                return summary_command(name)
            self._loaded.update(module_commands(entry.module))
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)
