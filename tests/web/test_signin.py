"""Signing in and out of the web app in a real browser, and CSRF."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.web.conftest import BOB_PASSWORD, Site, check_accessibility

pytestmark = pytest.mark.slow


def test_the_printed_login_url_signs_in_and_leaves_the_address_bar(page: Page, site: Site) -> None:
    page.goto(f"{site.url}/?token={site.admin_token}")
    page.wait_for_url(f"{site.url}/folders")
    assert "token" not in page.url
    expect(page.locator("header .who")).to_contain_text("admin")
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin", exact=True)).to_be_visible()
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["datamill_token"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and session["value"] != site.admin_token
    check_accessibility(page)


def test_sign_in_with_a_password_and_sign_out(page: Page, site: Site) -> None:
    page.goto(f"{site.url}/folders")
    page.wait_for_url("**/signin?next=%2Ffolders")
    page.get_by_label("User name").fill("bob")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("wrong user name or password")
    check_accessibility(page)
    page.get_by_label("Password").fill(BOB_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{site.url}/folders")
    expect(page.locator("header .who")).to_have_text("bob")
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin", exact=True)).to_have_count(
        0
    )  # not an admin
    session = next(c["value"] for c in page.context.cookies() if c["name"] == "datamill_token")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/signin")
    expect(page.locator(".flash.ok")).to_have_text("You are signed out.")
    # The session is revoked on the server, not only forgotten by the browser.
    gone = httpx.get(f"{site.url}/api/v1/whoami", headers={"Authorization": f"Bearer {session}"})
    assert gone.status_code == 401
    page.goto(f"{site.url}/folders")
    page.wait_for_url("**/signin?next=%2Ffolders")


def test_a_form_posted_without_the_csrf_token_is_refused(admin_page: Page, site: Site) -> None:
    # The page's own session, posting the sign-out form without its hidden field.
    answer = admin_page.request.post(f"{site.url}/signout", form={"other": "x"}, max_redirects=0)
    assert answer.status == 403 and "security token (CSRF)" in answer.text()
    # The same through the API with only the cookie: refused; with the page's token: accepted.
    api = admin_page.request.put(f"{site.url}/api/v1/folders/csrf-check", data="{}")
    assert api.status == 403 and api.json()["detail"] == {"reason": "csrf"}
    token = admin_page.locator("body").get_attribute("data-csrf")
    assert token
    made = admin_page.request.post(
        f"{site.url}/api/v1/folders/csrf-check",
        data="{}",
        headers={"X-CSRF-Token": token, "Content-Type": "application/json"},
    )
    assert made.status == 201, made.text()
    admin_page.goto(f"{site.url}/folders")
    expect(admin_page.locator("header .who")).to_contain_text("admin")  # still signed in


def test_a_page_needs_a_session(site: Site) -> None:
    r = httpx.get(f"{site.url}/folders", follow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/signin?next=%2Ffolders"
