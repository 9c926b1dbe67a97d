"""``datamill watch --once`` throughput: files/s for many small files, against a plain copy of the same files.

    .venv/bin/python benchmarks/watch.py [--files 10000] [--size 1024]

Prints ONE JSON object on stdout (progress goes to stderr).

The same directory of ``--files`` small files (``--size`` bytes each, 100 per subdirectory) is:

* ``copy`` (the baseline): copied file by file with ``shutil.copy`` into another directory;
* ``embedded``: landed by ``datamill --home H watch DIR bench --once --stable 0`` (a real process,
  start-up included) into a fresh local home;
* ``api``: landed by the same command with ``--url`` and ``--token`` into a server on 127.0.0.1
  (started in this process on a fresh home).

* ``embedded_resume``: the embedded command run again on the same directory: nothing to send (each
  file's size and mtime match what its item's ``watch`` metadata recorded, so none is read).

Per target: seconds, files/s, the ratio to the plain copy's files/s, and ``ok``. Targets (the issue
names none; these are ours): embedded ≥ 0.5x plain copy; over the API ≥ 0.2x plain copy (batch
uploads, ``POST /api/v1/content/{folder}``); the resume ≥ 5x faster than the first embedded run.
Each landed home is checked to hold every file.

Each datamill run sits between two plain copies and is compared with the faster of those two, so
load that comes and goes on a shared machine weighs on both sides alike and never flatters a ratio.
The ``datamill`` processes run with bytecode caching on (in a temporary ``PYTHONPYCACHEPREFIX``,
warmed up by one small watch first), as an installed datamill has: a ``PYTHONDONTWRITEBYTECODE``
environment would otherwise compile every module at each start (seconds, on a loaded machine).
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

TARGETS = {"embedded": 0.5, "api": 0.2}
#: the resume (nothing to send) must be this many times faster than the first run
RESUME_SPEEDUP = 5.0


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def make_files(root: Path, n: int, size: int) -> None:
    for i in range(n):
        d = root / f"d{i // 100:04d}"
        if i % 100 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:06d}.dat").write_bytes(os.urandom(size))


def plain_copy(src: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    for dirpath, _, names in os.walk(src):
        target = dst / Path(dirpath).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(os.path.join(dirpath, name), target / name)
    return time.perf_counter() - t0


_PYCACHE = tempfile.mkdtemp(prefix="dm-watch-bench-pyc-")


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("DATAMILL_") and k != "PYTHONDONTWRITEBYTECODE"}
    out["PYTHONPYCACHEPREFIX"] = _PYCACHE
    return out


def watch_once(args: list[str], src: Path, extra_env: dict[str, str] | None = None) -> tuple[float, dict[str, Any]]:
    cmd = [sys.executable, "-m", "datamill.cli", *args, "watch", str(src), "bench", "--once", "--stable", "0", "--json"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**env(), **(extra_env or {})}, check=False)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"datamill watch failed: {out.stderr}")
    return elapsed, json.loads(out.stdout)


def _rate(files: int, seconds: float, copies: tuple[float, float], target: float) -> dict[str, Any]:
    """A run's files/s and its ratio to the faster of the plain copies around it."""
    base = files / min(copies)
    rate = files / seconds
    return {
        "seconds": round(seconds, 3),
        "files_per_s": round(rate, 1),
        "copy_files_per_s": round(base, 1),
        "ratio": round(rate / base, 3),
        "target_ratio": target,
        "ok": rate / base >= target,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=1024)
    opts = parser.parse_args()
    from datamill.api import start_background_server
    from datamill.config import load_settings
    from datamill.home import Home

    with tempfile.TemporaryDirectory(prefix="dm-watch-bench-") as tmp:
        base = Path(tmp)
        src = base / "src"
        say(f"making {opts.files} files of {opts.size} B")
        make_files(src, opts.files, opts.size)
        n_copies = [0]

        def copy() -> float:
            n_copies[0] += 1
            target = base / f"copy{n_copies[0]}"
            took = plain_copy(src, target)
            shutil.rmtree(target)
            return took

        # Warm the bytecode cache (an installed datamill has one) with the modules a watch imports.
        watch_once(["--home", str(base / "home-warm")], src / "d0000")
        results: dict[str, Any] = {"files": opts.files, "size": opts.size}
        # Each datamill run sits between two plain copies; its baseline is the faster of those
        # two, so load that comes and goes on a shared machine weighs on both sides alike.
        say("plain copy, then datamill watch --once, embedded")
        before = copy()
        emb_s, counts = watch_once(["--home", str(base / "home-embedded")], src)
        assert counts["uploaded"] == opts.files, counts
        say("again: nothing to send (resume), then plain copy")
        again_s, again = watch_once(["--home", str(base / "home-embedded")], src)
        assert again["uploaded"] == 0 and again["unchanged"] == opts.files, again
        between = copy()
        results["embedded"] = _rate(opts.files, emb_s, (before, between), TARGETS["embedded"])
        speedup = emb_s / again_s
        results["embedded_resume"] = {
            "seconds": round(again_s, 3),
            "files_per_s": round(opts.files / again_s, 1),
            "speedup": round(speedup, 2),
            "target_speedup": RESUME_SPEEDUP,
            "ok": speedup >= RESUME_SPEEDUP,
        }
        say("datamill watch --once, over the API, then plain copy")
        home = Home(load_settings(environ={}, home=str(base / "home-api"), demo=False))
        try:
            with start_background_server(home) as server:
                token = home.admin_token() or ""
                api_s, counts = watch_once([], src, {"DATAMILL_URL": server.url, "DATAMILL_TOKEN": token})
                assert counts["uploaded"] == opts.files, counts
        finally:
            home.close()
        after = copy()
        results["api"] = _rate(opts.files, api_s, (between, after), TARGETS["api"])
        results["copy"] = {"seconds": [round(c, 3) for c in (before, between, after)]}
        results["ok"] = all(results[k]["ok"] for k in (*TARGETS, "embedded_resume"))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
