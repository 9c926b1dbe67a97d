"""Dagster and datamill, both directions (the ``datamill[dagster]`` extra).

* **Datamill as a Dagster resource and IO manager**: :class:`DatamillResource` reads and writes
  datamill folders (embedded home, or a server by URL + token) and :class:`DatamillIOManager`
  stores every asset or op output as an item version in a folder and loads it back downstream,
  each version carrying its Dagster provenance (run id, job, op, asset key, code version). A
  Dagster project swaps its local or S3 IO manager for ``DatamillIOManager(...)`` and nothing
  else changes.
* **A Dagster job as a datamill step**: :func:`datamill.dagster_step` runs a job in a worker
  (``python -m datamill.dagster.runner``) with both bound to the task: the resource hands the job
  the task's input items, the IO manager turns its outputs into the task's outputs.

Only this package imports Dagster; the names load on first use, so importing ``datamill`` (or
this package) does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datamill.dagster.io_manager import DatamillIOManager
    from datamill.dagster.resource import DatamillResource
    from datamill.dagster.session import DatamillFile

__all__ = ["DatamillFile", "DatamillIOManager", "DatamillResource"]


def __getattr__(name: str) -> Any:
    """The public names, imported when first asked for."""
    value: Any
    if name == "DatamillResource":
        from datamill.dagster import resource

        value = resource.DatamillResource
    elif name == "DatamillIOManager":
        from datamill.dagster import io_manager

        value = io_manager.DatamillIOManager
    elif name == "DatamillFile":
        from datamill.dagster import session

        value = session.DatamillFile
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value
