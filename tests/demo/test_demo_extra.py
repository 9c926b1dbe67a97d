"""The demo's packages are an optional extra (``datamill[demo]``): without them ``datamill up`` still
serves the home, says how to get the demo, and shows no traceback.

The real ``datamill up`` runs in a subprocess in which the demo's packages cannot be imported: a
``None`` entry in ``sys.modules`` makes ``import pandas`` fail and ``importlib.util.find_spec``
answer None, as for a package that is not installed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from datamill.client.remote import RemoteClient
from datamill.demo import PACKAGES, missing_packages

WITHOUT_DEMO_PACKAGES = (
    "import sys\n"
    f"for name in {PACKAGES!r}:\n"
    "    sys.modules[name] = None\n"
    "from datamill.cli import main\n"
    "sys.argv = ['datamill', *sys.argv[1:]]\n"
    "main()\n"
)


def test_the_demo_packages_are_installed_here() -> None:
    """The test environment (the `dev` extra) includes the demo's extra."""
    assert missing_packages() == []


def test_up_without_the_demo_packages_serves_and_says_how_to_get_the_demo(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAMILL_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", WITHOUT_DEMO_PACKAGES, "--home", str(home), "up", "--port", "0", "--demo"],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**env, "COLUMNS": "200"},
    )
    try:
        assert proc.stderr is not None
        seen = []
        url = token = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            m = re.search(r"(http://127\.0\.0\.1:\d+)/\?token=(dm_[\w-]+)", line)
            if m:
                url, token = m.group(1), m.group(2)
        said = "".join(seen)
        assert url is not None, said
        assert "demo: not installed (pandas, pyarrow, openpyxl, matplotlib missing)" in said
        assert "uv run --extra demo datamill up" in said
        with RemoteClient(url, token) as client:  # the server answers; the home has no demo folders
            assert client.list_folders("") == []
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Traceback" not in said + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
