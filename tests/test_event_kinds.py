"""Event kinds, dataflow states and kinds are enums; every kind written is one, and the glossary lists them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from datamill.dataflows.dataflow import KINDS, STATES, DataflowKind, DataflowState
from datamill.events import EventKind

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "datamill"
GLOSSARY = ROOT / "docs" / "glossary.md"


def _kind_expressions(tree: ast.AST) -> list[ast.expr]:
    """Expressions given as an event's kind: ``events.append(conn, KIND, ...)``, ``_event(conn, KIND, ...)``
    and ``{"kind": KIND, ...}`` rows for ``append_many``."""
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and len(node.args) >= 2:
            f = node.func
            if (
                isinstance(f, ast.Attribute)
                and f.attr == "append"
                and isinstance(f.value, ast.Name)
                and f.value.id == "events"
            ) or (isinstance(f, ast.Name) and f.id in {"append", "_event"}):
                found.append(node.args[1])
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "kind":
                    found.append(value)
    return found


def _literal_kinds(expr: ast.expr) -> list[str]:
    """The string literals an expression can evaluate to (both arms of ``a if c else b``)."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return [expr.value]
    if isinstance(expr, ast.IfExp):
        return _literal_kinds(expr.body) + _literal_kinds(expr.orelse)
    return []


def test_every_kind_written_in_src_is_an_event_kind() -> None:
    known = {k.value for k in EventKind}
    unknown: list[str] = []
    used: set[str] = set()
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for expr in _kind_expressions(tree):
            for kind in _literal_kinds(expr):
                if "." not in kind:  # {"kind": "python"}: a step's kind, not an event
                    continue
                used.add(kind)
                if kind not in known:
                    unknown.append(f"{path.relative_to(ROOT)}:{expr.lineno}: {kind!r}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "EventKind":
                used.add(EventKind[node.attr].value)
    assert not unknown, "event kinds missing from EventKind:\n" + "\n".join(unknown)
    # And no member is dead: each is written somewhere (which also shows the scan finds the write sites).
    assert sorted(known - used) == []


def test_the_glossary_lists_every_event_kind() -> None:
    text = GLOSSARY.read_text()
    listed = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", text, re.MULTILINE))
    assert listed == {k.value for k in EventKind}


def test_enum_values_are_the_stored_strings() -> None:
    # Stored in the database and sent over the API as these strings: they must never change.
    assert [str(s) for s in STATES] == ["stopped", "running", "failed"]
    assert [str(k) for k in KINDS] == ["workflow", "stream", "directory"]
    assert EventKind.ITEM_CREATED == "item.created" and f"{EventKind.RUN_FINISHED}" == "run.finished"
    text = GLOSSARY.read_text()
    for value in [*DataflowState, *DataflowKind]:
        assert f"`{value}`" in text
