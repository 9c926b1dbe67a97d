"""Store throughput: big-file upload/download, many small files, listing a big folder.

    .venv/bin/python benchmarks/store.py [--size-mb 1024] [--small 10000] [--list 100000] [--home DIR]

Prints ONE JSON object on stdout (progress goes to stderr). Measured, each against its target:

* upload and download of one ``--size-mb`` file through the embedded client (``LocalClient.put``
  from a file on disk, ``Client.download`` to a file) and, when ``datamill.api.server`` is there,
  through the REST API (``RemoteClient`` against ``start_background_server`` in this process).
  Each is compared with a plain copy on the same disk (``shutil.copyfile`` + fsync); the download
  is timed up to an fsync of the file it wrote, so both sides end with the bytes on disk.
  Target: at least 0.8 of the copy's speed embedded, 0.5 over the API. Each round also reports
  the 1-minute load average and the process's CPU seconds per transfer. ``shutil.copyfile`` copies
  inside the kernel (``copy_file_range``), so a second baseline is reported too: a plain Python read/write loop
  (1 MiB, unbuffered, + fsync), the least any code moving the bytes through Python pays, and the
  same loop hashing each chunk with BLAKE3 (how datamill moved bytes before kernel copies).
* ``--small`` files of 1 KB, each with distinct bytes, put one by one. Target: 1,000 items/s embedded.
* listing a folder of ``--list`` items with ``client.list_items``. Target: under 1,000 ms. And in
  keyset pages (``client.iter_item_pages``, 1,000 items a page, as ``datamill ls`` reads them): the
  time to the first page and to the last. Targets over the API (issue 13): first page < 50 ms, all
  pages < 1,500 ms. ``--only-listing`` measures the listing alone (no big or small files).
  The items are made with direct inserts through SQLAlchemy (``items`` and ``versions`` rows in
  batches of 5,000, all pointing at one stored blob), since the store has no batch API and one
  ``put`` per item would take minutes; the listing itself goes through the client.
* the process's peak RSS growth during the big upload and download (sampled every 2 ms from
  /proc/self/statm). Target: under 100 MB.

The page cache is not dropped: the source file and the blob are read warm, by the copy as well.
``--server-process`` serves the API from ``datamill up`` in a process of its own, as users run it
(client and server then have a GIL each; the CPU seconds reported are the client's alone); by
default it runs in a thread of this process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from datamill.client import LocalClient
from datamill.client.base import Client
from datamill.config import load_settings
from datamill.db.models import Item, Version
from datamill.home import Home
from datamill.store import garbage
from datamill.store.blobs import hasher

MB = 1_000_000
MiB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
TARGET_RATIO = 0.8
#: Over the REST API (client and server in this process, HTTP framing in Python on both sides).
TARGET_RATIO_API = 0.5
TARGET_SMALL_PER_S = 1000
TARGET_LIST_MS = 1000
TARGET_RSS_MB = 100
BATCH = 5000


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class RssPeak:
    """Samples this process's RSS in a thread; ``growth_mb`` is the peak above the starting RSS."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth_mb(self) -> float:
        return round((self.peak - self.start) / MB, 1)


@contextmanager
def timer() -> Iterator[Callable[[], float]]:
    t0 = time.perf_counter()
    elapsed: list[float] = []
    yield lambda: elapsed[0] if elapsed else time.perf_counter() - t0
    elapsed.append(time.perf_counter() - t0)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_source(path: Path, size: int) -> None:
    """``size`` random bytes (incompressible, and no two runs alike), fsynced."""
    chunk = 16 * MiB
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())


def copy_seconds(src: Path, dst: Path) -> float:
    """A plain copy on the same disk, ending with its bytes on disk."""
    with timer() as t:
        shutil.copyfile(src, dst)
        fsync_file(dst)
    dst.unlink()
    return t()


def loop_seconds(src: Path, dst: Path) -> float:
    """A copy through user space, 1 MiB at a time, as any Python code moving bytes must do it."""
    with timer() as t, open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        while chunk := fin.read(MiB):
            fout.write(chunk)
        os.fsync(fout.fileno())
    dst.unlink()
    return t()


def hashed_loop_seconds(src: Path, dst: Path) -> float:
    """The user-space loop datamill used before kernel copies: read 1 MiB, hash it (BLAKE3), write it; + fsync."""
    h = hasher()
    with timer() as t, open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        while chunk := fin.read(MiB):
            h.update(chunk)
            fout.write(chunk)
        os.fsync(fout.fileno())
    dst.unlink()
    return t()


def rate(size: int, seconds: float) -> float:
    return round(size / MB / seconds, 1)


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far; 0 without one."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def big_file(
    client: Client,
    src: Path,
    work: Path,
    folder: str,
    rounds: int,
    target: float = TARGET_RATIO,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Upload ``src`` and download it again, ``rounds`` times, each right after a plain copy.

    The disk of a shared machine is noisy (the same copy can take twice as long a minute later),
    so copies and transfers are interleaved and the medians reported.
    """
    size = src.stat().st_size
    client.create_folder(folder, exist_ok=True)
    up: list[float] = []
    down: list[float] = []
    copy_up: list[float] = []
    copy_down: list[float] = []
    loop: list[float] = []
    hashed: list[float] = []
    rss = 0.0
    cpu_up: list[float] = []
    cpu_down: list[float] = []
    server_up: list[float] = []
    server_down: list[float] = []
    load: list[float] = []
    dest = work / "downloaded.bin"
    for r in range(rounds):
        copy_up.append(copy_seconds(src, work / "copy.bin"))
        load.append(os.getloadavg()[0])
        c0, s0 = time.process_time(), process_cpu(server_pid)
        with RssPeak() as peak, timer() as t, open(src, "rb") as f:
            info = client.put(folder, "big.bin", f, size=size)
        up.append(t())
        cpu_up.append(time.process_time() - c0)
        server_up.append(process_cpu(server_pid) - s0)
        rss = max(rss, peak.growth_mb)
        assert info.size == size, info

        loop.append(loop_seconds(src, work / "loop.bin"))
        hashed.append(hashed_loop_seconds(src, work / "hashed.bin"))
        copy_down.append(copy_seconds(src, work / "copy.bin"))
        c0, s0 = time.process_time(), process_cpu(server_pid)
        with RssPeak() as peak, timer() as t:
            got = client.download(f"{folder}/big.bin", dest)
            fsync_file(dest)
        down.append(t())
        cpu_down.append(time.process_time() - c0)
        server_down.append(process_cpu(server_pid) - s0)
        rss = max(rss, peak.growth_mb)
        assert got.digest == info.digest and dest.stat().st_size == size
        dest.unlink()
        say(
            f"  round {r + 1}: upload {rate(size, up[-1])} MB/s (copy {rate(size, copy_up[-1])}), "
            f"download {rate(size, down[-1])} MB/s (copy {rate(size, copy_down[-1])}), "
            f"python loop {rate(size, loop[-1])} MB/s (hashed {rate(size, hashed[-1])}), RSS +{rss} MB"
        )

    def summary(times: list[float], copies: list[float], cpu: list[float], server: list[float]) -> dict[str, Any]:
        ratios = [c / t for t, c in zip(times, copies, strict=True)]
        to_loop = [c / t for t, c in zip(times, loop, strict=True)]
        to_hashed = [c / t for t, c in zip(times, hashed, strict=True)]
        return {
            "MB_per_s": rate(size, statistics.median(times)),
            "copy_MB_per_s": rate(size, statistics.median(copies)),
            "ratio": round(statistics.median(ratios), 2),
            "ratio_per_round": [round(x, 2) for x in ratios],
            "seconds_per_round": [round(x, 2) for x in times],
            "python_loop_MB_per_s": rate(size, statistics.median(loop)),
            "ratio_to_python_loop": round(statistics.median(to_loop), 2),
            "hashed_loop_MB_per_s": rate(size, statistics.median(hashed)),
            "ratio_to_hashed_loop": round(statistics.median(to_hashed), 2),
            # CPU of this whole process (client, and the server when over the API): on a loaded
            # machine a transfer waits for a core, so wall time follows CPU time, not the disk.
            "cpu_seconds_per_round": [round(x, 2) for x in cpu],
            # The server's own CPU when it runs in a process of its own (--server-process).
            **({"server_cpu_seconds_per_round": [round(x, 2) for x in server]} if server_pid else {}),
        }

    upload = summary(up, copy_up, cpu_up, server_up)
    download = summary(down, copy_down, cpu_down, server_down)
    return {
        "size_mb": round(size / MB, 1),
        "rounds": rounds,
        "upload": upload,
        "download": download,
        "peak_rss_growth_mb": rss,
        "load_average_1m": [round(x, 1) for x in load],
        "target_ratio": target,
        "target_rss_growth_mb": TARGET_RSS_MB,
        "ok": upload["ratio"] >= target and download["ratio"] >= target and rss < TARGET_RSS_MB,
    }


def small_files(client: Client, n: int, folder: str) -> dict[str, Any]:
    """``n`` files of 1 KB each, all different, as `datamill put DIR` sends them (``put_path``,
    which batches small files); plus a tenth of that put one call each, for comparison."""
    src = Path(tempfile.mkdtemp(prefix="bench-small-")) / "small"
    src.mkdir()
    for i in range(n):
        (src / f"f{i:07d}.bin").write_bytes(f"{i:08d}".encode() * 128)
    client.create_folder(folder, exist_ok=True)
    with timer() as t:
        client.put_path(src, folder)
    per_s = round(n / t(), 1)
    one = max(1, n // 10)
    with timer() as t1:
        for i in range(one):
            client.put(folder, f"single-{i:07d}.bin", f"s{i:07d}".encode() * 128)
    shutil.rmtree(src.parent, ignore_errors=True)
    say(f"  {n} small files: {per_s}/s as a directory; {round(one / t1(), 1)}/s one put each")
    return {
        "count": n,
        "bytes_each": 1024,
        "seconds": round(t(), 2),
        "items_per_s": per_s,
        "how": "put_path of a directory (what `datamill put DIR` does)",
        "one_put_each_items_per_s": round(one / t1(), 1),
    }


def fill_folder(home: Home, folder: str, n: int) -> dict[str, Any]:
    """``n`` items in ``folder`` by direct inserts (one version each, all pointing at one blob)."""
    store, admin = home.store, home.admin
    store.create_folder(admin, folder, exist_ok=True)
    blob = home.blobs.put(b"listing benchmark\n")
    now = time.time()
    with timer() as t, home.db.write() as conn:
        fid = store.get_folder(admin, folder).id
        garbage.hold_blobs(conn, home.blobs, [blob])
        for start in range(0, n, BATCH):
            names = [f"item-{i:07d}.csv" for i in range(start, min(n, start + BATCH))]
            conn.execute(
                insert(Item),
                [
                    {
                        "folder_id": fid,
                        "name": name,
                        "meta": {"batch": start // BATCH},
                        "current_version": 1,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for name in names
                ],
            )
            ids = conn.execute(select(Item.id).where(Item.folder_id == fid, Item.name.in_(names))).scalars().all()
            conn.execute(
                insert(Version),
                [
                    {
                        "item_id": item_id,
                        "number": 1,
                        "digest": blob.digest,
                        "size": blob.size,
                        "content_type": "text/csv",
                        "created_by": admin.id,
                        "created_via": "benchmark",
                        "created_at": now,
                    }
                    for item_id in ids
                ],
            )
    say(f"  filled {folder!r} with {n} items in {t():.1f} s")
    return {"items": n, "seconds_to_create": round(t(), 1)}


TARGET_FIRST_PAGE_MS = 50.0
TARGET_ALL_PAGES_MS = 1500.0


def listing(client: Client, folder: str, n: int, runs: int = 3, paged_targets: bool = False) -> dict[str, Any]:
    times = []
    for _ in range(runs):
        with timer() as t:
            items = client.list_items(folder)
        assert len(items) == n, len(items)
        times.append(t() * 1000)
    say(f"  list {n} items: {[round(x) for x in times]} ms")
    out: dict[str, Any] = {"items": n, "ms_first": round(times[0], 1), "ms_best": round(min(times), 1), "runs": runs}
    if hasattr(client, "iter_item_pages"):  # absent before keyset pages: the same script measures older code
        out["paged"] = paged_listing(client, folder, n, runs, False)
        # as `datamill ls` reads: 1,000 items first, then 10,000 a page
        out["paged_as_ls"] = paged_listing(client, folder, n, runs, paged_targets, then=10_000)
    return out


def paged_listing(client: Client, folder: str, n: int, runs: int, targets: bool, then: int = 1000) -> dict[str, Any]:
    """Time to the first page and to the last of ``client.iter_item_pages`` (1,000 items first, then ``then``)."""
    first: list[float] = []
    whole: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        count = 0
        for i, page in enumerate(client.iter_item_pages(folder, limit=1000, then=then)):
            if i == 0:
                first.append((time.perf_counter() - start) * 1000)
            count += len(page)
        whole.append((time.perf_counter() - start) * 1000)
        assert count == n, count
    say(f"  pages of 1000 then {then}: first {[round(x, 1) for x in first]} ms, all {[round(x) for x in whole]} ms")
    out: dict[str, Any] = {
        "page_sizes": [1000, then],
        "first_page_ms_median": round(statistics.median(first), 1),
        "first_page_ms_best": round(min(first), 1),
        "all_pages_ms_median": round(statistics.median(whole), 1),
        "all_pages_ms_best": round(min(whole), 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if targets:
        out["target_first_page_ms"] = TARGET_FIRST_PAGE_MS
        out["target_all_pages_ms"] = TARGET_ALL_PAGES_MS
        out["ok"] = (
            out["first_page_ms_median"] < TARGET_FIRST_PAGE_MS and out["all_pages_ms_median"] < TARGET_ALL_PAGES_MS
        )
    return out


def try_api(home: Home) -> tuple[Any, Client | None, str | None]:
    """``(server, client, None)`` if the REST API can be served here, else ``(None, None, reason)``."""
    try:
        from datamill.api.server import start_background_server
        from datamill.client.remote import RemoteClient
    except ImportError as exc:
        return None, None, f"the REST API is not there yet: {exc}"
    try:
        server = start_background_server(home, port=0)
    except Exception as exc:
        return None, None, f"the API server did not start: {exc!r}"
    token = home.admin_token()
    return server, RemoteClient(server.url, token, timeout=600), None


_LOGIN_URL = re.compile(r"(http://127\.0\.0\.1:\d+)/\?token=(dm_[\w-]+)")


def server_process(home_dir: Path) -> tuple[subprocess.Popen[str], Client | None, str | None]:
    """``datamill up`` on the home in a process of its own (as it runs for users) and a client on it."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DATAMILL_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "datamill.cli", "--home", str(home_dir), "up", "--port", "0", "--no-demo"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
    )
    assert proc.stderr is not None
    lines = []
    while line := proc.stderr.readline():
        lines.append(line)
        if match := _LOGIN_URL.search(line):
            # what it writes later must not fill the pipe and block it
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            from datamill.client.remote import RemoteClient

            return proc, RemoteClient(match.group(1), match.group(2), timeout=600), None
    proc.wait()
    return proc, None, "datamill up did not start: " + "".join(lines)[-500:]


def transfers(
    args: argparse.Namespace,
    result: dict[str, Any],
    embedded: Client,
    api: Client | None,
    work: Path,
    server_pid: int | None = None,
) -> None:
    """The big file and the small files, embedded and (if ``api``) over the REST API."""
    src = work / "source.bin"
    say(f"writing a {args.size_mb} MiB source file")
    make_source(src, args.size_mb * MiB)
    say("embedded client")
    result["embedded"]["big_file"] = big_file(embedded, src, work, "bench-big", args.rounds)
    if api is not None:
        say("REST API")
        result["api"]["big_file"] = big_file(
            api, src, work, "bench-big-api", args.rounds, TARGET_RATIO_API, server_pid=server_pid
        )
    src.unlink()
    if args.only_big:
        return
    result["embedded"]["small_files"] = small_files(embedded, args.small, "bench-small")
    small = result["embedded"]["small_files"]
    small["target_items_per_s"] = TARGET_SMALL_PER_S
    small["ok"] = small["items_per_s"] >= TARGET_SMALL_PER_S
    if api is not None:
        result["api"]["small_files"] = small_files(api, args.api_small, "bench-small-api")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the big file in MiB (default 1024)")
    parser.add_argument("--small", type=int, default=10000, help="how many 1 KB files to put (default 10000)")
    parser.add_argument("--list", type=int, default=100000, help="items in the listed folder (default 100000)")
    parser.add_argument("--home", help="datamill home to use (default: a temporary directory, removed afterwards)")
    parser.add_argument("--database-url", default="", help="database (default: SQLite in the home)")
    parser.add_argument("--rounds", type=int, default=3, help="big-file rounds; medians are reported (default 3)")
    parser.add_argument(
        "--api-small", type=int, default=1000, help="how many 1 KB files to put through the API (default 1000)"
    )
    parser.add_argument("--no-api", action="store_true", help="skip the REST API measurements")
    parser.add_argument("--only-listing", action="store_true", help="measure the listing alone")
    parser.add_argument(
        "--only-big", action="store_true", help="measure the big-file transfers alone (no small files, no listing)"
    )
    parser.add_argument(
        "--server-process",
        action="store_true",
        help="serve the REST API from `datamill up` in a process of its own (default: a thread of this one)",
    )
    args = parser.parse_args(argv)

    temp = None if args.home else tempfile.mkdtemp(prefix="datamill-bench.")
    root = Path(args.home or temp or ".").resolve()
    work = root / "work"
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "store",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "home": str(root / "home"),
    }
    home = Home(load_settings(environ={}, home=str(root / "home"), database_url=args.database_url, demo=False))
    result["database"] = "postgresql" if not home.db.is_sqlite else "sqlite"
    server = api = proc = None
    try:
        embedded = LocalClient(home)
        reason: str | None
        if args.no_api:
            reason = "skipped (--no-api)"
        elif args.server_process:
            proc, api, reason = server_process(root / "home")
        else:
            server, api, reason = try_api(home)
        # In its own process the server's CPU is not in this process's figures (client only; the
        # server's is reported apart, from /proc).
        result["api_server"] = "process" if args.server_process else "thread"
        result["embedded"] = {}
        result["api"] = {} if api is not None else None
        if api is None:
            result["api_reason"] = reason
            say(f"REST API: {reason}")
        if not args.only_listing:
            transfers(args, result, embedded, api, work, server_pid=proc.pid if proc is not None else None)
        if not args.only_big:
            say("listing")
            fill = fill_folder(home, "bench-list", args.list)
            result["embedded"]["list_items"] = {**listing(embedded, "bench-list", args.list), "created_with": fill}
            lst = result["embedded"]["list_items"]
            lst["target_ms"] = TARGET_LIST_MS
            lst["ok"] = lst["ms_first"] < TARGET_LIST_MS
            if api is not None:
                result["api"]["list_items"] = listing(api, "bench-list", args.list, runs=3, paged_targets=True)
        if not args.only_listing:
            result["peak_rss_growth_mb_big_file"] = {
                "embedded": result["embedded"]["big_file"]["peak_rss_growth_mb"],
                "api": api and result["api"]["big_file"]["peak_rss_growth_mb"],
                "target": TARGET_RSS_MB,
            }
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]
        result["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB, 1)
    finally:
        if api is not None:
            api.close()
        if server is not None:
            server.stop()
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        home.close()
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
