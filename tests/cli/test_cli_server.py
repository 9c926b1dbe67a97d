"""``datamill config`` and ``datamill up`` (a real server in a subprocess)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Up

SECRET = "s3kr1t-pw"  # not "secret": the tmp path holds the test's name
SECRET_DB = f"postgresql://u:{SECRET}@h/db"


def test_config_json_masks_secrets(dm: Any) -> None:
    r = dm.ok("config", "--json", env={"DATAMILL_DATABASE_URL": SECRET_DB, "DATAMILL_TOKEN": "dm_tok"})
    assert SECRET not in r.stdout and SECRET not in r.stderr and "dm_tok" not in r.stdout
    data = json.loads(r.stdout)
    assert data["settings"]["database_url"] == "postgresql://u:***@h/db"
    assert data["resolved"]["database_url"] == "postgresql://u:***@h/db"
    assert data["sources"]["database_url"] == "DATAMILL_DATABASE_URL"
    assert data["sources"]["home"] == "--home"
    assert data["sources"]["port"] == "default"
    assert data["settings"]["home"] == str(dm.home)
    assert data["profile"] == "local"
    human = dm.ok("config", env={"DATAMILL_DATABASE_URL": SECRET_DB}).stdout
    assert SECRET not in human and "postgresql://u:***@h/db" in human


def test_config_does_not_create_the_home(dm: Any) -> None:
    dm.ok("config")
    assert not dm.home.exists()


def test_config_sources_from_file_and_profile(dm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "datamill.toml").write_text(
        '[defaults]\nport = 9000\n[profiles.prod]\ndatabase_url = "postgresql://p:hunter2@db/x"\nhost = "0.0.0.0"\n'
    )
    monkeypatch.chdir(tmp_path)
    r = dm.ok("--profile", "prod", "config", "--json", env={"DATAMILL_LOG_LEVEL": "debug"})
    assert "hunter2" not in r.stdout
    data = json.loads(r.stdout)
    assert data["profile"] == "prod"
    assert data["settings"]["port"] == 9000 and data["settings"]["host"] == "0.0.0.0"
    toml = str(tmp_path / "datamill.toml")
    assert data["sources"]["port"] == toml and data["sources"]["host"] == toml
    assert data["sources"]["log_level"] == "DATAMILL_LOG_LEVEL"
    assert data["sources"]["home"] == "--home"
    r = dm("--profile", "nope", "config")
    assert r.exit_code == 1 and "no profile 'nope'" in r.stderr


def test_config_shows_the_server_without_its_token(dm: Any) -> None:
    r = dm.ok("--url", "http://h:8765", "--token", "dm_abc", "config", "--json")
    assert "dm_abc" not in r.stdout
    assert json.loads(r.stdout)["client"] == {"url": "http://h:8765", "token": "***", "user": None}


@pytest.mark.slow
def test_up_serves_and_prints_the_login_url(tmp_path: Path) -> None:
    """The real `datamill up` as a subprocess: the printed URL logs in, SIGINT stops it cleanly."""
    import httpx

    home = tmp_path / "home"
    with Up(home, timeout=60) as up:
        url, token = up.url, up.token
        assert token == (home / "admin.token").read_text().strip()
        who = httpx.get(f"{url}/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        assert who.status_code == 200 and who.json()["name"] == "admin"
        assert httpx.get(f"{url}/api/v1/whoami").status_code == 401
        assert up.stop() == 0, up.stderr()
        assert token not in up.stderr(after_start=True)  # the token is printed once, in the panel, never logged


def test_up_refuses_a_url(dm: Any) -> None:
    r = dm("--url", "http://h:1", "up")
    assert r.exit_code == 1 and "serves a local home" in r.stderr
