"""kill -9 during a recursive folder delete never loses the bytes of an item that is still listed.

A child process (the real store, on SQLite and on PostgreSQL) deletes a folder of many items and
is SIGKILLed part-way: once when its first blob file disappears (the moment that used to come
before the commit), then at random moments over several tries. Afterwards every item the store
still lists must read back, verified, with the bytes it was given; garbage collection then removes
whatever the killed delete left unreferenced, and nothing that is referenced.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from datamill.db.models import Blob
from datamill.errors import NotFound
from datamill.home import Home
from datamill.store.blobs import LocalBlobStore, digest_bytes
from tests.helpers import open_home

#: Servers, CLI processes or crashes in subprocesses: left out of the quick loop (-m "not slow").
pytestmark = pytest.mark.slow

N_ITEMS = 1500
SUBFOLDERS = 3

_DELETER = textwrap.dedent(
    """
    import sys
    from datamill.config import load_settings
    from datamill.home import Home

    home = Home(load_settings(environ={}, home=sys.argv[1], database_url=sys.argv[2], demo=False))
    print("ready", flush=True)
    sys.stdin.readline()  # go
    home.store.delete_folder(home.admin, sys.argv[3], recursive=True)
    home.close()
    print("done", flush=True)
    """
)


def _content(tag: str, i: int) -> bytes:
    return f"{tag}/{i}\n".encode() * 3


def _expected(tag: str) -> dict[str, bytes]:
    """What :func:`_fill` stores under ``tag``: N_ITEMS items in subfolders, copies of some in ``keep-<tag>``."""
    per = N_ITEMS // SUBFOLDERS
    out = {f"{tag}/sub{k}/f{i:05d}.txt": _content(tag, k * per + i) for k in range(SUBFOLDERS) for i in range(per)}
    # Items elsewhere sharing bytes with the deleted ones: their blobs must survive any delete.
    out.update({f"keep-{tag}/copy{i}.txt": _content(tag, i) for i in range(0, N_ITEMS, 97)})
    return out


def _fill(home: Home, tag: str) -> dict[str, bytes]:
    """Store :func:`_expected` ``(tag)`` (one batch per folder) and return it."""
    s, admin = home.store, home.admin
    expected = _expected(tag)
    by_folder: dict[str, list[tuple[str, bytes]]] = {}
    for path, data in expected.items():
        folder, name = path.rsplit("/", 1)
        by_folder.setdefault(folder, []).append((name, data))
    for folder, files in by_folder.items():
        s.create_folder(admin, folder)
        s.put_many(admin, folder, files)
    return expected


def _spawn(tmp_path: Path, db_url: str, folder: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", _DELETER, str(tmp_path / "home"), db_url, folder],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if line != "ready":
        child.kill()
        _, err = child.communicate(timeout=60)
        raise AssertionError(f"the deleting child did not start: {line!r}\n{err}")
    return child


def _go(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("go\n")
    child.stdin.flush()


def _kill(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    for stream in (child.stdin, child.stdout, child.stderr):
        if stream is not None:
            stream.close()


def _check(home: Home, tag: str, expected: dict[str, bytes]) -> int:
    """Every item still listed under ``tag`` (and its keep folder) reads back verified; returns how many."""
    s, admin = home.store, home.admin
    listed = []
    for folder in (tag, f"keep-{tag}"):
        try:
            listed += s.find_items(admin, folder)
        except NotFound:
            continue  # the delete committed
    lost = []
    for item in listed:
        try:
            data = home.blobs.read(item.digest)
        except Exception as exc:  # any failure to read is the defect
            lost.append(f"{item.path}: {exc}")
            continue
        assert data == expected[item.path], item.path
    assert lost == [], f"{len(lost)} of {len(listed)} listed items lost their bytes, e.g. {lost[:3]}"
    return len(listed)


def _check_garbage(home: Home) -> None:
    """After GC every blob row has its file, and every blob file left has a row."""
    home.store.collect_garbage()
    with home.db.read() as conn:
        rows = set(conn.execute(select(Blob.digest)).scalars())
    blobs = home.blobs
    assert isinstance(blobs, LocalBlobStore)
    files = {f"blake3:{p.name}" for p in blobs.root.glob("??/??/*")}
    assert rows == files


def test_kill_when_the_first_blob_file_vanishes(db_url: str, tmp_path: Path) -> None:
    """The deleter is killed the moment one of its blob files is gone: the rows must be gone too."""
    home = open_home(tmp_path / "home", db_url)
    try:
        expected = _fill(home, "doomed")
        blobs = home.blobs
        assert isinstance(blobs, LocalBlobStore)
        shared = {digest_bytes(b) for p, b in expected.items() if p.startswith("keep-")}
        only_here = sorted({digest_bytes(b) for b in expected.values()} - shared)
        watched = [blobs.path_of(d) for d in random.Random(7).sample(only_here, 64)]
        child = _spawn(tmp_path, db_url, "doomed")
        try:
            _go(child)
            # Watch the files, not the child: the first one gone is the moment to kill.
            while all(p.exists() for p in watched):
                if child.poll() is not None:
                    break
            if child.poll() is None:
                _kill(child)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        _check(home, "doomed", expected)
        _check_garbage(home)
        _check(home, "doomed", expected)
    finally:
        home.close()


def test_kill_at_random_moments(db_url: str, tmp_path: Path) -> None:
    """Several tries, each killing the deleter at a random moment within one delete's duration."""
    home = open_home(tmp_path / "home", db_url)
    try:
        # One delete run to the end tells how long a delete takes on this machine right now.
        expected = _fill(home, "calibrate")
        child = _spawn(tmp_path, db_url, "calibrate")
        started = time.monotonic()
        _go(child)
        out, err = child.communicate(timeout=300)
        duration = time.monotonic() - started
        assert child.returncode == 0 and out.strip() == "done", err
        assert _check(home, "calibrate", expected) == len([p for p in expected if p.startswith("keep-")])

        rng = random.Random(int.from_bytes(os.urandom(4), "big"))
        for attempt in range(3):
            tag = f"try{attempt}"
            expected = _fill(home, tag)
            child = _spawn(tmp_path, db_url, tag)
            try:
                _go(child)
                time.sleep(rng.uniform(0.0, duration))  # the random moment of the kill, not a synchronisation
                if child.poll() is None:
                    _kill(child)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            _check(home, tag, expected)
        _check_garbage(home)
        for attempt in range(3):
            _check(home, f"try{attempt}", _expected(f"try{attempt}"))
    finally:
        home.close()
