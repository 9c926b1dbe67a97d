"""datamill: a data management system with dataflows built in.

>>> import datamill
>>> @datamill.step
... def words(item) -> int:
...     return len(item.read_text().split())
>>> datamill.Pipeline("count", [words]).run([("a.txt", b"one two")]).outputs
{'words[inputs/a.txt]': 2}

This module is the composition root: it sits above every layer (CONTRIBUTING.md, "The layer rule"),
and its public names are loaded on first use (PEP 562), so ``import datamill`` and the remote client
load neither the database layer nor the engine (and the ``datamill`` command's entry point,
:mod:`datamill.console`, can catch a Ctrl-C pressed while the rest is still loading). It also
fills :mod:`datamill.hooks`, the seams through which a lower layer reaches a higher one; Python
runs this module before any ``datamill.*`` module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from datamill import hooks
from datamill._version import __version__

if TYPE_CHECKING:
    from datamill.client import Client, connect
    from datamill.pipeline import (
        Context,
        InputFile,
        Pipeline,
        command_step,
        container_step,
        dagster_step,
        load_pipeline,
    )
    from datamill.pipeline.step import step  # from its module: mypy reads datamill.pipeline.step as the submodule

__all__ = [
    "Client",
    "Context",
    "InputFile",
    "Pipeline",
    "__version__",
    "command_step",
    "connect",
    "container_step",
    "dagster_step",
    "load_pipeline",
    "step",
]


def _run_pipeline(pipeline: Any, inputs: Any, **options: Any) -> Any:
    """``Pipeline.run``: the engine's quick runner, imported on the first run."""
    from datamill.engine.quick import run_pipeline

    return run_pipeline(pipeline, inputs, **options)


def _folder_moved(conn: Any, actor_id: int, old: str, new: str) -> Any:
    """A folder moved: the dataflows naming it (or a folder below it) follow, in the same transaction."""
    from datamill.dataflows.dataflow import follow_folder_move

    return follow_folder_move(conn, actor_id, old, new)


hooks.run_pipeline = _run_pipeline
hooks.folder_moved = _folder_moved


def __getattr__(name: str) -> Any:
    """The public names, imported when first asked for."""
    if name in {"Client", "connect"}:
        from datamill import client

        value = getattr(client, name)
    elif name in {
        "Context",
        "InputFile",
        "Pipeline",
        "command_step",
        "container_step",
        "dagster_step",
        "load_pipeline",
        "step",
    }:
        from datamill import pipeline

        value = getattr(pipeline, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
