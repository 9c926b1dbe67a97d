"""The run page's grid and step graph at scale, and the dataflow form's helpers (no browser)."""

from __future__ import annotations

from datamill.engine.records import RunInfo, TaskInfo
from datamill.errors import InvalidDataflow, UnknownPipeline
from datamill.web.dataflows import config_diff, field_error, markdown, parse_form
from datamill.web.render import environment
from datamill.web.runs import PAGE_ITEMS, RunRow, RunView, duration_text, grid_page, step_graph

ITEMS = 5_000


def task(i: int, step: str, item: str | None, status: str, deps: list[str]) -> TaskInfo:
    """A task record as the engine returns it."""
    return TaskInfo(
        id=i, run_id=1, planned_id=f"{step}:{item}", step=step, step_code="c", key=None, status=status,
        attempts=1, max_attempts=1, progress=0.5 if status == "running" else 0.0, message="", item_version_id=None,
        item_name=item, deps=deps, params={}, queued_at=0.0, started_at=None, finished_at=None, error=None,
        traceback=None, log_digest=None, cached_from=None, executor=None,
    )  # fmt: skip


def big_run() -> list[TaskInfo]:
    """10,001 tasks: two per-item steps over 5,000 items and an aggregate."""
    out = []
    statuses = ("succeeded", "cached", "running", "queued", "failed")
    for i in range(ITEMS):
        name = f"in/{i:05d}.csv"
        out.append(task(2 * i, "parse", name, statuses[i % 5], []))
        out.append(task(2 * i + 1, "count", name, "queued", [f"parse:{name}"]))
    out.append(task(2 * ITEMS, "total", None, "queued", [f"count:in/{i:05d}.csv" for i in range(ITEMS)]))
    return out


def test_a_run_of_ten_thousand_tasks_renders_one_page_of_its_grid() -> None:
    tasks = big_run()
    graph = step_graph(tasks)
    assert [n.name for n in graph.steps] == ["parse", "count", "total"]
    assert graph.edges == [("count", "total"), ("parse", "count")]
    assert [n.layer for n in graph.steps] == [0, 1, 2]
    assert graph.node("parse").total == ITEMS and graph.node("parse").done == 2 * ITEMS // 5
    grid = grid_page(tasks, [n.name for n in graph.steps], 3)
    assert grid.pages == -(-(ITEMS + 1) // PAGE_ITEMS) and grid.page == 3 and len(grid.rows) == PAGE_ITEMS
    assert grid.rows[0][0] == f"in/{2 * PAGE_ITEMS:05d}.csv"
    last = grid_page(tasks, grid.steps, 10_000)  # past the end: the last page
    assert last.page == last.pages and last.rows[-1][0] == "(all items)"

    run = RunInfo.from_dict(
        {
            "id": 1, "pipeline_ref": "p", "pipeline": "p", "status": "running", "requested_at": 0.0,
            "requested_by": None, "reason": "test", "force": False, "params": {}, "source_folder": "in",
            "dest_folder": "out", "dataflow_id": None, "dataflow_version": None, "executor": None,
            "parent_run_id": None, "started_at": 1.0, "finished_at": 2.0, "cancel_requested": False, "error": None,
            "skip_failed": False, "inputs": [],
        }
    )  # fmt: skip
    counts = {"succeeded": 1000, "cached": 1000, "running": 1000, "queued": 6001, "failed": 1000}
    html = (
        environment()
        .get_template("runs/panel.html")
        .render(v=RunView(RunRow(run, None, counts), graph, grid), csrf="t", duration=duration_text, finished=())
    )
    assert html.count("<tr>") == PAGE_ITEMS + 1  # the header and one page of items, never 10,001
    assert "2000 of 10001 tasks done" in html
    assert 'aria-label="running 50%: parse of in/00102.csv"' in html


def test_errors_of_the_dataflows_layer_land_on_their_form_fields() -> None:
    cron = InvalidDataflow("trigger: '61 * * * *' is not a cron expression; use five fields", field="trigger")
    assert field_error(cron, {"trigger": "cron"}) == ("cron", "'61 * * * *' is not a cron expression; use five fields")
    assert field_error(cron, {"trigger": "manual"})[0] == "trigger"
    missing = InvalidDataflow("pipeline: a pipeline reference is required (module:attr)")
    assert field_error(missing, {}) == ("pipeline", "A pipeline reference is required (module:attr)")
    assert field_error(UnknownPipeline("no registered pipeline 'x'"), {})[0] == "pipeline"
    assert field_error(InvalidDataflow("unknown field(s) x"), {})[0] == ""
    config, errors = parse_form({"params": "{not json", "trigger": "cron", "cron": ""})
    assert set(errors) == {"params", "cron"} and "not valid JSON" in errors["params"]
    config, errors = parse_form({"params": '{"a.b": 1}', "trigger": "cron", "cron": "*/5 * * * *", "webhooks": "x\n\n"})
    assert not errors and config["trigger"] == "cron:*/5 * * * *" and config["webhooks"] == ["x"]


def test_markdown_descriptions_are_rendered_without_raw_html_or_script_links() -> None:
    html = str(markdown("**bold** <img src=x onerror=alert(1)> [x](javascript:alert(1))"))
    assert "<strong>bold</strong>" in html
    assert "<img" not in html and "&lt;img" in html
    assert 'href="javascript' not in html


def test_the_history_diff_compares_canonical_json() -> None:
    diff = config_diff({"trigger": "manual", "a": 1}, {"a": 1, "trigger": "cron:* * * * *"}, "v1", "v2")
    assert ("del", '-  "trigger": "manual"') in diff and ("add", '+  "trigger": "cron:* * * * *"') in diff
    assert not [line for kind, line in diff if kind in ("add", "del") and '"a"' in line]
