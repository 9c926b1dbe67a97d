"""The first-start demo end to end: samples in Raw Data, the running dataflow, everything in Derived Data."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import time
from pathlib import Path

import pandas as pd

from datamill.dataflows.dataflow import Dataflows
from datamill.demo import tabular
from datamill.demo.setup import DATAFLOW, DESTINATION, SOURCE, install_demo
from datamill.engine.engine import Engine
from datamill.home import Home
from datamill.services import Services
from tests.helpers import check_fold, finished_per_task, open_home

SAMPLES = Path(tabular.__file__).parent / "samples"
GOOD = ["field_survey.xlsx", "lab_measurements.tsv", "weather_stations.csv"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def serve_until_runs_end(home: Home, timeout: float = 120.0, count: int = 1) -> None:
    """Run the services (inline executor) until at least ``count`` runs exist and every run has ended."""
    services = Services(home, executor="inline")
    engine = Engine(home)
    await services.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            found = await asyncio.to_thread(engine.list_runs, home.admin)
            if len(found) >= count and all(r["status"] not in ("queued", "running") for r in found):
                return
            assert time.monotonic() < deadline, f"runs did not end within {timeout} s: {found}"
            await asyncio.sleep(0.1)
    finally:
        await services.stop()


def test_the_demo_derives_every_good_sample_and_explains_the_broken_one(tmp_path: Path) -> None:
    home = open_home(tmp_path / "home")
    try:
        admin = home.admin
        assert install_demo(home) is True
        assert install_demo(home) is False  # safe to call again
        assert sorted(i.name for i in home.store.list_items(admin, SOURCE)) == sorted([*GOOD, "broken.csv"])
        flow = Dataflows(home.db).get(admin, DATAFLOW)
        assert (flow.state, flow.source, flow.destination) == ("running", SOURCE, DESTINATION)

        asyncio.run(serve_until_runs_end(home))

        engine = Engine(home)
        (run,) = engine.list_runs(admin)
        assert run["dataflow_id"] == flow.id and run["status"] == "failed"  # one input is broken
        tasks = {t.planned_id: t for t in engine.tasks(admin, run["id"])}
        broken = tasks[f"tables[{SOURCE}/broken.csv]"]
        assert broken.status == "failed"
        assert broken.error is not None
        assert "broken.csv: line 4 has 5 fields but the header has 4" in broken.error
        assert "Traceback" not in broken.error
        others = [t for pid, t in tasks.items() if "broken.csv" not in pid]
        assert others and all(t.status == "succeeded" for t in others), [(t.planned_id, t.status) for t in others]
        assert Dataflows(home.db).get(admin, DATAFLOW).state == "running"  # a failed file does not stop it

        derived = {i.name: i for i in home.store.list_items(admin, DESTINATION)}

        def read(name: str) -> bytes:
            _info, chunks = home.store.iter_bytes(admin, f"{DESTINATION}/{name}")
            return b"".join(chunks)

        # Per table of each good sample: Parquet, summary, plot and preview.
        keys: dict[str, str] = {}  # table key -> the sample it came from
        for sample in GOOD:
            for key in tabular.read_tables(sample, (SAMPLES / sample).read_bytes()):
                keys[key] = sample
        assert len(keys) == 4  # two sheets in the workbook
        frames: dict[str, pd.DataFrame] = {}
        for key in keys:
            frames[key] = pd.read_parquet(io.BytesIO(read(f"{key}.parquet")))
            assert len(frames[key]) > 0
            summary = json.loads(read(f"{key}.summary.json"))
            assert summary
            assert read(f"{key}.png").startswith(PNG_MAGIC)
            preview = pd.read_csv(io.BytesIO(read(f"{key}.preview.csv")))
            assert list(preview.columns) == [str(c) for c in frames[key].columns]
        expected = {f"{k}{suffix}" for k in keys for suffix in (".parquet", ".summary.json", ".png", ".preview.csv")}
        assert set(derived) == expected | {"database.sqlite", "datapackage.json"}
        assert not [n for n in derived if n.startswith("broken")]

        # One SQLite database with every table.
        db_file = tmp_path / "database.sqlite"
        db_file.write_bytes(read("database.sqlite"))
        names = tabular.sqlite_table_names(frames)
        with sqlite3.connect(db_file) as db:
            stored = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert stored == set(names.values())
            for key, df in frames.items():
                assert db.execute(f'SELECT count(*) FROM "{names[key]}"').fetchone()[0] == len(df)

        # The data package lists every derived file with what it was derived from.
        package = json.loads(read("datapackage.json"))
        resources = {r["path"]: r for r in package["resources"]}
        assert set(resources) == set(derived) - {"datapackage.json"}
        for key, sample in keys.items():
            for suffix in (".parquet", ".summary.json", ".png", ".preview.csv"):
                assert resources[f"{key}{suffix}"]["derivedFrom"] == [f"{SOURCE}/{sample}"]
        assert sorted(resources["database.sqlite"]["derivedFrom"]) == sorted(f"{k}.parquet" for k in keys)
        assert all(r["bytes"] == derived[p].size for p, r in resources.items())

        # Every derived item says which dataflow made it, and from what.
        for name, item in derived.items():
            assert item.metadata["dataflow"] == DATAFLOW, name
            prov = item.metadata["provenance"]
            made = prov["wasGeneratedBy"]
            assert (made["run"], made["dataflow"], made["dataflow_version"]) == (run["id"], flow.id, 1)
            sources = {f"{d['folder']}/{d['name']}" for d in prov["wasDerivedFrom"]}
            if name in ("database.sqlite", "datapackage.json"):
                assert {f"{SOURCE}/{s}" for s in GOOD} <= sources
            else:
                assert sources == {f"{SOURCE}/{keys[name.split('.')[0]]}"}, name

        assert set(finished_per_task(home).values()) == {1}
        check_fold(home)

        # A later run (a new file landed) does not try broken.csv again: it failed earlier, on the
        # same bytes and code, so the run succeeds and says where it failed.
        home.store.put(admin, SOURCE, "more.csv", (SAMPLES / "weather_stations.csv").read_bytes())
        asyncio.run(serve_until_runs_end(home, count=2))
        later, _first = engine.list_runs(admin)
        assert later["status"] == "succeeded"
        tasks = {t.planned_id: t for t in engine.tasks(admin, later["id"])}
        broken = tasks[f"tables[{SOURCE}/broken.csv]"]
        assert (broken.status, broken.note) == ("skipped", f"failed earlier (see run {run['id']})")
        assert "more.parquet" in {i.name for i in home.store.list_items(admin, DESTINATION)}
        check_fold(home)
    finally:
        home.close()
