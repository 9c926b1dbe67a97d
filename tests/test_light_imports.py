"""What the light entry points may not load: ``import datamill``, the remote client, ``datamill --help``
and a ``datamill`` command against a server load neither the database layer nor the demo's packages.

Each case runs in a fresh interpreter (a subprocess), which reports the modules it ended up with.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main

from datamill.api import ServerHandle, start_background_server
from datamill.cli import app, help_page
from datamill.cli.commands import COMMANDS, module_commands
from datamill.config import load_settings
from datamill.home import Home

#: Never loaded by a light entry point (top-level package names). Pydantic is Typer's way of coercing
#: command-line values; the CLI does without it for plain values (datamill.cli.coercion).
HEAVY = {"sqlalchemy", "pandas", "pyarrow", "matplotlib", "pydantic"}
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


def _loaded(tmp_path: Path, code: str, *argv: str, **environ: str) -> list[str]:
    """Run ``code`` in a fresh interpreter (with ``argv`` as the command line); the modules it loaded."""
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAMILL_")}
    env.update(environ)
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


def _command_modules(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if m in {f"datamill.cli.{e.module}" for e in COMMANDS.values()})


#: Libraries `datamill --help` does without: the page is written from the command table
#: (datamill.cli.help_page), not by Typer with Rich (whose help loads markdown-it and pygments).
HELP_LIBRARIES = {"typer", "click", "rich", "markdown_it", "pygments", "httpx", "httpcore", "h11"}
#: Libraries a remote `datamill ls` does without: plain GETs over http.client (datamill.client.connections;
#: httpx, over datamill.client.transport, only for the rest), a plain table (datamill.cli.output), no
#: Pydantic coercion.
REMOTE_LS_LIBRARIES = {"httpx", "httpcore", "h11", "idna", "anyio", "rich", "markdown_it", "pygments"}
REMOTE_LS_LIBRARIES |= {"pydantic", "certifi"}


def _libraries(modules: list[str], names: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in names)


def test_datamill_help_is_light(tmp_path: Path) -> None:
    for flag in ("--help", "-h"):
        modules = _loaded(tmp_path, "from datamill.cli import main\nmain()", flag, COLUMNS="100")
        assert "datamill.cli.commands" in modules and "datamill.cli.help_page" in modules
        assert not _command_modules(modules)  # listed from the table, not loaded
        assert "datamill.client" not in modules and "datamill.cli.root" not in modules
        assert not _libraries(modules, HELP_LIBRARIES)
        assert not _heavy(modules)
        assert not _local_stack(modules)


@pytest.mark.parametrize("width", [70, 80, 100, 137, 200])
def test_the_light_help_page_is_typers(
    width: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The page written without Typer is the page Typer writes, character for character."""
    monkeypatch.setenv("COLUMNS", str(width))
    for name in help_page.RICH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    root = typer.main.get_command(app)
    root.get_help(typer.Context(root, info_name="datamill", **root.context_settings))  # with `-h`, as run
    typers = capsys.readouterr().out
    assert help_page.page_width() == width  # stdout is no terminal here: the light page is used
    assert help_page.render(width) == typers + "\n"  # Click echoes the (empty) help string after Rich's page
    assert "╭─ Pipelines and runs" in typers and "[env var: DATAMILL_URL]" in typers


def test_a_narrow_or_coloured_help_is_left_to_typer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("COLUMNS", str(help_page.MIN_WIDTH - 1))
    assert help_page.page_width() is None
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert help_page.page_width() is None
    assert help_page.is_root_help(["-h"]) and not help_page.is_root_help(["ls", "--help"])


def test_a_remote_command_is_light(tmp_path: Path, server: tuple[ServerHandle, str]) -> None:
    handle, token = server
    code = "from datamill.cli import main\nmain()"
    for json_flag in (["--json"], []):
        modules = _loaded(tmp_path, code, "--url", handle.url, "--token", token, "ls", "Raw", *json_flag)
        assert "datamill.client.remote" in modules and "datamill.client.connections" in modules
        assert _command_modules(modules) == ["datamill.cli.items"]  # the module of `ls`, no other
        assert not _libraries(modules, REMOTE_LS_LIBRARIES)
        assert not _heavy(modules)
        assert not _local_stack(modules)


def _registered() -> dict[str, Any]:
    """Every root command as the modules register it (all loaded), by name."""
    out: dict[str, Any] = {}
    for module in dict.fromkeys(e.module for e in COMMANDS.values()):
        loaded = module_commands(module)
        assert not set(loaded) & set(out), f"{module} registers a name another module has"
        out.update((name, (module, command)) for name, command in loaded.items())
    return out


def _summary(command: Any) -> str:
    # What Typer lists for a command: the first paragraph of its help, its lines joined.
    return inspect.cleandoc(command.short_help or command.help or "").split("\n\n")[0].replace("\n", " ").strip()


def test_the_command_table_matches_the_registered_commands() -> None:
    """The lazily loaded root still has every command, listed in ``--help`` as its module describes it."""
    registered = _registered()
    assert list(COMMANDS) == [n for n in COMMANDS if n in registered]
    assert set(COMMANDS) == set(registered), "add the command to (or remove it from) datamill/cli/commands.py"
    for name, (module, command) in registered.items():
        entry = COMMANDS[name]
        assert (entry.module, entry.panel) == (module, command.rich_help_panel), name
        assert entry.summary == _summary(command), f"{name}: update its summary in datamill/cli/commands.py"


def test_datamill_help_lists_every_command(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``datamill --help`` names every command, under its panel, as a fully loaded root would."""
    monkeypatch.setenv("COLUMNS", "200")
    root = typer.main.get_command(app)
    ctx = typer.Context(root, info_name="datamill")
    root.get_help(ctx)  # Typer's Rich help prints itself
    listed = capsys.readouterr().out
    rows = re.findall(r"^│ (\S+) {2,}(.+?)\s*│$", listed, flags=re.MULTILINE)
    assert [name for name, _ in rows if not name.startswith("-")] == list(COMMANDS)
    # The same root with every command loaded: the list is then drawn from the commands themselves.
    assert all(root.get_command(ctx, name) is not None for name in COMMANDS)
    root.get_help(ctx)
    assert capsys.readouterr().out == listed
