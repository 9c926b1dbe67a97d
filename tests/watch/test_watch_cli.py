"""``datamill watch``: in-process with ``--once``, and a real process over HTTP stopped with SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from datamill.client.local import LocalClient
from datamill.errors import NotFound
from datamill.home import Home
from tests.cli.conftest import Dm
from tests.helpers import cli_env, datamill, serve, wait_for


@pytest.fixture
def dm(tmp_path: Path) -> Dm:
    return Dm(tmp_path / "cli-home")


def test_once_lands_then_resumes_without_resending(dm: Dm, tmp_path: Path) -> None:
    d = tmp_path / "d"
    (d / "run-7").mkdir(parents=True)
    (d / "a.csv").write_text("1,2\n")
    (d / "run-7" / "b.txt").write_text("b")
    (d / ".swp").write_text("hidden")
    first = dm.json("watch", str(d), "Raw Data", "--once", "--stable", "0")
    assert first["uploaded"] == 2 and first["hidden"] == 1
    again = dm.json("watch", str(d), "Raw Data", "--once", "--stable", "0")
    assert again["uploaded"] == 0 and again["unchanged"] == 2
    assert json.loads(dm.ok("versions", "Raw Data/run-7/b.txt", "--json").stdout)[0]["version"] == 1
    only = dm.json("watch", str(d), "Only", "--once", "--stable", "0", "--include", r"\.txt$")
    assert only["uploaded"] == 1 and only["excluded"] == 1


def test_errors_are_one_line_and_exit_1(dm: Dm, tmp_path: Path) -> None:
    missing = dm("watch", str(tmp_path / "nope"), "Raw", "--once")
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    bad = dm("watch", str(tmp_path), "Raw", "--once", "--exclude", "[")
    assert bad.exit_code == 1 and "not a regular expression" in bad.stderr
    both = dm("watch", str(tmp_path), "Raw", "--once", "--no-existing")
    assert both.exit_code == 1 and "--no-existing" in both.stderr


@pytest.mark.slow
def test_a_watch_process_over_http_lands_files_until_sigterm(home: Home, local: LocalClient, src: Path) -> None:
    (src / "first.txt").write_text("first")
    with serve(home) as server:
        env = cli_env(DATAMILL_URL=server.url, DATAMILL_TOKEN=home.admin_token() or "")
        proc = subprocess.Popen(
            datamill("watch", str(src), "Incoming", "--stable", "0.2"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            def landed(path: str) -> bool:
                try:
                    local.item(path)
                    return True
                except NotFound:
                    return False

            wait_for("the existing file", lambda: landed("Incoming/first.txt"))
            (src / "sub").mkdir()
            (src / "sub" / "later.txt").write_text("later")
            wait_for("the later file", lambda: landed("Incoming/sub/later.txt"))
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert "uploaded 2 files" in err
    assert local.get("Incoming/sub/later.txt") == b"later"
