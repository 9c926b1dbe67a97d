"""``datamill batch ...``: create, list, show, start, retry, duplicate, download and remove batches.

A batch is a named selection of items (from folders, a search, a pasted list of paths, or another
batch's outputs) that a pipeline runs over. ``batch start`` records a run; on a local home it also
executes it in this process (with the live view), on a server the server's scheduler does and
``datamill runs watch RUN`` follows it. ``batch show`` prints the per-item, per-step grid.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from datamill.cli.context import get_client
from datamill.cli.output import human_time, print_json, print_table, say, stdout
from datamill.cli.params import JsonFlag
from datamill.cli.runs import ExecutorOption, follow_new_run, parse_params

app = typer.Typer(
    help="Batches: a named selection of items a pipeline runs over, with per-item status.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="Batch name, e.g. `news-2024-05`.")]


def _read_paths(from_file: Path | None) -> list[str]:
    if from_file is None:
        return []
    text = sys.stdin.read() if str(from_file) == "-" else from_file.read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@app.command("create")
def create(
    ctx: typer.Context,
    name: NameArg,
    pipeline: Annotated[
        str, typer.Option("--pipeline", metavar="PIPELINE", help="A registered pipeline (`datamill pipelines ls`).")
    ],
    to: Annotated[str, typer.Option("--to", metavar="FOLDER", help="Folder the outputs are published to.")],
    folder: Annotated[
        list[str] | None, typer.Option("--folder", metavar="FOLDER", help="Every item of FOLDER, repeatable.")
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="With --folder: subfolders too.")] = False,
    item: Annotated[list[str] | None, typer.Option("--item", metavar="PATH", help="One item, repeatable.")] = None,
    items_from: Annotated[
        Path | None,
        typer.Option("--items-from", metavar="FILE", help="A pasted list: one item path per line (`-`: stdin)."),
    ] = None,
    search: Annotated[
        str | None, typer.Option("--search", metavar="FOLDER", help="Items below FOLDER matching --name.")
    ] = None,
    name_glob: Annotated[str | None, typer.Option("--name", metavar="GLOB", help="With --search: names.")] = None,
    from_batch: Annotated[
        str | None, typer.Option("--from-batch", metavar="BATCH", help="The outputs of BATCH's latest run.")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", metavar="KEY=VALUE", help="A step parameter, repeatable.")
    ] = None,
    description: Annotated[str | None, typer.Option("--description", metavar="TEXT")] = None,
    json_: JsonFlag = False,
) -> None:
    """Create a batch (not started) from folders, a search, item paths and/or another batch's outputs.

    datamill batch create news --pipeline clams-chain --to Annotated --folder Transcripts
    datamill batch create picked --pipeline clams-chain --to Annotated --items-from list.txt
    """
    info = get_client(ctx).create_batch(
        name,
        pipeline,
        to,
        folders=folder or [],
        recursive=recursive,
        search={"folder": search, **({"name": name_glob} if name_glob else {})} if search else None,
        paths=[*(item or []), *_read_paths(items_from)],
        from_batch=from_batch,
        params=parse_params(param),
        description=description or "",
    )
    if json_:
        print_json(info)
        return
    say(f"created batch {info.name!r} of {len(info.items)} items; start it with `datamill batch start {info.name}`")


@app.command("ls")
def list_batches(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """List the batches you may see, with their counts."""
    batches = get_client(ctx).batches()
    if json_:
        print_json(batches)
        return
    print_table(
        ["name", "status", "items", "completed", "successful", "unstarted", "pipeline", "updated"],
        [
            (
                b.name,
                b.status,
                b.counts.items,
                b.counts.completed,
                b.counts.successful,
                b.counts.unstarted,
                b.pipeline,
                human_time(b.updated_at),
            )
            for b in batches
        ],
        empty="no batches yet; create one with `datamill batch create NAME --pipeline ... --to ... --folder ...`",
    )


@app.command("show")
def show(ctx: typer.Context, name: NameArg, json_: JsonFlag = False) -> None:
    """Show a batch: its counts and, per item, the status of each step of its latest run."""
    client = get_client(ctx)
    status = client.batch_status(name)
    if json_:
        print_json(status)
        return
    c = status.counts
    run = f"run {status.run} ({status.run_status})" if status.run is not None else "not started"
    stdout().print(
        f"batch {name}: {run}; {c.items} items: {c.completed} completed ({c.successful} successful, "
        f"{c.failed} failed), {c.running} running, {c.unstarted} unstarted",
        markup=False,
        highlight=False,
    )
    steps = status.steps
    print_table(
        ["item", "status", *steps],
        [
            (
                r.item,
                r.status,
                *[next((f"{x.status}" for x in r.cells if x.step == s), "-") for s in steps],
            )
            for r in status.rows
        ],
        empty="no items you may read",
    )
    failed = [(r.item, x.step, x.error) for r in status.rows for x in r.cells if x.error]
    for item_path, step, error in failed[:10]:
        stdout().print(f"{item_path} {step}: {error}", markup=False, highlight=False)


@app.command("start")
def start(ctx: typer.Context, name: NameArg, executor: ExecutorOption = None, json_: JsonFlag = False) -> None:
    """Run the batch's pipeline over its items (on a local home: here, with the live view)."""
    client = get_client(ctx)
    follow_new_run(client, client.start_batch(name, executor), executor, json_)


@app.command("retry")
def retry(ctx: typer.Context, name: NameArg, executor: ExecutorOption = None, json_: JsonFlag = False) -> None:
    """Rerun only what failed in the batch's latest run; what succeeded is reused."""
    client = get_client(ctx)
    follow_new_run(client, client.retry_batch(name), executor, json_)


@app.command("duplicate")
def duplicate(
    ctx: typer.Context,
    name: NameArg,
    new_name: Annotated[str, typer.Argument(metavar="NEW_NAME", help="The copy's name.")],
    json_: JsonFlag = False,
) -> None:
    """A new batch of the same items, pipeline and parameters (not started)."""
    info = get_client(ctx).duplicate_batch(name, new_name)
    if json_:
        print_json(info)
        return
    say(f"created batch {info.name!r} of {len(info.items)} items")


@app.command("download")
def download(
    ctx: typer.Context,
    name: NameArg,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", metavar="FILE", help="Where to write the zip (default NAME.zip).")
    ] = None,
) -> None:
    """Download every output of the batch's latest run as one zip."""
    target = output or Path(f"{name}.zip")
    size = get_client(ctx).download_batch(name, target)
    say(f"wrote {target} ({size} bytes)")


@app.command("rm")
def remove(ctx: typer.Context, name: NameArg) -> None:
    """Forget a batch; its runs and outputs stay."""
    get_client(ctx).delete_batch(name)
    say(f"removed batch {name!r}")


def register(root: typer.Typer) -> None:
    """Add the ``batch`` group to the root command."""
    root.add_typer(app, name="batch", rich_help_panel="Pipelines and runs")
