"""The run page's grid and step graph on a real run, and the dataflow form's helpers (no browser)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from datamill.errors import InvalidDataflow, UnknownPipeline
from datamill.service import Service
from datamill.web.dataflows import config_diff, field_error, markdown, parse_form
from datamill.web.render import environment
from datamill.web.runs import ALL_ITEMS, PAGE_ITEMS, duration_text, run_view
from tests.helpers import open_home, serve
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


@pytest.mark.slow
def test_a_run_page_gets_every_change_made_while_it_is_read(tmp_path: Path) -> None:
    """The run ends while its page is being read: the page's live stream still brings the end.

    The page's stream starts after the ``seq`` the page names. Read after the run, that seq was
    past the run's last events when they landed in between (a run ending during the page's
    reads, as under load): the page then showed the run running for good. The interleaving is
    forced: the run is cancelled (it ends at once, nothing runs: no scheduler) from inside the
    page's own read of the grid.
    """
    home = open_home(tmp_path / "home")
    try:
        service = Service(home)
        service.create_folder("in")
        service.create_folder("out")
        service.put_many("in", [("a.txt", b"a"), ("b.txt", b"b")])
        run_id = service.submit_run(ref("flow"), "in", dest="out")  # no scheduler: it stays queued
        ended_after: list[int] = []

        def end_the_run_meanwhile(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
            # The grid's first query (the page has read the run's state already); once only.
            if not ended_after and "GROUP BY tasks.item_name" in statement:
                ended_after.append(home.events.latest())
                assert service.cancel_run(run_id)

        event.listen(home.db.engine, "before_cursor_execute", end_the_run_meanwhile)
        try:
            with serve(home) as server, httpx.Client(base_url=server.url, follow_redirects=True, timeout=30.0) as http:
                http.get(f"/?token={home.admin_token()}").raise_for_status()
                page = http.get(f"/runs/{run_id}")
                page.raise_for_status()
                assert ended_after, "the page read no grid"
                assert 'class="run-summary" data-status="queued"' in page.text  # read before it ended
                found = re.search(r"sse-connect=\"(/runs/live\?run=\d+&amp;since=(\d+)&amp;status=\w+)\"", page.text)
                assert found is not None
                since = int(found.group(2))
                assert since <= ended_after[0], "the page's stream starts after events it did not show"
                assert service.run_info(run_id).status == "cancelled"
                # What the page's stream sends: the run's row as it is now, which makes the page
                # read its panel again.
                assert 'data-status="cancelled"' in _first_run_message(http, found.group(1).replace("&amp;", "&"))
        finally:
            event.remove(home.db.engine, "before_cursor_execute", end_the_run_meanwhile)
    finally:
        home.close()


@pytest.mark.slow
def test_numbers_past_the_databases_integers_in_page_urls_are_refused_or_kept_in_range(tmp_path: Path) -> None:
    """A hand-edited URL with a huge number gets a page or a clear 422, never an internal error.

    The folder table's and the run grid's page numbers became offsets that overflowed SQLite's
    64-bit integers (500); the live streams' ``since`` and ``run`` had no upper bound either.
    """
    huge = str(10**30)
    home = open_home(tmp_path / "home")
    try:
        service = Service(home)
        service.create_folder("in")
        service.create_folder("out")
        service.put_many("in", [("a.txt", b"a")])
        run_id = service.submit_run(ref("flow"), "in", dest="out")
        with serve(home) as server, httpx.Client(base_url=server.url, follow_redirects=True, timeout=30.0) as http:
            http.get(f"/?token={home.admin_token()}").raise_for_status()
            folder = http.get(f"/folders/in?page={huge}")
            assert folder.status_code == 200 and "a.txt" not in folder.text  # past the last page: empty
            grid = http.get(f"/runs/{run_id}?page={huge}")
            assert grid.status_code == 200 and "in/a.txt" in grid.text  # past the end: the last page
            for url in (f"/events/live?since={huge}", f"/runs/live?since={huge}", f"/runs/live?run={huge}"):
                refused = http.get(url)
                assert refused.status_code == 422, url
                assert "less than or equal to 9223372036854775807" in refused.json()["error"], url
    finally:
        home.close()


def _first_run_message(http: httpx.Client, url: str) -> str:
    """The data of the first ``run`` message of a live stream (a bound of 30 s, for a failure only)."""
    deadline = time.monotonic() + 30
    event_name, data = "", []
    with http.stream("GET", url, timeout=httpx.Timeout(30.0)) as answer:
        for line in answer.iter_lines():
            assert time.monotonic() < deadline, "no run message: the page would never show the run's end"
            if line.startswith("event: "):
                event_name, data = line[7:], []
            elif line.startswith("data: "):
                data.append(line[6:])
            elif not line and event_name == "run":
                return "\n".join(data)
    raise AssertionError("the stream ended without a run message")


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
