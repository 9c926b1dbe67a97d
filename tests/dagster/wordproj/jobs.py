"""Op jobs: one whose op fails, one whose op runs as long as it is told."""

import os
import time

import dagster as dg


@dg.op
def explode() -> int:
    raise ValueError("row 7 has no value")


@dg.job
def failing() -> None:
    explode()


class NapConfig(dg.Config):
    seconds: float = 60.0


@dg.op
def nap(config: NapConfig) -> str:
    print(f"napping in {os.getpid()}", flush=True)
    time.sleep(config.seconds)
    return "rested"


@dg.job
def sleepy() -> None:
    nap()
