"""The event log and the admin pages in a real browser: who sees what."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.web.conftest import Site, check_accessibility, sign_in

pytestmark = pytest.mark.slow


def test_the_event_log_shows_only_what_the_user_may_see(page: Page, site: Site) -> None:
    admin = site.service()
    admin.create_folder("ev-secret", exist_ok=True)
    admin.create_folder("ev-shared", exist_ok=True)
    admin.share("ev-shared", "bob", "read")
    admin.put("ev-secret", "hidden-before.txt", b"x")
    admin.put("ev-shared", "seen-before.txt", b"x")
    sign_in(page, site, "bob")
    page.goto(f"{site.url}/events")
    body = page.locator("#events-body")
    expect(body).to_contain_text("seen-before.txt")
    expect(body).not_to_contain_text("hidden-before.txt")
    expect(body).not_to_contain_text("ev-secret")
    check_accessibility(page)

    # Live: both appended while the page is open; only the shared one arrives.
    page.evaluate("window.__samePage = 'yes'")
    admin.put("ev-secret", "hidden-live.txt", b"x")
    admin.put("ev-shared", "seen-live.txt", b"x")
    expect(body.locator("tr").first).to_contain_text("seen-live.txt")
    expect(body).not_to_contain_text("hidden-live.txt")  # sent in order: it would have come first
    assert page.evaluate("window.__samePage") == "yes"

    # Filters: by kind, and by a folder one may read; a folder one may not read is "not found".
    page.get_by_label("Kind").select_option("item.")
    page.get_by_label("Folder").fill("ev-shared")
    page.get_by_role("button", name="Filter").click()
    kinds = body.locator("tr").evaluate_all("rows => rows.map(r => r.dataset.kind)")
    assert kinds and all(k.startswith("item.") for k in kinds)
    answer = page.goto(f"{site.url}/events?folder=ev-secret")
    assert answer is not None and answer.status == 404
    expect(page.locator("#folder-error")).to_contain_text("no folder 'ev-secret' (or you may not see it)")
    missing = page.goto(f"{site.url}/events?folder=no-such-folder")
    assert missing is not None and missing.status == 404
    expect(page.locator("#folder-error")).to_contain_text("(or you may not see it)")


def test_admin_pages_are_not_found_for_others(page: Page, site: Site) -> None:
    sign_in(page, site, "bob")
    for url in ("/admin", "/admin/grants?folder=ev-shared"):
        answer = page.goto(f"{site.url}{url}")
        assert answer is not None and answer.status == 404
        expect(page.get_by_role("heading", level=1)).to_have_text("Not found")
    token = page.locator("body").get_attribute("data-csrf")
    made = page.request.post(
        f"{site.url}/admin/users", form={"csrf": token or "", "name": "mallory", "admin": "on"}, max_redirects=0
    )
    assert made.status == 404
    assert "mallory" not in [u.name for u in site.service().list_users()]


def test_admin_creates_and_disables_users_and_shows_a_token_once(admin_page: Page, site: Site) -> None:
    page = admin_page
    page.get_by_role("link", name="Admin").click()
    page.get_by_label("User name").fill("carol")
    page.get_by_label("Password").fill("carol-password-1")
    page.get_by_role("button", name="Create user").click()
    expect(page.locator(".flash.ok")).to_have_text("User carol created.")
    check_accessibility(page)

    page.get_by_label("Token for").select_option("carol")
    page.get_by_label("Name", exact=True).fill("laptop")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("#new-token").inner_text()
    assert secret.startswith("dm_")
    page.goto(f"{site.url}/admin")  # shown once: never again
    assert secret not in page.content()
    assert site.home.actor("carol").name == "carol"

    page.on("dialog", lambda d: d.accept())
    page.locator("#user-carol").get_by_role("button", name="Disable carol").click()
    expect(page.locator(".flash.ok")).to_contain_text("User carol disabled")
    expect(page.locator("#user-carol")).to_contain_text("disabled")
    gone = page.request.get(f"{site.url}/api/v1/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert gone.status == 401

    site.service().create_folder("adm-shared", exist_ok=True)
    site.service().share("adm-shared", "bob", "read")
    page.goto(f"{site.url}/admin/grants?folder=adm-shared")
    expect(page.locator("table")).to_contain_text("bob")
    page.get_by_label("User").select_option("carol")
    page.get_by_label("Level").select_option("write")
    page.get_by_role("button", name="Grant", exact=True).click()
    expect(page.locator(".flash.ok")).to_have_text("carol now has write on adm-shared.")
    expect(page.locator("table")).to_contain_text("carol")


def test_runs_a_user_may_not_see_are_not_found(page: Page, site: Site) -> None:
    from tests.web.web_pipelines import ref

    admin = site.service()
    admin.create_folder("priv-in", exist_ok=True)
    admin.create_folder("priv-out", exist_ok=True)
    admin.put("priv-in", "secret-name.txt", b"x")
    run_id = admin.submit_run(ref("flow"), "priv-in", dest="priv-out", reason="private run")
    task_id = admin.tasks(run_id)[0].id
    sign_in(page, site, "bob")
    for url in (f"/runs/{run_id}", f"/runs/{run_id}/panel", f"/tasks/{task_id}"):
        answer = page.goto(f"{site.url}{url}")
        assert answer is not None and answer.status == 404, url
        assert "secret-name" not in page.content() and "priv-in" not in page.content()
    page.goto(f"{site.url}/runs")
    expect(page.locator(f"#run-{run_id}")).to_have_count(0)
    assert "private run" not in page.content()
