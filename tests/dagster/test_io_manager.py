"""Datamill as a Dagster project's resource and IO manager: materialise into an embedded home, load back."""

from __future__ import annotations

from pathlib import Path

import pytest

import dagster as dg
from datamill.dagster import DatamillIOManager, DatamillResource
from tests.helpers import open_home

from .wordproj.assets import summary, words


@pytest.fixture
def home_dir(tmp_path: Path) -> str:
    path = tmp_path / "home"
    home = open_home(path)
    home.store.create_folder(home.admin, "Notes")
    home.store.put(home.admin, "Notes", "a.txt", b"the quick brown fox", "text/plain")
    home.store.put(home.admin, "Notes", "b.txt", b"jumps over", "text/plain")
    home.close()
    return str(path)


def resources(home: str) -> dict[str, object]:
    """What the project swaps in for its local/S3 IO manager: nothing else changes."""
    return {
        "datamill": DatamillResource(home=home, source="Notes"),
        "io_manager": DatamillIOManager(home=home, folder="Dagster/out"),
    }


def test_materialise_into_datamill_and_load_back_downstream(home_dir: str) -> None:
    first = dg.materialize([words, summary], resources=resources(home_dir))
    assert first.success

    import datamill

    with datamill.connect(home=home_dir) as dm:
        (w,) = dm.versions("Dagster/out/words.json")
        assert dm.item("Dagster/out/words.json").metadata["provenance"]["dagster"] == {
            "run_id": first.run_id,
            "job": "__ephemeral_asset_job__",
            "op": "words",
            "output": "result",
            "asset_key": "words",
            "code_version": "words-1",
            "dagster_version": dg.__version__,
        }
        # The summary was derived from exactly the version of words.json it loaded.
        meta = dm.item("Dagster/out/summary.txt").metadata["provenance"]
        assert meta["dagster"]["asset_key"] == "summary" and meta["dagster"]["code_version"] == "summary-1"
        assert meta["wasDerivedFrom"] == [
            {"folder": "Dagster/out", "name": "words.json", "version": 1, "digest": w.digest}
        ]
        assert b"".join(dm.iter_bytes("Dagster/out/summary.txt")[1]) == b"6 words in 2 files\n"

        # Only the downstream asset: words comes back from datamill, not from a re-computation.
        dm.put("Dagster/out", "words.json", b'{"x.txt": 10}\n')
        second = dg.materialize([words, summary], selection=[summary], resources=resources(home_dir))
        assert second.success
        (mat,) = second.asset_materializations_for_node("summary")
        assert mat.metadata["datamill_path"].value == "Dagster/out/summary.txt"
        assert mat.metadata["datamill_version"].value == 2
        assert b"".join(dm.iter_bytes("Dagster/out/summary.txt")[1]) == b"10 words in 1 files\n"
        meta2 = dm.item("Dagster/out/summary.txt").metadata["provenance"]
        assert meta2["dagster"]["run_id"] == second.run_id
        assert meta2["wasDerivedFrom"][0]["version"] == 2  # the version put by hand
        assert [v.version for v in dm.versions("Dagster/out/words.json")] == [1, 2]


def test_a_value_datamill_cannot_store_is_refused_with_what_to_return(home_dir: str) -> None:
    @dg.asset
    def odd() -> object:
        return {1, 2}  # a set: neither JSON nor bytes

    result = dg.materialize([odd], resources=resources(home_dir), raise_on_error=False)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert "datamill cannot store a set" in str(failure.event_specific_data.error)


def test_loading_an_asset_never_materialised_says_so(home_dir: str) -> None:
    result = dg.materialize([words, summary], selection=[summary], resources=resources(home_dir), raise_on_error=False)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert "no item for 'words'" in str(failure.event_specific_data.error)
