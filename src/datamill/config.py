"""Settings: one declared registry feeding ``datamill.toml`` profiles, ``DATAMILL_*`` variables and docs.

Resolution order, last wins: built-in defaults, ``[defaults]`` in the file, ``[profiles.NAME]``,
environment variables ``DATAMILL_<KEY>`` (upper-case), explicit overrides (CLI options).
Settings are resolved once and passed in; nothing reads the environment later.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from datamill.errors import ConfigError

CONFIG_FILE_NAME = "datamill.toml"


@dataclass(frozen=True)
class Setting:
    """One declared setting: its key, type, default and help text (``positive``: must be > 0)."""

    key: str
    type: type
    default: Any
    help: str
    secret: bool = False
    positive: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("home", str, "./.datamill", "Home directory: database, blobs, logs."),
    Setting(
        "database_url",
        str,
        "",
        "Database URL; empty means SQLite at HOME/datamill.db. postgresql://user:pw@host/db for PostgreSQL.",
        secret=True,
    ),
    Setting(
        "database_keepalives_idle",
        int,
        30,
        "PostgreSQL: seconds a connection is idle before TCP keepalive probes start (a URL's keepalives_idle wins).",
        positive=True,
    ),
    Setting(
        "database_keepalives_interval",
        int,
        10,
        "PostgreSQL: seconds between TCP keepalive probes (a URL's keepalives_interval wins).",
        positive=True,
    ),
    Setting(
        "database_keepalives_count",
        int,
        3,
        "PostgreSQL: unanswered keepalive probes after which a connection is dropped (a URL's keepalives_count wins).",
        positive=True,
    ),
    Setting(
        "database_tcp_user_timeout_ms",
        int,
        60_000,
        "PostgreSQL: milliseconds sent data may stay unacknowledged before a connection is dropped; 0 leaves it "
        "to the system (a URL's tcp_user_timeout wins).",
    ),
    Setting(
        "blob_url",
        str,
        "",
        "Blob store URL; empty means file://HOME/blobs. s3://BUCKET[/PREFIX] for an S3-compatible store.",
    ),
    Setting(
        "s3_endpoint_url",
        str,
        "",
        "Endpoint of an S3-compatible store (SeaweedFS, MinIO, Ceph: http://host:port); empty means AWS S3.",
    ),
    Setting("s3_region", str, "", "S3 region; empty means boto3's default (AWS_DEFAULT_REGION)."),
    Setting(
        "s3_access_key_id",
        str,
        "",
        "S3 access key id; empty means boto3's chain (AWS_ACCESS_KEY_ID, a profile, an instance role).",
    ),
    Setting("s3_secret_access_key", str, "", "S3 secret access key (a secret: masked everywhere).", secret=True),
    Setting("s3_profile", str, "", "Profile in ~/.aws/credentials to take S3 credentials from."),
    Setting(
        "s3_presign_downloads",
        bool,
        False,
        "Downloads of S3 blobs redirect to a presigned URL of the store (the bytes bypass the server).",
    ),
    Setting("s3_presign_seconds", int, 300, "How long a presigned download URL stays valid.", positive=True),
    Setting("host", str, "127.0.0.1", "Address the server binds to."),
    Setting("port", int, 8765, "Port the server listens on."),
    Setting("executor", str, "local", "Default executor: inline, local (process pool) or dask (a Dask cluster)."),
    Setting(
        "dask_scheduler",
        str,
        "",
        "Address of the Dask scheduler for executor = dask (tcp://host:8786); empty starts a local cluster of "
        "`workers` processes.",
    ),
    Setting("workers", int, 0, "Worker processes for the local executor; 0 means one per core."),
    Setting("batch_window_ms", int, 30, "Items landing within this window go into one dataflow run."),
    Setting("demo", bool, True, "Create the demo folders and dataflow on first start."),
    Setting("log_level", str, "info", "Log level: debug, info, warning, error."),
    Setting(
        "stream_recheck_ms",
        int,
        2000,
        "Open event streams, log follows and waits re-check their token (and access) this often.",
    ),
    Setting("replays_per_user", int, 4, "Event stream replays (from far back) one user may run at once."),
    Setting(
        "lease_seconds",
        float,
        30.0,
        "How long a task claimed by a scheduler that died stays claimed before another takes it over.",
        positive=True,
    ),
    Setting("container_runtime", str, "podman", "Runs container steps: podman (tested) or docker (the Docker CLI)."),
    Setting(
        "allowed_images",
        str,
        "localhost/*",
        "Container images pipelines and dataflows may name: glob patterns separated by commas or spaces "
        "(localhost/*, ghcr.io/org/*); anything else is refused when saved. '*' allows every image.",
    ),
    Setting(
        "watch_roots",
        str,
        "",
        "Server directories that directory dataflows may watch (and what lies below them), separated by "
        "':' (';' on Windows); empty: none.",
    ),
    Setting(
        "app_secrets",
        str,
        "",
        "Secrets HTTP app steps may send in headers as ${secret:NAME}: NAME=value pairs separated by ';'.",
        secret=True,
    ),
    Setting(
        "kafka_bootstrap",
        str,
        "",
        "Kafka bootstrap servers (HOST:PORT[,HOST:PORT]) for stream dataflows and `datamill stream`.",
    ),
    Setting(
        "kafka_security_protocol",
        str,
        "",
        "Kafka security.protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; empty means PLAINTEXT.",
    ),
    Setting("kafka_sasl_mechanism", str, "", "Kafka sasl.mechanism, e.g. PLAIN or SCRAM-SHA-512."),
    Setting("kafka_sasl_username", str, "", "Kafka sasl.username."),
    Setting("kafka_sasl_password", str, "", "Kafka sasl.password (a secret: masked everywhere).", secret=True),
    Setting(
        "stream_heartbeat_seconds",
        float,
        30.0,
        "Stream dataflows append a stream.heartbeat event at most this often.",
        positive=True,
    ),
)

_BY_KEY = {s.key: s for s in SETTINGS}


def mask_url(url: str) -> str:
    """Hide the password in a URL: ``postgresql://u:pw@h/db`` -> ``postgresql://u:***@h/db``."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def mask_secret(value: str) -> str:
    """A secret for display: a URL keeps all but its password; any other non-empty secret is ``***``."""
    if not value:
        return value
    if "://" in value:
        return mask_url(value)
    return "***"


def _coerce(setting: Setting, value: Any, source: str) -> Any:
    if setting.type is float:
        return _coerce_float(setting, value, source)
    if setting.type is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off", ""}:
            return False
        raise ConfigError(f"{source}: {setting.key} must be true or false, not {value!r}", key=setting.key)
    if setting.type is int:
        what = "a positive whole number" if setting.positive else "a whole number"
        if isinstance(value, bool | float):
            raise ConfigError(f"{source}: {setting.key} must be {what}, not {value!r}", key=setting.key)
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {setting.key} must be {what}, not {value!r}", key=setting.key) from None
        if setting.positive and number <= 0:
            raise ConfigError(f"{source}: {setting.key} must be {what}, not {value!r}", key=setting.key)
        return number
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {setting.key} must be a string, not {value!r}", key=setting.key)
    return value


def _coerce_float(setting: Setting, value: Any, source: str) -> float:
    number: float | None = None
    if not isinstance(value, bool):
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            number = None
    if number is None or not math.isfinite(number) or (setting.positive and number <= 0):
        what = "a positive number" if setting.positive else "a number"
        raise ConfigError(f"{source}: {setting.key} must be {what}, not {value!r}", key=setting.key)
    return number


@dataclass(frozen=True)
class Settings:
    """Resolved settings for one datamill home. Construct with :func:`load_settings`."""

    home: str = "./.datamill"
    database_url: str = ""
    database_keepalives_idle: int = 30
    database_keepalives_interval: int = 10
    database_keepalives_count: int = 3
    database_tcp_user_timeout_ms: int = 60_000
    blob_url: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: str = field(default="", repr=False)
    s3_profile: str = ""
    s3_presign_downloads: bool = False
    s3_presign_seconds: int = 300
    host: str = "127.0.0.1"
    port: int = 8765
    executor: str = "local"
    workers: int = 0
    dask_scheduler: str = ""
    batch_window_ms: int = 30
    demo: bool = True
    log_level: str = "info"
    stream_recheck_ms: int = 2000
    replays_per_user: int = 4
    lease_seconds: float = 30.0
    container_runtime: str = "podman"
    allowed_images: str = "localhost/*"
    watch_roots: str = ""
    app_secrets: str = ""
    kafka_bootstrap: str = ""
    kafka_security_protocol: str = ""
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    stream_heartbeat_seconds: float = 30.0
    profile: str = "local"
    sources: tuple[str, ...] = field(default=(), compare=False)

    def __repr__(self) -> str:
        # Secrets (the database password) must not reach logs through a repr.
        shown = ", ".join(f"{k}={v!r}" for k, v in self.public_dict().items())
        return f"Settings({shown})"

    @property
    def home_path(self) -> Path:
        """The home directory as an absolute path."""
        return Path(self.home).expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite inside the home directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home_path / 'datamill.db'}"

    @property
    def resolved_blob_url(self) -> str:
        """The blob store URL, defaulting to a directory inside the home directory."""
        return self.blob_url or f"file://{self.home_path / 'blobs'}"

    @property
    def image_patterns(self) -> tuple[str, ...]:
        """``allowed_images`` as a tuple of glob patterns."""
        return tuple(p for p in self.allowed_images.replace(",", " ").split() if p)

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the given (non-None) keys replaced and validated."""
        clean = {k: _coerce(_BY_KEY[k], v, "option") for k, v in overrides.items() if v is not None and k in _BY_KEY}
        return replace(self, **clean)

    def app_secret_values(self) -> dict[str, str]:
        """``app_secrets`` as ``{NAME: value}`` (``A=x;B=y``); never log or return it."""
        out: dict[str, str] = {}
        for part in self.app_secrets.split(";"):
            name, sep, value = part.partition("=")
            if sep and name.strip():
                out[name.strip()] = value
        return out

    def public_dict(self) -> dict[str, Any]:
        """Settings for display, secrets masked."""
        out: dict[str, Any] = {"profile": self.profile}
        for s in SETTINGS:
            value = getattr(self, s.key)
            out[s.key] = mask_secret(value) if s.secret else value
        return out


def find_config_file(start: Path | None = None) -> Path | None:
    """The nearest ``datamill.toml`` in ``start`` or its parents, if any."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_FILE_NAME
        if candidate.is_file():
            return candidate
    return None


def _read_config_file(path: Path) -> dict[str, Any]:
    """The parsed ``datamill.toml``, its sections checked: ``[defaults]`` and ``[profiles.NAME]`` tables."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist", path=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", path=str(path)) from None
    unknown_sections = sorted(set(data) - {"defaults", "profiles"})
    if unknown_sections:
        raise ConfigError(
            f"{path}: unknown section(s) {', '.join(unknown_sections)}; use [defaults] and [profiles.NAME]",
            path=str(path),
        )
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise ConfigError(f"{path}: [profiles] must hold tables like [profiles.prod]", path=str(path))
    if not isinstance(data.get("defaults", {}), dict):
        raise ConfigError(f"{path}: [defaults] must be a table", path=str(path))
    return data


def _file_values(path: Path, profile: str) -> dict[str, Any]:
    """The settings ``path`` gives: its ``[defaults]``, then the chosen profile's table on top."""
    data = _read_config_file(path)
    profiles = data.get("profiles", {})
    layers = [("defaults", data.get("defaults", {}))]
    if profile in profiles:
        layers.append((f"profiles.{profile}", profiles[profile]))
    elif profile != "local":
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(f"{path}: no profile {profile!r}; known profiles: {known}", profile=profile)
    values: dict[str, Any] = {}
    for section, table in layers:
        for key, value in table.items():
            if key not in _BY_KEY:
                known = ", ".join(_BY_KEY)
                raise ConfigError(f"{path} [{section}]: unknown key {key!r}; known keys: {known}", key=key)
            values[key] = _coerce(_BY_KEY[key], value, f"{path} [{section}]")
    return values


def load_settings(
    profile: str | None = None,
    config_file: Path | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Resolve settings from defaults, the config file's profile, ``DATAMILL_*`` and overrides."""
    env = dict(os.environ if environ is None else environ)
    profile = profile or env.get("DATAMILL_PROFILE") or "local"
    values: dict[str, Any] = {}
    sources: list[str] = ["defaults"]
    path = config_file or (Path(env["DATAMILL_CONFIG"]) if env.get("DATAMILL_CONFIG") else find_config_file())
    if path is not None:
        values.update(_file_values(Path(path), profile))
        sources.append(str(path))
    for s in SETTINGS:
        name = f"DATAMILL_{s.key.upper()}"
        if name in env:
            values[s.key] = _coerce(s, env[name], name)
            sources.append(name)
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in _BY_KEY:
            raise ConfigError(f"unknown setting {key!r}", key=key)
        values[key] = _coerce(_BY_KEY[key], value, "option")
    if values.get("executor", "local") not in {"inline", "local"}:
        raise ConfigError(f"executor must be 'inline' or 'local', not {values['executor']!r}", key="executor")
    if values.get("container_runtime", "podman") not in {"podman", "docker"}:
        raise ConfigError(
            f"container_runtime must be 'podman' or 'docker', not {values['container_runtime']!r}",
            key="container_runtime",
        )
    known_fields = {f.name for f in fields(Settings)}
    return Settings(profile=profile, sources=tuple(sources), **{k: v for k, v in values.items() if k in known_fields})
