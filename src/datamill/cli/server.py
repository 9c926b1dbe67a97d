"""``datamill up`` (serve a home over HTTP) and ``datamill config`` (show the resolved settings)."""

import os
from typing import Annotated, Any

import typer
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from datamill.cli.context import State, get_state
from datamill.cli.output import print_json, say, stderr, stdout
from datamill.config import SETTINGS, Settings, load_settings, mask_url
from datamill.errors import DatamillError, InvalidInput

PANEL = "Server and settings"


def up(
    ctx: typer.Context,
    host: Annotated[
        str | None,
        typer.Option("--host", metavar="ADDR", envvar="DATAMILL_HOST", help="Address to bind to [default: 127.0.0.1]."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            metavar="PORT",
            envvar="DATAMILL_PORT",
            help="Port to listen on; 0 picks a free one [default: 8765].",
        ),
    ] = None,
    demo: Annotated[
        bool | None,
        typer.Option(
            "--demo/--no-demo",
            envvar="DATAMILL_DEMO",
            help="Create the demo folders and dataflow on first start [default: from settings, on].",
            show_default=False,
        ),
    ] = None,
    services: Annotated[
        bool,
        typer.Option(
            "--services/--api-only",
            envvar="DATAMILL_SERVICES",
            help="Also run the scheduler, triggers and notifier here, or serve the API and web pages only "
            "(`datamill worker` processes run them) [default: services].",
            show_default=False,
        ),
    ] = True,
) -> None:
    """Serve the home over HTTP: the REST API, the event stream and the web pages.

    Prints a URL with the admin token to open in a browser. Binds to 127.0.0.1 unless told
    otherwise; stops with Ctrl-C.
    """
    state = get_state(ctx)
    if state.url:
        raise InvalidInput("`datamill up` serves a local home; drop --url / DATAMILL_URL")
    settings = load_settings(state.profile, home=state.home, host=host, port=port, demo=demo)
    from datamill.home import Home, ServerLock

    # Before the home is opened: a refused second server must not touch it (e.g. add the demo).
    lock = ServerLock.acquire(settings)
    try:
        home = Home(settings)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    try:
        # The demo appears on a first start (an empty home) unless switched off, or whenever asked.
        if demo or (demo is None and settings.demo and not home.store.list_folders(home.admin)):
            from datamill.demo import HOW_TO_INSTALL, missing_packages

            missing = missing_packages()
            if missing:
                say(f"demo: not installed ({', '.join(missing)} missing); to get it, {HOW_TO_INSTALL}")
            else:
                from datamill.demo.setup import install_demo

                if install_demo(home):
                    say("demo: created 'Raw Data' with sample files and the running dataflow 'derived-data'")
        try:
            # Imported here so that every other command works even if the API cannot be imported.
            from datamill.api import server
        except ImportError as exc:
            raise DatamillError(
                f"the API server cannot be loaded ({exc}); reinstall datamill, or run again with -v"
            ) from exc

        def on_ready(url: str) -> None:
            if lock is not None:
                lock.note(url)
            _print_ready(_ready_rows(url, home.admin_token(), settings))

        server.serve(home, settings.host, settings.port, on_ready=on_ready, services=services)
    finally:
        home.close()
        if lock is not None:
            lock.release()
    say("datamill stopped")


def worker(ctx: typer.Context) -> None:
    """Run the scheduler, dataflow triggers and notifier without serving HTTP, until Ctrl-C or SIGTERM.

    Start as many as you like, on as many machines, against one PostgreSQL database and one blob
    store (S3): each task is claimed by one of them (a lease another takes over when a worker
    dies), each dataflow's runs and each webhook are recorded once.
    """
    state = get_state(ctx)
    if state.url:
        raise InvalidInput("`datamill worker` works on a home's database and blob store; drop --url / DATAMILL_URL")
    settings = load_settings(state.profile, home=state.home)
    import asyncio
    import signal

    from datamill.home import Home

    home = Home(settings)

    async def run() -> None:
        from datamill.services import Services

        services = Services(home, role="worker")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await services.start()
        say(
            f"datamill worker {services.scheduler.owner} is running ({mask_url(settings.resolved_database_url)}, "
            f"executor {services.scheduler.executor.name}); Ctrl-C to stop"
        )
        try:
            await stop.wait()
        finally:
            await services.stop()

    try:
        asyncio.run(run())
    finally:
        home.close()
    say("datamill worker stopped")


def doctor(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
) -> None:
    """Check a deployment: database and schema, blob store, executor, servers and workers, versions.

    Says what is wrong and what to do; exits 1 if a check failed.
    """
    state = get_state(ctx)
    if state.url:
        raise InvalidInput("`datamill doctor` checks a home's database and blob store; drop --url / DATAMILL_URL")
    from datamill.doctor import run_checks

    checks = run_checks(load_settings(state.profile, home=state.home))
    if as_json:
        print_json([c.to_dict() for c in checks])
    else:
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        table.add_column("check")
        table.add_column("status")
        table.add_column("details")
        marks = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}
        for c in checks:
            table.add_row(c.name, marks[c.status], Text(c.message))
        stdout().print(table)
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(1)


def _ready_rows(url: str, token: str | None, settings: Settings) -> list[tuple[str, str]]:
    """What ``datamill up`` shows once it listens: where to point a browser, and what it serves."""
    rows = [("open", f"{url}/?token={token}" if token else url)]
    if not token:
        rows.append(("", "no saved admin token; make one with `datamill token create --user admin`"))
    rows += [
        ("api", f"{url}/api/v1  (docs: {url}/docs)"),
        ("home", str(settings.home_path)),
        ("database", mask_url(settings.resolved_database_url)),
        ("blobs", mask_url(settings.resolved_blob_url)),
        ("", "Ctrl-C to stop"),
    ]
    return rows


def _print_ready(rows: list[tuple[str, str]]) -> None:
    """A panel on stderr, at least as wide as its longest line so the login URL is never folded
    (a folded URL cannot be copied); a narrow terminal wraps the border instead."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(no_wrap=True)
    for label, value in rows:
        grid.add_row(Text(label), Text(value))
    label_width = max(len(label) for label, _ in rows)
    needed = label_width + 2 + max(len(value) for _, value in rows) + 4  # 2 padding, 4 for border + margin
    stderr(min_width=needed).print(Panel(grid, title="datamill is up", title_align="left", expand=False))


def _sources(state: State, ctx: typer.Context, settings: Settings) -> dict[str, str]:
    """Where each setting's value came from: an option, an environment variable, a file or the default."""
    root = ctx.find_root()
    file_only = load_settings(
        settings.profile,
        environ={k: v for k, v in os.environ.items() if k in {"DATAMILL_CONFIG", "DATAMILL_PROFILE"}},
    )
    file = next((s for s in settings.sources if s != "defaults" and not s.startswith("DATAMILL_")), None)
    out: dict[str, str] = {}
    for s in SETTINGS:
        env = f"DATAMILL_{s.key.upper()}"
        if s.key == "home" and state.home is not None:
            source = root.get_parameter_source("home")
            from_env = source is not None and source.name == "ENVIRONMENT"
            out[s.key] = env if from_env else "--home"
        elif env in settings.sources:  # load_settings records each DATAMILL_* variable it used
            out[s.key] = env
        elif file and getattr(file_only, s.key) != s.default:
            out[s.key] = file
        else:
            out[s.key] = "default"
    return out


def config(
    ctx: typer.Context,
    json_: Annotated[bool, typer.Option("--json", help="Print the settings as JSON on stdout.")] = False,
) -> None:
    """Show the resolved settings, where each came from, and what the client connects to.

    Settings come from built-in defaults, `datamill.toml` (nearest one, or `DATAMILL_CONFIG`),
    `DATAMILL_<KEY>` environment variables and options, the last one winning. Passwords in URLs
    and tokens are always masked. Nothing is opened or created.
    """
    state = get_state(ctx)
    settings = load_settings(state.profile, home=state.home)
    values = settings.public_dict()
    values.pop("profile", None)
    data: dict[str, Any] = {
        "profile": settings.profile,
        "settings": values,
        "sources": _sources(state, ctx, settings),
        "layers": list(settings.sources),
        "resolved": {
            "home": str(settings.home_path),
            "database_url": mask_url(settings.resolved_database_url),
            "blob_url": mask_url(settings.resolved_blob_url),
        },
        "client": {
            "url": mask_url(state.url) if state.url else None,
            "token": "***" if state.token else None,
            "user": state.user,
        },
    }
    if json_:
        print_json(data)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("key", "value", "source"):
        table.add_column(name, overflow="fold")
    for key, value in values.items():
        table.add_row(key, "" if value == "" else str(value), data["sources"][key])
    out = stdout()
    out.print(f"profile: {settings.profile}", markup=False)
    out.print(table)
    for key, value in data["resolved"].items():
        out.print(f"{key}: {value}", markup=False)
    client = data["client"]
    target = "local home"
    if client["url"]:
        target = f"server {client['url']} (token {'set' if client['token'] else 'not set'})"
    out.print(f"client: {target}" + (f", as user {client['user']}" if client["user"] else ""), markup=False)


def register(app: typer.Typer) -> None:
    """Add ``up`` and ``config`` to the root command."""
    app.command("up", rich_help_panel=PANEL)(up)
    app.command("config", rich_help_panel=PANEL)(config)
    app.command("worker", rich_help_panel=PANEL)(worker)
    app.command("doctor", rich_help_panel=PANEL)(doctor)
