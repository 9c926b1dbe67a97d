"""``datamill flow ...``: create, list, show, edit, start, stop, run, history and remove dataflows.

A dataflow watches a source folder and runs a pipeline into a destination folder. Its trigger
runs inside the server: on a local home, ``flow start`` only marks it running, and it runs while
``datamill up`` is running. ``flow run`` records one run now; on a local home it also executes it
in this process, so it works without a server.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from datamill.cli.context import get_client
from datamill.cli.output import human_size, human_time, human_value, print_json, print_table, say, stdout
from datamill.cli.params import JsonFlag
from datamill.cli.runs import ExecutorOption, follow_new_run, parse_params
from datamill.errors import InvalidInput

app = typer.Typer(
    help="Dataflows: a pipeline run on what lands in a folder, results in another.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="Dataflow name, e.g. `derived-data`.")]
TriggerOption = Annotated[
    str | None,
    typer.Option(
        "--trigger",
        metavar="TRIGGER",
        help="`new-items` (run on what lands in the source), `manual` (only `flow run`) or a schedule, "
        "`cron:*/5 * * * *` (UTC).",
    ),
]
ParamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        "-p",
        metavar="KEY=VALUE",
        help="A step parameter, repeatable (`threshold=0.7` or `summary.threshold=0.7`); VALUE is JSON when valid.",
    ),
]
DescriptionOption = Annotated[str | None, typer.Option("--description", metavar="TEXT", help="What it is for.")]
WebhookOption = Annotated[
    list[str] | None,
    typer.Option("--webhook", metavar="URL", help="POST each finished run's result to URL, repeatable."),
]


@app.command("create")
def create(
    ctx: typer.Context,
    name: NameArg,
    to: Annotated[str, typer.Option("--to", metavar="FOLDER", help="Folder results go to (outside the source).")],
    source: Annotated[str | None, typer.Option("--source", metavar="FOLDER", help="Folder to watch.")] = None,
    pipeline: Annotated[
        str | None,
        typer.Option(
            "--pipeline",
            metavar="PIPELINE",
            help="A registered pipeline's name (`datamill pipelines ls`); site admins may also give "
            "`module:attr`, `path/file.py:attr` or a YAML file.",
        ),
    ] = None,
    trigger: TriggerOption = None,
    param: ParamOption = None,
    description: DescriptionOption = None,
    webhook: WebhookOption = None,
    directory: Annotated[
        str | None,
        typer.Option(
            "--directory",
            metavar="SERVER_DIR",
            help="Make a directory dataflow (site admins only): land the files of this directory on the "
            "server's machine (below its `watch_roots`) in --to, instead of --source and --pipeline.",
        ),
    ] = None,
    include: Annotated[
        list[str] | None, typer.Option("--include", metavar="REGEX", help="Directory dataflow: take only these.")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", metavar="REGEX", help="Directory dataflow: leave these out.")
    ] = None,
    stable: Annotated[
        float | None,
        typer.Option("--stable", metavar="SECONDS", min=0, help="Directory dataflow: unchanged this long first."),
    ] = None,
    poll: Annotated[bool, typer.Option("--poll", help="Directory dataflow: poll (network file systems).")] = False,
    json_: JsonFlag = False,
) -> None:
    r"""Create a dataflow (stopped); `datamill flow start NAME` sets it going.

    Everything is checked first: the folders exist and you may read the source and write the
    destination, the destination is not inside the source, the pipeline loads and its parameters
    exist. With `--directory`, a directory dataflow lands the files of a server directory in
    `--to` by the rules of `datamill watch` (site admins only). Examples:

        datamill flow create derived --source "Raw Data" --to "Derived Data" --pipeline tabular
        datamill flow create xrd-in --directory /srv/instruments/xrd --to "Raw Data" --include '\.csv$'
    """
    client = get_client(ctx)
    if directory is not None:
        if source or pipeline:
            raise InvalidInput("--directory makes a directory dataflow: give no --source or --pipeline")
        watch: dict[str, Any] = {"include": include or [], "exclude": exclude or [], "poll": poll}
        if stable is not None:
            watch["stable_seconds"] = stable
        info = client.create_dataflow(
            name, "", to, "", description=description or "", kind="directory", directory=directory, watch=watch
        )
    else:
        if not source or not pipeline:
            raise InvalidInput("give --source and --pipeline (or --directory for a directory dataflow)")
        if include or exclude or stable is not None or poll:
            raise InvalidInput("--include, --exclude, --stable and --poll apply to directory dataflows only")
        info = client.create_dataflow(
            name,
            source,
            to,
            pipeline,
            trigger or "new-items",
            parse_params(param),
            description or "",
            webhook or [],
        )
    if json_:
        print_json(info)
    say(f"created dataflow {info['name']!r} (stopped); start it with `datamill flow start {info['name']}`")


@app.command("ls")
def list_flows(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """List the dataflows you may see."""
    flows = get_client(ctx).dataflows()
    if json_:
        print_json(flows)
        return
    print_table(
        ["name", "state", "trigger", "source", "destination", "version", "pipeline"],
        [
            (f["name"], f["state"], f["trigger"], f["source"], f["destination"], f["version"], f["pipeline"])
            for f in flows
        ],
        empty="no dataflows yet; create one with `datamill flow create NAME --source ... --to ... --pipeline ...`",
    )


@app.command("show")
def show(ctx: typer.Context, name: NameArg, json_: JsonFlag = False) -> None:
    """Show a dataflow: state, version, configuration, next fire times (cron) and its last runs."""
    info = get_client(ctx).dataflow(name)
    if json_:
        print_json(info)
        return
    out = stdout()
    state = info["state"] + (f" ({info['state_reason']})" if info.get("state_reason") else "")
    rows: list[tuple[str, Any]] = [
        ("name", info["name"]),
        ("state", state),
        ("version", info["version"]),
        ("owner", info.get("owner") or "-"),
        ("trigger", info["trigger"]),
        ("source", info["source"]),
        ("destination", info["destination"]),
        ("pipeline", info["pipeline"]),
        *([("directory", info["directory"]), ("watch", info.get("watch"))] if info.get("directory") else []),
        ("params", human_value(info["params"]) if info["params"] else "-"),
        ("webhooks", ", ".join(info["webhooks"]) or "-"),
        ("description", " ".join(info["description"].split()) or "-"),
        ("updated", human_time(info["updated_at"])),
    ]
    if info.get("next_fire_times"):
        rows.append(("next runs", ", ".join(human_time(t) for t in info["next_fire_times"])))
    rows += _status_rows(info.get("status"))
    for label, value in rows:
        out.print(f"{label:<12} {value}", markup=False, soft_wrap=True)
    recent = info.get("recent_runs") or []
    if recent:
        out.print()
        print_table(
            ["id", "status", "version", "requested", "reason"],
            [(r["id"], r["status"], r["dataflow_version"], human_time(r["requested_at"]), r["reason"]) for r in recent],
        )
    else:
        say("no runs yet")


def _status_rows(status: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """A directory dataflow's live status as ``flow show`` rows."""
    if not status:
        return []
    n = status.get("files_landed", 0)
    rows: list[tuple[str, Any]] = [
        (
            "status",
            f"landed {n} file{'s' if n != 1 else ''} ({human_size(status.get('bytes_landed', 0))}), "
            f"{status.get('files_skipped', 0)} skipped, {status.get('files_failed', 0)} failed, "
            f"{status.get('files_waiting', 0)} waiting; seen {status.get('files_seen', 0)}",
        ),
        (
            "watcher",
            f"{'running' if status.get('running') else 'not running'} on {status.get('owner', '-')}, "
            f"reported {human_time(status['reported_at']) if status.get('reported_at') else '-'}",
        ),
    ]
    last = status.get("last_landed")
    if last:
        rows.append(
            ("last landed", f"{last.get('path') or '(hidden)'} v{last.get('version')} {human_time(last['at'])}")
        )
    err = status.get("last_error")
    if err:
        where = f"{err['path']}: " if err.get("path") else ""
        rows.append(("last error", f"{where}{err.get('kind')} {err.get('message') or ''} {human_time(err['at'])}"))
    return rows


@app.command("edit")
def edit(
    ctx: typer.Context,
    name: NameArg,
    source: Annotated[str | None, typer.Option("--source", metavar="FOLDER", help="New source folder.")] = None,
    to: Annotated[str | None, typer.Option("--to", metavar="FOLDER", help="New destination folder.")] = None,
    pipeline: Annotated[
        str | None,
        typer.Option(
            "--pipeline", metavar="PIPELINE", help="New pipeline: a registered name (site admins: or a reference)."
        ),
    ] = None,
    trigger: TriggerOption = None,
    param: ParamOption = None,
    description: DescriptionOption = None,
    webhook: WebhookOption = None,
    json_: JsonFlag = False,
) -> None:
    """Change a dataflow; each change makes a new version (runs keep the version they used).

    Options not given keep their value; `--param` is merged into the current parameters;
    `--webhook` replaces the list. A running dataflow picks the new version up at once and covers
    the items without a result under it.
    """
    client = get_client(ctx)
    params = None
    if param:
        params = {**client.dataflow(name)["params"], **parse_params(param)}
    before = client.dataflow(name)["version"]
    info = client.edit_dataflow(
        name,
        source=source,
        dest=to,
        pipeline=pipeline,
        trigger=trigger,
        params=params,
        description=description,
        webhooks=webhook,
    )
    if json_:
        print_json(info)
    if info["version"] == before:
        say(f"dataflow {name!r} unchanged (version {before})")
    else:
        say(f"dataflow {name!r} is now version {info['version']}")


@app.command("start")
def start(ctx: typer.Context, name: NameArg, json_: JsonFlag = False) -> None:
    """Start a dataflow: it first covers the items without a result, then follows its trigger."""
    client = get_client(ctx)
    info = client.start_dataflow(name)
    if json_:
        print_json(info)
    if client.embedded:
        say(f"dataflow {name!r} is running; it runs while `datamill up` is running on this home")
    else:
        say(f"dataflow {name!r} is running")


@app.command("stop")
def stop(
    ctx: typer.Context,
    name: NameArg,
    cancel: Annotated[bool, typer.Option("--cancel", help="Also cancel its runs in flight.")] = False,
    json_: JsonFlag = False,
) -> None:
    """Stop a dataflow; runs in flight finish unless `--cancel` is given. Starting it again later
    processes what landed meanwhile."""
    info = get_client(ctx).stop_dataflow(name, cancel=cancel)
    if json_:
        print_json(info)
    cancelled = info.get("cancelled") or []
    say(f"stopped dataflow {name!r}" + (f"; cancelled run(s) {', '.join(map(str, cancelled))}" if cancelled else ""))


@app.command("run")
def run_now(
    ctx: typer.Context,
    name: NameArg,
    executor: ExecutorOption = None,
    json_: JsonFlag = False,
) -> None:
    """Run a dataflow once now, over the current contents of its source (cached tasks are reused).

    On a local home the run executes in this process; on a server its scheduler executes it.
    """
    client = get_client(ctx)
    run_id = client.run_dataflow(name)
    if run_id is None:
        if json_:
            print_json(None)
        say(f"dataflow {name!r}: its source has no items; nothing to run")
        return
    say(f"run {run_id} of dataflow {name!r}")
    follow_new_run(client, run_id, executor, json_)


@app.command("history")
def history(ctx: typer.Context, name: NameArg, json_: JsonFlag = False) -> None:
    """Every version of a dataflow's configuration, with who made it and the runs made under it."""
    versions = get_client(ctx).dataflow_history(name)
    if json_:
        print_json(versions)
        return
    rows = []
    previous: dict[str, Any] = {}
    for v in versions:
        cfg = v["config"]
        changed = sorted(k for k in cfg if previous and cfg.get(k) != previous.get(k))
        runs = v["runs"]
        failed = sum(1 for r in runs if r["status"] == "failed")
        rows.append(
            (
                v["version"],
                human_time(v["created_at"]),
                v.get("created_by") or "-",
                ", ".join(changed) if previous else "(created)",
                f"{len(runs)}" + (f" ({failed} failed)" if failed else ""),
            )
        )
        previous = cfg
    print_table(["version", "created", "by", "changed", "runs"], rows)


@app.command("rm")
def remove(ctx: typer.Context, name: NameArg) -> None:
    """Remove a dataflow (stop it first); its runs and the results it made stay."""
    get_client(ctx).delete_dataflow(name)
    say(f"removed dataflow {name!r}")


def register(root: typer.Typer) -> None:
    """Add the ``flow`` group to the root command."""
    root.add_typer(app, name="flow", rich_help_panel="Pipelines and runs")
