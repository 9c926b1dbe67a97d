"""The demo a newcomer sees on first start: sample files and a running dataflow.

Creates ``Raw Data`` (with the sample CSV, TSV and Excel files, one of them deliberately
malformed) and ``Derived Data``, and a running dataflow ``derived-data`` that feeds the first
into the second through the standard tabular pipeline. Safe to call again: what exists is kept.
"""

from __future__ import annotations

from importlib import resources

from datamill.dataflows.dataflow import Dataflows
from datamill.demo.pipeline import REF
from datamill.errors import NotFound
from datamill.home import Home

SOURCE = "Raw Data"
DESTINATION = "Derived Data"
DATAFLOW = "derived-data"

DESCRIPTION = """Derives tables from every CSV, TSV or Excel file dropped into **Raw Data**:
a Parquet copy, a column summary, a plot and a preview per table, one SQLite database of all
tables, and a Frictionless `datapackage.json` with the provenance of every derived file."""


def install_demo(home: Home) -> bool:
    """Create the demo folders, samples and dataflow; returns True if anything was created."""
    admin = home.admin
    flows = Dataflows(home.db)
    try:
        flows.get(admin, DATAFLOW)
        return False
    except NotFound:
        pass
    home.store.create_folder(admin, SOURCE, exist_ok=True)
    home.store.create_folder(admin, DESTINATION, exist_ok=True)
    flows.create(
        admin,
        DATAFLOW,
        {
            "description": DESCRIPTION,
            "source": SOURCE,
            "destination": DESTINATION,
            "pipeline": REF,
            "trigger": "new-items",
        },
    )
    flows.set_state(admin, DATAFLOW, "running", reason="demo")
    samples = resources.files("datamill.demo") / "samples"
    existing = {i.name for i in home.store.list_items(admin, SOURCE)}
    for sample in sorted(samples.iterdir(), key=lambda p: p.name):
        if sample.name not in existing and sample.is_file():
            home.store.put(admin, SOURCE, sample.name, sample.read_bytes(), created_via="demo")
    return True
