"""The folder pages in a real browser: access, the table at scale, forms, uploads by drag-and-drop and picker."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.web.conftest import Site, check_accessibility, screenshot, sign_in

pytestmark = pytest.mark.slow

BIG = 20 * 1024 * 1024


def test_a_second_user_sees_only_what_was_shared(page: Page, site: Site) -> None:
    admin = site.service()
    admin.create_folder("Shared with bob")
    admin.put("Shared with bob", "hello.txt", b"hello bob")
    admin.share("Shared with bob", "bob", "read")
    admin.create_folder("Admin only")
    admin.put("Admin only", "secret.txt", b"not for bob")
    sign_in(page, site, "bob")
    expect(page.get_by_role("link", name="Shared with bob")).to_be_visible()
    body = page.locator("main").inner_text()
    assert "Admin only" not in body and "Raw Data" not in body
    page.get_by_role("link", name="Shared with bob").first.click()
    expect(page.get_by_role("link", name="hello.txt", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Delete hello.txt")).to_have_count(0)  # read only: no delete
    # A folder (or item) not shared with bob answers exactly like one that does not exist.
    answers = {}
    for url in ("/folders/Admin%20only", "/folders/No%20such%20folder", "/item/Admin%20only/secret.txt"):
        response = page.goto(site.url + url)
        assert response is not None
        answers[url] = (response.status, page.locator("main").inner_text())
    assert answers["/folders/Admin%20only"] == answers["/folders/No%20such%20folder"]
    status, text = answers["/item/Admin%20only/secret.txt"]
    assert status == 404 and "Not found" in text and "Admin only" not in text and "secret" not in text


def test_the_items_table_pages_sorts_and_filters(admin_page: Page, site: Site) -> None:
    admin = site.service()
    admin.create_folder("Many")
    admin.put_many("Many", [(f"file-{i:03}.txt", b"x" * (i % 17)) for i in range(230)])
    page = admin_page
    page.goto(f"{site.url}/folders/Many")
    expect(page.locator("#items-heading")).to_contain_text("230")
    expect(page.locator("#items tbody tr")).to_have_count(100)
    expect(page.get_by_text("Page 1 of 3")).to_be_visible()
    page.get_by_role("link", name="Next").click()
    expect(page.locator("#items tbody tr").first).to_contain_text("file-100.txt")
    page.get_by_role("link", name="Size").click()  # ascending
    page.get_by_role("link", name="Size ▲").click()  # and descending
    expect(page.locator("th[aria-sort=descending]")).to_contain_text("Size")
    expect(page.locator("#items tbody tr").first.locator("td").nth(1)).to_have_text("16 B")
    page.get_by_label("Filter by name").fill("file-12")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#items tbody tr")).to_have_count(10)  # file-120 .. file-129
    expect(page.locator("#items-heading")).to_contain_text("(10)")


def test_folder_forms_say_what_is_wrong_next_to_the_field_and_save_nothing(admin_page: Page, site: Site) -> None:
    page = admin_page
    site.service().create_folder("Forms")
    page.goto(f"{site.url}/folders/Forms")
    page.get_by_label("Name", exact=True).fill("bad/name")
    page.get_by_role("button", name="Create").click()
    error = page.locator("#new-folder-error")
    expect(error).to_contain_text("contains a slash")
    expect(page.get_by_label("Name", exact=True)).to_have_attribute("aria-invalid", "true")
    assert site.service().list_folders("Forms") == []
    page.get_by_label("Name", exact=True).fill("Sub folder")
    page.get_by_role("button", name="Create").click()
    page.wait_for_url("**/folders/Forms/Sub%20folder")
    expect(page.locator(".flash.ok")).to_contain_text("created")
    # Metadata: invalid JSON is refused next to the editor, and the stored metadata stays as it was.
    page.get_by_label("Metadata (a JSON object)").fill('{"project": ')
    page.get_by_role("button", name="Save metadata").click()
    expect(page.locator("#folder-metadata-error")).to_contain_text("not valid JSON")
    expect(page.get_by_label("Metadata (a JSON object)")).to_have_value('{"project": ')
    assert site.service().folder("Forms/Sub folder").metadata == {}
    page.get_by_label("Metadata (a JSON object)").fill('{"project": "web"}')
    page.get_by_role("button", name="Save metadata").click()
    expect(page.locator(".flash.ok")).to_have_text("Metadata saved.")
    assert site.service().folder("Forms/Sub folder").metadata == {"project": "web"}
    # Rename, then share with an unknown user (refused next to the field).
    page.get_by_label("New name").fill("Renamed")
    page.get_by_role("button", name="Rename").click()
    page.wait_for_url("**/folders/Forms/Renamed")
    page.get_by_label("User").fill("nobody-here")
    page.get_by_role("button", name="Share").click()
    expect(page.locator("#share-error")).to_contain_text("no user")
    assert site.service().access_list("Forms/Renamed") == []
    check_accessibility(page)
    # Deleting asks first; declining keeps the folder, accepting deletes it.
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Delete folder").click()
    assert [f.name for f in site.service().list_folders("Forms")] == ["Renamed"]
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete folder").click()
    page.wait_for_url("**/folders/Forms")
    expect(page.locator(".flash.ok")).to_contain_text("deleted")
    assert site.service().list_folders("Forms") == []


def test_dark_mode_and_a_narrow_screen(admin_page: Page, site: Site) -> None:
    site.service().create_folder("Narrow")
    site.service().put("Narrow", "a-rather-long-file-name-for-a-phone-screen.csv", b"a,b\n1,2\n")
    page = admin_page
    page.emulate_media(color_scheme="dark")
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto(f"{site.url}/folders/Narrow")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(21, 23, 27)"  # the dark palette
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways page scroll
    check_accessibility(page)  # colour contrast included
    page.keyboard.press("Tab")  # the first stop is the skip link, visible once focused
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    assert page.evaluate("document.activeElement.getBoundingClientRect().left >= 0")


def test_upload_by_drag_and_drop_with_progress(admin_page: Page, site: Site) -> None:
    site.service().create_folder("Dropped")
    page = admin_page
    page.goto(f"{site.url}/folders/Dropped")
    drop = page.evaluate_handle(
        """(big) => {
            const dt = new DataTransfer();
            for (const [name, text] of [["a.txt", "alpha"], ["b.csv", "x,y\\n1,2\\n"], ["c.json", "{\\"k\\": 1}"]]) {
                dt.items.add(new File([text], name, {type: "text/plain"}));
            }
            const bytes = new Uint8Array(big);
            for (let i = 0; i < big; i++) bytes[i] = i % 251;
            dt.items.add(new File([bytes], "big.bin", {type: "application/octet-stream"}));
            return dt;
        }""",
        BIG,
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": drop})
    bars = page.locator("#upload-list progress")
    expect(bars).to_have_count(4)
    expect(page.get_by_label("Upload of big.bin")).to_be_visible()
    expect(page.locator("#upload-status")).to_have_attribute("data-finished", "true", timeout=60_000)
    expect(page.locator("#upload-summary")).to_contain_text("4 of 4 files uploaded")
    for i in range(4):
        assert bars.nth(i).evaluate("b => b.value === b.max")
    assert page.locator("#upload-total").evaluate("b => b.value === b.max && b.max > 20000000")
    for name in ("a.txt", "b.csv", "c.json", "big.bin"):  # the table refreshed in place
        expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
    screenshot(page, "upload")
    expected = hashlib.sha256(bytes(i % 251 for i in range(BIG))).hexdigest()
    info, chunks = site.service().iter_bytes("Dropped/big.bin")
    stored = hashlib.sha256()
    for chunk in chunks:
        stored.update(chunk)
    assert info.size == BIG and stored.hexdigest() == expected
    assert site.service().iter_bytes("Dropped/a.txt")[1].__next__() == b"alpha"


def test_upload_a_whole_directory_with_the_picker(admin_page: Page, site: Site, tmp_path: Path) -> None:
    site.service().create_folder("Picked")
    tree = tmp_path / "survey"
    (tree / "day1").mkdir(parents=True)
    (tree / "notes.txt").write_text("top")
    (tree / "day1" / "counts.csv").write_text("n\n1\n")
    page = admin_page
    page.goto(f"{site.url}/folders/Picked")
    page.set_input_files("#pick-dir", tree)
    expect(page.locator("#upload-status")).to_have_attribute("data-finished", "true")
    expect(page.locator("#upload-summary")).to_contain_text("2 of 2 files uploaded")
    service = site.service()
    assert service.item("Picked/survey/notes.txt").size == 3
    assert service.item("Picked/survey/day1/counts.csv").size == 4


def test_the_folder_page_download_link_serves_the_bytes(admin_page: Page, site: Site) -> None:
    site.service().create_folder("Downloads")
    site.service().put("Downloads", "data.txt", b"download me")
    admin_page.goto(f"{site.url}/folders/Downloads")
    href = admin_page.get_by_role("link", name="Download data.txt").get_attribute("href")
    assert href
    got = admin_page.request.get(site.url + href)
    assert got.status == 200 and got.body() == b"download me"
    # Not signed in, the same URL is refused.
    assert httpx.get(site.url + href).status_code == 401
    check_accessibility(admin_page)
