"""The run page's grid and step graph on a real run, and the dataflow form's helpers (no browser)."""

from __future__ import annotations

from pathlib import Path

from datamill.errors import InvalidDataflow, UnknownPipeline
from datamill.service import Service
from datamill.web.dataflows import config_diff, field_error, markdown, parse_form
from datamill.web.render import environment
from datamill.web.runs import ALL_ITEMS, PAGE_ITEMS, duration_text, run_view
from tests.helpers import open_home
from tests.web.web_pipelines import ref

ITEMS = 120


def test_a_big_run_reads_and_renders_one_page_of_its_grid(tmp_path: Path) -> None:
    home = open_home(tmp_path / "home")
    try:
        service = Service(home)
        service.create_folder("in")
        service.create_folder("out")
        service.put_many("in", [(f"f{i:04d}.txt", f"x{i}".encode()) for i in range(ITEMS)])
        run_id = service.submit_run(ref("flow"), "in", dest="out")  # no scheduler: every task stays queued
        assert len(service.tasks(run_id)) == ITEMS + 1

        order, edges = service.step_links(run_id)
        assert order == ["shout", "count"] and edges == [("shout", "count")]
        view = run_view(service, run_id, 2)
        assert [n.layer for n in view.graph.steps] == [0, 1]
        assert view.graph.node("shout").counts == {"queued": ITEMS}
        grid = view.grid
        assert (grid.page, grid.pages, grid.items) == (2, 3, ITEMS + 1)
        assert [name for name, _ in grid.rows] == [f"in/f{i:04d}.txt" for i in range(PAGE_ITEMS, 2 * PAGE_ITEMS)]
        last = run_view(service, run_id, 99).grid  # past the end: the last page
        assert last.page == 3 and last.rows[-1][0] == ALL_ITEMS and set(last.rows[-1][1]) == {"count"}

        html = (
            environment().get_template("runs/panel.html").render(v=view, csrf="t", duration=duration_text, finished=())
        )
        assert html.count("<tr>") == PAGE_ITEMS + 1  # the header and one page of items, never every task
        assert f"0 of {ITEMS + 1} tasks done" in html and "Page 2 of 3" in html
        assert 'aria-label="queued: shout of in/f0050.txt"' in html
    finally:
        home.close()


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
