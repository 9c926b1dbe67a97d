"""The standard tabular pipeline (what the demo dataflow ``derived-data`` runs).

Each CSV, TSV or Excel file becomes its tables (one per sheet), and each table gets a Parquet copy,
a column summary (JSON), a plot (PNG) and a preview of its first rows (CSV). Then one SQLite
database holds every table of every file, and a Frictionless ``datapackage.json`` describes every
derived file with the source it was derived from. A malformed file fails its own task with a
clear message; the other files go on.

Reference: ``datamill.demo.pipeline:tabular``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import blake3
import pandas as pd

from datamill.demo import tabular as tab
from datamill.pipeline import Context, InputFile, Pipeline, step

REF = "datamill.demo.pipeline:tabular"


def _bytes(value: Path | bytes) -> bytes:
    return value if isinstance(value, bytes) else Path(value).read_bytes()


def _frames(tables: dict[str, Any] | None) -> dict[str, pd.DataFrame]:
    """The DataFrames of one file's ``tables`` output (None if that file failed), keyed by table name."""
    return {
        Path(name).stem: pd.read_parquet(io.BytesIO(_bytes(value))) for name, value in sorted((tables or {}).items())
    }


@step(version="1", name_template="{name}")
def tables(item: InputFile, ctx: Context) -> None:
    """Read a CSV/TSV/Excel file into its tables and store each as Parquet."""
    found = tab.read_tables(item.name, item.read_bytes())
    for i, (key, df) in enumerate(sorted(found.items())):
        ctx.write(f"{key}.parquet", tab.to_parquet(df))
        ctx.progress((i + 1) / len(found), key)
    ctx.log.info("%s: %d table(s): %s", item.name, len(found), ", ".join(sorted(found)))


@step(version="1", name_template="{name}")
def summary(tables: dict[str, Any], ctx: Context) -> None:
    """A JSON column summary per table."""
    for key, df in _frames(tables).items():
        ctx.write(f"{key}.summary.json", json.dumps(tab.summarize(df), indent=2, sort_keys=True))


@step(version="1", name_template="{name}")
def plot(tables: dict[str, Any], ctx: Context) -> None:
    """A PNG plot per table (histograms of its numeric columns)."""
    for key, df in _frames(tables).items():
        ctx.write(f"{key}.png", tab.plot(df, key))


@step(version="1", name_template="{name}", params={"rows": 20})
def preview(tables: dict[str, Any], ctx: Context, rows: int = 20) -> None:
    """The first rows of each table as CSV."""
    for key, df in _frames(tables).items():
        ctx.write(f"{key}.preview.csv", tab.preview(df, rows))


@step(version="1", aggregate=True, name_template="database.sqlite")
def database(tables: list[dict[str, Any] | None]) -> bytes:
    """One SQLite database with every table of every file."""
    frames: dict[str, pd.DataFrame] = {}
    for one in tables:
        frames.update(_frames(one))
    return tab.build_sqlite(frames)


def _resource(path: str, data: bytes, derived_from: list[str], schema: dict[str, Any] | None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "path": path,
        "bytes": len(data),
        "hash": f"blake3:{blake3.blake3(data).hexdigest()}",
        "derivedFrom": derived_from,
    }
    if schema is not None:
        res["schema"] = schema
    return res


@step(version="1", aggregate=True, name_template="datapackage.json")
def datapackage(
    items: list[InputFile],
    tables: list[dict[str, Any] | None],
    summary: list[dict[str, Any] | None],
    plot: list[dict[str, Any] | None],
    preview: list[dict[str, Any] | None],
    database: bytes,
) -> dict[str, Any]:
    """A Frictionless data package describing every derived file and what it came from."""
    resources: list[dict[str, Any]] = []
    table_sources: list[str] = []
    for i, item in enumerate(items):
        if tables[i] is None:
            continue  # this file failed: nothing was derived from it
        source = f"{item.folder}/{item.name}"
        for group in (tables[i], summary[i], plot[i], preview[i]):
            for name, path in sorted((group or {}).items()):
                data = _bytes(path) if not isinstance(path, str) else path.encode()
                schema = None
                if name.endswith(".parquet"):
                    schema = tab.table_schema(pd.read_parquet(io.BytesIO(data)))
                    table_sources.append(name)
                elif name.endswith(".preview.csv"):
                    schema = tab.table_schema(pd.read_csv(io.BytesIO(data)))
                resources.append(_resource(name, data, [source], schema))
    resources.append(_resource("database.sqlite", database, table_sources or ["(none)"], None))
    # A fixed 'created' keeps the descriptor (and so its digest) the same for the same inputs.
    return tab.datapackage(resources, name="derived-data", title="Derived data", created="1970-01-01T00:00:00Z")


tabular = Pipeline(
    "tabular",
    [tables, summary, plot, preview, database, datapackage],
    description="CSV/TSV/Excel tables -> Parquet, summaries, plots, previews, one SQLite database, datapackage.json",
)
