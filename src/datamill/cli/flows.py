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
ImageOption = Annotated[
    str | None,
    typer.Option(
        "--image",
        metavar="IMAGE",
        help="Instead of a pipeline: a container image (`localhost/tool:1`, allowed by `allowed_images`) whose "
        "default command gets each item's file and an output directory; what it writes there is published.",
    ),
]
DescriptionOption = Annotated[str | None, typer.Option("--description", metavar="TEXT", help="What it is for.")]
WebhookOption = Annotated[
    list[str] | None,
    typer.Option("--webhook", metavar="URL", help="POST each finished run's result to URL, repeatable."),
]
RecursiveOption = Annotated[
    bool | None,
    typer.Option(
        "--recursive/--no-recursive",
        help="Items landed in the source's subfolders fire it too; each result lands in the destination's "
        "subfolder mirroring its item's (default: the source folder alone).",
    ),
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
    image: ImageOption = None,
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
    recursive: RecursiveOption = None,
    json_: JsonFlag = False,
) -> None:
    r"""Create a dataflow (stopped); `datamill flow start NAME` sets it going.

    Give `--pipeline` or `--image`. Everything is checked first: the folders exist and you may read
    the source and write the destination, the destination is not inside the source, the pipeline
    loads and its parameters exist, the image is allowed (`allowed_images`). With `--directory`, a
    directory dataflow lands the files of a server directory in `--to` by the rules of
    `datamill watch` (site admins only). Examples:

        datamill flow create derived --source "Raw Data" --to "Derived Data" --pipeline tabular

        datamill flow create thumbs --source Photos --to Thumbs --image localhost/thumbnailer:1

        datamill flow create xrd-in --directory /srv/instruments/xrd --to "Raw Data" --include '\.csv$'
    """
    client = get_client(ctx)
    if directory is not None:
        if source or pipeline or image:
            raise InvalidInput("--directory makes a directory dataflow: give no --source, --pipeline or --image")
        if recursive:
            raise InvalidInput("--recursive applies to workflow dataflows (it watches a source's subfolders)")
        watch: dict[str, Any] = {"include": include or [], "exclude": exclude or [], "poll": poll}
        if stable is not None:
            watch["stable_seconds"] = stable
        info = client.create_dataflow(
            name, "", to, "", description=description or "", kind="directory", directory=directory, watch=watch
        )
    else:
        if not source or not (pipeline or image):
            raise InvalidInput(
                "give --source, and a pipeline (--pipeline) or an image (--image); "
                "or --directory for a directory dataflow"
            )
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
            image=image,
            recursive=bool(recursive),
        )
    if json_:
        print_json(info)
    say(f"created dataflow {info['name']!r} (stopped); start it with `datamill flow start {info['name']}`")


def _runs(flow: Any) -> str:
    """What a dataflow runs, for a table: its pipeline, or ``image:IMAGE``."""
    return f"image:{flow['image']}" if flow.get("image") else str(flow["pipeline"])


@app.command("create-stream")
def create_stream(
    ctx: typer.Context,
    name: NameArg,
    topic: Annotated[str, typer.Option("--topic", metavar="TOPIC", help="Kafka topic whose files land.")],
    to: Annotated[str, typer.Option("--to", metavar="FOLDER", help="Folder the files land in (subfolders kept).")],
    bootstrap: Annotated[
        str | None,
        typer.Option("--bootstrap", metavar="HOST:PORT", help="Kafka broker; default: the server's kafka_bootstrap."),
    ] = None,
    security_protocol: Annotated[
        str | None, typer.Option("--security-protocol", metavar="PROTO", help="PLAINTEXT, SSL, SASL_PLAINTEXT, ...")
    ] = None,
    sasl_mechanism: Annotated[str | None, typer.Option("--sasl-mechanism", metavar="MECH", help="e.g. PLAIN.")] = None,
    sasl_user: Annotated[
        str | None,
        typer.Option(
            "--sasl-user",
            metavar="NAME",
            help="SASL user; its password comes from the server's kafka_sasl_password, never a command line.",
        ),
    ] = None,
    partial_timeout: Annotated[
        float | None,
        typer.Option(
            "--partial-timeout", metavar="SECONDS", help="Drop (and report) a file that got no chunk this long."
        ),
    ] = None,
    description: DescriptionOption = None,
    json_: JsonFlag = False,
) -> None:
    """Create a stream dataflow (stopped): files sent to TOPIC in OpenMSIStream's format land in FOLDER.

    Each file is committed once, complete and checked against its SHA-512, as an item version with
    the stream's provenance in its metadata. Example:

        datamill flow create-stream instrument --topic xrd-raw --to "Raw Data" --bootstrap 127.0.0.1:9092
    """
    broker = {
        k: v
        for k, v in {
            "bootstrap": bootstrap,
            "security_protocol": security_protocol,
            "sasl_mechanism": sasl_mechanism,
            "sasl_username": sasl_user,
        }.items()
        if v
    }
    info = get_client(ctx).create_stream_dataflow(name, topic, to, broker, description or "", partial_timeout)
    if json_:
        print_json(info)
    say(f"created stream dataflow {info['name']!r} (stopped); start it with `datamill flow start {info['name']}`")


@app.command("ls")
def list_flows(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """List the dataflows you may see."""
    flows = get_client(ctx).dataflows()
    if json_:
        print_json(flows)
        return
    print_table(
        ["name", "state", "trigger", "source", "destination", "version", "pipeline"],
        [(f["name"], f["state"], f["trigger"], f["source"], f["destination"], f["version"], _runs(f)) for f in flows],
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
        *(
            [("recursive", "yes (subfolders of the source too)" if info.get("recursive") else "no")]
            if info["kind"] == "workflow"
            else []
        ),
        ("image" if info.get("image") else "pipeline", info.get("image") or info["pipeline"]),
        *([("directory", info["directory"]), ("watch", info.get("watch"))] if info.get("directory") else []),
        ("params", human_value(info["params"]) if info["params"] else "-"),
        ("webhooks", ", ".join(info["webhooks"]) or "-"),
        ("description", " ".join(info["description"].split()) or "-"),
        ("updated", human_time(info["updated_at"])),
    ]
    if info.get("next_fire_times"):
        rows.append(("next runs", ", ".join(human_time(t) for t in info["next_fire_times"])))
    if info["kind"] == "stream":
        rows = _stream_rows(info, rows)
    rows += _status_rows(info.get("status"))
    for label, value in rows:
        out.print(f"{label:<12} {value}", markup=False, soft_wrap=True)
    if info["kind"] == "stream":
        return
    recent = info.get("recent_runs") or []
    if recent:
        out.print()
        print_table(
            ["id", "status", "version", "requested", "reason"],
            [(r["id"], r["status"], r["dataflow_version"], human_time(r["requested_at"]), r["reason"]) for r in recent],
        )
    else:
        say("no runs yet")


def _stream_rows(info: Any, rows: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``flow show`` of a stream dataflow: its topic, broker (password masked) and live status."""
    skip = {"trigger", "source", "pipeline", "params", "webhooks"}
    out = [r for r in rows if r[0] not in skip]
    broker = info.get("broker") or {}
    out.insert(3, ("topic", info.get("topic")))
    out.insert(4, ("broker", ", ".join(f"{k}={v}" for k, v in broker.items()) or "(server settings)"))
    st = info.get("stream") or {}
    if st:
        out.append(("consumed", f"{st['messages']} message(s), {st['bytes']} bytes, {st['files']} file(s)"))
        out.append(("rejected", st["rejected"]))
        lag = st.get("lag") or {}
        out.append(("lag", ", ".join(f"p{p}={n}" for p, n in lag.items()) or "-"))
        for f in st.get("in_progress") or []:
            out.append(("receiving", f"{f['path']} ({f['chunks']} of {f['of']} chunks)"))
        if st.get("last_error"):
            out.append(("last error", f"{st['last_error']} ({human_time(st['last_error_at'])})"))
    return out


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
            "--pipeline",
            metavar="PIPELINE",
            help="New pipeline: a registered name (site admins: or a reference); replaces an image.",
        ),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option("--image", metavar="IMAGE", help="New container image (allowed_images); replaces a pipeline."),
    ] = None,
    trigger: TriggerOption = None,
    param: ParamOption = None,
    description: DescriptionOption = None,
    webhook: WebhookOption = None,
    recursive: RecursiveOption = None,
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
        image=image,
        trigger=trigger,
        params=params,
        description=description,
        webhooks=webhook,
        recursive=recursive,
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
