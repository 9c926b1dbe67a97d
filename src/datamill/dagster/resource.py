"""``DatamillResource``: a Dagster resource that reads and writes datamill folders.

Outside datamill it works through a client: ``DatamillResource(url=..., token=EnvVar("DATAMILL_TOKEN"))``
for a server, ``DatamillResource(home="./.datamill")`` for an embedded home. Inside a datamill
step (:func:`datamill.dagster_step`) the worker binds it to the task instead: :meth:`items` are the
task's input items as local files and :meth:`write` makes task outputs.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from pydantic import PrivateAttr

import dagster as dg
from datamill.dagster import values
from datamill.dagster.connection import connect_client, split_place
from datamill.dagster.session import DatamillFile, active, check_name

if TYPE_CHECKING:
    from pathlib import Path

    from datamill.client.base import Client

__all__ = ["DatamillResource"]


class DatamillResource(dg.ConfigurableResource):
    """Datamill folders for a Dagster job; see the module docstring.

    ``source``: the folder :meth:`items` lists (outside a step); ``destination``: the folder
    :meth:`write` writes into (outside a step). Pass the token as ``dg.EnvVar("DATAMILL_TOKEN")``
    so it is not shown in Dagster's UI; without ``token`` the client reads ``DATAMILL_TOKEN``.
    """

    url: str | None = None
    token: str | None = None
    home: str | None = None
    source: str | None = None
    destination: str | None = None

    _client: Any = PrivateAttr(default=None)

    def client(self) -> Client:
        """The datamill client (opened on first use, closed when the run's resources are torn down)."""
        if self._client is None:
            self._client = connect_client(self.url, self.token, self.home)
        client: Client = self._client
        return client

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """Close the client, if one was opened."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def items(self) -> list[DatamillFile]:
        """The items to work on: the task's input items inside a step, else the items of ``source``."""
        session = active()
        if session is not None:
            return session.items()
        if not self.source:
            raise dg.DagsterInvariantViolationError(
                "DatamillResource.items(): no source folder; set DatamillResource(source='Folder/path')"
            )
        client = self.client()
        return [
            DatamillFile(
                i.folder,
                i.name,
                i.version,
                i.digest,
                i.size,
                i.content_type,
                None,
                _reader(client, i.path, i.version),
            )
            for i in client.list_items(self.source)
        ]

    def upstream(self, name: str) -> list[Path]:
        """Inside a step: the files of the upstream step wired to ``name`` (``inputs={name: step}``)."""
        session = active()
        if session is None:
            raise dg.DagsterInvariantViolationError("DatamillResource.upstream() works only inside a datamill step")
        return session.upstream(name)

    def write(
        self,
        name: str,
        data: Any,
        *,
        context: dg.OpExecutionContext | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Write ``data`` (bytes, str, a JSON value or a Path) as ``name``; returns where it went.

        Inside a step it becomes a task output; otherwise a new version of ``destination/name``
        whose metadata has ``provenance.dagster`` (the run and op, from ``context`` when given)
        and ``metadata``.
        """
        name = check_name(name)
        dagster = _op_provenance(context)
        session = active()
        if session is not None:
            return session.write(name, data, dagster)
        if not self.destination:
            raise dg.DagsterInvariantViolationError(
                "DatamillResource.write(): no destination folder; set DatamillResource(destination='Folder/path')"
            )
        folder, leaf = split_place(f"{self.destination}/{name}")
        client = self.client()
        client.create_folder(folder, exist_ok=True)
        meta = {**(metadata or {}), "provenance": {"dagster": {**dagster, "dagster_version": dg.__version__}}}
        client.put(folder, leaf, values.encode(data), metadata=meta)
        return f"{folder}/{leaf}"


def _reader(client: Client, path: str, version: int) -> Any:
    def read() -> bytes:
        _info, chunks = client.iter_bytes(path, version)
        return b"".join(chunks)

    return read


def _op_provenance(context: dg.OpExecutionContext | None) -> dict[str, Any]:
    if context is None:
        return {}
    out: dict[str, Any] = {"run_id": context.run_id, "op": context.op_def.name}
    with contextlib.suppress(Exception):  # a context built by hand for a test has no job
        out["job"] = context.job_name
    return out
