"""Idle followers must not slow other requests: ``GET /whoami`` latency with 0 and 2,000 open streams.

    .venv/bin/python benchmarks/followers.py [--followers 1000] [--requests 300]

Prints ONE JSON object on stdout (progress goes to stderr).

A server (``datamill.api.server.serve``, no services) runs in its own process on a fresh SQLite
home; a run whose one task logs a line and then holds (``tests/api/held_pipeline.py``) is executed
by an embedded client in this process, so the task stays running throughout. Then, in one run:

1. ``--requests`` sequential ``GET /api/v1/whoami`` (one keep-alive connection): p50 / p99 in ms;
2. the same with ``--followers`` idle ``GET /events/stream`` connections open (each has read its
   first bytes, so the server holds it);
3. the same with, in addition, ``--followers`` ``GET /tasks/{id}/logs?follow=true`` of the held task.

``ratio`` is p50 (and p99) with followers over p50 (p99) without; ``ok`` is true when the p50
ratios are at most 1.5 ("not measurably slower" on a busy 2-core machine). The server process's
thread count is reported for each phase: it must not grow with the number of followers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from datamill.client.local import LocalClient
from datamill.config import load_settings
from datamill.home import Home

ROOT = Path(__file__).resolve().parents[1]
HELD_REF = f"{ROOT / 'tests' / 'api' / 'held_pipeline.py'}:pipeline"
OK_RATIO = 1.5

SERVE = (
    "import sys\n"
    "from datamill.api.server import serve\n"
    "from datamill.config import load_settings\n"
    "from datamill.home import Home\n"
    "home = Home(load_settings(environ={}, home=sys.argv[1], demo=False, log_level='warning'))\n"
    "serve(home, host='127.0.0.1', port=0, on_ready=lambda url: print(url, flush=True), services=False)\n"
)


def say(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def threads_of(pid: int) -> int:
    """The number of threads of a process (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure(url: str, token: str, n: int) -> dict[str, float]:
    """p50 / p99 / max in ms of ``n`` sequential whoami requests on one connection."""
    times = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
        for _ in range(10):  # warm the connection and the server's pool up
            c.get("/api/v1/whoami").raise_for_status()
        for _ in range(n):
            t0 = time.perf_counter()
            c.get("/api/v1/whoami").raise_for_status()
            times.append((time.perf_counter() - t0) * 1000)
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(percentile(times, 0.99), 2),
        "max_ms": round(max(times), 2),
    }


def open_follower(url: str, token: str, path: str, needle: bytes) -> socket.socket:
    """A raw connection that sent ``GET path`` and read until ``needle``: the server now holds it."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=120)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    data = b""
    while needle not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"{path}: the server closed the stream: {data[:200]!r}")
        data += chunk
    if b" 200 " not in data.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"{path}: {data[:200]!r}")
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--followers", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="dm-followers-"))
    home = Home(load_settings(environ={}, home=str(tmp / "home"), demo=False))
    local = LocalClient(home)
    token = home.admin_token()
    if token is None:
        raise SystemExit("the new home saved no admin token: nothing to call the API with")
    local.create_folder("Raw")
    local.put("Raw", "a.txt", b"1\n")
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(home.path)], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    gate = tmp / "gate"
    sockets: list[socket.socket] = []
    runner: threading.Thread | None = None
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        say("server at", url, "pid", server.pid)
        started: list[int] = []
        ready = threading.Event()

        def on_start(run_id: int) -> None:
            started.append(run_id)
            ready.set()

        runner = threading.Thread(
            target=local.run,
            args=(HELD_REF, "Raw"),
            kwargs={"params": {"hold.gate": str(gate)}, "executor": "inline", "on_start": on_start},
            daemon=True,
        )
        runner.start()
        ready.wait(120)
        task_id = local.tasks(started[0])[0]["id"]
        # The task is running once its first line can be read.
        open_follower(url, token, f"/api/v1/tasks/{task_id}/logs?follow=true", b"holding").close()

        phases: dict[str, Any] = {}
        say("measuring with no follower")
        phases["none"] = {**measure(url, token, args.requests), "server_threads": threads_of(server.pid)}

        say(f"opening {args.followers} SSE followers")
        latest = home.events.latest()
        for _ in range(args.followers):
            sockets.append(open_follower(url, token, f"/api/v1/events/stream?since={latest}", b": connected"))
        phases["sse"] = {**measure(url, token, args.requests), "server_threads": threads_of(server.pid)}

        say(f"opening {args.followers} log followers")
        for _ in range(args.followers):
            sockets.append(open_follower(url, token, f"/api/v1/tasks/{task_id}/logs?follow=true", b"holding"))
        phases["sse_and_logs"] = {**measure(url, token, args.requests), "server_threads": threads_of(server.pid)}

        base = phases["none"]
        ratios = {
            name: {
                "p50": round(phases[name]["p50_ms"] / base["p50_ms"], 2),
                "p99": round(phases[name]["p99_ms"] / base["p99_ms"], 2),
            }
            for name in ("sse", "sse_and_logs")
        }
        print(
            json.dumps(
                {
                    "benchmark": "followers",
                    "followers": args.followers,
                    "requests": args.requests,
                    "whoami": phases,
                    "ratio": ratios,
                    "ok": all(r["p50"] <= OK_RATIO for r in ratios.values()),
                    "target": f"p50 ratio <= {OK_RATIO}",
                    "cpus": os.cpu_count(),
                },
                indent=2,
            )
        )
    finally:
        for sock in sockets:
            sock.close()
        gate.touch()
        if runner is not None:
            runner.join(60)
        server.terminate()
        server.wait(60)
        home.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
