"""The project's Definitions, the way a Dagster project declares them (`dagster dev -m wordproj.definitions`)."""

from __future__ import annotations

from wordproj.assets import summary, words
from wordproj.jobs import failing, sleepy

import dagster as dg
from datamill.dagster import DatamillIOManager, DatamillResource

defs = dg.Definitions(
    assets=[words, summary],
    jobs=[failing, sleepy, dg.define_asset_job("counts", selection=dg.AssetSelection.assets(words, summary))],
    resources={"datamill": DatamillResource(source="Notes"), "io_manager": DatamillIOManager(folder="Dagster")},
)
