"""A 2-app CLAMS chain over 200 text items: datamill's chain steps against a plain Python loop of httpx posts.

    .venv/bin/python benchmarks/steps_clams.py [--items 200] [--concurrency 8]

Both sides use the same two real clams-python apps (tests/apps/toyapps.py: tokenizer, then token
counter), served over HTTP on 127.0.0.1 in subprocesses, and both build a source MMIF per item and
validate every answer with ``mmif.Mmif``. The loop posts one item at a time (one request in flight
per app); datamill runs the chain as two ``clams_step`` s with ``concurrency=1`` (the same per-app
limit; its two steps overlap, as the loop cannot) and with ``concurrency=N``, publishing every
intermediate MMIF as an item version. Each datamill run uses a fresh home, so nothing is cached.

Prints one JSON object: seconds per side, the ratios, and ``ok`` per target (datamill at the same
concurrency at most 1.2 times the loop; with concurrency, faster than the loop).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
TOYAPPS = ROOT / "tests" / "apps" / "toyapps.py"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_apps() -> tuple[dict[str, str], list[subprocess.Popen[bytes]]]:
    """The tokenizer and the counter on free loopback ports, once both answer ``GET /``."""
    urls: dict[str, str] = {}
    procs: list[subprocess.Popen[bytes]] = []
    for name in ("tokenizer", "counter"):
        port = _free_port()
        procs.append(
            subprocess.Popen(
                [sys.executable, str(TOYAPPS), name, "--port", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "CLAMS_APP_VERSION": "bench"},
            )
        )
        urls[name] = f"http://127.0.0.1:{port}/"
    for url in urls.values():
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"app at {url} did not start")
            time.sleep(0.1)
    return urls, procs


def texts(n: int) -> dict[str, str]:
    """``n`` small text documents."""
    return {f"doc{i:04d}.txt": f"document {i}: " + " ".join(f"word{j}" for j in range(20 + i % 30)) for i in range(n)}


def plain_loop(urls: dict[str, str], docs: dict[str, str], scratch: Path) -> float:
    """Seconds for a loop of httpx posts: source MMIF, tokenizer, counter, each answer validated."""
    from mmif import Mmif

    from datamill.engine.apps import source_mmif

    paths = []
    for name, text in docs.items():
        p = scratch / name
        p.write_text(text)
        paths.append(p)
    started = time.perf_counter()
    with httpx.Client(timeout=60) as http:
        for p in paths:
            body = source_mmif(p, "text/plain")
            for url, params in ((urls["tokenizer"], {"lowercase": "true"}), (urls["counter"], {})):
                r = http.post(url, params=params, content=body, headers={"Content-Type": "application/json"})
                if r.status_code != 200:
                    raise SystemExit(f"{url}: HTTP {r.status_code}: {r.text[:200]}")
                mmif = Mmif(r.text)
                if mmif.get_view_with_error() is not None:
                    raise SystemExit(f"{url}: {mmif.get_last_error()}")
                body = r.text
            (scratch / (p.stem + ".out.mmif")).write_text(body)
    return time.perf_counter() - started


def datamill_chain(urls: dict[str, str], docs: dict[str, str], concurrency: int) -> float:
    """Seconds for datamill to run the 2-app chain over the items (submit to last output published)."""
    from datamill.config import load_settings
    from datamill.engine.engine import Engine
    from datamill.home import Home
    from datamill.pipeline import Pipeline
    from datamill.pipeline.apps import clams_chain, clams_step

    tmp = Path(tempfile.mkdtemp(prefix="dm-bench-clams-"))
    try:
        home = Home(load_settings(environ={}, home=str(tmp / "home"), demo=False))
        try:
            admin = home.admin
            home.store.create_folder(admin, "Raw")
            home.store.create_folder(admin, "Out")
            for name, text in docs.items():
                home.store.put(admin, "Raw", name, text.encode(), "text/plain")
            pipeline = Pipeline(
                "bench",
                clams_chain(
                    [
                        clams_step(
                            "tokenizer", url=urls["tokenizer"], params={"lowercase": True}, concurrency=concurrency
                        ),
                        clams_step("counter", url=urls["counter"], concurrency=concurrency),
                    ]
                ),
            )
            engine = Engine(home)
            inputs = engine.inputs_from_folder(admin, "Raw")
            started = time.perf_counter()
            info = engine.run(admin, pipeline, inputs, dest="Out", executor="inline")
            seconds = time.perf_counter() - started
            if info.status != "succeeded":
                raise SystemExit(f"datamill run ended {info.status}")
            if len(home.store.list_items(admin, "Out")) != 2 * len(docs):
                raise SystemExit("datamill run did not publish every intermediate MMIF")
            return seconds
        finally:
            home.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(items: int = 200, concurrency: int = 8) -> dict[str, Any]:
    """Run the comparison; the figures as a dict (see the module docstring)."""
    urls, procs = start_apps()
    scratch = Path(tempfile.mkdtemp(prefix="dm-bench-loop-"))
    try:
        docs = texts(items)
        # one warm-up pass each, so neither side pays for first-request costs (imports, connections)
        plain_loop(urls, dict(list(docs.items())[:5]), scratch)
        datamill_chain(urls, dict(list(docs.items())[:5]), 1)
        loop_s = plain_loop(urls, docs, scratch)
        same_s = datamill_chain(urls, docs, 1)
        conc_s = datamill_chain(urls, docs, concurrency)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
        shutil.rmtree(scratch, ignore_errors=True)
    same_ratio = same_s / loop_s
    conc_ratio = conc_s / loop_s
    return {
        "benchmark": "steps_clams",
        "items": items,
        "apps": 2,
        "baseline": "a Python loop of httpx posts, one request in flight, each answer validated with mmif",
        "loop_seconds": round(loop_s, 3),
        "datamill_same_concurrency_seconds": round(same_s, 3),
        "datamill_concurrency": concurrency,
        "datamill_with_concurrency_seconds": round(conc_s, 3),
        "ratio_same_concurrency": round(same_ratio, 3),
        "ratio_with_concurrency": round(conc_ratio, 3),
        "targets": {
            "same_concurrency_ratio_le_1_2": {"value": round(same_ratio, 3), "ok": same_ratio <= 1.2},
            "with_concurrency_faster_than_loop": {"value": round(conc_ratio, 3), "ok": conc_ratio < 1.0},
        },
        "ok": same_ratio <= 1.2 and conc_ratio < 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(measure(args.items, args.concurrency), indent=2))


if __name__ == "__main__":
    main()
