"""Start-up cost of the command line: CPU time of ``datamill --help`` and of a remote ``datamill ls``.

    .venv/bin/python benchmarks/startup.py [--rounds 15]

Prints ONE JSON object on stdout (progress goes to stderr).

Each target is run as a child process (the ``datamill`` script next to this interpreter) and timed
by the CPU it used, user + system, from ``os.wait4``: wall time on a shared machine measures the
neighbours. Bytecode is cached by a first, unmeasured run of each, in a directory of its own
(``PYTHONPYCACHEPREFIX``; ``PYTHONDONTWRITEBYTECODE`` is dropped for the children), so that the figures
do not depend on whether the environment happens to hold ``__pycache__`` directories. The targets:

* ``help``: ``datamill --help``;
* ``remote_ls``: ``datamill --url URL --token TOKEN ls bench`` against a real server (``datamill up``
  on a throw-away home, started here as a subprocess) with a few items and a subfolder in ``bench``;
* ``baseline``: ``python -c pass``, the interpreter's own start.

Per target: the median and the minimum over ``--rounds`` runs (in ms), the median's ratio to the
baseline's median, and ``ok`` when the median is within the target (200 ms of CPU).

To compare with another checkout, put its ``src`` first on the path: the children inherit it, e.g.
``git archive HEAD~1 src | tar -x -C /tmp/old && PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/startup.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_MS = 200.0


def cpu_ms(argv: list[str], env: dict[str, str]) -> float:
    """Run ``argv`` to completion; the CPU (user + system) the child used, in ms. Fails on a non-zero exit."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        # os.wait4 reaps the child itself and returns its own resource usage (and nothing else's).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            out.seek(0)
            raise SystemExit(f"{argv} exited {proc.returncode}:\n{out.read().decode(errors='replace')}")
    return (usage.ru_utime + usage.ru_stime) * 1000


def start_server(datamill: list[str], home: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str, str]:
    """``datamill up`` on ``home`` at a free port; its process, URL and admin token."""
    proc = subprocess.Popen(
        [*datamill, "--home", str(home), "up", "--port", "0", "--no-demo"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "COLUMNS": "200"},
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        m = re.search(r"(http://127\.0\.0\.1:\d+)/\?token=(dm_[\w-]+)", line)
        if m:
            return proc, m.group(1), m.group(2)
    proc.wait()
    raise SystemExit("datamill up did not start:\n" + "".join(seen))


def stop_server(proc: subprocess.Popen[str]) -> None:
    """Ctrl-C the server and wait for it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measured_source() -> str | None:
    """Where the measured ``datamill`` package lives (the children see the same path)."""
    spec = importlib.util.find_spec("datamill")
    return str(Path(spec.origin).parent) if spec and spec.origin else None


def summary(samples: list[float], baseline: float | None) -> dict[str, Any]:
    """Median, minimum, ratio to the baseline and whether the target is met."""
    median = statistics.median(samples)
    out: dict[str, Any] = {"median_ms": round(median, 1), "min_ms": round(min(samples), 1), "runs": len(samples)}
    if baseline is not None:
        out["ratio_to_baseline"] = round(median / baseline, 1)
        out["target_ms"] = TARGET_MS
        out["ok"] = median <= TARGET_MS
    return out


def main() -> None:
    """Measure and print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="measured runs per target")
    args = parser.parse_args()

    script = Path(sys.executable).with_name("datamill")
    datamill = [str(script)] if script.exists() else [sys.executable, "-m", "datamill.cli"]
    tmp = Path(tempfile.mkdtemp(prefix="datamill-startup-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAMILL_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    server = None
    try:
        server, url, token = start_server(datamill, tmp / "home", env)
        remote = [*datamill, "--url", url, "--token", token]
        files = tmp / "files"
        (files / "sub").mkdir(parents=True)
        for i in range(5):
            (files / f"f{i}.csv").write_text(f"x,y\n{i},{i * i}\n")
        (files / "sub" / "g.txt").write_text("nested\n")
        cpu_ms([*remote, "put", "-p", *(str(p) for p in sorted(files.iterdir())), "bench"], env)

        targets = {
            "baseline": [sys.executable, "-c", "pass"],
            "help": [*datamill, "--help"],
            "remote_ls": [*remote, "ls", "bench"],
        }
        samples: dict[str, list[float]] = {name: [] for name in targets}
        for argv in targets.values():
            cpu_ms(argv, env)  # bytecode cached, server warm
        for r in range(args.rounds):
            # Interleaved, so that a noisy moment on the machine spreads over all targets alike.
            for name, argv in targets.items():
                samples[name].append(cpu_ms(argv, env))
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
        base = statistics.median(samples["baseline"])
        report = {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "date": time.strftime("%Y-%m-%d"),
            "datamill": measured_source(),
            "baseline": summary(samples["baseline"], None),
            "help": summary(samples["help"], base),
            "remote_ls": summary(samples["remote_ls"], base),
        }
        print(json.dumps(report, indent=2))
    finally:
        if server is not None:
            stop_server(server)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
