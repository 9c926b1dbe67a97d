"""What the light entry points may not load: ``import datamill``, the remote client, ``datamill --help``
and a ``datamill`` command against a server load neither the database layer nor the demo's packages.

Each case runs in a fresh interpreter (a subprocess), which reports the modules it ended up with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from datamill.api import ServerHandle, start_background_server
from datamill.config import load_settings
from datamill.home import Home

#: Never loaded by a light entry point (top-level package names).
HEAVY = {"sqlalchemy", "pandas", "pyarrow", "matplotlib"}
#: datamill modules a light entry point does not need either: the local stack (what opens a home).
LOCAL_STACK = (
    "datamill.db",
    "datamill.events",
    "datamill.store.store",
    "datamill.home",
    "datamill.engine.engine",
    "datamill.engine.runs",
    "datamill.engine.scheduler",
    "datamill.client.local",
)

PROBE = """
import json, sys
out = sys.argv[1]
sys.argv = ["datamill", *sys.argv[2:]]
code = 0
try:
    exec(sys.stdin.read())
except SystemExit as exc:
    code = exc.code
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


def _loaded(tmp_path: Path, code: str, *argv: str) -> list[str]:
    """Run ``code`` in a fresh interpreter (with ``argv`` as the command line); the modules it loaded."""
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAMILL_")}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *argv],
        input=code,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["code"] in (0, None), f"exit {report['code']}: {proc.stderr}"
    modules: list[str] = report["modules"]
    return modules


def _heavy(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def _local_stack(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith(LOCAL_STACK))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerHandle, str]]:
    """A real server on loopback over a fresh home with a folder ``Raw`` holding one item."""
    home = Home(load_settings(environ={}, home=str(tmp_path / "home"), demo=False, executor="inline"))
    home.store.create_folder(home.admin, "Raw")
    home.store.put(home.admin, "Raw", "a.txt", b"1\n")
    handle = start_background_server(home)
    try:
        token = home.admin_token()
        assert token
        yield handle, token
    finally:
        handle.stop()
        home.close()


def test_import_datamill_is_light(tmp_path: Path) -> None:
    modules = _loaded(tmp_path, "import datamill\nassert datamill.__version__")
    assert not _heavy(modules)
    assert not _local_stack(modules)
    assert "datamill.pipeline" not in modules and "datamill.client" not in modules


def test_the_pipeline_layer_is_light(tmp_path: Path) -> None:
    """Defining and loading pipelines (codecs included: DataFrame and Figure are imported on use)."""
    code = "import datamill.pipeline, datamill.pipeline.codecs, datamill.pipeline.runner, datamill.pipeline.loader"
    modules = _loaded(tmp_path, code)
    assert not _heavy(modules)
    assert not _local_stack(modules)


def test_the_remote_client_is_light(tmp_path: Path) -> None:
    modules = _loaded(tmp_path, "from datamill.client.remote import RemoteClient\nimport datamill.client")
    assert not _heavy(modules)
    assert not _local_stack(modules)


def test_datamill_help_is_light(tmp_path: Path) -> None:
    modules = _loaded(tmp_path, "from datamill.cli import main\nmain()", "--help")
    assert "datamill.cli.items" in modules  # the commands were loaded to be listed
    assert not _heavy(modules)
    assert not _local_stack(modules)


def test_a_remote_command_is_light(tmp_path: Path, server: tuple[ServerHandle, str]) -> None:
    handle, token = server
    code = "from datamill.cli import main\nmain()"
    modules = _loaded(tmp_path, code, "--url", handle.url, "--token", token, "ls", "Raw", "--json")
    assert "datamill.client.remote" in modules
    assert not _heavy(modules)
    assert not _local_stack(modules)


def test_a_local_command_loads_the_local_stack(tmp_path: Path) -> None:
    """The other side of the same switch: on a local home the home is opened (a check of the probe)."""
    modules = _loaded(tmp_path, "from datamill.cli import main\nmain()", "--home", str(tmp_path / "h"), "folder", "ls")
    assert "datamill.home" in modules and "sqlalchemy" in modules


def test_pipeline_run_works_after_a_light_import(tmp_path: Path) -> None:
    """``Pipeline.run`` reaches the engine through the seam datamill/__init__.py fills, loaded on the run."""
    code = (
        "import sys\n"
        "from datamill.pipeline import Pipeline, step\n"
        "assert 'datamill.engine.quick' not in sys.modules\n"
        "@step(version='1')\n"
        "def words(item) -> int:\n"
        "    return len(item.read_text().split())\n"
        "result = Pipeline('count', [words]).run([('a.txt', b'one two')])\n"
        "assert result.outputs == {'words[inputs/a.txt]': 2}, result.outputs\n"
    )
    modules = _loaded(tmp_path, code)
    assert "datamill.engine.quick" in modules
