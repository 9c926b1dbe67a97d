"""The layer rule: no import cycles between modules, and no import pointing up the layers.

Every ``import`` and ``from ... import`` in ``src/datamill`` is read with :mod:`ast`, including the
ones inside functions (a lazy import is still a dependency) and under ``TYPE_CHECKING``. An import
of ``datamill.a.b`` is an edge to the module ``datamill.a.b`` (a package means its ``__init__.py``);
``from datamill.a import b`` is an edge to ``datamill.a.b`` when that is a module, else to
``datamill.a``. The parent packages Python runs on the way are not edges.

The layers, lowest first (CONTRIBUTING.md, "The layer rule", says why each module sits where it does).
A module may import from its own layer and the ones below it, never from one above.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: (layer, module prefixes), lowest first. A module belongs to the layer of its longest matching
#: prefix (the prefix itself or anything below it); ``datamill`` matches only the package itself.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # Pure values and rules every layer may use: errors, the version, canonical JSON, running a
    # coroutine from synchronous code, the typed records both clients share, the settings
    # registry, and the seams that datamill/__init__ fills.
    (
        "base",
        (
            "datamill.errors",
            "datamill._version",
            "datamill.canonical",
            "datamill.coroutine",
            "datamill.records",
            "datamill.config",
            "datamill.hooks",
            "datamill.limits",
            "datamill.record",
            "datamill.refs",
        ),
    ),
    # OpenMSIStream's wire format, chunk reassembly and the Kafka client settings: no database.
    ("streams", ("datamill.streams",)),
    ("db", ("datamill.db",)),
    ("events", ("datamill.events",)),
    ("store", ("datamill.store",)),
    # A local home: settings -> database + blob store + event log + store, opened together.
    ("home", ("datamill.home",)),
    ("pipeline", ("datamill.pipeline",)),
    ("executors", ("datamill.executors",)),
    ("engine", ("datamill.engine",)),
    ("dataflows", ("datamill.dataflows",)),
    # Sample content (a pipeline and a dataflow) made with the layers below; only `datamill up` installs it.
    ("demo", ("datamill.demo",)),
    ("provenance", ("datamill.provenance",)),
    ("services", ("datamill.services", "datamill.service", "datamill.nodes", "datamill.doctor")),
    ("client", ("datamill.client",)),
    # Dagster's side of the integration (resource, IO manager, the step worker): works through the client.
    ("dagster", ("datamill.dagster",)),
    ("api", ("datamill.api", "datamill.web")),
    ("cli", ("datamill.cli",)),
    # The public face and composition root: re-exports, and fills datamill.hooks.
    ("root", ("datamill", "datamill.console")),
]

#: Layers that may import only from these layers (besides their own), whatever lies between.
ONLY_FROM: dict[str, set[str]] = {
    # Pipelines are defined and run as tasks without a database: the pipeline layer is store-free.
    "pipeline": {"base"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "datamill").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _known(name: str) -> str | None:
    """``name`` or its nearest enclosing module that exists (``datamill.a.B`` -> ``datamill.a``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> dict[str, int]:
    """The datamill modules ``module`` imports, each with the first line that does."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str | None, line: int) -> None:
        if target and target != module:
            found.setdefault(target, line)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "datamill" or alias.name.startswith("datamill."):
                    add(_known(alias.name), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not (source == "datamill" or source.startswith("datamill.")):
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                add(sub if sub in MODULES else _known(source), node.lineno)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> str | None:
    best: tuple[int, str] | None = None
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            matches = module == prefix or (prefix != "datamill" and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), layer)
    return best[1] if best else None


RANK = {layer: i for i, (layer, _) in enumerate(LAYERS)}


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(SRC)}:{line}"


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in MODULES if _layer(m) is None)
    assert not missing, f"modules in no layer (add them to LAYERS here and to CONTRIBUTING.md): {missing}"


def test_the_graph_is_read() -> None:
    """A guard on the parser itself: imports it must see (module level, lazy, relative, from-package)."""
    assert "datamill.errors" in GRAPH["datamill.store.names"]
    assert "datamill.engine.quick" in GRAPH["datamill"]  # inside a function
    assert "datamill.store.users" in GRAPH["datamill.home"]  # `from datamill.store import users`
    assert "datamill.store.access" in GRAPH["datamill.store"]  # `from datamill.store import access as module`


def test_no_upward_imports() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        here = _layer(module)
        assert here is not None
        for target, line in targets.items():
            there = _layer(target)
            assert there is not None
            upward = RANK[there] > RANK[here]
            outside = here in ONLY_FROM and there != here and there not in ONLY_FROM[here]
            if upward or outside:
                rule = f"{here} may not import {there}" if outside and not upward else f"{here} is below {there}"
                wrong.append(f"{module} -> {target} ({_where(module, line)}; {rule})")
    assert not wrong, "imports against the layer rule:\n  " + "\n  ".join(sorted(wrong))


def _cycles() -> list[list[str]]:
    """One cycle (as a closed chain) through each strongly connected group of two or more modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph has ~100 nodes, recursion depth is no concern
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)

    return [_cycle_through(group) for group in groups]


def _cycle_through(group: set[str]) -> list[str]:
    """The shortest cycle through the smallest module of ``group``, closed, with a note of the group."""
    start = min(group)
    # Breadth-first from start back to start inside the group.
    parent: dict[str, str] = {}
    queue = [start]
    found = None
    while queue and found is None:
        v = queue.pop(0)
        for w in sorted(GRAPH[v]):
            if w == start:
                found = v
                break
            if w in group and w not in parent:
                parent[w] = v
                queue.append(w)
    chain = [start]
    node = found
    while node is not None and node != start:
        chain.append(node)
        node = parent.get(node)
    return [start, *reversed(chain[1:]), start, f"(group of {len(group)}: {', '.join(sorted(group))})"]


def test_no_import_cycles() -> None:
    cycles = _cycles()
    assert not cycles, "import cycles:\n  " + "\n  ".join(" -> ".join(c[:-1]) + " " + c[-1] for c in cycles)


@pytest.mark.parametrize("layer", [layer for layer, _ in LAYERS])
def test_layers_are_documented(layer: str) -> None:
    """CONTRIBUTING.md lists the same layers in the same order."""
    text = (SRC.parent / "CONTRIBUTING.md").read_text()
    section = text.split("## The layer rule", 1)[1].split("\n## ", 1)[0]
    documented = [m.group(1) for m in re.finditer(r"^\d+\. `([\w.]+)`", section, re.MULTILINE)]
    assert layer in documented, f"layer {layer!r} is missing from CONTRIBUTING.md"
    assert documented.index(layer) == RANK[layer], f"CONTRIBUTING.md lists the layers in another order: {documented}"


def test_reports_name_the_pair() -> None:
    """The failure messages name the modules and the line (checked on a made-up graph)."""
    saved = dict(GRAPH)
    try:
        GRAPH["datamill.errors"] = {"datamill.store.store": 7}
        with pytest.raises(AssertionError, match=r"datamill.errors -> datamill.store.store \(datamill/errors.py:7; "):
            test_no_upward_imports()
        GRAPH["datamill.store.names"] = {**GRAPH["datamill.store.names"], "datamill.store.store": 3}
        with pytest.raises(AssertionError, match=r"import cycles:\n  .*datamill.store.names"):
            test_no_import_cycles()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)
