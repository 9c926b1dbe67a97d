"""The item page in a real browser: previews by type, the metadata editor, and provenance of the demo's output."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
from playwright.sync_api import Page, expect

from tests.helpers import wait_for
from tests.web.conftest import Site, check_accessibility, screenshot

pytestmark = pytest.mark.slow


def png(width: int, height: int) -> bytes:
    """A small solid-colour RGB PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x20\x80\xd0" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def parquet() -> bytes:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    out = io.BytesIO()
    pq.write_table(pa.table({"station": ["north", "south", "east"], "reading": [1.5, 2.25, 3.0]}), out)
    return out.getvalue()


@pytest.fixture(scope="module")
def previews(site: Site) -> str:
    service = site.service()
    service.create_folder("Previews")
    service.put("Previews", "dot.png", png(6, 4))
    service.put("Previews", "table.csv", b"site,count,when\nA,3,2024-01-02\nB,5,2024-01-03\n")
    service.put("Previews", "table.parquet", parquet())
    doc = {"name": "survey", "sites": [{"id": 1, "tags": ["a", "b"]}, {"id": 2, "tags": []}], "ok": True}
    service.put("Previews", "doc.json", json.dumps(doc).encode())
    service.put("Previews", "blob.bin", bytes(range(256)) * 4)
    return "Previews"


def test_previews_by_type(admin_page: Page, site: Site, previews: str) -> None:
    page = admin_page
    page.goto(f"{site.url}/item/Previews/dot.png")
    image = page.get_by_role("img", name="Image preview of dot.png, version 1")
    expect(image).to_be_visible()
    assert image.evaluate("img => img.complete && img.naturalWidth") == 6

    page.goto(f"{site.url}/item/Previews/table.csv")
    table = page.locator("table.data-preview")
    expect(table.locator("thead th")).to_have_text(["site text", "count integer", "when date"])
    expect(table.locator("tbody tr")).to_have_count(2)
    expect(table.locator("tbody tr").nth(1)).to_contain_text("5")

    page.goto(f"{site.url}/item/Previews/table.parquet")
    table = page.locator("table.data-preview")
    expect(table.locator("thead th")).to_have_text(["station string", "reading double"])
    expect(table.locator("tbody tr").nth(2)).to_contain_text("east")

    page.goto(f"{site.url}/item/Previews/doc.json")
    tree = page.locator(".json-tree")
    expect(tree).to_contain_text('"survey"')
    sites = tree.locator("details").nth(1)  # the "sites" array, open at first
    assert sites.evaluate("d => d.open")
    sites.locator("summary").first.click()  # folds
    assert not sites.evaluate("d => d.open")
    check_accessibility(page)

    page.goto(f"{site.url}/item/Previews/blob.bin")
    expect(page.locator("pre.hex")).to_contain_text("00000000  00 01 02 03")
    expect(page.locator("#preview")).to_contain_text("1.0 KB")


def test_the_metadata_editor_validates_and_saves_nothing_on_error(admin_page: Page, site: Site, previews: str) -> None:
    page = admin_page
    page.goto(f"{site.url}/item/Previews/table.csv")
    editor = page.get_by_label("Metadata (a JSON object)")
    editor.fill("[1, 2]")
    page.get_by_role("button", name="Save metadata").click()
    expect(page.locator("#item-metadata-error")).to_contain_text("must be a JSON object")
    expect(editor).to_have_attribute("aria-invalid", "true")
    assert site.service().item("Previews/table.csv").metadata == {}
    editor.fill('{"instrument": "gauge-7", "calibrated": true}')
    page.get_by_role("button", name="Save metadata").click()
    expect(page.locator(".flash.ok")).to_have_text("Metadata saved.")
    assert site.service().item("Previews/table.csv").metadata == {"instrument": "gauge-7", "calibrated": True}


def test_follow_the_demo_summary_back_to_the_raw_csv(admin_page: Page, site: Site) -> None:
    service = site.service()
    summary = "weather_stations.summary.json"
    wait_for("the demo's summary", lambda: any(i.name == summary for i in service.list_items("Derived Data")), 120)
    page = admin_page
    page.goto(f"{site.url}/folders")
    page.get_by_role("link", name="Derived Data").click()
    expect(page.get_by_role("link", name=summary, exact=True)).to_be_visible()
    check_accessibility(page)
    screenshot(page, "folder")
    page.get_by_role("link", name=summary, exact=True).click()
    expect(page.locator("h1")).to_have_text(summary)
    graph = page.get_by_role("group", name="Provenance graph")
    expect(graph).to_be_visible()
    # The graph names the step that made it and, further back, the raw CSV it came from.
    expect(graph.locator("[data-node^='dm:task/']").first).to_be_visible()
    raw = graph.get_by_role("link", name="Raw Data/weather_stations.csv v1")
    expect(raw).to_be_visible()
    check_accessibility(page)
    screenshot(page, "item-provenance", full_page=True)
    for fmt, check in (("PROV-JSON", b'"prefix"'), ("PROV-N", b"document"), ("RO-Crate (zip)", b"PK")):
        href = page.get_by_role("link", name=fmt).get_attribute("href")
        assert href
        got = page.request.get(site.url + href)
        assert got.status == 200 and check in got.body()[:4000], fmt
    raw.click()
    page.wait_for_url("**/item/Raw%20Data/weather_stations.csv?version=1")
    expect(page.locator("h1")).to_have_text("weather_stations.csv")
    # From the raw file, the graph leads forward to what was derived from it.
    forward = page.get_by_role("group", name="Provenance graph").get_by_role("link", name=f"Derived Data/{summary} v1")
    expect(forward).to_have_count(1)
