"""Settings: datamill.toml defaults and profiles, DATAMILL_* variables, overrides, errors, masking.

Every call passes ``environ`` explicitly, so the machine's environment never leaks into a test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from datamill.config import SETTINGS, Settings, find_config_file, load_settings, mask_url
from datamill.errors import ConfigError

CONFIG = """
[defaults]
port = 8000
log_level = "debug"
workers = 2

[profiles.local]
home = "./local-home"

[profiles.prod]
home = "/srv/datamill"
port = 80
host = "0.0.0.0"
database_url = "postgresql://dm:s3cret@db.internal:5432/datamill"
demo = false
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "datamill.toml"
    path.write_text(CONFIG)
    return path


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "datamill.toml"
    path.write_text(text)
    return path


def test_builtin_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(environ={})
    assert s == Settings()
    assert (s.port, s.host, s.profile, s.demo, s.sources) == (8765, "127.0.0.1", "local", True, ("defaults",))
    assert s.resolved_database_url == f"sqlite:///{tmp_path / '.datamill' / 'datamill.db'}"
    assert s.resolved_blob_url == f"file://{tmp_path / '.datamill' / 'blobs'}"


def test_defaults_and_the_local_profile(config: Path) -> None:
    s = load_settings(config_file=config, environ={})
    assert s.profile == "local"
    assert (s.port, s.log_level, s.workers, s.home, s.demo) == (8000, "debug", 2, "./local-home", True)
    assert s.sources == ("defaults", str(config))


def test_profile_by_argument(config: Path) -> None:
    s = load_settings(profile="prod", config_file=config, environ={})
    assert s.profile == "prod"
    assert (s.port, s.host, s.home, s.demo) == (80, "0.0.0.0", "/srv/datamill", False)
    assert s.log_level == "debug" and s.workers == 2  # [defaults] still apply below the profile
    assert s.database_url.startswith("postgresql://dm:s3cret@")


def test_profile_by_environment(config: Path) -> None:
    s = load_settings(config_file=config, environ={"DATAMILL_PROFILE": "prod"})
    assert (s.profile, s.port, s.home) == ("prod", 80, "/srv/datamill")
    # The argument wins over the variable.
    s = load_settings(profile="local", config_file=config, environ={"DATAMILL_PROFILE": "prod"})
    assert (s.profile, s.port, s.home) == ("local", 8000, "./local-home")


def test_environment_overrides_file(config: Path) -> None:
    s = load_settings(profile="prod", config_file=config, environ={"DATAMILL_PORT": "9000", "DATAMILL_DEMO": "yes"})
    assert (s.port, s.demo, s.host) == (9000, True, "0.0.0.0")
    assert s.sources == ("defaults", str(config), "DATAMILL_PORT", "DATAMILL_DEMO")
    assert load_settings(environ={"DATAMILL_PORT": "9000"}, config_file=config).port == 9000


def test_explicit_overrides_win(config: Path) -> None:
    s = load_settings(profile="prod", config_file=config, environ={"DATAMILL_PORT": "9000"}, port="9100", host=None)
    assert (s.port, s.host) == (9100, "0.0.0.0")  # None means "not given"
    assert s.with_overrides(port=1234, workers=None).port == 1234
    with pytest.raises(ConfigError, match="port"):
        s.with_overrides(port="abc")


def test_config_file_found_from_cwd_or_variable(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    below = tmp_path / "project" / "deep"
    below.mkdir(parents=True)
    assert find_config_file(below) == config
    monkeypatch.chdir(below)
    assert load_settings(environ={}).port == 8000
    other = tmp_path / "other.toml"
    other.write_text("[defaults]\nport = 7000\n")
    assert load_settings(environ={"DATAMILL_CONFIG": str(other)}).port == 7000
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(environ={"DATAMILL_CONFIG": str(tmp_path / "missing.toml")})


@pytest.mark.parametrize(
    ("text", "environ", "profile", "names"),
    [
        ('[defaults]\nport = "abc"\n', {}, None, ["port", "'abc'", "[defaults]"]),
        ('[profiles.prod]\nport = "eighty"\n', {}, "prod", ["port", "'eighty'", "[profiles.prod]"]),
        ("[defaults]\nport = 1\n", {"DATAMILL_PORT": "abc"}, None, ["DATAMILL_PORT", "port", "'abc'"]),
        ("[defaults]\nworkers = []\n", {}, None, ["workers", "[]"]),
        ('[defaults]\ndemo = "maybe"\n', {}, None, ["demo", "'maybe'"]),
        ("[defaults]\nhome = 5\n", {}, None, ["home", "5"]),
        ("[defaults]\nprot = 8000\n", {}, None, ["unknown key 'prot'", "port"]),
        ("[profiles.prod]\ncolour = 1\n", {}, "prod", ["unknown key 'colour'", "[profiles.prod]"]),
        ("[profiles.prod]\nport = 1\n", {}, "staging", ["no profile 'staging'", "prod"]),
        ("[defaults]\nport = 1\n", {"DATAMILL_PROFILE": "staging"}, None, ["no profile 'staging'"]),
        ('[defaults]\nexecutor = "kubernetes"\n', {}, None, ["executor", "'kubernetes'"]),
        ("[defaults\nport = 1\n", {}, None, ["not valid TOML"]),
    ],
    ids=[
        "port-abc",
        "profile-port",
        "env-port-abc",
        "workers-list",
        "bool",
        "string",
        "unknown-key",
        "unknown-key-in-profile",
        "unknown-profile",
        "unknown-profile-env",
        "executor",
        "toml-syntax",
    ],
)
def test_bad_values_name_key_and_value(
    tmp_path: Path, text: str, environ: dict[str, str], profile: str | None, names: list[str]
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(profile=profile, config_file=path, environ=environ)
    for name in names:
        assert name in err.value.message, (name, err.value.message)
    assert err.value.code == "config_error"


def test_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_settings(environ={}, colour="red")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[defaults]\nport = true\n", "a boolean is taken as port 1"),
        ("[defaults]\nport = 8080.9\n", "a float is truncated to 8080"),
        ("[profiles]\nprod = 3\n", "a profile that is not a table raises AttributeError, not ConfigError"),
        ("[default]\nport = 1\n", "a misspelt section is ignored silently"),
    ],
    ids=["port-bool", "port-float", "profile-not-a-table", "unknown-section"],
)
def test_bad_values_are_refused(tmp_path: Path, text: str, why: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError):
        load_settings(profile="prod" if "prod" in text else None, config_file=path, environ={})


def test_public_dict_masks_the_database_password(config: Path) -> None:
    s = load_settings(profile="prod", config_file=config, environ={})
    shown = s.public_dict()
    assert shown["database_url"] == "postgresql://dm:***@db.internal:5432/datamill"
    assert "s3cret" not in str(shown)
    assert set(shown) == {"profile", *(setting.key for setting in SETTINGS)}
    assert (shown["profile"], shown["port"], shown["home"]) == ("prod", 80, "/srv/datamill")
    from_env = load_settings(environ={"DATAMILL_DATABASE_URL": "postgresql://u:p%40ss@h/db"}, config_file=config)
    assert from_env.public_dict()["database_url"] == "postgresql://u:***@h/db"
    assert from_env.database_url == "postgresql://u:p%40ss@h/db"  # the real value stays usable


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("", ""),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("postgresql://dm@h/db", "postgresql://dm@h/db"),
        ("postgresql://dm:pw@h:5432/db", "postgresql://dm:***@h:5432/db"),
        ("postgresql://:pw@h/db", "postgresql://:***@h/db"),
        ("postgresql://dm:p@w@h/db", "postgresql://dm:***@h/db"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_repr_does_not_show_the_password(config: Path) -> None:
    assert "s3cret" not in repr(load_settings(profile="prod", config_file=config, environ={}))
