"""The stream writer alone: CPU per small file of :meth:`Stager.apply` on batches already prepared.

    .venv/bin/python benchmarks/stream_writer.py [--files 1000] [--kb 100] [--batch 100] [--profile]

The prepare threads' work (decode, chunk SHA-512, the blob file) is done before the clock starts, so
what is timed is the writer's own thread: the transaction, its statements (``stream_files``,
``blobs``, ``items``, ``versions``, ``events``, the offsets) and ``syncfs``, on an embedded SQLite
home (or the database at ``DATABASE_URL``). Prints the thread CPU per file (``time.thread_time``) and the wall time;
with ``--profile``, cProfile's top functions by their own time. Each run uses a fresh home.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

from datamill.config import load_settings
from datamill.dataflows import staging
from datamill.dataflows.dataflow import Dataflows
from datamill.dataflows.staging import Message, Stager, Target
from datamill.home import Home
from datamill.streams.chunks import chunk_file


class _Ready:
    """A batch prepared up front, in the shape :meth:`Stager.apply` iterates."""

    def __init__(self, batch: list[Message], blobs: Any) -> None:
        self.windows = [batch]
        self._done = [[(m, staging._prepare(m.value or b"", blobs)) for m in batch]]

    def __iter__(self) -> Any:
        return iter(self._done)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--kb", type=int, default=100, help="KB per file (chunks of 1 MiB)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        msgs: list[Message] = []
        for i in range(a.files):
            f = src / f"f{i:05d}.bin"
            f.write_bytes(os.urandom(a.kb * 1000))
            for _key, value in chunk_file(f, src, 1 << 20):
                msgs.append(Message(0, len(msgs), value))
        env = {"DATAMILL_DATABASE_URL": os.environ["DATABASE_URL"]} if "DATABASE_URL" in os.environ else {}
        home = Home(load_settings(environ=env, home=str(root / "home"), demo=False))
        # Names of this run's own: a PostgreSQL database may hold earlier runs.
        dest, name = f"Landed{os.getpid()}", f"w{os.getpid()}"
        home.store.create_folder(home.admin, dest)
        info = Dataflows(home.db).create(
            home.admin, name, {"kind": "stream", "topic": "t", "destination": dest, "broker": {"bootstrap": "h:1"}}
        )
        stager = Stager(home, Target(info.id, name, "t", dest, home.admin))
        batches = [msgs[i : i + a.batch] for i in range(0, len(msgs), a.batch)]
        ready = [_Ready(b, home.blobs) for b in batches]
        prof = cProfile.Profile() if a.profile else None
        cpu, wall = time.thread_time(), time.perf_counter()
        if prof:
            prof.enable()
        landed = 0
        for b, r in zip(batches, ready, strict=True):
            landed += len(stager.apply(b, r).files)  # type: ignore[arg-type]
        if prof:
            prof.disable()
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        assert landed == a.files, landed
        print(json.dumps({"files": a.files, "cpu_ms_per_file": round(cpu / a.files * 1000, 4),
                          "wall_s": round(wall, 3), "load": os.getloadavg()[0]}))  # fmt: skip
        if prof:
            order, top = os.environ.get("SORT", "tottime"), int(os.environ.get("TOP", "30"))
            pstats.Stats(prof).sort_stats(order).print_stats(top)
        home.close()


if __name__ == "__main__":
    main()
