"""The web app in a real browser: a folder of 100,000 items, live run updates, page weight.

    .venv/bin/python benchmarks/web.py [--items 100000] [--events 100] [--gap-ms 150] [--rounds 5]

Prints ONE JSON object on stdout (progress goes to stderr). Debian's Chromium (``/usr/bin/chromium``)
driven by Playwright; the server runs in this process (``start_background_server``) on a
throw-away SQLite home. Measured, each against its target:

* ``folder_page``: the folder page of a folder holding ``--items`` items (made by direct inserts in
  batches, all pointing at one blob: setup, not measured). Time to first byte (``httpx``, headers
  received) and, in the browser, navigation start to ``DOMContentLoaded`` and to ``load``
  (Navigation Timing), medians over ``--rounds``. Target: rendered in under 300 ms. Baseline: the
  same two figures for the top-level folders page, which reads nearly nothing; ``ratio`` is
  folder / baseline.
* ``live_update``: ``--events`` runs submitted ``--gap-ms`` apart while the runs page is open
  (no scheduler runs here, so each stays queued and its row is the one change). Latency = the
  moment a ``MutationObserver`` in the page sees the run's row (``performance.timeOrigin +
  performance.now()``) minus the ``ts`` of the event that made it (stamped when it is appended,
  inside the committing transaction, so slightly before the commit: the figure errs high).
  p50 / p99 / max. Target: p99 under 200 ms. Baseline: the same events read in the same page by an
  ``EventSource`` on the raw JSON stream ``/api/v1/events/stream``; ``ratio`` is page / raw at p99.
* ``page_weight``: bytes of the vendored static files (JS + CSS, as served) and, for the runs page
  and the folder page, the HTML plus every asset the browser loaded (decoded sizes). Target:
  vendored assets under 300 KB.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from datamill.pipeline import InputFile, Pipeline, step

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-background-networking"]
TARGET_FOLDER_MS = 300.0
TARGET_LIVE_P99_MS = 200.0
TARGET_ASSETS_KB = 300.0
BATCH = 5000


@step
def touch(item: InputFile) -> bytes:
    """The benchmark's pipeline (its runs are only queued, never run)."""
    return item.read_bytes()


#: what the submitted runs name
bench = Pipeline("bench", [touch])


def say(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


def fill_folder(home: Any, folder: str, n: int) -> float:
    """``n`` items in ``folder`` by direct inserts (one version each, all pointing at one blob); seconds."""
    from sqlalchemy import insert, select

    from datamill.db.models import Item, Version
    from datamill.store import garbage

    store, admin = home.store, home.admin
    store.create_folder(admin, folder, exist_ok=True)
    blob = home.blobs.put(b"web benchmark\n")
    now = time.time()
    started = time.perf_counter()
    with home.db.write() as conn:
        fid = store.get_folder(admin, folder).id
        garbage.hold_blobs(conn, home.blobs, [blob])
        for start in range(0, n, BATCH):
            names = [f"item-{i:07d}.csv" for i in range(start, min(n, start + BATCH))]
            rows = [
                {"folder_id": fid, "name": nm, "meta": {}, "current_version": 1, "created_at": now, "updated_at": now}
                for nm in names
            ]
            conn.execute(insert(Item), rows)
            ids = conn.execute(select(Item.id).where(Item.folder_id == fid, Item.name.in_(names))).scalars().all()
            conn.execute(
                insert(Version),
                [
                    {
                        "item_id": i,
                        "number": 1,
                        "digest": blob.digest,
                        "size": blob.size,
                        "content_type": "text/csv",
                        "created_by": admin.id,
                        "created_via": "benchmark",
                        "created_at": now,
                    }
                    for i in ids
                ],
            )
    return time.perf_counter() - started


def ttfb_ms(url: str, token: str) -> float:
    """Milliseconds until the response's headers arrive (the body is then read and dropped)."""
    import httpx

    with httpx.Client(cookies={"datamill_token": token}) as client:
        started = time.perf_counter()
        with client.stream("GET", url) as answer:
            first = time.perf_counter()
            assert answer.status_code == 200, answer.status_code
            for _ in answer.iter_bytes():
                pass
    return (first - started) * 1000


def page_times(page: Any, url: str, token: str, rounds: int) -> dict[str, Any]:
    """Medians of TTFB (httpx) and of the browser's DOMContentLoaded and load, in ms."""
    ttfb, dcl, load = [], [], []
    for _ in range(rounds):
        ttfb.append(ttfb_ms(url, token))
        page.goto(url, wait_until="load")
        nav = page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])")
        entry = json.loads(nav)
        dcl.append(entry["domContentLoadedEventEnd"] - entry["startTime"])
        load.append(entry["loadEventEnd"] - entry["startTime"])
    return {
        "ttfb_ms": round(statistics.median(ttfb), 1),
        "dom_content_loaded_ms": round(statistics.median(dcl), 1),
        "load_ms": round(statistics.median(load), 1),
        "rounds": rounds,
    }


OBSERVE = """() => {
  window.__seen = {}; window.__raw = {};
  const now = () => performance.timeOrigin + performance.now();
  new MutationObserver(records => {
    const t = now();
    for (const r of records) for (const n of r.addedNodes) {
      if (n.nodeType === 1 && n.id && n.id.startsWith('run-') && !(n.id in window.__seen)) {
        window.__seen[n.id] = {t: t, ts: parseFloat(n.dataset.eventTs) * 1000};
      }
    }
  }).observe(document.getElementById('runs-body'), {childList: true});
  const raw = new EventSource('/api/v1/events/stream?kinds=run.queued&since=' + %d);
  raw.addEventListener('run.queued', ev => {
    const t = now(); const e = JSON.parse(ev.data);
    if (!(e.run_id in window.__raw)) window.__raw[e.run_id] = {t: t, ts: e.ts * 1000};
  });
}"""


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p99 and max of ``values`` (ms)."""
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered), 1), "p99_ms": round(p99, 1), "max_ms": round(ordered[-1], 1)}


def live_updates(page: Any, site: str, home: Any, events: int, gap: float) -> dict[str, Any]:
    """Runs submitted while the runs page is open: commit -> row in the page, and -> raw SSE event."""
    from datamill.service import Service

    service = Service(home)
    service.create_folder("bench-in", exist_ok=True)
    service.create_folder("bench-out", exist_ok=True)
    service.put("bench-in", "one.txt", b"1")
    ref = f"{Path(__file__).resolve()}:bench"
    page.goto(f"{site}/runs", wait_until="load")
    page.evaluate(OBSERVE % home.events.latest())
    page.wait_for_function("document.querySelector('[data-live]') !== null")
    time.sleep(1.0)  # both streams connected
    ids = []
    for _ in range(events):
        ids.append(service.submit_run(ref, "bench-in", dest="bench-out", reason="benchmark"))
        time.sleep(gap)
    page.wait_for_function(f"Object.keys(window.__seen).length >= {events}", timeout=60_000)
    page.wait_for_function(f"Object.keys(window.__raw).length >= {events}", timeout=60_000)
    seen = page.evaluate("window.__seen")
    raw = page.evaluate("window.__raw")
    on_page = [seen[f"run-{i}"]["t"] - seen[f"run-{i}"]["ts"] for i in ids]
    on_stream = [raw[str(i)]["t"] - raw[str(i)]["ts"] for i in ids]
    page_p, raw_p = percentiles(on_page), percentiles(on_stream)
    return {
        "events": events,
        "gap_ms": gap * 1000,
        "runs_page": page_p,
        "baseline_raw_event_stream": raw_p,
        "ratio_p99": round(page_p["p99_ms"] / max(raw_p["p99_ms"], 0.1), 2),
        "target_p99_ms": TARGET_LIVE_P99_MS,
        "ok": page_p["p99_ms"] < TARGET_LIVE_P99_MS,
    }


def weight(page: Any, url: str) -> dict[str, int]:
    """Bytes of a page's HTML and of every asset it loaded (decoded)."""
    page.goto(url, wait_until="load")
    sizes = page.evaluate(
        "() => [performance.getEntriesByType('navigation')[0].decodedBodySize,"
        " performance.getEntriesByType('resource').filter(r => !r.name.includes('/live')"
        " && !r.name.includes('/api/')).reduce((a, r) => a + r.decodedBodySize, 0)]"
    )
    return {"html_bytes": int(sizes[0]), "assets_bytes": int(sizes[1]), "total_bytes": int(sizes[0] + sizes[1])}


def page_weight(page: Any, site: str, folder: str) -> dict[str, Any]:
    """Vendored static bytes, and the weight of two pages as loaded."""
    from datamill.web.app import STATIC

    static = {p.name: p.stat().st_size for p in sorted(STATIC.iterdir()) if p.suffix in (".js", ".css")}
    total = sum(static.values())
    return {
        "vendored_files": static,
        "vendored_bytes": total,
        "runs_page": weight(page, f"{site}/runs"),
        "folder_page": weight(page, f"{site}/folders/{folder}"),
        "target_kb": TARGET_ASSETS_KB,
        "ratio_to_target": round(total / 1024 / TARGET_ASSETS_KB, 2),
        "ok": total / 1024 < TARGET_ASSETS_KB,
    }


def main() -> None:
    """Run the three measurements and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000, help="items in the folder page's folder")
    parser.add_argument("--events", type=int, default=100, help="runs submitted for the live-update latency")
    parser.add_argument("--gap-ms", type=float, default=150.0, help="pause between two submitted runs")
    parser.add_argument("--rounds", type=int, default=5, help="page loads per timing")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from datamill.api.server import start_background_server
    from datamill.config import load_settings
    from datamill.home import Home

    out: dict[str, Any] = {"benchmark": "web", "python": platform.python_version(), "database": "sqlite"}
    with tempfile.TemporaryDirectory(prefix="datamill-web-bench-") as root:
        home = Home(load_settings(environ={}, home=str(Path(root) / "home"), database_url="", demo=False))
        say(f"filling a folder with {args.items} items ...")
        out["setup_seconds"] = round(fill_folder(home, "big", args.items), 1)
        token = home.admin_token()
        assert token
        server = start_background_server(home, port=0)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.goto(f"{server.url}/?token={token}", wait_until="load")
                say("folder page ...")
                page_times(page, f"{server.url}/folders/big", token, 1)  # warm-up
                folder = page_times(page, f"{server.url}/folders/big", token, args.rounds)
                base = page_times(page, f"{server.url}/folders", token, args.rounds)
                out["folder_page"] = {
                    "items": args.items,
                    **folder,
                    "baseline_top_level_page": base,
                    "ratio_load": round(folder["load_ms"] / max(base["load_ms"], 0.1), 2),
                    "target_ms": TARGET_FOLDER_MS,
                    "ok": folder["load_ms"] < TARGET_FOLDER_MS,
                }
                say(f"  {out['folder_page']}")
                say(f"live updates over {args.events} runs ...")
                out["live_update"] = live_updates(page, server.url, home, args.events, args.gap_ms / 1000)
                say(f"  {out['live_update']}")
                out["page_weight"] = page_weight(page, server.url, "big")
                browser.close()
        finally:
            server.stop()
            home.close()
    out["ok"] = all(out[k]["ok"] for k in ("folder_page", "live_update", "page_weight"))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
