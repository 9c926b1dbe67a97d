"""A crashed server's containers are removed when the server starts, not only at the first container step."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from datamill.engine.scheduler import Scheduler
from tests.containers.conftest import Images, containers_named, podman
from tests.helpers import open_home, serve, wait_for

pytestmark = pytest.mark.slow


def _dead_pid() -> int:
    """The pid of a process that has ended (a crashed server's, as its containers' labels hold it)."""
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def test_server_start_removes_leftovers_of_a_dead_server_only(images: Images, tmp_path: Path) -> None:
    home = open_home(tmp_path / "home")
    try:
        prefix = Scheduler(home).containers.name_prefix  # this home's container names
        host = os.uname().nodename
        leftover, live, other_host = (f"{prefix}{images.tag}-{n}" for n in ("1-1", "2-1", "3-1"))
        for name, pid, on in ((leftover, _dead_pid(), host), (live, os.getpid(), host), (other_host, 1, "elsewhere")):
            # running, as a crashed server leaves them: sleep until removed
            podman("run", "-d", "--name", name, "--label", f"datamill.host={on}", "--label", f"datamill.pid={pid}",
                   images.busybox, "sleep", "600")  # fmt: skip
        try:
            assert containers_named(leftover) == [leftover]
            with serve(home, services=True):
                wait_for("the leftover container removed", lambda: containers_named(leftover) == [])
            # a live process's container, and another host's, are not this server's to remove
            assert containers_named(live) == [live]
            assert containers_named(other_host) == [other_host]
        finally:
            for name in (leftover, live, other_host):
                podman("rm", "-f", "-t", "0", name, check=False)
    finally:
        home.close()
