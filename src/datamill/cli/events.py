"""``datamill events``: read the event log, or follow it as it grows."""

import json
from collections.abc import Iterator
from typing import Annotated

import typer

from datamill.cli.context import get_client
from datamill.cli.output import human_time, print_json_line
from datamill.client import Client
from datamill.limits import INT64_MAX
from datamill.records import EventRecord

PAGE = 1000


def _history(client: Client, since: int, kinds: list[str] | None) -> Iterator[EventRecord]:
    """Every event after ``since`` that exists now, page by page."""
    cursor = since
    while True:
        batch = client.events(cursor, PAGE, kinds)
        if not batch:
            return
        yield from batch
        cursor = max(cursor, batch[-1].seq)


def _line(ev: EventRecord) -> str:
    """``  42  2026-01-02 13:04:05  item.created    folder=Raw Data name=a.csv``."""
    data = " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}" for k, v in ev.data.items())
    return f"{ev.seq:>6}  {human_time(ev.ts)}  {ev.kind:<22} {data}".rstrip()


def events(
    ctx: typer.Context,
    since: Annotated[
        int, typer.Option("--since", metavar="SEQ", min=0, max=INT64_MAX, help="Start after this sequence number.")
    ] = 0,
    kind: Annotated[
        list[str] | None,
        typer.Option(
            "--kind",
            "-k",
            metavar="KIND",
            help="Only events of this kind, repeatable; a trailing `.` or `*` matches a prefix (`item.`).",
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events as they happen, until Ctrl-C.")
    ] = False,
    count: Annotated[int | None, typer.Option("--count", "-n", metavar="N", help="Stop after N events.", min=1)] = None,
    json_: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per line (JSON Lines) on stdout.")
    ] = False,
) -> None:
    """Print the event log: every change, with its sequence number, time, kind and data.

    Only events of folders you may read are shown (events about users and tokens: site admins
    only). With `--follow` the command waits for new events and ends with Ctrl-C (exit status 0)
    or after `--count` events. Example:

        datamill events --kind item. --follow --json
    """
    client = get_client(ctx)
    kinds = list(kind) if kind else None
    stream = client.follow(since, kinds) if follow else _history(client, since, kinds)
    shown = 0
    try:
        for ev in stream:
            if json_:
                print_json_line(ev.to_dict())
            else:
                typer.echo(_line(ev))
            shown += 1
            if count is not None and shown >= count:
                break
    except KeyboardInterrupt:
        if not follow:
            raise
        # Ctrl-C is how --follow is meant to end: a normal exit, not an error.


def register(app: typer.Typer) -> None:
    """Add ``events`` to the root command."""
    app.command("events", rich_help_panel="Events")(events)
