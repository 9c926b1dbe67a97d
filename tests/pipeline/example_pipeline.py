"""A small example pipeline over CSV files, for tests here and elsewhere.

Steps: ``parse`` (per item, JSON) → ``stats`` (per item, a ``scale`` parameter) → ``report`` (per
item, text, takes the item too); ``columns`` writes one named output per column (not published);
``total`` is aggregate over every item's ``stats``.

Load it by path, which works from any working directory and in worker processes::

    from datamill.pipeline import load_pipeline
    pipeline = load_pipeline(EXAMPLE_REF)     # or f"{path to this file}:pipeline"

``make_inputs(tmp_path)`` writes two CSV files and returns their InputRefs and local paths.
"""

from __future__ import annotations

from pathlib import Path

from datamill.pipeline import Context, InputFile, InputRef, Pipeline, step

EXAMPLE_FILE = Path(__file__).resolve()
EXAMPLE_REF = f"{EXAMPLE_FILE}:pipeline"

CSV_A = b"x,y,label\n1,2,a\n3,4,b\n"
CSV_B = b"x,y,label\n10,20,c\n"


@step
def parse(item: InputFile) -> dict:
    """Header and rows of a small CSV file (no quoting)."""
    lines = [line for line in item.read_text().splitlines() if line.strip()]
    header = lines[0].split(",")
    return {"columns": header, "rows": [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]}


@step
def stats(parse: dict, *, scale: float = 1.0) -> dict:
    """Row count and the sum of each numeric column, times ``scale``."""
    sums = {}
    for col in parse["columns"]:
        try:
            sums[col] = sum(float(r[col]) for r in parse["rows"]) * scale
        except ValueError:
            continue
    return {"rows": len(parse["rows"]), "sums": sums}


@step(publish=False)
def columns(parse: dict, ctx: Context) -> None:
    """One text file per column: a step with several named outputs."""
    cols = parse["columns"]
    for i, col in enumerate(cols):
        ctx.write(f"{col}.txt", "".join(r[col] + "\n" for r in parse["rows"]))
        ctx.progress((i + 1) / len(cols), col)
    ctx.log.info("wrote %d columns", len(cols))


@step
def report(item: InputFile, stats: dict) -> str:
    """A one-line text report per file."""
    return f"{item.name}: {stats['rows']} rows, x={stats['sums'].get('x', 0):g}\n"


@step(aggregate=True)
def total(stats: list) -> dict:
    """Files and rows over all inputs."""
    return {"files": len(stats), "rows": sum(s["rows"] for s in stats)}


pipeline = Pipeline("example", steps=[parse, stats, columns, report, total])


def make_inputs(directory: Path, folder: str = "Raw Data") -> tuple[list[InputRef], dict[str, Path]]:
    """Write ``a.csv`` and ``b.csv`` into ``directory``; returns their refs and {ref.path: local file}."""
    refs, files = [], {}
    for name, data in (("a.csv", CSV_A), ("b.csv", CSV_B)):
        path = directory / name
        path.write_bytes(data)
        ref = InputRef.for_bytes(name, data, folder=folder, content_type="text/csv", metadata={"source": "test"})
        refs.append(ref)
        files[ref.path] = path
    return refs, files
