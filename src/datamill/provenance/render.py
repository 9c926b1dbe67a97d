"""Lineage graphs as text: the CLI's indented tree, JSON, and :func:`render` for every format.

PROV documents (PROV-JSON, PROV-N) are made in :mod:`datamill.provenance.prov`.
"""

from __future__ import annotations

import json
from typing import Any

from datamill.errors import InvalidInput
from datamill.provenance.graph import LineageGraph, Node, Rel, iso_time
from datamill.provenance.prov import to_prov_json, to_prov_n


def _short(digest: str | None) -> str:
    if not digest:
        return ""
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}" if hexpart else digest[:16]


def _tree_label(graph: LineageGraph, node: Node) -> str:
    if not node.visible:
        return node.label
    a = node.attrs
    if node.type == "version":
        return f"{node.label}  {_short(a.get('digest'))}"
    if node.type == "output":
        if "same_as" in a or any(graph.edges_from(node.id, Rel.ALTERNATE_OF)):
            same = [graph.nodes[e.target] for e in graph.edges_from(node.id, Rel.ALTERNATE_OF)]
            where = f"same bytes as {same[0].label}" if same and same[0].visible else "same bytes as a version"
            return f"{a['name']}  (output of task {a['task']}; {where})  {_short(a.get('digest'))}"
        return f"{a['name']}  (not published; output of task {a['task']})  {_short(a.get('digest'))}"
    if node.type == "task":
        parts = [f"{a['step']}", f"task {a['task']}", f"run {a['run']}", str(a["status"])]
        if a.get("cached_from"):
            parts[-1] += f" from task {a['cached_from']}"
        when = iso_time(a.get("finished_at") or a.get("started_at"))
        if when:
            parts.append(when.replace("T", " ").replace("+00:00", "Z"))
        by = [graph.nodes[e.target].label for e in graph.edges_from(node.id, Rel.WAS_ASSOCIATED_WITH)]
        if by:
            parts.append("by " + ", ".join(by))
        text = "⚙ " + " · ".join(parts)
        if a.get("params"):
            text += "  (" + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(a["params"].items())) + ")"
        return text
    return node.label


def _tree_children(graph: LineageGraph, node: Node) -> list[tuple[str, str]]:
    """``(child id, note)`` pairs under ``node`` in the tree of the graph's direction."""
    if graph.direction == "upstream":
        if node.kind == "entity":
            return [(e.target, "") for e in graph.edges_from(node.id, Rel.WAS_GENERATED_BY)]
        return [(e.target, "") for e in graph.edges_from(node.id, Rel.USED)]
    if node.kind == "entity":
        return [(e.source, "") for e in graph.edges_to(node.id, Rel.USED)]
    made = [(e.source, "") for e in graph.edges_to(node.id, Rel.WAS_GENERATED_BY)]
    made += [(e.source, "  (reused)") for e in graph.edges_to(node.id, Rel.WAS_INFLUENCED_BY)]
    return made


def to_tree(graph: LineageGraph) -> str:
    """The graph as an indented tree from its root: inputs below outputs (upstream) or the reverse."""
    lines: list[str] = []
    shown: set[str] = set()

    def walk(nid: str, prefix: str, last: bool, top: bool, note: str) -> None:
        node = graph.nodes[nid]
        branch = "" if top else ("└─ " if last else "├─ ")
        again = nid in shown and bool(_tree_children(graph, node))
        lines.append(prefix + branch + _tree_label(graph, node) + note + ("  (see above)" if again else ""))
        if again:
            return
        shown.add(nid)
        kids = _tree_children(graph, node)
        child_prefix = prefix if top else prefix + ("   " if last else "│  ")
        for i, (kid, kid_note) in enumerate(kids):
            walk(kid, child_prefix, i == len(kids) - 1, False, kid_note)

    walk(graph.root, "", True, True, "")
    if graph.direction == "downstream" and len(lines) == 1:
        lines.append("   (nothing was derived from it yet)")
    if graph.direction == "upstream" and len(lines) == 1:
        lines.append("   (uploaded, not made by a run)")
    return "\n".join(lines) + "\n"


def to_json(graph: LineageGraph) -> dict[str, Any]:
    """The graph as a JSON-able dict: ``root``, ``direction``, ``nodes``, ``edges``."""
    return {
        "root": graph.root,
        "direction": graph.direction,
        "nodes": [n.to_dict() for n in graph.nodes.values()],
        "edges": [e.to_dict() for e in graph.edges],
    }


#: Names of the formats :func:`render` knows, as the CLI and the API take them.
FORMATS = ("tree", "json", "prov-json", "prov-n")


def render(graph: LineageGraph, fmt: str) -> str:
    """The graph as text in one of :data:`FORMATS`."""
    if fmt == "tree":
        return to_tree(graph)
    if fmt == "json":
        return json.dumps(to_json(graph), indent=2, ensure_ascii=False, default=str) + "\n"
    if fmt == "prov-json":
        return to_prov_json(graph) + "\n"
    if fmt == "prov-n":
        return to_prov_n(graph)
    raise InvalidInput(f"unknown lineage format {fmt!r}; use one of {', '.join((*FORMATS, 'ro-crate'))}")
