"""The run pages: ``/runs`` (a live list), ``/runs/{id}`` (one run), ``/tasks/{id}`` (one task).

* The list shows the newest runs the user may see (state, dataflow, trigger, counts, duration);
  ``/runs/live`` streams each changed run's row as it changes (see :mod:`datamill.web.live`).
* A run's page draws the pipeline's step graph (inline SVG) and the per-step x per-item grid
  (Chowda's batch view), a page of items at a time (only that page's tasks are read), so a run
  of 10,000 tasks never puts 10,000 rows in the page; ``/runs/{id}/panel`` re-renders that part
  when the run's events arrive.
* A task's page says why it ran or was reused (the engine's ``why``) and follows its log.
* ``POST /runs/{id}/cancel`` and ``/runs/{id}/retry`` (CSRF-checked like every form).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from datamill.api.deps import blocking, service_for
from datamill.api.ids import RunId, TaskId
from datamill.engine.records import RunInfo, TaskInfo
from datamill.engine.runs import FINISHED_RUN
from datamill.errors import DatamillError
from datamill.events import EventRecord
from datamill.limits import INT64_MAX
from datamill.service import Service
from datamill.store.access import Actor
from datamill.web.live import Message, live_response
from datamill.web.render import environment, redirect, render
from datamill.web.session import SessionDep

router = APIRouter(include_in_schema=False)

#: Runs on the list page.
LIST_LIMIT = 50
#: Items (grid rows) per page of a run's grid.
PAGE_ITEMS = 50
#: What the live streams follow.
RUN_KINDS = ["run.", "task."]
#: A run page refreshes its panel at most this often while the run is busy (seconds).
PANEL_INTERVAL = 0.3
#: Statuses counted as done in progress bars.
DONE = ("succeeded", "cached")


class TaskCounts:
    """Tasks counted by status (``counts``), as a progress bar shows them: how many, how many done."""

    counts: dict[str, int]

    @property
    def total(self) -> int:
        """The tasks counted."""
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        """Those that succeeded or were reused."""
        return sum(self.counts.get(s, 0) for s in DONE)


@dataclass(frozen=True)
class RunRow(TaskCounts):
    """A run as the list shows it."""

    run: RunInfo
    dataflow: str | None
    counts: dict[str, int]
    seq: int = 0
    event_ts: float = 0.0

    @property
    def duration(self) -> float | None:
        """Seconds from start to end (to now while it runs)."""
        if self.run.started_at is None:
            return None
        return (self.run.finished_at or time.time()) - self.run.started_at


def duration_text(seconds: float | None) -> str:
    """``75.2`` -> ``1m 15s``."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def flow_names(service: Service) -> dict[int, str]:
    """Dataflow id -> name, of the dataflows the user may see."""
    return {f.id: f.name for f in service.dataflows()}


def run_row(service: Service, run_id: int, flows: dict[int, str], event: EventRecord | None = None) -> RunRow:
    """One run's row (its counts read now)."""
    info = service.run_info(run_id)
    name = flows.get(info.dataflow_id) if info.dataflow_id is not None else None
    return RunRow(info, name, dict(info.counts or {}), event.seq if event else 0, event.ts if event else 0.0)


def run_rows(service: Service) -> list[RunRow]:
    """The newest runs the user may see."""
    flows = flow_names(service)
    return [run_row(service, r.id, flows) for r in service.runs(LIST_LIMIT)]


def live_rows(home: Any) -> Any:
    """The renderer of the runs list's live stream: each run named by the events, its row once."""

    def render_rows(actor: Actor, events: list[EventRecord]) -> list[Message]:
        service = service_for(home, actor)
        latest: dict[int, EventRecord] = {}
        for ev in events:
            if ev.run_id is not None:
                latest[ev.run_id] = ev
        if not latest:
            return []
        flows = flow_names(service)
        template = environment().get_template("runs/row.html")
        out = []
        for run_id, ev in sorted(latest.items()):
            try:
                row = run_row(service, run_id, flows, ev)
            except DatamillError:  # gone, or no longer visible
                continue
            out.append(Message("run", template.render(r=row, duration=duration_text), row.run.status))
        return out

    return render_rows


@router.get("/runs")
async def runs_page(request: Request, session: SessionDep) -> Response:
    """The newest runs, kept up to date while the page is open."""
    service = session.service(request.app.state.home)
    seq = await blocking(request.app.state.home.events.latest)
    rows = await blocking(run_rows, service)
    return render(request, "runs/list.html", session, rows=rows, seq=seq, duration=duration_text)


@router.get("/runs/live")
async def runs_live(
    request: Request,
    session: SessionDep,
    since: int = Query(0, ge=0, le=INT64_MAX),
    run: int = Query(0, ge=0, le=INT64_MAX),
    status: str = "",
) -> Response:
    """Server-sent rows of the runs that change (only runs the user may see).

    With ``run``, only that run's, at most every :data:`PANEL_INTERVAL`, plus an empty ``status``
    message whenever its status differs from the last one (``status``: the one the page shows), so
    the page replaces its Cancel / Retry buttons only then, never under the user's pointer.
    """
    home = request.app.state.home
    render_rows = live_rows(home)
    if not run:
        return await live_response(request, session, since, RUN_KINDS, render_rows)
    shown = {"status": status}

    def one_run(actor: Actor, events: list[EventRecord]) -> list[Message]:
        out = render_rows(actor, [e for e in events if e.run_id == run])
        for message in list(out):
            if message.state != shown["status"]:
                shown["status"] = message.state
                out.append(Message("status", "", message.state))
        return out

    return await live_response(request, session, since, RUN_KINDS, one_run, PANEL_INTERVAL)


# ------------------------------------------------------------------------ one run


@dataclass
class StepNode(TaskCounts):
    """A step in the run's graph: its tasks' counts and where it is drawn."""

    name: str
    counts: dict[str, int] = field(default_factory=dict)
    layer: int = 0
    row: int = 0

    @property
    def failed(self) -> int:
        """Its tasks that failed."""
        return self.counts.get("failed", 0)


@dataclass
class StepGraph:
    """The pipeline's steps (in plan order) and which feeds which, laid out in layers."""

    steps: list[StepNode]
    edges: list[tuple[str, str]]
    #: drawing sizes
    box_w: int = 170
    box_h: int = 54
    gap_x: int = 60
    gap_y: int = 22

    def x(self, node: StepNode) -> int:
        """Left edge of a step's box."""
        return 10 + node.layer * (self.box_w + self.gap_x)

    def y(self, node: StepNode) -> int:
        """Top edge of a step's box."""
        return 10 + node.row * (self.box_h + self.gap_y)

    @property
    def width(self) -> int:
        """Width of the drawing."""
        layers = max((n.layer for n in self.steps), default=0) + 1
        return 20 + layers * self.box_w + (layers - 1) * self.gap_x

    @property
    def height(self) -> int:
        """Height of the drawing."""
        rows = max((n.row for n in self.steps), default=0) + 1
        return 20 + rows * self.box_h + (rows - 1) * self.gap_y

    def node(self, name: str) -> StepNode:
        """The step called ``name``."""
        return next(n for n in self.steps if n.name == name)


def step_graph(order: list[str], edges: list[tuple[str, str]], counts: dict[str, dict[str, int]]) -> StepGraph:
    """The steps (in plan order) with their counts, each drawn one layer right of the deepest step it needs."""
    nodes = {name: StepNode(name, dict(counts.get(name, {}))) for name in order}
    edges = [(a, b) for a, b in edges if a in nodes and b in nodes]
    # Plan order is topological: a step's upstream steps are laid out before it.
    for node in nodes.values():
        ups = [nodes[a].layer for a, b in edges if b == node.name]
        node.layer = max(ups) + 1 if ups else 0
    per_layer: dict[int, int] = {}
    for node in nodes.values():
        node.row = per_layer.get(node.layer, 0)
        per_layer[node.layer] = node.row + 1
    return StepGraph(list(nodes.values()), sorted(edges))


@dataclass(frozen=True)
class Grid:
    """One page of the per-item x per-step grid."""

    steps: list[str]
    rows: list[tuple[str, dict[str, TaskInfo]]]
    page: int
    pages: int
    items: int


#: The row of a step that takes all items at once (an aggregate).
ALL_ITEMS = "(all items)"


def grid_page(tasks: list[TaskInfo], steps: list[str], page: int, items: int) -> Grid:
    """The grid of page ``page`` (from 1) of ``items`` items, from that page's ``tasks``."""
    by_item: dict[str, dict[str, TaskInfo]] = {}
    for t in tasks:
        by_item.setdefault(t.item_name or ALL_ITEMS, {})[t.step] = t
    pages = max(1, math.ceil(items / PAGE_ITEMS))
    return Grid(steps, list(by_item.items()), page, pages, items)


def page_number(page: int, items: int) -> int:
    """``page`` kept within the pages ``items`` items make."""
    return min(max(1, page), max(1, math.ceil(items / PAGE_ITEMS)))


@dataclass(frozen=True)
class RunView:
    """Everything a run's page shows."""

    row: RunRow
    graph: StepGraph
    grid: Grid


def run_view(service: Service, run_id: int, page: int) -> RunView:
    """A run with its step graph and one page of its grid (only that page's tasks are read)."""
    info = service.run_info(run_id)
    name = None
    if info.dataflow_id is not None:
        name = flow_names(service).get(info.dataflow_id)
    order, edges = service.step_links(run_id)
    graph = step_graph(order, edges, dict(info.steps or {}))
    page = min(page, INT64_MAX // PAGE_ITEMS)  # its offset must fit the database's integers
    tasks, items = service.item_tasks(run_id, (page - 1) * PAGE_ITEMS, PAGE_ITEMS)
    if not tasks and page > 1:  # past the end: the last page
        page = page_number(page, items)
        tasks, items = service.item_tasks(run_id, (page - 1) * PAGE_ITEMS, PAGE_ITEMS)
    row = RunRow(info, name, dict(info.counts or {}))
    return RunView(row, graph, grid_page(tasks, [n.name for n in graph.steps], page, items))


@router.get("/runs/{run_id}")
async def run_page(request: Request, run_id: RunId, session: SessionDep, page: int = Query(1, ge=1)) -> Response:
    """One run: its state, step graph, grid, and cancel/retry."""
    home = request.app.state.home
    # The newest seq first, then the run: the page's live stream starts after ``seq``, so an event
    # committed while the run is read (its last task's end, the run's end) is still sent to the
    # page. Read the other way round, such an event falls between the two reads and the page
    # shows the run as it was (running) for good.
    seq = await blocking(home.events.latest)
    view = await blocking(run_view, session.service(home), run_id, page)
    return render(request, "runs/run.html", session, v=view, seq=seq, duration=duration_text, finished=FINISHED_RUN)


@router.get("/runs/{run_id}/panel")
async def run_panel(request: Request, run_id: RunId, session: SessionDep, page: int = Query(1, ge=1)) -> Response:
    """The live part of a run's page (asked for again by htmx when the run's events arrive)."""
    view = await blocking(run_view, session.service(request.app.state.home), run_id, page)
    return render(request, "runs/panel.html", session, v=view, duration=duration_text, finished=FINISHED_RUN)


@router.get("/runs/{run_id}/actions")
async def run_actions(request: Request, run_id: RunId, session: SessionDep) -> Response:
    """A run's Cancel / Retry buttons for its current status (asked for again when the status changes)."""
    info = await blocking(session.service(request.app.state.home).run_info, run_id)
    return render(request, "runs/actions.html", session, run=info, finished=FINISHED_RUN)


@router.post("/runs/{run_id}/cancel")
async def cancel(request: Request, run_id: RunId, session: SessionDep) -> Response:
    """Ask for the run to be cancelled."""
    done = await blocking(session.service(request.app.state.home).cancel_run, run_id)
    message = f"Cancelling run {run_id}." if done else f"Run {run_id} had already ended."
    return redirect(f"/runs/{run_id}", message)


@router.post("/runs/{run_id}/retry")
async def retry(request: Request, run_id: RunId, session: SessionDep) -> Response:
    """Run a failed or cancelled run again as a new run (finished tasks come from the cache)."""
    new_id = await blocking(session.service(request.app.state.home).retry_run, run_id)
    return redirect(f"/runs/{new_id}", f"Run {new_id} retries run {run_id}.")


# ------------------------------------------------------------------------ one task


@dataclass(frozen=True)
class TaskView:
    """A task, why it ran or was reused, and whether its log may be read."""

    task: TaskInfo
    why: Any
    log_refused: str | None


def task_view(service: Service, task_id: int) -> TaskView:
    """A task's page contents."""
    task = service.task(task_id)
    why = service.why(task_id)
    refused = None
    try:
        service.engine.log_access(service.actor, task_id)
    except DatamillError as exc:
        refused = exc.message
    return TaskView(task, why, refused)


@router.get("/tasks/{task_id}")
async def task_page(request: Request, task_id: TaskId, session: SessionDep) -> Response:
    """One task: its state, outputs, why, and its log (followed live while it runs)."""
    view = await blocking(task_view, session.service(request.app.state.home), task_id)
    return render(request, "runs/task.html", session, v=view, duration=duration_text)
