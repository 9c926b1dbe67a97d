"""Seams where a lower layer calls code of a higher one without importing it.

A lower layer declares a seam here and calls through it; ``datamill/__init__.py``, the composition
root (Python runs it before any ``datamill.*`` module), fills it with a function that imports the
higher layer on first call. So the layer rule (``tests/test_layers.py``, CONTRIBUTING.md) holds with
no import pointing up, and nothing heavy is loaded until the seam is used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: ``Pipeline.run(inputs, **options)`` runs a pipeline here and now; that needs a home, the store and
#: the engine, all above the pipeline layer. Called as ``run_pipeline(pipeline, inputs, **options)``
#: and filled with :func:`datamill.engine.quick.run_pipeline`.
run_pipeline: Callable[..., Any] | None = None

#: ``folder_moved(conn, actor_id, old, new)`` runs in the transaction that moves folder ``old`` (and
#: everything below it) to ``new``, so that what names folders by path (dataflow configurations, a
#: layer above the store) follows the move in the same commit. Filled with
#: :func:`datamill.dataflows.dataflow.follow_folder_move`.
folder_moved: Callable[..., Any] | None = None
