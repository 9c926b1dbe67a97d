"""The datamill client a Dagster resource or IO manager works through, and the provenance it records."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:
    from datamill.client.base import Client

__all__ = ["asset_path", "connect_client", "merged", "output_provenance", "split_place"]


def connect_client(url: str | None, token: str | None, home: str | None) -> Client:
    """A client on the server at ``url`` (with ``token``, or ``DATAMILL_TOKEN``), else on the home ``home``.

    Without either, ``DATAMILL_URL``/``DATAMILL_TOKEN`` or ``DATAMILL_HOME`` decide, as for
    :func:`datamill.connect`.
    """
    from datamill.client import connect

    return connect(home=home, url=url, token=token)


def split_place(path: str) -> tuple[str, str]:
    """``"Derived/sub/a.json"`` → ``("Derived/sub", "a.json")``."""
    folder, _, name = path.rpartition("/")
    return folder, name


def asset_path(context: dg.OutputContext | dg.InputContext) -> str | None:
    """The asset key as a path (``raw/words``), or None for an op output that is no asset."""
    if context.has_asset_key:
        return "/".join(context.asset_key.path)
    return None


def _try(get: Callable[[], Any]) -> Any:
    """``get()``, or None when the context lacks what it reads (contexts built by hand lack a run or a step)."""
    try:
        return get()
    except Exception:
        return None


def output_provenance(context: dg.OutputContext, code_version: str | None = None) -> dict[str, Any]:
    """What a Dagster output records about its making: run id, job, op, output, asset key, code version.

    ``code_version`` is the asset's own ``code_version`` when it declares one, else the one given
    (the digest of the module's source, inside a datamill step).
    """
    asset = asset_path(context)
    declared = None
    if context.has_asset_key:
        declared = _try(lambda: context.step_context.job_def.asset_layer.get(context.asset_key).code_version)
    out: dict[str, Any] = {
        "run_id": _try(lambda: context.run_id),
        "job": _try(lambda: context.job_name),
        "op": _try(lambda: context.op_def.name),
        "output": context.name,
        "asset_key": asset,
        "code_version": declared or code_version,
        "dagster_version": dg.__version__,
    }
    if context.has_partition_key:
        out["partition"] = context.partition_key
    return out


def merged(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """``a`` updated by the values of ``b`` that are not None."""
    return {**a, **{k: v for k, v in b.items() if v is not None}}
