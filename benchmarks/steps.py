"""Issue 12's step-kind benchmark: container, CLAMS-chain and Dagster steps against their bare baselines.

Runs the three measurements (each also runnable alone: ``benchmarks/steps_container.py``,
``steps_clams.py``, ``steps_dagster.py``) and prints one JSON document with every figure, each
``ok`` per target, and ``ok`` overall. A kind whose tool is missing on this machine (podman,
clams-python, dagster) is reported as ``{"skipped": "<why>"}`` rather than failing the others.

    .venv/bin/python benchmarks/steps.py
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

KINDS = ("container", "clams", "dagster")


def _measure(kind: str) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        module = importlib.import_module(f"steps_{kind}")
    except ImportError as exc:
        return {"skipped": f"cannot import benchmarks/steps_{kind}.py: {exc}"}
    result: dict[str, Any] = module.measure()
    return result


def main() -> None:
    """Measure every step kind and print the figures as one JSON object."""
    figures = {kind: _measure(kind) for kind in KINDS}
    measured = [f for f in figures.values() if "skipped" not in f]
    print(
        json.dumps(
            {
                "benchmark": "steps",
                "loadavg": os.getloadavg(),
                **figures,
                "ok": bool(measured) and all(f.get("ok", False) for f in measured),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
