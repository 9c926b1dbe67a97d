"""The quick coercion of command-line values (datamill.cli.coercion) agrees with Typer's own.

For every parameter of every ``datamill`` command and a spread of values, the quick path either
declines (and Typer coerces, as before) or gives exactly what Typer's coercion gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
import typer.main
from typer._coercion import build_runtime_param
from typer.testing import CliRunner

from datamill.cli import COMMANDS, app
from datamill.cli.coercion import FULL, QuickContext, quick_value

VALUES: list[Any] = [
    None,
    "",
    "x",
    "Raw Data/a.csv",
    "0",
    "7",
    "007",
    "-3",
    " 4",
    "1_000",
    "1e3",
    "٣",
    "9223372036854775807",
    "9223372036854775808",
    0,
    5,
    True,
    2.5,
    (),
    ("a", "b"),
    ["a"],
    ("a", 1),
    b"bytes",
]


def _parameters() -> Iterator[tuple[str, Any, Any]]:
    root = typer.main.get_command(app)
    ctx = typer.Context(root)
    stack: list[tuple[str, Any]] = [("datamill", root)]
    while stack:
        path, command = stack.pop()
        for param in command.get_params(ctx):
            yield path, command, param
        if command is root:
            stack.extend((f"{path} {name}", root.get_command(ctx, name)) for name in COMMANDS)
        else:
            stack.extend((f"{path} {name}", sub) for name, sub in getattr(command, "commands", {}).items())


def _typer(value: Any, param: Any, ctx: Any) -> tuple[str, Any]:
    try:
        return "ok", build_runtime_param(param.type_descriptor).coerce(value, param=param, ctx=ctx)
    except Exception as exc:
        return "error", type(exc).__name__


def test_quick_coercion_agrees_with_typer() -> None:
    checked = quick = 0
    for path, command, param in _parameters():
        ctx = typer.Context(command)
        for value in VALUES:
            got = quick_value(value, param)
            checked += 1
            if got is FULL:
                continue
            quick += 1
            outcome, expected = _typer(value, param, ctx)
            assert outcome == "ok", f"{path} {param.name}={value!r}: quick gave {got!r}, Typer refused ({expected})"
            assert got == expected and type(got) is type(expected), f"{path} {param.name}={value!r}"
    assert quick > 100 and checked > quick  # both paths were exercised


@pytest.mark.parametrize(
    ("args", "message"),
    [(["events", "--count", "abc"], "a valid integer"), (["events", "-n", "0"], "greater than or equal to 1")],
)
def test_values_the_quick_path_declines_get_typers_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert message in result.stderr


def test_every_loaded_command_parses_with_the_quick_context() -> None:
    root = typer.main.get_command(app)
    assert root.context_class is QuickContext
    ctx = typer.Context(root)
    for name in COMMANDS:
        command = root.get_command(ctx, name)
        assert command is not None and command.context_class is QuickContext, name
