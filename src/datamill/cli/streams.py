"""``datamill stream send|receive``: files through a Kafka topic in OpenMSIStream's chunk format.

``send`` replaces OpenMSIStream's uploader; ``receive`` its ``DataFileDownloadDirectory``. The broker
comes from ``--bootstrap``, else from the settings (``kafka_bootstrap`` and the ``kafka_sasl_*``
keys: a password is never a command-line option). Both need the ``[kafka]`` extra.
"""

import json
from pathlib import Path
from typing import Annotated

import typer

from datamill.cli.context import get_state
from datamill.cli.output import say

app = typer.Typer(
    help="Files through a Kafka topic in OpenMSIStream's chunk format (needs `pip install 'datamill[kafka]'`).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

TopicOption = Annotated[str, typer.Option("--topic", metavar="TOPIC", help="Kafka topic.")]
BootstrapOption = Annotated[
    str | None,
    typer.Option(
        "--bootstrap",
        metavar="HOST:PORT",
        help="Kafka broker; default: the kafka_bootstrap setting (DATAMILL_KAFKA_BOOTSTRAP or datamill.toml).",
    ),
]


def _broker(ctx: typer.Context, bootstrap: str | None):  # type: ignore[no-untyped-def]
    from datamill.config import load_settings
    from datamill.streams.broker import Broker

    return Broker.from_settings(load_settings(profile=get_state(ctx).profile), bootstrap)


@app.command("send")
def send_cmd(
    ctx: typer.Context,
    paths: Annotated[
        list[Path], typer.Argument(metavar="FILES|DIR", help="Files, or directories sent with subfolders.")
    ],
    topic: TopicOption,
    bootstrap: BootstrapOption = None,
    chunk_size: Annotated[
        int, typer.Option("--chunk-size", metavar="BYTES", help="Chunk size, a power of two (default 512 KiB).")
    ] = 1 << 19,
    nine_fields: Annotated[
        bool,
        typer.Option("--nine-fields", help="Leave out the mtime field, for OpenMSIStream readers before 1.8.6.1."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Send files (a directory: every file below it, subfolders kept) into TOPIC."""
    from datamill.streams.sender import send

    broker = _broker(ctx, bootstrap)
    report = send(paths, topic, broker, chunk_size, with_mtime=not nine_fields, on_file=lambda p, n: say(f"sent {p}"))
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        say(f"{report.files} file(s), {report.messages} message(s), {report.bytes} bytes into {topic}")


@app.command("receive")
def receive_cmd(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Directory the files are written into.")],
    topic: TopicOption,
    bootstrap: BootstrapOption = None,
    stop_after: Annotated[
        float | None,
        typer.Option(
            "--stop-after",
            metavar="SECONDS",
            help="Exit once nothing arrived for this long (default: run until Ctrl-C).",
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            "--group", metavar="ID", help="Consumer group (default: one per topic and directory, so a rerun resumes)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Write the files arriving on TOPIC into DIR, subfolders kept, each checked against its SHA-512."""
    from datamill.streams.receiver import receive

    broker = _broker(ctx, bootstrap)
    report = receive(
        topic,
        broker,
        directory,
        stop_after=stop_after,
        group=group,
        on_file=lambda p, n: typer.echo(p),
        on_bad=lambda m: say(f"skipped a bad message: {m}"),
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        say(f"{report.files} file(s), {report.messages} message(s), {len(report.bad)} bad")
    if report.incomplete:
        say(f"incomplete (not written): {', '.join(report.incomplete)}")


def register(root: typer.Typer) -> None:
    """Add ``stream`` to the root command."""
    root.add_typer(app, name="stream", rich_help_panel="Dataflows")
