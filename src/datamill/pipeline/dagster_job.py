"""What a Dagster step runs: a Dagster job or asset selection in a module, and the request handed to it.

A Dagster step (:func:`~datamill.pipeline.step.dagster_step`) names a module attribute
(``"package.module:defs"``: a ``Definitions``, a job, or a list of assets), optionally a job in it
(``job_name``) or the assets to materialise (``assets``). Nothing here imports Dagster or the
module: the module is *found* (not imported) to digest its source, so a pipeline loads in the
server without Dagster, and the job runs in a worker subprocess (``python -m
datamill.dagster.runner REQUEST``) that the engine starts on the Dagster executor.

The step's code version — part of every task key — is the digest of the module's source: every
``.py`` file of its top-level package (a project's assets, ops and jobs usually live in sibling
modules), or the one file of a plain module; a declared ``version=`` replaces it.
"""

from __future__ import annotations

import importlib.machinery
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from datamill.canonical import canonical_json
from datamill.errors import InvalidPipeline

__all__ = ["MAX_SOURCE_FILES", "PROVENANCE_OUTPUT", "DagsterJob", "find_module_source"]

#: The most ``.py`` files of a package digested for its code version; a project is far smaller.
MAX_SOURCE_FILES = 5000

#: The output (never published) in which a task records per-output provenance for the publisher:
#: ``{"<output name>": {"dagster": {...}}}``.
PROVENANCE_OUTPUT = ".datamill/provenance.json"


@dataclass(frozen=True)
class DagsterJob:
    """A Dagster job to run: ``module:attr``, an optional job name or asset selection, where the module lives.

    ``search_path`` is the directory on ``sys.path`` the module was found in (the worker puts it
    first on its own path); ``source_digest`` is the digest of the module's source.
    """

    module: str
    attr: str
    job_name: str | None
    assets: tuple[str, ...]
    search_path: str
    source_digest: str

    @property
    def ref(self) -> str:
        """``module:attr`` as the user wrote it."""
        return f"{self.module}:{self.attr}"

    def code(self, version: str | None) -> str:
        """The step code for task keys: ``dagster:<blake3>`` of the job, selection and source (or ``version``)."""
        parts = {
            "ref": self.ref,
            "job": self.job_name,
            "assets": list(self.assets),
            "source": self.source_digest if version is None else None,
            "version": version,
        }
        return "dagster:" + blake3.blake3(canonical_json(parts).encode("utf-8")).hexdigest()

    @classmethod
    def parse(
        cls, step_name: str, job: Any, job_name: Any, assets: Any, base_dir: Path, version: str | None
    ) -> DagsterJob:
        """Check the step's fields and find the module (without importing it).

        Raises:
            InvalidPipeline: a malformed reference, job name or asset list, or a module that cannot be found.
        """
        if not isinstance(job, str) or job.count(":") != 1 or not all(job.split(":")):
            raise InvalidPipeline(
                f"step '{step_name}': job must look like 'package.module:defs' (a Definitions, a job or a list "
                f"of assets in that module), got {job!r}",
                step=step_name,
                field="job",
            )
        module, attr = job.split(":")
        if job_name is not None and (not isinstance(job_name, str) or not job_name):
            raise InvalidPipeline(
                f"step '{step_name}': job_name must be the name of a job in {job!r}, got {job_name!r}",
                step=step_name,
                field="job_name",
            )
        if isinstance(assets, str):
            assets = [assets]
        if assets is None:
            assets = []
        if not isinstance(assets, Sequence) or not all(isinstance(a, str) and a for a in assets):
            raise InvalidPipeline(
                f"step '{step_name}': assets must be a list of asset keys like ['raw', 'clean/words'], got {assets!r}",
                step=step_name,
                field="assets",
            )
        if job_name is not None and assets:
            raise InvalidPipeline(
                f"step '{step_name}': give job_name or assets, not both (a job already selects its assets)",
                step=step_name,
                field="assets",
            )
        del version  # the source is digested all the same, so a later configure(version=None) has it
        search_path, digest = find_module_source(step_name, module, base_dir)
        return cls(module, attr, job_name, tuple(assets), search_path, digest)

    def request(
        self,
        *,
        step: str,
        task: str,
        run_config: Mapping[str, Any],
        output_dir: Path,
        scratch_dir: Path,
        items: Sequence[Mapping[str, Any]],
        upstream: Mapping[str, Sequence[str]],
        result_path: Path,
    ) -> dict[str, Any]:
        """The JSON request the worker (``datamill.dagster.runner``) reads: what to run, on what, where to write."""
        return {
            "module": self.module,
            "attr": self.attr,
            "job": self.job_name,
            "assets": list(self.assets),
            "search_path": self.search_path,
            "code_version": self.source_digest,
            "step": step,
            "task": task,
            "run_config": json.loads(json.dumps(dict(run_config))),
            "output_dir": str(output_dir),
            "scratch_dir": str(scratch_dir),
            "items": [dict(i) for i in items],
            "upstream": {k: list(v) for k, v in upstream.items()},
            "result": str(result_path),
        }


def find_module_source(step_name: str, module: str, base_dir: Path) -> tuple[str, str]:
    """Where ``module`` lives (the ``sys.path`` entry) and the digest of its source, without importing it.

    Looks in ``base_dir`` first, then ``sys.path``. Raises :class:`InvalidPipeline` if it is not there.
    """
    top, *rest = module.split(".")
    paths = [str(base_dir), *(p for p in sys.path if p != str(base_dir))]
    spec = importlib.machinery.PathFinder.find_spec(top, paths)
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        raise InvalidPipeline(
            f"step '{step_name}': cannot find module '{top}' (looked in {base_dir} and on sys.path); "
            "put the Dagster project next to the pipeline file or install it",
            step=step_name,
            field="job",
        )
    locations = list(spec.submodule_search_locations or [])
    if locations:
        root = Path(locations[0])
        search_path = str(root.parent)
        target = root.joinpath(*rest)
        if not (target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()):
            raise InvalidPipeline(
                f"step '{step_name}': package '{top}' has no module '{module}'", step=step_name, field="job"
            )
        files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
        if len(files) > MAX_SOURCE_FILES:
            raise InvalidPipeline(
                f"step '{step_name}': package '{top}' holds more than {MAX_SOURCE_FILES} Python files; "
                "pass version= to key the step instead of its source",
                step=step_name,
                field="job",
            )
    else:
        if rest:
            raise InvalidPipeline(f"step '{step_name}': '{top}' is not a package", step=step_name, field="job")
        assert spec.origin is not None
        root = Path(spec.origin).parent
        search_path = str(root)
        files = [Path(spec.origin)]
    h = blake3.blake3()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode("utf-8") + b"\0")
        h.update(blake3.blake3(f.read_bytes()).digest())
    return search_path, "blake3:" + h.hexdigest()
