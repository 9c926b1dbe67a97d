"""Fixtures for the CLI tests: the ``datamill`` command run in-process on a fresh home.

* ``dm(*args, input=None, env=None)``: run ``datamill --home <tmp home> ARGS`` with Typer's
  ``CliRunner``; returns the result (``exit_code``, ``stdout``, ``stderr``, ``stdout_bytes``).
* ``dm.ok(*args)``: the same, failing the test (with stderr) unless the exit status is 0.
* ``dm.json(*args)``: ``dm.ok(*args, "--json")`` parsed as JSON.
* ``raw``: ``dm`` with ``Raw`` (a.txt: 2 lines, b.txt: 1 line) and an empty ``Out``.
* ``up``: a real ``datamill up`` on a fresh home (:class:`tests.helpers.Up`), stopped after the test.
* :func:`one_line_error`: the one ``error: ...`` line of a failed command.

No ``DATAMILL_*`` variable of the outer environment reaches the commands.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from datamill.cli import app
from tests.helpers import Up


class Dm:
    """Runs the ``datamill`` command in-process against one home directory."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.runner = CliRunner()

    def __call__(
        self, *args: str, input: str | bytes | None = None, env: Mapping[str, str] | None = None, home: bool = True
    ) -> Any:
        argv = (["--home", str(self.home)] if home else []) + list(args)
        return self.runner.invoke(app, argv, input=input, env=dict(env or {}), catch_exceptions=True)

    def ok(self, *args: str, **kw: Any) -> Any:
        result = self(*args, **kw)
        assert result.exit_code == 0, (
            f"datamill {' '.join(args)} exited {result.exit_code}\nstderr: {result.stderr}\n"
            f"exception: {result.exception!r}"
        )
        return result

    def json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self.ok(*args, "--json", **kw).stdout)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the caller's DATAMILL_* settings (a server URL, a token, a profile) out of the tests."""
    for name in list(os.environ):
        if name.startswith("DATAMILL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def dm(tmp_path: Path) -> Dm:
    """The ``datamill`` command on a fresh home in ``tmp_path/home``."""
    return Dm(tmp_path / "home")


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A local directory with ``a.csv`` and a tree ``run-7/{x.txt, sub/y.txt}`` to upload."""
    d = tmp_path / "files"
    (d / "run-7" / "sub").mkdir(parents=True)
    (d / "a.csv").write_text("x,y\n1,2\n")
    (d / "run-7" / "x.txt").write_text("x")
    (d / "run-7" / "sub" / "y.txt").write_text("y")
    return d


@pytest.fixture
def raw(dm: Dm, tmp_path: Path) -> Dm:
    """``Raw`` with a.txt (2 lines) and b.txt (1 line), and an empty ``Out``."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.txt").write_text("1\n2\n")
    (d / "b.txt").write_text("3\n")
    dm.ok("folder", "create", "Out")
    dm.ok("put", "-p", str(d / "a.txt"), str(d / "b.txt"), "Raw")
    return dm


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    """A real ``datamill up`` on a fresh home in ``tmp_path/home``, stopped after the test."""
    server = Up(tmp_path / "home")
    try:
        yield server
    finally:
        server.stop()


def one_line_error(result: Any) -> str:
    """The one ``error: ...`` line a failed command writes; no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]
