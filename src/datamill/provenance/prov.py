"""Lineage graphs as W3C PROV documents (:class:`prov.model.ProvDocument`, PROV-JSON, PROV-N).

Node ids are qualified names in the ``dm`` namespace (``urn:datamill:``); every edge kind of
:class:`~datamill.provenance.graph.Rel` is the PROV relation of the same name.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from datamill.provenance.graph import DM, DM_NAMESPACE, Edge, LineageGraph, Node, Rel, run_id_of, task_id


def _time(ts: float | None) -> dt.datetime | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC)


def _clean(attrs: dict[str, Any]) -> dict[str, Any]:
    """PROV attributes without empty values; anything not a literal PROV knows becomes JSON text."""
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if v is None or v == "":
            continue
        out[k] = json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v
    return out


def to_prov(graph: LineageGraph) -> Any:
    """The graph as a :class:`prov.model.ProvDocument` (namespace ``dm``: ``urn:datamill:``)."""
    from prov.model import ProvDocument

    doc = ProvDocument()
    ns = doc.add_namespace(DM, DM_NAMESPACE)
    for node in graph.nodes.values():
        _add_node(doc, ns, node)
    for edge in graph.edges:
        _add_edge(doc, ns, edge)
    return doc


def _qn(ns: Any, ident: str) -> Any:
    """The qualified name in ``ns`` of a node id (``dm:task/7`` -> ``ns["task/7"]``)."""
    return ns[ident.split(":", 1)[1]]


def _add_node(doc: Any, ns: Any, node: Node) -> None:
    """Add ``node`` to ``doc`` as a PROV entity, activity or agent with the attributes it may show."""
    from prov.constants import PROV

    base: dict[str, Any] = {"prov:label": node.label}
    if node.kind == "entity":
        doc.entity(_qn(ns, node.id), _clean({**base, **_entity_attrs(ns, node)}))
    elif node.kind == "activity":
        start = end = None
        if node.visible and node.type in {"task", "run"}:
            start, end = _time(node.attrs.get("started_at")), _time(node.attrs.get("finished_at"))
        doc.activity(_qn(ns, node.id), start, end, _clean({**base, **_activity_attrs(ns, node)}))
    else:
        kind = PROV["Person"] if node.type == "user" else PROV["SoftwareAgent"]
        doc.agent(_qn(ns, node.id), _clean({**base, "prov:type": kind, "dm:name": node.attrs.get("name")}))


def _entity_attrs(ns: Any, node: Node) -> dict[str, Any]:
    """PROV attributes of a visible item version or task output (none for hidden ones)."""
    a = node.attrs
    if not node.visible:
        return {}
    if node.type == "version":
        return {
            "prov:type": ns["ItemVersion"],
            "dm:name": a["name"],
            "dm:folder": a["folder"],
            "dm:path": a["path"],
            "dm:version": a["version"],
            "dm:digest": a["digest"],
            "dm:size": a["size"],
            "dm:content_type": a["content_type"],
            "prov:generatedAtTime": _time(a.get("created_at")),
        }
    return {
        "prov:type": ns["TaskOutput"],
        "dm:name": a["name"],
        "dm:digest": a["digest"],
        "dm:size": a["size"],
        "dm:content_type": a["content_type"],
    }


def _activity_attrs(ns: Any, node: Node) -> dict[str, Any]:
    """PROV attributes of a visible task or run (none for hidden ones)."""
    a = node.attrs
    if node.visible and node.type == "task":
        return {
            "prov:type": ns["Task"],
            "dm:step": a["step"],
            "dm:step_code": a["step_code"],
            "dm:params": json.dumps(a.get("params") or {}, sort_keys=True),
            "dm:status": a["status"],
            "dm:item": a.get("item"),
            "dm:run": _qn(ns, run_id_of(a["run"])),
            "dm:executor": a.get("executor"),
            "dm:cached_from": _qn(ns, task_id(a["cached_from"])) if a.get("cached_from") else None,
            "dm:image": a.get("image"),
            "dm:image_digest": a.get("image_digest"),
        }
    if node.visible and node.type == "run":
        return {
            "prov:type": ns["Run"],
            "dm:pipeline": a["pipeline"],
            "dm:pipeline_ref": a["pipeline_ref"],
            "dm:status": a["status"],
            "dm:reason": a.get("reason"),
            "dm:executor": a.get("executor"),
            "dm:dataflow_version": a.get("dataflow_version"),
        }
    return {}


def _add_edge(doc: Any, ns: Any, e: Edge) -> None:
    """Add the PROV relation of edge ``e`` to ``doc``."""
    s, t = _qn(ns, e.source), _qn(ns, e.target)
    if e.kind is Rel.USED:
        doc.used(s, t, other_attributes={"prov:role": e.role} if e.role else None)
    elif e.kind is Rel.WAS_STARTED_BY:
        doc.wasStartedBy(s, starter=t)
    else:
        # The other relations take (subject, object) and are named as ProvBundle's methods.
        getattr(doc, str(e.kind))(s, t)


def to_prov_json(graph: LineageGraph) -> str:
    """The graph as PROV-JSON text."""
    text: str = to_prov(graph).serialize(format="json", indent=2)
    return text


def to_prov_n(graph: LineageGraph) -> str:
    """The graph as PROV-N text."""
    text: str = to_prov(graph).get_provn()
    return text + "\n"
