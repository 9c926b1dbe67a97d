"""The one error boundary: one line on stderr and exit 1, a traceback only with -v."""

from __future__ import annotations

from typing import Any

import pytest


def test_datamill_error_is_one_line(dm: Any) -> None:
    r = dm("ls", "Nope")
    assert r.exit_code == 1
    assert r.stderr == "error: no folder 'Nope', or you may not see it\n"
    assert r.stdout == ""


def test_verbose_shows_the_traceback(dm: Any) -> None:
    r = dm("-v", "ls", "Nope")
    assert r.exit_code == 1
    assert "Traceback (most recent call last)" in r.stderr
    assert r.stderr.rstrip().endswith("error: no folder 'Nope', or you may not see it")


def test_verbose_from_the_environment(dm: Any) -> None:
    r = dm("ls", "Nope", env={"DATAMILL_VERBOSE": "1"})
    assert "Traceback" in r.stderr


def test_unexpected_exception(dm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kw: Any) -> None:
        raise RuntimeError("kaput")

    monkeypatch.setattr("datamill.client.local.LocalClient.list_folders", boom)
    r = dm("folder", "ls")
    assert r.exit_code == 1
    assert r.stderr == "error: unexpected RuntimeError: kaput (run again with -v for the traceback)\n"
    r = dm("-v", "folder", "ls")
    assert "Traceback" in r.stderr and "kaput" in r.stderr


def test_keyboard_interrupt(dm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*args: Any, **kw: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("datamill.client.local.LocalClient.list_folders", interrupt)
    r = dm("folder", "ls")
    assert r.exit_code == 130
    assert r.stderr == "interrupted\n"


def test_usage_errors_stay_usage_errors(dm: Any) -> None:
    r = dm("folder", "frobnicate")
    assert r.exit_code == 2
    assert "Traceback" not in r.stderr


def test_no_arguments_shows_help(dm: Any) -> None:
    r = dm(home=False)
    assert "Usage" in r.stdout + r.stderr
    assert "folder" in r.stdout + r.stderr


def test_help_names_every_environment_variable(dm: Any) -> None:
    out = dm("--help", home=False, env={"DATAMILL_TOKEN": "dm_verysecret"}).stdout
    for name in ("HOME", "PROFILE", "URL", "TOKEN", "USER", "VERBOSE"):
        assert f"DATAMILL_{name}" in out
    assert "dm_verysecret" not in out
    up = dm("up", "--help", home=False).stdout
    assert "DATAMILL_HOST" in up and "DATAMILL_PORT" in up and "DATAMILL_DEMO" in up


def test_user_with_url_is_refused(dm: Any) -> None:
    r = dm("--url", "http://127.0.0.1:9", "--user", "ana", "whoami")
    assert r.exit_code == 1
    assert "--user acts as a user on a local home only" in r.stderr
