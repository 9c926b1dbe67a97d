"""The demo dataflow's building blocks.

:mod:`datamill.demo.tabular` holds the pure data functions of the standard tabular pipeline
(CSV, TSV and Excel files to summaries, plots, Parquet, previews, one SQLite database and a
Frictionless data package); ``samples/`` holds small example files for it, one of them
deliberately malformed so that the demo shows a failing task.

Its pipeline needs pandas, pyarrow, openpyxl and matplotlib, which come with the optional extra
``datamill[demo]``; without them ``datamill up`` serves the home without the demo and says how to
get it (:func:`missing_packages`).
"""

from __future__ import annotations

import importlib.util

#: What the demo's pipeline needs besides datamill itself: the optional extra ``datamill[demo]``.
PACKAGES = ("pandas", "pyarrow", "openpyxl", "matplotlib")

#: How to get them, for the message ``datamill up`` shows when they are missing.
HOW_TO_INSTALL = "run `uv run --extra demo datamill up` in a clone, or `pip install 'datamill[demo]'`"


def missing_packages() -> list[str]:
    """The packages of :data:`PACKAGES` that cannot be imported here (found without importing them)."""
    return [name for name in PACKAGES if importlib.util.find_spec(name) is None]
