"""Runs: ``datamill run``, ``plan``, ``why``, ``logs`` and ``datamill runs ls|show|watch|cancel|retry``.

On a local home ``datamill run`` executes the pipeline in this process; against a server
(``--url``) it submits the run, which the server's scheduler executes, and follows it. Either way
a live per-step view is drawn on stderr while it runs (when stderr is a terminal), a summary is
printed at the end, and the exit status is 1 when a task failed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from datamill.cli.context import get_client
from datamill.cli.output import human_time, print_json, print_table, say, stderr, stdout
from datamill.cli.params import JsonFlag
from datamill.client import Client
from datamill.engine.params import parse_param
from datamill.engine.records import RunInfo, TaskInfo
from datamill.errors import Cancelled, StepFailed
from datamill.limits import INT64_MAX
from datamill.records import FINISHED_RUN, RunStatus, TaskStatus

if TYPE_CHECKING:
    pass

PANEL = "Pipelines and runs"

#: Seconds between two reads of a run for the live view.
POLL_SECONDS = 0.2

PipelineArg = Annotated[
    str,
    typer.Argument(
        metavar="PIPELINE",
        help="A registered pipeline's name (`datamill pipelines ls`); site admins (and the embedded CLI, "
        "which acts as one) may also give `module:attr`, `path/file.py:attr` or a YAML file (`pipeline.yaml`).",
    ),
]
OnOption = Annotated[str, typer.Option("--on", metavar="FOLDER", help="Folder whose items are the inputs.")]
ParamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        "-p",
        metavar="KEY=VALUE",
        help="A step parameter, repeatable: `threshold=0.7` (every step with that parameter) or "
        "`summary.threshold=0.7`. VALUE is parsed as JSON when it is valid JSON.",
    ),
]
ForceOption = Annotated[bool, typer.Option("--force", help="Run every task again, ignoring the cache.")]
ExecutorOption = Annotated[
    str | None,
    typer.Option(
        "--executor",
        metavar="inline|local",
        help="Where tasks run on a local home: `inline` (in this process, one at a time) or `local` (a "
        "process pool) [default: the `executor` setting, DATAMILL_EXECUTOR]. A server uses its own.",
    ),
]
RunArg = Annotated[int, typer.Argument(metavar="RUN", min=1, max=INT64_MAX, help="Run id (see `datamill runs ls`).")]
TaskArg = Annotated[
    int, typer.Argument(metavar="TASK", min=1, max=INT64_MAX, help="Task id (see `datamill runs show RUN`).")
]


def parse_params(pairs: Iterable[str] | None) -> dict[str, Any]:
    """``["summary.threshold=0.7", "n=3"]`` -> ``{"summary.threshold": 0.7, "n": 3}``."""

    return dict(parse_param(p) for p in pairs or ())


# ---------------------------------------------------------------------------------- live view


def _finished(counts: dict[str, int]) -> int:
    return sum(
        counts.get(s, 0)
        for s in (TaskStatus.SUCCEEDED, TaskStatus.CACHED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.SKIPPED)
    )


def _duration(info: RunInfo) -> str:
    start = info.get("started_at") or info.get("requested_at")
    if not start:
        return "-"
    end = info.get("finished_at") or time.time()
    return f"{max(0.0, end - start):.1f} s"


def step_table(info: RunInfo, order: list[str], bars: bool = False) -> Table:
    """Per step: done (succeeded), cached, failed, skipped (failed earlier), running and queued counts.

    With ``bars``, a progress bar.
    """
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("step")
    if bars:
        table.add_column("progress", width=24)
    for name in ("done", "cached", "failed", "skipped", "running", "queued", "total"):
        table.add_column(name, justify="right")
    steps: dict[str, dict[str, int]] = info.get("steps") or {}
    for step in order + sorted(s for s in steps if s not in order):
        c = steps.get(step, {})
        total = sum(c.values())
        row: list[Any] = [step]
        if bars:
            row.append(ProgressBar(total=max(total, 1), completed=_finished(c), width=24))
        failed = c.get(TaskStatus.FAILED, 0) + c.get(TaskStatus.CANCELLED, 0)
        row += [
            str(c.get(TaskStatus.SUCCEEDED, 0)),
            str(c.get(TaskStatus.CACHED, 0)),
            Text(str(failed), style="red" if failed else ""),
            str(c.get(TaskStatus.SKIPPED, 0)),
            str(c.get(TaskStatus.RUNNING, 0)),
            str(c.get(TaskStatus.QUEUED, 0)),
            str(total),
        ]
        table.add_row(*row)
    return table


def run_view(info: RunInfo, order: list[str]) -> Group:
    """The live view of a run: a title line and the per-step table with progress bars."""
    counts = info.get("counts") or {}
    total = sum(counts.values())
    title = Text.assemble(
        (f"run {info['id']}", "bold"),
        f"  {info.get('pipeline')}  ",
        (str(info["status"]), _status_style(info["status"])),
        f"  {_finished(counts)}/{total} tasks  {_duration(info)}",
    )
    return Group(title, step_table(info, order, bars=True))


def _status_style(status: str) -> str:
    return {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}.get(status, "")


def step_order(tasks: list[TaskInfo]) -> list[str]:
    """Steps in the order their first task appears (tasks come in plan order)."""
    seen: dict[str, None] = {}
    for t in tasks:
        seen.setdefault(t["step"], None)
    return list(seen)


class LiveRun:
    """Draws a run's live view on stderr from a thread that reads it every :data:`POLL_SECONDS`.

    Used as ``on_start`` of :meth:`Client.run`: the run executes (or is followed) in the calling
    thread while this one reads it. Does nothing when stderr is not a terminal.
    """

    def __init__(self, client: Client, console: Console | None = None) -> None:
        self.client = client
        self.console = console or stderr()
        self.enabled = self.console.is_terminal
        self.run_id: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None

    def start(self, run_id: int) -> None:
        """Begin drawing run ``run_id``."""
        self.run_id = run_id
        if not self.enabled:
            return
        self._live = Live(console=self.console, refresh_per_second=10, transient=True)
        self._live.start()
        self._thread = threading.Thread(target=self._loop, name=f"datamill-watch-{run_id}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        assert self.run_id is not None and self._live is not None
        order: list[str] = []
        while not self._stop.is_set():
            try:
                if not order:
                    order = step_order(self.client.tasks(self.run_id))
                info = self.client.run_info(self.run_id)
                self._live.update(run_view(info, order))
                if info["status"] in FINISHED_RUN:
                    return
            except Exception:  # drawing must never break the run; the summary reports the result
                pass
            self._stop.wait(POLL_SECONDS)

    def stop(self) -> None:
        """Stop drawing (the final summary is printed by :func:`finish`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._live is not None:
            self._live.stop()

    def __enter__(self) -> LiveRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def watch(client: Client, run_id: int) -> RunInfo:
    """Show the live view of a run in this thread until it ends; returns the finished run."""
    console = stderr()
    if not console.is_terminal:
        return client.wait_run(run_id)
    order = step_order(client.tasks(run_id))
    info = client.run_info(run_id)
    with Live(console=console, refresh_per_second=10, transient=True) as live:
        for info in client.watch_run(run_id, POLL_SECONDS):
            live.update(run_view(info, order))
    return info


def execute_here(client: Client, run_id: int, executor: str | None) -> RunInfo:
    """Execute a recorded run in this process with the live view."""
    with LiveRun(client) as live, steps_print_to_stderr():
        live.start(run_id)
        return client.execute(run_id, executor)


@contextlib.contextmanager
def steps_print_to_stderr() -> Iterator[None]:
    """Nothing steps running in this process write reaches stdout, which is kept for results (``--json``).

    What they print and log goes to their task logs (the executors capture it); this sends the
    rest to stderr: what they write to file descriptor 1 directly (C code, child processes), and
    what threads they start print.
    """
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    try:
        saved: int | None = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no file descriptor 1 in this process: nothing to protect
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 1)
            os.close(saved)


def finish(client: Client, info: RunInfo, json_: bool) -> None:
    """Print a finished run's summary (or its JSON); raise so that the exit status is 1 unless it succeeded."""
    tasks = client.tasks(info["id"])
    if json_:
        print_json(info)
    else:
        counts = info.get("counts") or {}
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        total = sum(counts.values())
        stdout().print(
            f"run {info['id']} {info['status']} in {_duration(info)}: {total} task{'s' if total != 1 else ''}"
            + (f" ({parts})" if parts else ""),
            markup=False,
        )
        stdout().print(step_table(info, step_order(tasks)))
    fail_if_unsuccessful(info, tasks)


def fail_if_unsuccessful(info: RunInfo, tasks: list[TaskInfo]) -> None:
    """Raise :class:`StepFailed` naming the failed tasks (or :class:`Cancelled`) unless the run succeeded."""
    if info["status"] == RunStatus.SUCCEEDED:
        return
    run_id = info["id"]
    if info["status"] == RunStatus.CANCELLED:
        raise Cancelled(f"run {run_id} was cancelled; resume it with `datamill runs retry {run_id}`", run=run_id)
    failed = [t for t in tasks if t["status"] == TaskStatus.FAILED]
    if not failed:
        reason = info.get("error") or f"it is {info['status']}"
        raise StepFailed(f"run {run_id} did not succeed: {reason}", run=run_id)
    shown = ", ".join(f"{t['planned_id']} (task {t['id']})" for t in failed[:3])
    more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
    first = failed[0]
    error = " ".join(str(first.get("error") or "").split())
    if len(error) > 160:
        error = error[:157] + "..."
    raise StepFailed(
        f"run {run_id} failed: {len(failed)} task{'s' if len(failed) != 1 else ''} failed: {shown}{more}"
        + (f"; first error: {error}" if error else "")
        + f"; see `datamill logs {first['id']}`",
        run=run_id,
        failed=[t["id"] for t in failed],
    )


# ---------------------------------------------------------------------------------- commands


def run(
    ctx: typer.Context,
    pipeline: PipelineArg,
    on: OnOption,
    to: Annotated[
        str | None, typer.Option("--to", metavar="FOLDER", help="Folder the published outputs go to.")
    ] = None,
    param: ParamOption = None,
    force: ForceOption = False,
    executor: ExecutorOption = None,
    json_: JsonFlag = False,
) -> None:
    """Run a pipeline over the items of a folder, and wait for it to end.

    Tasks whose key was seen before are taken from the cache. On a local home the run executes in
    this process; with `--url` the server's scheduler executes it and this command follows it.
    Exits with status 1 if a task failed. Example:

        datamill run pipelines/tabular.py:pipeline --on "Raw Data" --to "Derived Data" -p threshold=0.7
    """
    client = get_client(ctx)
    params = parse_params(param)
    live = LiveRun(client)
    try:
        with steps_print_to_stderr():
            info = client.run(pipeline, on, to, params, force, executor, on_start=live.start)
    except KeyboardInterrupt:
        live.stop()
        if live.run_id is not None:
            if client.embedded:
                say(f"run {live.run_id} is {client.run_info(live.run_id).status}")
            else:
                say(
                    f"stopped following run {live.run_id}; it goes on on the server "
                    f"(`datamill runs cancel {live.run_id}` stops it)"
                )
        raise
    finally:
        live.stop()
    finish(client, info, json_)


def plan(
    ctx: typer.Context,
    pipeline: PipelineArg,
    on: OnOption,
    param: ParamOption = None,
    force: ForceOption = False,
    json_: JsonFlag = False,
) -> None:
    """Show what a run would do, changing nothing: per task, whether it would run or be cached.

    A `pending` task depends on outputs not made yet: it is decided when they are (it runs unless
    those outputs come out the same as before).
    """
    result = get_client(ctx).plan(pipeline, on, parse_params(param), force)
    if json_:
        print_json(result)
        return
    tasks = result["tasks"]
    # Container steps: the image as named and the digest its tasks' keys hold (what runs).
    images = any(t.get("image") for t in tasks)
    print_table(
        ["task", "step", "item", "decision"] + (["image"] if images else []),
        [
            (t["id"], t["step"], t["item"] or "(all items)", t["decision"])
            + ((_image_cell(t.get("image"), t.get("image_digest")),) if images else ())
            for t in tasks
        ],
        empty=f"no tasks: folder {on!r} has no items",
    )
    c = result["counts"]
    say(
        f"{len(result['tasks'])} tasks: {c.get('run', 0)} to run, {c.get('cached', 0)} cached, "
        f"{c.get('pending', 0)} pending"
    )


def _image_cell(image: str | None, digest: str | None) -> str:
    """A container task's image for a table: ``name (sha256:<12 hex>)``, as ``podman images`` shortens IDs."""
    if not image:
        return "-"
    short = digest[: len("sha256:") + 12] if digest else "digest unknown"
    return f"{image} ({short})"


def why(ctx: typer.Context, task: TaskArg, json_: JsonFlag = False) -> None:
    """Explain why a task ran or was taken from the cache: its key's parts, and what differs
    from the nearest earlier task of the same step."""
    result = get_client(ctx).why(task)
    if json_:
        print_json(result)
        return
    out = stdout()
    out.print(f"task {result['task']} (run {result['run']}, step {result['step']}): {result['status']}", markup=False)
    out.print(result.get("explanation", ""), markup=False)
    parts = result.get("parts") or {}
    rows: list[tuple[str, str]] = [("key", str(result.get("key") or "-"))]
    rows += [("code", str(parts.get("code", "-")))]
    if parts.get("image"):
        rows += [("image", f"{result.get('image') or '?'} ({parts['image']})")]
    rows += [(f"params.{k}", repr(v)) for k, v in sorted((parts.get("params") or {}).items())]
    rows += [(f"input {label}", digest) for label, digest in parts.get("inputs") or []]
    print_table(["part", "value"], rows)


def logs(
    ctx: typer.Context,
    task: TaskArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing while the task runs, until it ends.")
    ] = False,
) -> None:
    """Print a task's log (what it printed and logged); `--follow` streams it until the task ends."""
    out = sys.stdout
    try:
        for chunk in get_client(ctx).logs(task, follow=follow):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        if not follow:
            raise


runs_app = typer.Typer(
    help="List, show, watch, cancel and retry runs.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


@runs_app.command("ls")
def list_runs(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option(
            "--status", metavar="STATUS", help="Only runs that are queued, running, succeeded, failed or cancelled."
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", metavar="N", min=1, max=INT64_MAX, help="At most N runs.")
    ] = 50,
    json_: JsonFlag = False,
) -> None:
    """List runs you may see, newest first."""
    result = get_client(ctx).runs(limit, status)
    if json_:
        print_json(result)
        return
    print_table(
        ["id", "status", "pipeline", "on -> to", "requested", "took", "reason"],
        [
            (
                r["id"],
                r["status"],
                r["pipeline"],
                f"{r['source_folder'] or '-'} -> {r['dest_folder'] or '-'}",
                human_time(r["requested_at"]),
                _duration(r) if r["finished_at"] else "-",
                r["reason"] or "",
            )
            for r in result
        ],
        empty="no runs yet; start one with `datamill run PIPELINE --on FOLDER`",
    )


@runs_app.command("show")
def show(ctx: typer.Context, run_id: RunArg, json_: JsonFlag = False) -> None:
    """Show a run: its state, per-step counts and its tasks."""
    client = get_client(ctx)
    info = client.run_info(run_id)
    tasks = client.tasks(run_id)
    if json_:
        print_json({**info.to_dict(), "tasks": tasks})
        return
    out = stdout()
    out.print(f"run {info['id']}  {info['pipeline']}  {info['status']}", markup=False)
    for label, value in (
        ("pipeline", info["pipeline_ref"]),
        ("on", info["source_folder"] or "-"),
        ("to", info["dest_folder"] or "-"),
        ("reason", info["reason"] or "-"),
        ("requested", human_time(info["requested_at"])),
        ("took", _duration(info) if info["finished_at"] else "-"),
    ):
        out.print(f"  {label:<10} {value}", markup=False)
    if info.get("error"):
        out.print(f"  {'error':<10} {info['error']}", markup=False)
    out.print(step_table(info, step_order(tasks)))
    out.print()
    # A skipped task says which run it failed in; a superseded one, which run's output won.
    print_table(
        ["id", "task", "status", "attempts", "took", "error / note"],
        [
            (
                t["id"],
                t["planned_id"],
                t["status"],
                t["attempts"],
                f"{t['finished_at'] - t['started_at']:.2f} s" if t["finished_at"] and t["started_at"] else "-",
                _one_line(t["error"] or t.get("note")),
            )
            for t in tasks
        ],
    )


def _one_line(text: str | None, width: int = 80) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


@runs_app.command("watch")
def watch_run(ctx: typer.Context, run_id: RunArg, json_: JsonFlag = False) -> None:
    """Show a run's live per-step progress until it ends; exits with status 1 if it did not succeed."""
    client = get_client(ctx)
    finish(client, watch(client, run_id), json_)


@runs_app.command("cancel")
def cancel(ctx: typer.Context, run_id: RunArg) -> None:
    """Cancel a run: queued tasks at once, running ones as soon as their scheduler sees it."""
    client = get_client(ctx)
    if client.cancel_run(run_id):
        say(f"cancel requested for run {run_id}")
    else:
        say(f"run {run_id} has already ended ({client.run_info(run_id)['status']})")


@runs_app.command("retry")
def retry(
    ctx: typer.Context,
    run_id: RunArg,
    executor: ExecutorOption = None,
    json_: JsonFlag = False,
) -> None:
    """Resume a failed or cancelled run as a new run: finished tasks come from the cache, the rest run.

    On a local home the new run executes in this process (like `datamill run`); on a server it is
    queued for the server's scheduler.
    """
    client = get_client(ctx)
    new_id = client.retry_run(run_id)
    say(f"run {new_id} retries run {run_id}")
    follow_new_run(client, new_id, executor, json_)


def follow_new_run(client: Client, run_id: int, executor: str | None, json_: bool) -> None:
    """After a run was recorded: execute it here on a local home, or tell where to watch it on a server."""
    if client.embedded:
        finish(client, execute_here(client, run_id, executor), json_)
        return
    if json_:
        print_json(client.run_info(run_id))
    say(f"run {run_id} is queued on the server; watch it with `datamill runs watch {run_id}`")


def register(app: typer.Typer) -> None:
    """Add ``run``, ``plan``, ``why``, ``logs`` and the ``runs`` group to the root command."""
    app.command("run", rich_help_panel=PANEL)(run)
    app.command("plan", rich_help_panel=PANEL)(plan)
    app.command("why", rich_help_panel=PANEL)(why)
    app.command("logs", rich_help_panel=PANEL)(logs)
    app.add_typer(runs_app, name="runs", rich_help_panel=PANEL)
