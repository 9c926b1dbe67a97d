"""``DatamillIOManager``: Dagster outputs stored as datamill item versions, and loaded back.

Each output goes to ``folder/<asset key path><ext>`` (``Derived/raw/words.json`` for the asset
``raw/words``; ``<op>.<output>`` for op outputs that are not assets), encoded by its type (see
:mod:`datamill.dagster.values`: bytes, str, JSON values, files), as a new version whose metadata
holds ``provenance``: ``dagster`` (run id, job, op, output, asset key, code version, Dagster's
version) and ``wasDerivedFrom`` (the item versions the op loaded through this IO manager). The
Dagster output gets the item's path, version and digest as metadata, so both UIs link up.

Inside a datamill step (:func:`datamill.dagster_step`) the worker binds it to the task: outputs
become the task's outputs and the engine publishes them, with the same provenance, into the run's
destination; values it cannot store (any other type) pass between ops in memory only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import PrivateAttr

import dagster as dg
from datamill.dagster import values
from datamill.dagster.connection import asset_path, connect_client, output_provenance, split_place
from datamill.dagster.session import active
from datamill.errors import NotFound

if TYPE_CHECKING:
    from datamill.client.base import Client

__all__ = ["DatamillIOManager"]


def _key(context: dg.OutputContext) -> str:
    """What an output is stored under, without extension: the asset key path, else ``op.output``."""
    asset = asset_path(context)
    if asset is not None:
        return asset
    op = context.op_def.name
    return op if context.name == "result" else f"{op}.{context.name}"


class DatamillIOManager(dg.ConfigurableIOManager):
    """Stores outputs in the datamill folder ``folder``; see the module docstring.

    Connects like :class:`~datamill.dagster.resource.DatamillResource`: ``url`` + ``token`` (a
    server) or ``home`` (an embedded home); pass the token as ``dg.EnvVar("DATAMILL_TOKEN")``.
    """

    url: str | None = None
    token: str | None = None
    home: str | None = None
    folder: str = "dagster"

    _client: Any = PrivateAttr(default=None)
    #: step key -> the item versions its inputs were loaded from (for wasDerivedFrom)
    _loaded: dict[str, list[dict[str, Any]]] = PrivateAttr(default_factory=dict)

    def client(self) -> Client:
        """The datamill client (opened on first use)."""
        if self._client is None:
            self._client = connect_client(self.url, self.token, self.home)
        client: Client = self._client
        return client

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """Close the client, if one was opened."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        """Store ``obj`` as a new item version (or, inside a step, a task output)."""
        key = _key(context)
        session = active()
        if session is not None:
            prov = output_provenance(context, session.code_version)
            name = session.store(key, obj, {k: v for k, v in prov.items() if v is not None})
            if name is None:
                context.log.info(f"datamill: output {key!r} is a {type(obj).__name__}: passed on in memory, not stored")
            else:
                context.add_output_metadata({"datamill_output": name})
            return
        if obj is None:
            context.log.info(f"datamill: output {key!r} is None; nothing stored")
            return
        data = values.encode(obj)
        folder, name = split_place(f"{self.folder}/{key}{values.extension_for(obj)}")
        client = self.client()
        client.create_folder(folder, exist_ok=True)
        provenance: dict[str, Any] = {"dagster": {k: v for k, v in output_provenance(context).items() if v is not None}}
        derived = self._loaded.get(_try_step_key(context), [])
        if derived:
            provenance["wasDerivedFrom"] = derived
        v = client.put(folder, name, data, metadata={"provenance": provenance})
        context.add_output_metadata(
            {"datamill_path": f"{folder}/{name}", "datamill_version": v.version, "datamill_digest": v.digest}
        )

    def load_input(self, context: dg.InputContext) -> Any:
        """The value an upstream output stored: its current item version, decoded."""
        upstream = context.upstream_output
        if upstream is None:
            raise dg.DagsterInvariantViolationError("DatamillIOManager loads only outputs of other ops or assets")
        key = asset_path(context) or _key(upstream)
        session = active()
        if session is not None:
            return session.load(key)
        folder, stem = split_place(f"{self.folder}/{key}")
        client = self.client()
        try:
            listed = client.list_items(folder)
        except NotFound:
            listed = []
        matches = [i for i in listed if i.name.startswith(stem + ".") or i.name == stem]
        exact = [i for i in matches if "." not in i.name[len(stem) + 1 :]] or matches
        if not exact:
            raise dg.DagsterInvariantViolationError(
                f"datamill has no item for {key!r} in {folder!r}: materialize it first (with this IO manager)"
            )
        item = exact[0]
        _info, chunks = client.iter_bytes(item.path, item.version)
        self._loaded.setdefault(_try_step_key(context), []).append(
            {"folder": item.folder, "name": item.name, "version": item.version, "digest": item.digest}
        )
        context.add_input_metadata({"datamill_path": item.path, "datamill_version": item.version})
        return values.decode(item.name, b"".join(chunks))


def _try_step_key(context: dg.OutputContext | dg.InputContext) -> str:
    """The key of the op step the context belongs to ("" for a context built by hand)."""
    try:
        return str(context.step_context.step.key)
    except Exception:
        return ""
