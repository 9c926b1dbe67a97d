"""Two assets, the same work either way: numbers from a seed, then their total."""

import dagster as dg


class Seed(dg.Config):
    seed: int = 1


@dg.asset
def numbers(config: Seed) -> list:
    return [(config.seed * i) % 97 for i in range(1000)]


@dg.asset
def total(numbers: list) -> dict:
    return {"total": sum(numbers), "count": len(numbers)}


defs = dg.Definitions(assets=[numbers, total], jobs=[dg.define_asset_job("bench", selection=[numbers, total])])
