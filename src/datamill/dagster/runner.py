"""The worker of a Dagster step: ``python -m datamill.dagster.runner REQUEST.json``.

It reads the request (:meth:`datamill.pipeline.dagster_job.DagsterJob.request`), imports the
module, picks the job (a job of a ``Definitions`` by name, an asset selection, every asset, or the
job itself), binds ``datamill`` (:class:`~datamill.dagster.resource.DatamillResource`) and
``io_manager`` (:class:`~datamill.dagster.io_manager.DatamillIOManager`) to the task, and runs
it with ``execute_in_process`` on an ephemeral instance (nothing is written outside the task's
directories). Dagster logs to stderr, which the executor streams into the task log.

The outcome goes to the request's ``result`` file as JSON: ``{"success": true, "run_id", "job",
"outputs"}``, or ``{"success": false, "run_id", "error": {"op", "type", "message", "traceback"}}``
with exit status 1 (an op failed) or 2 (the job could not be loaded or started).
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


class JobNotFound(Exception):
    """The request names a module, attribute, job or asset that is not there."""


def _load(request: Mapping[str, Any]) -> Any:
    search = request.get("search_path")
    if search and search not in sys.path:
        sys.path.insert(0, search)
    module_name, attr = request["module"], request["attr"]
    module = importlib.import_module(module_name)
    if not hasattr(module, attr):
        raise JobNotFound(f"module '{module_name}' has no attribute '{attr}'")
    return getattr(module, attr)


def _job(target: Any, request: Mapping[str, Any], resources: Mapping[str, Any]) -> Any:
    """The job to execute, with ``resources`` bound over the project's own."""
    import dagster as dg

    job_name: str | None = request.get("job")
    keys = [dg.AssetKey(a.split("/")) for a in request.get("assets") or []]
    if isinstance(target, dg.Definitions):
        jobs = list(target.jobs or [])
        if keys:
            jobs.append(dg.define_asset_job("__datamill_selection", selection=dg.AssetSelection.assets(*keys)))
            job_name = "__datamill_selection"
        defs = dg.Definitions(
            assets=target.assets,
            asset_checks=target.asset_checks,
            jobs=jobs,
            resources={**dict(target.resources or {}), **resources},
        )
        if job_name is None:
            return defs.resolve_implicit_global_asset_job_def()
        names = sorted(j.name for j in jobs)
        if job_name not in names:
            raise JobNotFound(f"no job '{job_name}' in {request['module']}:{request['attr']} (its jobs: {names})")
        return defs.resolve_job_def(job_name)
    if isinstance(target, (dg.JobDefinition, dg.GraphDefinition)) or hasattr(target, "resolve"):
        return dg.Definitions(jobs=[target], resources=dict(resources)).resolve_job_def(target.name)
    if isinstance(target, Sequence) and all(isinstance(a, (dg.AssetsDefinition, dg.AssetSpec)) for a in target):
        selection = dg.AssetSelection.assets(*keys) if keys else dg.AssetSelection.all()
        job = dg.define_asset_job("__datamill_assets", selection=selection)
        return dg.Definitions(assets=list(target), jobs=[job], resources=dict(resources)).resolve_job_def(job.name)
    raise JobNotFound(
        f"{request['module']}:{request['attr']} is a {type(target).__name__}; "
        "name a Definitions, a job or a list of assets"
    )


def _error_of(result: Any) -> dict[str, Any]:
    """The failing op and its own error (not Dagster's wrapper) from a failed run."""
    for event in result.all_events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        info = event.event_specific_data.error
        user = info.cause or info  # the op's own exception, not Dagster's wrapper around it
        kind = user.cls_name or "Error"
        message = user.message.strip().removeprefix(f"{kind}:").strip()
        return {"op": event.step_key, "type": kind, "message": message, "traceback": "".join(user.stack or [])}
    return {"op": None, "type": "DagsterRunFailed", "message": "the run failed without a failing op", "traceback": ""}


def _write(path: str, outcome: Mapping[str, Any]) -> None:
    Path(path).write_text(json.dumps(outcome, sort_keys=True), encoding="utf-8")


def run(request: Mapping[str, Any]) -> int:
    """Run the request's job; write its outcome; the exit status (0 ok, 1 an op failed, 2 not started)."""
    from datamill.dagster.io_manager import DatamillIOManager
    from datamill.dagster.resource import DatamillResource
    from datamill.dagster.session import StepSession, activated

    session = StepSession(request)
    run_id = str(uuid.uuid4())
    try:
        target = _load(request)
        job = _job(target, request, {"datamill": DatamillResource(), "io_manager": DatamillIOManager()})
    except Exception as exc:
        print(f"datamill: cannot load the Dagster job: {type(exc).__name__}: {exc}", file=sys.stderr)
        error = {"op": None, "type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}
        _write(request["result"], {"success": False, "run_id": None, "error": error})
        return 2
    session.job = job.name
    tags = {"datamill/step": str(request.get("step") or ""), "datamill/task": str(request.get("task") or "")}
    with activated(session):
        result = job.execute_in_process(
            run_config=request.get("run_config") or None, raise_on_error=False, run_id=run_id, tags=tags
        )
    if not result.success:
        error = _error_of(result)
        print(f"datamill: op {error['op']!r} failed: {error['type']}: {error['message']}", file=sys.stderr)
        _write(request["result"], {"success": False, "run_id": run_id, "job": job.name, "error": error})
        return 1
    session.finish(run_id)
    outputs = sorted(session.provenance)
    print(f"datamill: Dagster run {run_id} of job {job.name!r} succeeded: {len(outputs)} outputs", file=sys.stderr)
    _write(request["result"], {"success": True, "run_id": run_id, "job": job.name, "outputs": outputs})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m datamill.dagster.runner REQUEST.json``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m datamill.dagster.runner REQUEST.json", file=sys.stderr)
        return 2
    request = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    return run(request)


if __name__ == "__main__":
    sys.exit(main())
