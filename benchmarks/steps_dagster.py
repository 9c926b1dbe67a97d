"""Benchmark: a Dagster job as a datamill step against ``execute_in_process`` alone.

Both run the same two-asset job (``dagster_bench/jobs.py``) the same number of times, each run in
a fresh Python subprocess, ``--concurrency`` at a time, with the same run config:

* **bare**: ``python -m dagster_bench.bare SEED OUT`` — import the project, ``execute_in_process``,
  write the two outputs as JSON: the least a worker process can do;
* **step**: ``pipeline.run(items, home=...)`` of a pipeline with one per-item ``dagster_step`` over
  ``--runs`` items: planning, the worker subprocess (``python -m datamill.dagster.runner``), the
  outputs stored as blobs, published as item versions with their provenance, and every task recorded.

Target: the step's wall time at most 1.2 times the bare runs' (``ok``). Prints one JSON object on stdout.

    .venv/bin/python benchmarks/steps_dagster.py [--runs 6] [--concurrency 2]
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TARGET = 1.2


def _bare(runs: int, concurrency: int, tmp: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(HERE)}

    def one(i: int) -> None:
        subprocess.run(
            [sys.executable, "-m", "dagster_bench.bare", str(i + 1), str(tmp / f"bare-{i}")],
            check=True,
            cwd=HERE,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(runs)))
    return time.perf_counter() - started


def _step(runs: int, concurrency: int, tmp: Path, round_: int) -> float:
    import datamill

    pipeline = datamill.Pipeline(
        "bench",
        steps=[
            datamill.dagster_step(
                "dagster_bench.jobs:defs",
                job_name="bench",
                config={"ops": {"numbers": {"config": {"seed": 1}}}},
                base_dir=HERE,
            )
        ],
    )
    # Distinct items, so every task runs (no cache hit); the same job and config as the bare runs.
    items = [(f"item-{round_}-{i}.txt", f"{round_}:{i}".encode()) for i in range(runs)]
    os.environ["DATAMILL_WORKERS"] = str(concurrency)
    started = time.perf_counter()
    result = pipeline.run(items, home=tmp / "home", executor="inline")
    elapsed = time.perf_counter() - started
    result.close()
    return elapsed


def measure(runs: int = 6, concurrency: int = 2, rounds: int = 2) -> dict[str, Any]:
    """Wall time of ``runs`` bare runs and of ``runs`` step tasks, interleaved ``rounds`` times; best of each."""
    tmp = Path(tempfile.mkdtemp(prefix="datamill-bench-dagster-"))
    try:
        bare: list[float] = []
        step: list[float] = []
        for r in range(rounds):
            print(f"round {r + 1}/{rounds}: bare", file=sys.stderr)
            bare.append(_bare(runs, concurrency, tmp))
            print(f"round {r + 1}/{rounds}: step", file=sys.stderr)
            step.append(_step(runs, concurrency, tmp, r))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    b, s = min(bare), min(step)
    ratio = s / b
    return {
        "runs": runs,
        "concurrency": concurrency,
        "bare_execute_in_process_s": round(b, 3),
        "dagster_step_s": round(s, 3),
        "per_run_bare_s": round(b / runs, 3),
        "per_task_step_s": round(s / runs, 3),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET,
        "ok": ratio <= TARGET,
        "all_bare_s": [round(x, 3) for x in bare],
        "all_step_s": [round(x, 3) for x in step],
    }


def main() -> None:
    """Parse the arguments, measure, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    a = parser.parse_args()
    print(json.dumps(measure(a.runs, a.concurrency, a.rounds)))


if __name__ == "__main__":
    main()
