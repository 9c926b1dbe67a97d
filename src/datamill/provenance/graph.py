"""The lineage graph: entities, activities and agents joined by PROV relations, and their ids.

A query (:mod:`datamill.provenance.walker`) answers a :class:`LineageGraph`; the renderers
(:mod:`~datamill.provenance.render`, :mod:`~datamill.provenance.prov`) turn it into text. Node ids
are PROV qualified names in the ``dm`` namespace (``dm:version/12``, ``dm:task/7``, …).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import quote

#: The namespace of datamill identifiers in PROV documents (prefix ``dm``).
DM_NAMESPACE = "urn:datamill:"
DM = "dm"
#: The label of a node the actor may not see.
HIDDEN = "(not visible)"
#: The label of a version that no longer exists (its item was deleted).
DELETED = "(deleted)"

Direction = Literal["upstream", "downstream"]
NodeKind = Literal["entity", "activity", "agent"]


class Rel(StrEnum):
    """Relations between nodes, named as in PROV; the edge goes from the first PROV argument to the second."""

    #: activity -> entity it read
    USED = "used"
    #: entity -> activity that created it
    WAS_GENERATED_BY = "wasGeneratedBy"
    #: entity -> entity it was computed from
    WAS_DERIVED_FROM = "wasDerivedFrom"
    #: activity -> agent (the requesting user, the dataflow)
    WAS_ASSOCIATED_WITH = "wasAssociatedWith"
    #: entity -> agent (who created the version)
    WAS_ATTRIBUTED_TO = "wasAttributedTo"
    #: task -> the run that started it
    WAS_STARTED_BY = "wasStartedBy"
    #: entity -> activity that published it again without generating it (a cached task)
    WAS_INFLUENCED_BY = "wasInfluencedBy"
    #: output of a task that ran -> the item version that already held the same bytes (the output
    #: was published as that version, which an earlier task generated)
    ALTERNATE_OF = "alternateOf"


@dataclass
class Node:
    """One entity, activity or agent of a lineage graph.

    ``type`` is ``version`` or ``output`` (entities), ``task`` or ``run`` (activities), ``user`` or
    ``dataflow`` (agents). ``attrs`` holds what the actor may see (nothing for hidden nodes).
    """

    id: str
    kind: NodeKind
    type: str
    label: str
    visible: bool = True
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "id": self.id,
            "kind": self.kind,
            "type": self.type,
            "label": self.label,
            "visible": self.visible,
            **self.attrs,
        }


@dataclass(frozen=True)
class Edge:
    """A relation ``source -kind-> target``; ``role`` is the parameter an input was used as."""

    kind: Rel
    source: str
    target: str
    role: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        out: dict[str, Any] = {"kind": str(self.kind), "source": self.source, "target": self.target}
        if self.role is not None:
            out["role"] = self.role
        return out


@dataclass
class LineageGraph:
    """The answer of a lineage query: nodes by id, edges in discovery order, and the node asked about."""

    root: str
    direction: Direction
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    _edge_set: set[Edge] = field(default_factory=set, repr=False)
    _from: dict[str, list[Edge]] = field(default_factory=dict, repr=False)
    _to: dict[str, list[Edge]] = field(default_factory=dict, repr=False)

    def add_node(self, node: Node) -> Node:
        """Add ``node`` unless one with its id is there; returns the node kept."""
        return self.nodes.setdefault(node.id, node)

    def add_edge(self, kind: Rel, source: str, target: str, role: str | None = None) -> None:
        """Add an edge once."""
        edge = Edge(kind, source, target, role)
        if edge not in self._edge_set:
            self._edge_set.add(edge)
            self.edges.append(edge)
            self._from.setdefault(source, []).append(edge)
            self._to.setdefault(target, []).append(edge)

    def edges_from(self, source: str, *kinds: Rel) -> list[Edge]:
        """Edges leaving ``source`` (of the given kinds, or all)."""
        return [e for e in self._from.get(source, ()) if not kinds or e.kind in kinds]

    def edges_to(self, target: str, *kinds: Rel) -> list[Edge]:
        """Edges arriving at ``target`` (of the given kinds, or all)."""
        return [e for e in self._to.get(target, ()) if not kinds or e.kind in kinds]

    def of_type(self, type_: str) -> list[Node]:
        """Nodes of one type (``version``, ``output``, ``task``, ``run``, ``user``, ``dataflow``)."""
        return [n for n in self.nodes.values() if n.type == type_]

    def versions(self) -> list[tuple[str, int]]:
        """``(path, version)`` of every visible item version in the graph."""
        return [(n.attrs["path"], n.attrs["version"]) for n in self.of_type("version") if n.visible]

    def find_version(self, path: str, version: int | None = None) -> Node | None:
        """The visible version node of ``path`` (the given version, else the newest in the graph)."""
        found = [
            n
            for n in self.of_type("version")
            if n.visible and n.attrs["path"] == path and (version is None or n.attrs["version"] == version)
        ]
        return max(found, key=lambda n: n.attrs["version"]) if found else None


def local_name(text: str) -> str:
    """A name made safe as the local part of a PROV qualified name (percent-encoded)."""
    return quote(text, safe="")


def version_id(vid: int) -> str:
    """``dm:version/12``."""
    return f"{DM}:version/{vid}"


def task_id(tid: int) -> str:
    """``dm:task/7``."""
    return f"{DM}:task/{tid}"


def run_id_of(rid: int) -> str:
    """``dm:run/3``."""
    return f"{DM}:run/{rid}"


def output_id(tid: int, name: str) -> str:
    """``dm:output/7/x.txt``: an output of a task that was not published as an item version."""
    return f"{DM}:output/{tid}/{local_name(name)}"


def user_id(name: str) -> str:
    """``dm:user/admin``."""
    return f"{DM}:user/{local_name(name)}"


def dataflow_id(name: str) -> str:
    """``dm:dataflow/derived-data``."""
    return f"{DM}:dataflow/{local_name(name)}"


def iso_time(ts: float | None) -> str | None:
    """A timestamp (seconds since the epoch) as ISO 8601 text in UTC, to the second."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")
