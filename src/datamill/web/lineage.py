"""The provenance panel's drawing: an item version's lineage as a layered graph in inline SVG.

The upstream and downstream graphs of :class:`~datamill.provenance.Lineage` are merged and laid
out top to bottom in the direction data flowed: a run starts its tasks, a task reads its input
versions and generates its outputs. Each node sits in the column of its longest path from a
node with no inputs (a layer is a row); within a row nodes keep the order they were found in. Users and
dataflows (PROV agents) are left out of the drawing. Nodes the user may not see are drawn
without a name or link, as the lineage API shows them.

No JavaScript: the SVG is rendered by a template, every node a link (versions to their item
page, tasks and runs to the run pages).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlencode

from datamill.provenance import LineageGraph, Node, Rel
from datamill.web.urls import item_url

NODE_W = 220
NODE_H = 46
GAP_X = 18
GAP_Y = 34
PAD = 12
#: Nodes drawn at most; a larger lineage is cut (its downloads hold everything).
MAX_NODES = 150
LABEL_CHARS = 30
DRAWN_TYPES = {"version", "output", "task", "run"}


@dataclass
class Box:
    """A node placed on the canvas."""

    id: str
    x: int
    y: int
    title: str
    label: str
    kind: str
    href: str | None
    current: bool = False


@dataclass
class Line:
    """An edge as an SVG path."""

    d: str


@dataclass
class Drawing:
    """What the template draws: a canvas size, boxes and lines."""

    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    cut: bool = False


def merge(*graphs: LineageGraph) -> LineageGraph:
    """One graph with the nodes and edges of all, rooted at the first one's root."""
    out = LineageGraph(graphs[0].root, graphs[0].direction)
    for g in graphs:
        for node in g.nodes.values():
            out.add_node(node)
        for e in g.edges:
            out.add_edge(e.kind, e.source, e.target, e.role)
    return out


def _flow(graph: LineageGraph, keep: set[str]) -> list[tuple[str, str]]:
    """Edges in the direction data moved (``a`` before ``b``), between drawn nodes."""
    out = []
    for e in graph.edges:
        if e.kind in (Rel.USED, Rel.WAS_STARTED_BY):  # task used entity; task started by run
            a, b = e.target, e.source
        elif e.kind in (Rel.WAS_GENERATED_BY, Rel.WAS_INFLUENCED_BY, Rel.ALTERNATE_OF):
            a, b = (e.target, e.source) if e.kind != Rel.ALTERNATE_OF else (e.source, e.target)
        else:
            continue
        if a in keep and b in keep and a != b:
            out.append((a, b))
    return list(dict.fromkeys(out))


def _layers(order: list[str], edges: list[tuple[str, str]]) -> dict[str, int]:
    """Longest-path layering; a cycle (which recorded lineage should not have) is cut where met."""
    preds: dict[str, list[str]] = {n: [] for n in order}
    for a, b in edges:
        preds[b].append(a)
    layer: dict[str, int] = {}
    visiting: set[str] = set()

    def depth(n: str) -> int:
        if n in layer:
            return layer[n]
        if n in visiting:
            return 0
        visiting.add(n)
        layer[n] = max((depth(p) + 1 for p in preds[n]), default=0)
        visiting.discard(n)
        return layer[n]

    for n in order:
        depth(n)
    return layer


def href_of(node: Node) -> str | None:
    """Where a node links to: an item version's page, a task's or a run's page."""
    if not node.visible:
        return None
    if node.type == "version":
        return item_url(str(node.attrs["path"]), int(node.attrs["version"]))
    if node.type == "task":
        return f"/runs/{node.attrs['run']}?{urlencode({'task': node.attrs['task']})}"
    if node.type == "run":
        return f"/runs/{node.attrs['run']}"
    return None  # an unpublished task output has no page of its own


def _label(node: Node) -> tuple[str, str]:
    """(short label, kind line) of a node."""
    if not node.visible:
        return node.label, node.type
    if node.type == "version":
        name = str(node.attrs.get("name", node.label))
        return name, f"{node.attrs.get('folder')} · version {node.attrs.get('version')}"
    if node.type == "task":
        step = str(node.attrs.get("step", node.label))
        return step, f"step · task {node.attrs.get('task')} · {node.attrs.get('status')}"
    if node.type == "run":
        return f"run {node.attrs.get('run')}", f"{node.attrs.get('pipeline')} · {node.attrs.get('status')}"
    return str(node.attrs.get("name", node.label)), f"output of task {node.attrs.get('task')}"


def _short(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def draw(graph: LineageGraph) -> Drawing:
    """Lay ``graph`` out (its root highlighted)."""
    order = [n.id for n in graph.nodes.values() if n.type in DRAWN_TYPES]
    cut = len(order) > MAX_NODES
    keep = set(order[:MAX_NODES])
    order = [n for n in order if n in keep]
    edges = _flow(graph, keep)
    layer = _layers(order, edges)
    columns: dict[int, list[str]] = {}
    for n in order:
        columns.setdefault(layer[n], []).append(n)
    pos: dict[str, tuple[int, int]] = {}
    for row, ids in columns.items():
        for col, n in enumerate(ids):
            pos[n] = (PAD + col * (NODE_W + GAP_X), PAD + row * (NODE_H + GAP_Y))
    width = PAD * 2 + max((len(c) for c in columns.values()), default=1) * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + (max(columns, default=0) + 1) * (NODE_H + GAP_Y) - GAP_Y
    drawing = Drawing(width, height, cut=cut)
    for n in order:
        node = graph.nodes[n]
        label, kind = _label(node)
        x, y = pos[n]
        drawing.boxes.append(Box(n, x, y, node.label, _short(label), _short(kind), href_of(node), n == graph.root))
    for a, b in edges:
        (ax, ay), (bx, by) = pos[a], pos[b]
        x1, y1, x2, y2 = ax + NODE_W // 2, ay + NODE_H, bx + NODE_W // 2, by - 4
        mid = (y1 + y2) // 2
        drawing.lines.append(Line(f"M{x1},{y1} C{x1},{mid} {x2},{mid} {x2},{y2}"))
    return drawing
