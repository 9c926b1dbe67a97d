"""Per-task overhead of a container step against ``podman run --rm`` of the same image in a loop.

``measure()`` runs a no-op busybox command (``true``) N times each way with the same concurrency
(the scheduler runs as many containers at once as the machine has cores; the loop uses as many
threads): as a container step over N items (``Pipeline.run`` with a throw-away home: planning,
the digest look-up, records, logs included), and as plain
``podman run --rm --pull=never --network=none IMAGE true`` in a loop. Target: the
step's time per task at most 1.2x the loop's. Needs podman and the offline ``localhost/busybox:ci``
image (scripts/services.sh: podman_setup, busybox_image).

    python benchmarks/steps_container.py [N]     # prints one JSON object
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "localhost/busybox:ci"
TARGET = 1.2


def _setup() -> None:
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "scripts" / "containers.conf"))
    subprocess.run(["bash", "-c", f". '{ROOT}/scripts/services.sh' && busybox_image {IMAGE}"], check=True)


def _one(_: int) -> None:
    subprocess.run(["podman", "run", "--rm", "--pull=never", "--network=none", IMAGE, "true"], check=True)


def _loop(n: int, workers: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(_one, range(n)))
    return time.perf_counter() - started


def _step(n: int) -> float:
    import datamill

    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(n):
            path = Path(tmp) / f"item{i:04d}.txt"
            path.write_text(f"{i}\n")
            files.append(path)
        pipeline = datamill.Pipeline("noop", [datamill.container_step("noop", IMAGE, ["true"])])
        from datamill.engine.quick import run_pipeline  # noqa: F401  (imported before timing)

        started = time.perf_counter()
        result = pipeline.run(files, home=Path(tmp) / "home", executor="inline")
        took = time.perf_counter() - started
        assert result.status == "succeeded", result.status
    return took


def measure(n: int = 20) -> dict[str, Any]:
    """Both timings, per task, and whether the step stays within the target ratio."""
    _setup()
    workers = os.cpu_count() or 1
    _loop(1, 1)  # warm: podman's storage and the image's layers in the page cache
    loop = _loop(n, workers)
    step = _step(n)
    ratio = step / loop
    return {
        "benchmark": "steps_container",
        "items": n,
        "podman_run_loop_s_per_task": round(loop / n, 4),
        "container_step_s_per_task": round(step / n, 4),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET,
        "concurrency": workers,
        "ok": ratio <= TARGET,
    }


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 20)))
