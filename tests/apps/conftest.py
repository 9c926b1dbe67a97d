"""Real app servers for the app-step and batch tests: toy CLAMS apps and a plain HTTP app, once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, wait_for

TOYAPPS = Path(__file__).with_name("toyapps.py")
APPS = ("tokenizer", "counter", "upper", "broken", "echo")


def start_apps(
    names: tuple[str, ...] = APPS, ports: dict[str, int] | None = None
) -> tuple[dict[str, str], list[subprocess.Popen[bytes]]]:
    """Start each app on a loopback port (free, or from ``ports``); URLs by name and the processes.

    Returns once each app answers."""
    procs: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    for name in names:
        port = (ports or {}).get(name) or free_port()
        procs.append(
            subprocess.Popen(
                [sys.executable, str(TOYAPPS), name, "--port", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                # the version in each app's identifier (clams-python reads it when there is no git checkout)
                env={**os.environ, "CLAMS_APP_VERSION": "v1"},
            )
        )
        urls[name] = f"http://127.0.0.1:{port}/"

    def answers(url: str) -> bool:
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.TransportError:
            return False

    try:
        for name, url in urls.items():
            probe = url + "version" if name == "echo" else url
            wait_for(f"app {name} to answer", lambda probe=probe: answers(probe), timeout=60)
    except BaseException:
        stop_apps(procs)
        raise
    return urls, procs


def stop_apps(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop the processes :func:`start_apps` started."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


@pytest.fixture(scope="session")
def apps() -> Iterator[dict[str, str]]:
    """URLs of the running toy apps by name (tokenizer, counter, upper, broken, echo)."""
    urls, procs = start_apps()
    try:
        yield urls
    finally:
        stop_apps(procs)
