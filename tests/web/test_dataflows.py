"""Dataflows and runs in a real browser: the form with its folder picker, a live run, logs, cancel, retry.

Each test uses folders and dataflows of its own (named after it) on the session's one server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from datamill.errors import AlreadyExists
from tests.web.conftest import Site, check_accessibility, screenshot
from tests.web.web_pipelines import ref

pytestmark = pytest.mark.slow

PIPELINE = "web-flow"
#: Seconds a run is given to finish in the browser (a bound for a failure, not a timed assertion).
LONG = 30_000


@pytest.fixture(scope="module")
def registered(site: Site) -> str:
    """The test pipeline registered under a name (what a non-admin would choose)."""
    with contextlib.suppress(AlreadyExists):
        site.service().add_pipeline(PIPELINE, ref("flow"), "shout every item, then count")
    return PIPELINE


def folders(site: Site, *paths: str) -> None:
    """Create folders as the admin."""
    for p in paths:
        site.service().create_folder(p, exist_ok=True)


def pick_folder(page: Page, field: str, name: str) -> None:
    """Choose ``name`` (a top-level folder) with the folder picker of ``field``."""
    page.locator(f"button[data-picker='f-{field}']").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    dialog.locator(f"button[data-pick='{name}']").click()
    expect(dialog).to_be_hidden()
    expect(page.locator(f"#f-{field}")).to_have_value(name)


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Path]:
    """A file a waiting step waits for; created at the end so nothing is left waiting."""
    path = tmp_path / "gate"
    yield path
    path.touch()


def test_create_a_dataflow_through_the_form_start_it_and_watch_its_run_live(
    admin_page: Page, site: Site, registered: str
) -> None:
    page = admin_page
    folders(site, "wf-in", "wf-in/sub", "wf-out")
    page.goto(f"{site.url}/dataflows")
    page.get_by_role("link", name="New dataflow").click()
    page.get_by_label("Name").fill("watch")
    page.get_by_label("Description").fill("Shouts **every** item.\n\n<script>alert(1)</script>")
    pick_folder(page, "source", "wf-in")
    # The tree opens a level at a time: wf-in has a subfolder.
    page.locator("button[data-picker='f-destination']").click()
    page.get_by_role("button", name="Show the folders in wf-in").click()
    expect(page.locator("button[data-pick='wf-in/sub']")).to_be_visible()
    page.locator("button[data-pick='wf-out']").click()
    expect(page.locator("#f-destination")).to_have_value("wf-out")
    page.get_by_label("Implementation (pipeline)").fill(registered)
    page.get_by_label("Parameters").fill("{}")
    page.get_by_label("When it runs").select_option("new-items")
    screenshot(page, "dataflow-form", full_page=True)
    page.get_by_role("button", name="Save dataflow").click()
    page.wait_for_url(f"{site.url}/dataflows/watch")
    expect(page.locator("#flow-state")).to_have_text("stopped")
    # Markdown rendered, raw HTML shown as text, never run.
    expect(page.locator(".description strong")).to_have_text("every")
    expect(page.locator(".description")).to_contain_text("<script>alert(1)</script>")
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#flow-state")).to_have_text("running")

    page.get_by_role("link", name="Runs", exact=True).click()
    page.wait_for_url(f"{site.url}/runs")
    page.evaluate("window.__samePage = 'yes'")
    site.service().put("wf-in", "hello.txt", b"hello web\n")
    row = page.locator("#runs-body tr", has_text="watch").first
    expect(row).to_have_attribute("data-status", "succeeded", timeout=LONG)
    expect(row).to_contain_text("2/2 done")
    assert page.evaluate("window.__samePage") == "yes"  # updated in place: no reload, no navigation
    screenshot(page, "runs-live")

    row.get_by_role("link").first.click()
    expect(page.locator(".run-summary")).to_contain_text("2 of 2 tasks done")
    expect(page.locator("svg.steps")).to_contain_text("shout")
    check_accessibility(page)
    screenshot(page, "run-page", full_page=True)
    page.get_by_role("link", name="done: shout of wf-in/hello.txt").click()
    expect(page.locator("#task-log")).to_contain_text("shouting hello.txt", timeout=LONG)
    expect(page.locator("#why")).not_to_be_empty()
    site.service().stop_dataflow("watch")


def test_bad_input_shows_next_to_the_field_and_saves_nothing(admin_page: Page, site: Site, registered: str) -> None:
    page = admin_page
    folders(site, "bad-in", "bad-in/results", "bad-out")
    page.goto(f"{site.url}/dataflows/_new")
    check_accessibility(page)

    def fill(name: str, source: str, dest: str, pipeline: str, cron: str) -> None:
        page.get_by_label("Name").fill(name)
        page.get_by_label("Source folder").fill(source)
        page.get_by_label("Destination folder").fill(dest)
        page.get_by_label("Implementation (pipeline)").fill(pipeline)
        if page.get_by_label("When it runs").input_value() != "cron":
            page.get_by_label("When it runs").select_option("cron")
        page.get_by_label("Cron expression").fill(cron)
        # Click only once the preview shows this expression: its answer changes the page's height.
        if cron.startswith("61"):
            expect(page.locator("#cron-preview")).to_contain_text(f"'{cron}' is not a cron expression")
        else:
            expect(page.locator("#cron-preview .fires li")).to_have_count(5)

    # The preview shows the next fire times as one types.
    fill("bad", "bad-in", "bad-out", registered, "0 6 * * 1")
    page.get_by_label("Cron expression").fill("every tuesday")
    expect(page.locator("#cron-preview")).to_contain_text("is not a cron expression")

    cases = [
        (("bad", "bad-in", "bad-out", registered, "61 * * * *"), "cron", "is not a cron expression"),
        (("bad", "bad-in", "bad-in/results", registered, "0 6 * * *"), "destination", "lies inside the source"),
        (("bad", "bad-in", "bad-out", "", "0 6 * * *"), "pipeline", "pipeline"),
        (("bad", "bad-in", "bad-out", "no-such-pipeline", "0 6 * * *"), "pipeline", "no module named"),
    ]
    for values, field, words in cases:
        fill(*values)
        page.get_by_role("button", name="Save dataflow").click()
        page.wait_for_load_state()
        error = page.locator(f"#{field}-error")
        expect(error).to_contain_text(words)
        expect(page.locator(f"#f-{field}")).to_have_attribute("aria-invalid", "true")
        expect(page.locator("#form-error")).to_contain_text("Nothing was saved")
        # The message sits right after its field (within the field's own block).
        assert page.locator(f"#f-{field}").get_attribute("aria-describedby").startswith(f"{field}-error")
        # The page sent back shows its cron preview itself (nothing on it asked for one yet).
        preview = page.locator("#cron-preview")
        if field == "cron":
            expect(preview).to_contain_text("'61 * * * *' is not a cron expression")
        else:
            expect(preview.locator(".fires li")).to_have_count(5)
    check_accessibility(page)
    assert "bad" not in [f.name for f in site.service().dataflows()]


def test_edit_keeps_a_history_with_a_diff(admin_page: Page, site: Site, registered: str) -> None:
    page = admin_page
    folders(site, "hist-in", "hist-out")
    site.service().create_dataflow("hist", "hist-in", "hist-out", registered, trigger="manual")
    page.goto(f"{site.url}/dataflows/hist/edit")
    page.get_by_label("When it runs").select_option("cron")
    page.get_by_label("Cron expression").fill("*/10 * * * *")
    page.get_by_role("button", name="Save a new version").click()
    page.wait_for_url(f"{site.url}/dataflows/hist")
    page.get_by_role("link", name="History (2 versions)").click()
    diff = page.locator("pre.diff")
    expect(diff.locator(".del")).to_contain_text('"trigger": "manual"')
    expect(diff.locator(".add")).to_contain_text('"trigger": "cron:*/10 * * * *"')
    assert site.service().dataflow("hist").version == 2


def test_cancel_a_long_run_and_retry_a_failed_one(
    admin_page: Page, site: Site, registered: str, gate: Path, tmp_path: Path
) -> None:
    page = admin_page
    page.on("dialog", lambda d: d.accept())
    folders(site, "long-in", "long-out")
    site.service().put("long-in", "slow.txt", f"wait:{gate}".encode())
    site.service().create_dataflow("long", "long-in", "long-out", registered, trigger="manual")
    page.goto(f"{site.url}/dataflows/long")
    page.get_by_role("button", name="Run now").click()
    page.get_by_role("link", name="#", exact=False).first.click()
    expect(page.locator("table.grid td.cell.running")).to_have_count(1, timeout=LONG)  # live panel
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator(".flash.ok")).to_contain_text("Cancelling run")
    # The queued task is cancelled at once (shown live, no reload); the run ends once the step in
    # flight returns (a step running in the server's threads cannot be killed): release it.
    expect(page.locator(".run-summary")).to_contain_text("cancelled", timeout=LONG)
    page.evaluate("window.__samePage = 'yes'")
    gate.touch()
    expect(page.locator(".run-summary")).to_have_attribute("data-status", "cancelled", timeout=LONG)
    assert page.evaluate("window.__samePage") == "yes"
    expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)

    flag = tmp_path / "may-succeed"
    folders(site, "retry-in", "retry-out")
    site.service().put("retry-in", "flaky.txt", f"fail-unless:{flag}".encode())
    site.service().create_dataflow("retry", "retry-in", "retry-out", registered, trigger="manual")
    page.goto(f"{site.url}/dataflows/retry")
    page.get_by_role("button", name="Run now").click()
    page.locator("table.runs tbody a").first.click()
    expect(page.locator(".run-summary")).to_have_attribute("data-status", "failed", timeout=LONG)
    failed_url = page.url
    page.get_by_role("link", name="failed: shout of retry-in/flaky.txt").click()
    expect(page.locator("pre.error")).to_contain_text("asked to fail")
    page.goto(failed_url)
    flag.touch()
    page.get_by_role("button", name="Retry run").click()
    expect(page.locator(".flash.ok")).to_contain_text("retries run")
    assert page.url != failed_url
    expect(page.locator(".run-summary")).to_have_attribute("data-status", "succeeded", timeout=LONG)


def test_a_state_changing_post_without_the_csrf_token_is_refused(admin_page: Page, site: Site, registered: str) -> None:
    folders(site, "csrf-in", "csrf-out")
    site.service().create_dataflow("csrfflow", "csrf-in", "csrf-out", registered, trigger="manual")
    for url in ("/dataflows/csrfflow/start", "/dataflows/csrfflow/delete", "/dataflows/_new"):
        answer = admin_page.request.post(f"{site.url}{url}", form={"name": "x"}, max_redirects=0)
        assert answer.status == 403 and "security token (CSRF)" in answer.text()
    info = site.service().dataflow("csrfflow")
    assert info.state == "stopped"
    assert "x" not in [f.name for f in site.service().dataflows()]
