"""A real `datamill up` in a subprocess, for tests that need a server process of its own."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


def env() -> dict[str, str]:
    """The test's environment without DATAMILL_* settings, and a wide terminal."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DATAMILL_")}
    return {**environ, "COLUMNS": "200"}


def datamill(*args: str) -> list[str]:
    """The command line of the real ``datamill`` command with ``args``."""
    return [sys.executable, "-m", "datamill.cli", *args]


class Up:
    """A `datamill up` subprocess on ``home``, with the URL and admin token it printed."""

    def __init__(self, home: Path) -> None:
        self.proc = subprocess.Popen(
            datamill("--home", str(home), "up", "--port", "0", "--no-demo"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        seen = []
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 120
        match = None
        while match is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            match = re.search(r"(http://127\.0\.0\.1:\d+)/\?token=(dm_[\w-]+)", line)
        if match is None:
            self.stop()
            raise AssertionError("datamill up did not start:\n" + "".join(seen))
        self.url, self.token = match.group(1), match.group(2)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
