"""The baseline: the same job with execute_in_process alone, in a subprocess, writing its outputs as JSON.

``python -m dagster_bench.bare SEED OUTDIR`` (run from benchmarks/).
"""

import json
import sys
from pathlib import Path

from dagster_bench.jobs import defs

seed, out = int(sys.argv[1]), Path(sys.argv[2])
result = defs.resolve_job_def("bench").execute_in_process(
    run_config={"ops": {"numbers": {"config": {"seed": seed}}}}, raise_on_error=True
)
out.mkdir(parents=True, exist_ok=True)
for name in ("numbers", "total"):
    (out / f"{name}.json").write_text(json.dumps(result.output_for_node(name)))
print(json.dumps({"success": result.success, "run_id": result.run_id}))
