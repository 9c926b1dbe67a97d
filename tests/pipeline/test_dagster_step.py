"""Defining Dagster steps (Python and YAML): the module is found without being imported, its source keys the cache."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

import datamill
from datamill.engine.keys import task_key
from datamill.errors import InvalidPipeline
from datamill.pipeline.yaml import parse_yaml_pipeline

PROJECT = Path(__file__).resolve().parents[1] / "dagster" / "wordproj"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the test project to edit."""
    shutil.copytree(PROJECT, tmp_path / "wordproj", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_a_dagster_step_is_found_without_importing_it(project: Path) -> None:
    s = datamill.dagster_step("wordproj.definitions:defs", job_name="counts", base_dir=project)
    assert s.kind == "dagster" and s.name == "counts"
    assert s.dagster is not None and s.dagster.search_path == str(project)
    assert s.params == {"config": {}}
    assert not s.aggregate and s.uses_item
    assert "wordproj.definitions" not in sys.modules  # nothing was imported (nor Dagster)


def test_the_source_of_the_package_is_the_code_version(project: Path) -> None:
    def code() -> str:
        return datamill.dagster_step("wordproj.definitions:defs", job_name="counts", base_dir=project).code

    before = code()
    assert code() == before  # the same source: the same key
    (project / "wordproj" / "assets.py").write_text((project / "wordproj" / "assets.py").read_text() + "\n# edit\n")
    assert code() != before  # a sibling module of the one named changed: a new code version
    versioned = datamill.dagster_step("wordproj.definitions:defs", job_name="counts", base_dir=project, version="7")
    (project / "wordproj" / "jobs.py").write_text("# rewritten\n")
    again = datamill.dagster_step("wordproj.definitions:defs", job_name="counts", base_dir=project, version="7")
    assert versioned.code == again.code  # a declared version stands for the source


def test_the_run_config_is_a_parameter_in_the_key(project: Path) -> None:
    s = datamill.dagster_step("wordproj.definitions:defs", job_name="sleepy", base_dir=project)
    a = task_key(s.name, s.code, s.resolve_params({"config": {"ops": {"nap": {"config": {"seconds": 1}}}}}), {})
    b = task_key(s.name, s.code, s.resolve_params({"config": {"ops": {"nap": {"config": {"seconds": 2}}}}}), {})
    assert a != b
    with pytest.raises(InvalidPipeline, match="has no parameter 'seconds'"):
        s.resolve_params({"seconds": 1})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"job": "wordproj.definitions"}, "job must look like 'package.module:defs'"),
        ({"job": "nowhere_at_all.defs:defs"}, "cannot find module 'nowhere_at_all'"),
        ({"job": "wordproj.missing:defs"}, "package 'wordproj' has no module 'wordproj.missing'"),
        ({"job": "wordproj.definitions:defs", "job_name": "x", "assets": ["words"]}, "give job_name or assets"),
        ({"job": "wordproj.definitions:defs", "assets": [3]}, "assets must be a list of asset keys"),
    ],
)
def test_bad_definitions_are_refused_saying_what_to_fix(project: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidPipeline, match=message):
        datamill.dagster_step(base_dir=project, **kwargs)


def test_yaml_dagster_steps(project: Path) -> None:
    p = parse_yaml_pipeline(
        """
name: dg
steps:
  - dagster: wordproj.definitions:defs
    job_name: sleepy
    config: {ops: {nap: {config: {seconds: 2}}}}
    timeout: 30
    retries: 1
  - name: sel
    dagster: wordproj.definitions:defs
    assets: [words]
    aggregate: true
""",
        base_dir=project,
    )
    first, second = p.steps
    assert first.name == "sleepy" and first.kind == "dagster" and first.timeout == 30 and first.retries == 1
    assert first.params == {"config": {"ops": {"nap": {"config": {"seconds": 2}}}}}
    assert second.dagster is not None and second.dagster.assets == ("words",) and second.aggregate
    # configure() keeps it a Dagster step
    assert first.configure(retries=3).dagster == first.dagster


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("{name: a, run: x.py:f, dagster: 'wordproj.definitions:defs'}", "give exactly one of 'run'"),
        ("{name: a, command: [ls], job_name: x}", "job_name: is only for Dagster steps"),
        ("{dagster: 'wordproj.definitions:defs', params: {x: 1}}", "run config under 'config'"),
        ("{dagster: 'nowhere_at_all:defs'}", "cannot find module 'nowhere_at_all'"),
    ],
)
def test_yaml_errors_name_the_line(project: Path, step: str, message: str) -> None:
    with pytest.raises(InvalidPipeline, match=message) as info:
        parse_yaml_pipeline(f"name: dg\nsteps:\n  - {step}\n", filename="p.yaml", base_dir=project)
    assert "p.yaml line 3" in info.value.message
