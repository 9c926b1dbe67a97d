"""Small traps of the command line: what `put` uploads and where, what `get` writes, and stray options.

In-process (Typer's CliRunner, the ``dm`` fixture) where that suffices; the real ``datamill``
command as a subprocess for Ctrl-C and for an interrupted upload.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datamill.client.local import LocalClient
from datamill.config import load_settings
from datamill.home import Home
from datamill.limits import INT64_MAX

#: The installed console script: what a user runs (its entry point catches an early Ctrl-C).
DATAMILL = Path(sys.executable).parent / "datamill"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAMILL_")}
    env.pop("COLUMNS", None)
    return {**env, **extra}


def write(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tree(dm: Any, folder: str) -> set[str]:
    """Every item path below ``folder``."""
    return {i["path"] for i in dm.json("find", folder)}


def all_folders(dm: Any) -> list[str]:
    """Every folder of the home, depth first."""
    out: list[str] = []
    todo = [""]
    while todo:
        path = todo.pop()
        subs = [f["path"] for f in (dm.json("folder", "ls", path) if path else dm.json("folder", "ls"))]
        out += subs
        todo += subs
    return sorted(out)


# --- put ------------------------------------------------------------------------------------


def test_put_refuses_an_empty_path(dm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Path("") is the current directory: `put ""` used to upload it, .git, .venv and home included.
    cwd = tmp_path / "work"
    write(cwd / "secret.txt")
    monkeypatch.chdir(cwd)
    dm.ok("folder", "create", "A")
    for args in [("",), ("  ",), (str(cwd / "secret.txt"), "")]:
        r = dm("put", "-p", *args, "A")
        assert r.exit_code == 1, args
        assert "empty SRC" in r.stderr and "nothing was uploaded" in r.stderr
        assert len(r.stderr.splitlines()) == 1
    assert dm.json("ls", "A") == []


def test_put_into_a_missing_folder_needs_parents(dm: Any, files: Path) -> None:
    dm.ok("folder", "create", "Raw Data")
    r = dm("put", str(files / "a.csv"), "Raw Dta/2026")  # a typo
    assert r.exit_code == 1
    assert "'Raw Dta/2026' does not exist" in r.stderr and "-p/--parents" in r.stderr
    assert all_folders(dm) == ["Raw Data"]
    # An existing folder needs nothing; -p creates the missing ones, parents included.
    dm.ok("put", str(files / "a.csv"), "Raw Data")
    dm.ok("put", "-p", str(files / "a.csv"), str(files / "run-7"), "New/2026")
    assert all_folders(dm) == ["New", "New/2026", "New/2026/run-7", "New/2026/run-7/sub", "Raw Data"]
    assert tree(dm, "New") == {"New/2026/a.csv", "New/2026/run-7/x.txt", "New/2026/run-7/sub/y.txt"}


def test_put_dir_leaves_out_vcs_venvs_caches_homes_and_ignored_paths(dm: Any, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    for keep in ["data.csv", "notes/a.txt", "keep.log", "sub/top-only.txt", "data/x/y.dat", ".env.example"]:
        write(proj / keep)
    for drop in [
        ".git/config",
        ".git/objects/ab/cdef",
        ".hg/store/x",
        ".svn/entries",
        "__pycache__/m.cpython-311.pyc",
        "notes/__pycache__/n.pyc",
        ".DS_Store",
        "notes/.DS_Store",
        ".venv/pyvenv.cfg",
        ".venv/lib/site.py",
        "tools/env-any-name/pyvenv.cfg",
        "tools/env-any-name/bin/python",
        "run.log",
        "notes/deep/debug.log",
        "build/out.bin",
        "notes/build/out.bin",
        "top-only.txt",
        "data/x/y.tmp",
        "data/x/z/w.tmp",
    ]:
        write(proj / drop)
    (proj / ".datamillignore").write_text(
        "# generated things\n*.log\n!keep.log\nbuild/\n/top-only.txt\ndata/**/*.tmp\n\n"
    )
    # A live datamill home inside the tree (`datamill put .` from where `datamill up` runs).
    inner = type(dm)(proj / ".datamill")
    inner.ok("folder", "create", "Inner")
    assert (proj / ".datamill" / "admin.token").exists()

    dm.ok("folder", "create", "P")
    r = dm.ok("--verbose", "put", str(proj), "P")
    assert tree(dm, "P") == {
        "P/proj/data.csv",
        "P/proj/notes/a.txt",
        "P/proj/keep.log",
        "P/proj/sub/top-only.txt",
        "P/proj/data/x/y.dat",
        "P/proj/.env.example",
    }
    assert "uploaded 6 files" in r.stderr and "left out" in r.stderr
    assert f"{proj / '.git'} left out" in r.stderr and f"{proj / '.datamill'} left out" in r.stderr
    assert "admin.token" not in r.stderr  # the home was not entered at all
    # A '!' pattern brings a default back.
    (proj / ".datamillignore").write_text("!.DS_Store\n")
    dm.ok("put", str(proj), "P")
    assert "P/proj/.DS_Store" in tree(dm, "P") and "P/proj/.datamillignore" not in tree(dm, "P")


def test_put_refuses_a_home_and_a_bad_ignore_file(dm: Any, tmp_path: Path) -> None:
    dm.ok("folder", "create", "P")
    r = dm("put", str(dm.home), "P")
    assert r.exit_code == 1 and "is a datamill home" in r.stderr
    proj = tmp_path / "proj"
    write(proj / "a.txt")
    (proj / ".datamillignore").write_text("[z-a]\n")
    r = dm("put", "-p", str(proj), "Q")
    assert r.exit_code == 1 and "'[z-a]' is not valid" in r.stderr and "Traceback" not in r.stderr
    assert all_folders(dm) == ["P"]


def test_a_failed_put_removes_the_folders_it_created(dm: Any, tmp_path: Path) -> None:
    src = tmp_path / "run-9"
    write(src / "sub" / "bad\x01name.txt")  # a name datamill refuses: the upload fails half-way
    dm.ok("folder", "create", "Old")
    r = dm("put", "-p", str(src), "Old/New/Deep")
    assert r.exit_code == 1 and "control character" in r.stderr
    assert all_folders(dm) == ["Old"]  # New, New/Deep, .../run-9, .../sub were made, then removed
    # What did land stays, with its folders.
    write(src / "a" / "ok.txt")
    r = dm("put", "-p", str(src), "Old/New/Deep")
    assert r.exit_code == 1
    assert tree(dm, "Old") == {"Old/New/Deep/run-9/a/ok.txt"}
    assert all_folders(dm) == ["Old", "Old/New", "Old/New/Deep", "Old/New/Deep/run-9", "Old/New/Deep/run-9/a"]


def test_an_interrupted_put_leaves_no_empty_folder(tmp_path: Path) -> None:
    """Ctrl-C while `datamill put -p` runs: every folder left holds something."""
    src = tmp_path / "batch"
    for i in range(40):
        write(src / f"d{i:02d}" / "f.bin", os.urandom(300_000))  # one upload per file, one folder each
    home = tmp_path / "home"
    proc = subprocess.Popen(
        [str(DATAMILL), "--home", str(home), "-v", "put", "-p", str(src), "Top/Sub"],
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    assert proc.stderr is not None
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "-> Top/Sub/batch/d00/f.bin" in line:  # the first file is in: interrupt the rest
                proc.send_signal(signal.SIGINT)
                break
        seen += proc.stderr.read().splitlines(keepends=True)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(seen)
    assert "Traceback" not in text, text
    # Had the upload finished before the signal arrived, the rule below would hold all the same.
    assert (proc.returncode == 130 and text.endswith("interrupted\n")) or proc.returncode == 0, text
    h = Home(load_settings(environ={}, home=str(home), demo=False))
    try:
        client = LocalClient(h)
        holders = {i.folder for i in client.find("Top")}
        folders: list[str] = []
        todo = ["Top"]
        while todo:
            path = todo.pop()
            folders.append(path)
            todo += [f.path for f in client.list_folders(path)]
    finally:
        h.close()
    assert "Top/Sub/batch/d00" in holders
    for folder in folders:
        assert any(f == folder or f.startswith(folder + "/") for f in holders), (folder, sorted(holders))


# --- get --------------------------------------------------------------------------------------


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_get_into_a_missing_directory_needs_parents(dm: Any, files: Path, tmp_path: Path) -> None:
    dm.ok("put", "-p", str(files / "a.csv"), "A")
    dest = tmp_path / "out" / "deeper" / "copy.csv"
    r = dm("get", "A/a.csv", "-o", str(dest))
    assert r.exit_code == 1 and "does not exist" in r.stderr and "--parents" in r.stderr
    assert not (tmp_path / "out").exists()
    dm.ok("get", "A/a.csv", "-o", str(dest), "--parents")
    assert dest.read_bytes() == (files / "a.csv").read_bytes()


def test_downloads_get_the_umask_mode(dm: Any, files: Path, tmp_path: Path, umask: None) -> None:
    dm.ok("put", "-p", str(files / "a.csv"), "A")
    for mask, mode in [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)]:
        os.umask(mask)
        dest = tmp_path / f"copy-{mask:o}.csv"
        dm.ok("get", "A/a.csv", "-o", str(dest))
        assert dest.stat().st_mode & 0o777 == mode, oct(dest.stat().st_mode)


# --- output and options ----------------------------------------------------------------------


def test_piped_tables_do_not_wrap(dm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    folder = "A folder with a rather long name/and a subfolder whose name is long as well"
    name = "measurements of the second campaign, instrument xrd-1, corrected.csv"
    dm.ok("folder", "create", folder)
    dm.ok("put", str(write(tmp_path / name)), folder)
    out = dm.ok("find", "A folder with a rather long name").stdout
    (row,) = [line for line in out.splitlines() if name in line]
    assert f"{folder}/{name}" in row


def test_token_without_url_is_an_error(dm: Any) -> None:
    r = dm("--token", "dm_abc", "ls", "A")
    assert r.exit_code == 1 and "no server" in r.stderr and "--url" in r.stderr
    assert "dm_abc" not in r.stderr
    r = dm("folder", "ls", env={"DATAMILL_TOKEN": "dm_abc"})
    assert r.exit_code == 1 and "DATAMILL_TOKEN" in r.stderr
    assert not dm.home.exists()  # refused before the home was opened


def test_ids_outside_int64_are_usage_errors(dm: Any) -> None:
    too_big = str(INT64_MAX + 1)
    for args in [
        ("runs", "show", too_big),
        ("logs", too_big),
        ("why", too_big),
        ("token", "revoke", too_big),
        ("get", "A/a", "--version", too_big),
        ("events", "--since", too_big),
        ("lineage", "A/a", "--version", too_big),
    ]:
        r = dm(*args)
        assert r.exit_code == 2, (args, r.stderr)
        assert "Overflow" not in r.stderr and "unexpected" not in r.stderr


# --- Ctrl-C during start-up -----------------------------------------------------------------


def interrupt_up(tmp_path: Path, when: str, env: dict[str, str]) -> tuple[int, list[str]]:
    """Start `datamill up`, send SIGINT once a stderr line holds ``when``; its exit status and stderr."""
    proc = subprocess.Popen(
        [str(DATAMILL), "--home", str(tmp_path / "home"), "up", "--port", "0", "--no-demo"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if when in line:
                proc.send_signal(signal.SIGINT)
                break
        lines += proc.stderr.read().splitlines(keepends=True)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, [line for line in lines if not line.startswith("import time:")]


def test_ctrl_c_while_loading_prints_one_line(tmp_path: Path) -> None:
    # PYTHONPROFILEIMPORTTIME makes Python report each import on stderr as it finishes: the
    # signal arrives while the CLI's dependencies (Typer, loaded by datamill.console) are still
    # being imported.
    code, lines = interrupt_up(tmp_path, "typer", clean_env(PYTHONPROFILEIMPORTTIME="1"))
    assert code == 130, lines
    assert lines == ["interrupted\n"]


def test_ctrl_c_during_server_start_up_prints_no_traceback(tmp_path: Path) -> None:
    code, lines = interrupt_up(tmp_path, "Waiting for application startup", clean_env())
    text = "".join(lines)
    assert code in (0, 130), text
    assert "Traceback" not in text and "?token=" not in text  # not announced: it is stopping
    assert lines[-1] in ("datamill stopped\n", "interrupted\n")
