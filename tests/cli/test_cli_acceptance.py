"""Acceptance: the real command as a subprocess (``python -m datamill.cli``), and the CLI against a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datamill.api.server import ServerHandle
from datamill.home import Home
from tests.helpers import open_home, serve


def run(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAMILL_")}
    return subprocess.run(
        [sys.executable, "-m", "datamill.cli", "--home", str(home), *args],
        capture_output=True,
        env=env,
        timeout=60,
    )


@pytest.mark.slow
def test_put_ls_get_round_trip(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = tmp_path / "measurements.csv"
    src.write_bytes(b"x,y\n1,2\n3,4\n")
    p = run(home, "put", "-p", str(src), "Raw Data/2026", "--meta", "n=3")
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"" and b"uploaded 1 file" in p.stderr
    p = run(home, "ls", "Raw Data/2026", "--json")
    assert p.returncode == 0, p.stderr
    (item,) = json.loads(p.stdout)
    assert (item["name"], item["version"], item["size"], item["metadata"]) == ("measurements.csv", 1, 12, {"n": 3})
    p = run(home, "get", "Raw Data/2026/measurements.csv", "-o", "-")
    assert p.returncode == 0, p.stderr
    assert p.stdout == src.read_bytes()


@pytest.mark.slow
def test_missing_folder_exit_status_and_one_line(tmp_path: Path) -> None:
    p = run(tmp_path / "home", "ls", "Nope")
    assert p.returncode == 1
    assert p.stdout == b""
    assert p.stderr.decode() == "error: no folder 'Nope', or you may not see it\n"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerHandle, Home]]:
    home = open_home(tmp_path / "server-home")
    try:
        with serve(home) as handle:
            yield handle, home
    finally:
        home.close()


def test_remote_put_and_ls(dm: Any, server: tuple[ServerHandle, Home], tmp_path: Path) -> None:
    handle, home = server
    src = tmp_path / "a.csv"
    src.write_bytes(b"a,b\n")
    remote = ("--url", handle.url, "--token", home.admin_token() or "")
    r = dm.ok(*remote, "put", "-p", str(src), "Remote", "--meta", "n=3", home=False)
    assert "uploaded 1 file" in r.stderr
    (item,) = dm.json(*remote, "ls", "Remote", home=False)
    assert (item["name"], item["metadata"]) == ("a.csv", {"n": 3})
    assert dm.ok(*remote, "get", "Remote/a.csv", "-o", "-", home=False).stdout_bytes == b"a,b\n"
    r = dm(*remote, "ls", "Nope", home=False)
    assert r.exit_code == 1 and r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1
    r = dm("--url", handle.url, "--token", "dm_wrong", "ls", "Remote", home=False)
    assert r.exit_code == 1 and "Traceback" not in r.stderr


def test_ls_reads_and_prints_page_by_page(dm: Any, server: tuple[ServerHandle, Home], tmp_path: Path) -> None:
    """`datamill ls` over several pages prints what one page would, locally and against a server."""
    handle, home = server
    src = tmp_path / "many"
    src.mkdir()
    names = [f"n{i}.txt" for i in range(7)]
    for name in names:
        (src / name).write_text("x")
    remote = ("--url", handle.url, "--token", home.admin_token() or "")
    dm.ok(*remote, "put", "-p", *(str(src / n) for n in names), "Many", home=False)
    dm.ok("put", "-p", *(str(src / n) for n in names), "Many")
    for where in (remote, ("--home", str(dm.home))):
        whole = dm.ok(*where, "ls", "Many", home=False).stdout
        assert dm.ok(*where, "ls", "Many", "--page-size", "2", home=False).stdout == whole
        lines = whole.splitlines()
        assert lines[0].split() == ["name", "version", "size", "type", "updated"]
        assert [line.split()[0] for line in lines[1:]] == names
        as_json = dm.ok(*where, "ls", "Many", "--json", home=False).stdout
        assert dm.ok(*where, "ls", "Many", "--json", "--page-size", "3", home=False).stdout == as_json
        assert [i["name"] for i in json.loads(as_json)] == names
    # a later page with a wider row widens the columns from there on; every row is printed once
    (src / "a-much-longer-name.txt").write_text("xyz")
    dm.ok("put", str(src / "a-much-longer-name.txt"), "Many")
    lines = dm.ok("ls", "Many", "--page-size", "1").stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["name", "a-much-longer-name.txt", *names]
    r = dm("ls", "Many", "--page-size", "0")
    assert r.exit_code != 0 and "page-size" in r.stderr
