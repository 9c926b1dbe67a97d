"""The web app in a real headless Chromium: one live server per session, signed-in pages, axe checks.

The server is the real app on 127.0.0.1 (uvicorn in a thread, services running, a real home in a
temporary directory) with the admin and a second user, ``bob`` (password :data:`BOB_PASSWORD`).
Chromium is Debian's ``/usr/bin/chromium`` (never ``playwright install``). Tests that change
data use folders of their own, so they may run in any order against the one server.

``DATAMILL_SCREENSHOTS=1`` makes :func:`screenshot` write PNGs into ``docs/screenshots/`` (for the
README); otherwise it does nothing, so test runs leave the tree clean.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from datamill.api import ServerHandle
from datamill.demo.setup import install_demo
from datamill.home import Home
from datamill.service import Service
from datamill.store import users
from tests.helpers import add_user, open_home, serve

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
BOB_PASSWORD = "bob-secret-password"
AXE = Path(__file__).with_name("axe.min.js")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright launches Debian's Chromium instead of a Playwright-managed browser."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    """A laptop-sized window."""
    return {**browser_context_args, "viewport": {"width": 1280, "height": 860}}


@dataclass
class Site:
    """The live server: its URL, home, and the users' tokens."""

    url: str
    home: Home
    server: ServerHandle
    admin_token: str
    bob_token: str

    def service(self, user: str = "admin") -> Service:
        """The service layer acting as ``user`` (to set up and check data directly)."""
        return Service(self.home, self.home.actor(user))


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One running server for the whole session, with an admin, the user ``bob`` and the demo."""
    # Inline executor: the demo's pipeline runs in the server's own threads (no worker processes
    # to start, which on a small CI machine is most of the demo's time).
    home = open_home(tmp_path_factory.mktemp("web") / "home", executor="inline")
    install_demo(home)  # its dataflow runs in the background while the other tests go on
    bob = add_user(home, "bob", BOB_PASSWORD)
    with home.db.write() as conn:
        bob_token = users.create_token(conn, bob, "tests").token
    admin_token = home.admin_token()
    assert admin_token
    with serve(home, services=True) as server:
        yield Site(server.url, home, server, admin_token, bob_token)
    home.close()


def sign_in(page: Page, site: Site, user: str = "admin") -> Page:
    """Sign ``page`` in as ``user`` through the login URL (as ``datamill up`` prints it)."""
    token = site.admin_token if user == "admin" else site.bob_token
    page.goto(f"{site.url}/?token={token}")
    page.wait_for_url(f"{site.url}/folders")
    return page


@pytest.fixture
def admin_page(page: Page, site: Site) -> Page:
    """A page signed in as the admin."""
    return sign_in(page, site)


def check_accessibility(page: Page) -> None:
    """Run axe-core (vendored) on the page; fail on any serious or critical violation."""
    page.evaluate(AXE.read_text(encoding="utf-8") + "\n;0")
    violations = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations.map(v => ("
        "{id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))"
    )
    bad = [v for v in violations if v["impact"] in ("serious", "critical")]
    assert not bad, f"accessibility violations on {page.url}: {bad}"


def screenshot(page: Page, name: str, full_page: bool = False) -> None:
    """With ``DATAMILL_SCREENSHOTS=1``, save the page as ``docs/screenshots/<name>.png``."""
    if os.environ.get("DATAMILL_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)
