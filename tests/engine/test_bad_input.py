"""Bad input to the engine: each mistake raises a typed DatamillError whose message says what is wrong.

Nothing is recorded for a refused run.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from datamill.errors import DatamillError, InvalidInput, InvalidPipeline, NotFound

from .engine_world import World
from .pipelines import PIPELINES, ref

STEPS_PY = """
def first(item) -> str:
    return item.read_text()


def ping(pong) -> str:
    return pong


def pong(ping) -> str:
    return ping
"""


def yaml_file(tmp_path: Path, text: str) -> str:
    (tmp_path / "engine_bad_input_steps.py").write_text(STEPS_PY)
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


def refused(world: World, pipeline: str, expected: type[DatamillError], *fragments: str, **options: object) -> str:
    """Run ``pipeline``; it must raise ``expected`` mentioning every fragment, and record no run."""
    with pytest.raises(expected) as info:
        world.run(pipeline, **options)  # type: ignore[arg-type]
    message = str(info.value)
    assert message == info.value.message
    for fragment in fragments:
        assert fragment in message, message
    assert world.engine.list_runs(world.admin) == []
    return message


@pytest.fixture
def filled(world: World) -> World:
    world.put("a.txt", "some text")
    return world


def test_malformed_yaml(filled: World, tmp_path: Path) -> None:
    path = yaml_file(
        tmp_path,
        """
        name: broken
        steps:
          - name: a
            run: engine_bad_input_steps:first
           bad: indent
        """,
    )
    refused(filled, path, InvalidPipeline, "pipeline.yaml line 5", "not valid YAML")


def test_unknown_step_module_in_yaml(filled: World, tmp_path: Path) -> None:
    path = yaml_file(
        tmp_path,
        """
        name: unknown
        steps:
          - name: a
            run: no_such_module_for_engine_tests:first
        """,
    )
    refused(
        filled,
        path,
        InvalidPipeline,
        "line 4: steps[0].run: cannot import module 'no_such_module_for_engine_tests'",
    )


@pytest.mark.parametrize(
    ("reference", "fragments"),
    [
        ("no_such_package_for_engine_tests.pipes:pipeline", ["no module named 'no_such_package_for_engine_tests'"]),
        (f"{PIPELINES}:nope", ["has no attribute 'nope'", "basic"]),
        (f"{PIPELINES}:parse", ["names a step, not a pipeline"]),
        ("/no/such/dir/pipes.py:pipeline", ["pipeline file '/no/such/dir/pipes.py' cannot be read"]),
    ],
)
def test_unknown_pipeline_reference(filled: World, reference: str, fragments: list[str]) -> None:
    refused(filled, reference, InvalidPipeline, *fragments)


def test_cycle(filled: World, tmp_path: Path) -> None:
    path = yaml_file(
        tmp_path,
        """
        name: loop
        steps:
          - run: engine_bad_input_steps:ping
          - run: engine_bad_input_steps:pong
        """,
    )
    refused(filled, path, InvalidPipeline, "steps form a cycle", "ping -> pong")


def test_missing_folders(filled: World) -> None:
    with pytest.raises(NotFound, match="no folder 'Nope'"):
        filled.inputs("Nope")
    refused(filled, ref("basic"), NotFound, "no destination folder 'Nowhere'", dest="Nowhere")
    refused(filled, ref("basic"), NotFound, "no folder 'Nope'", source="Nope")


def test_run_over_an_empty_folder(world: World) -> None:
    world.home.store.create_folder(world.admin, "Empty")
    assert world.inputs("Empty") == []
    message = refused(world, ref("basic"), InvalidInput, "no input items", "'Empty'", source="Empty")
    assert "upload" in message
    # The dry run shows the (empty) plan rather than refusing.
    assert len(world.engine.plan(ref("peritem"), [])) == 0


@pytest.mark.parametrize(
    ("params", "fragments"),
    [
        ({"marks": 3}, ["step 'parse' parameter 'marks'", "expected str", "got int 3"]),
        ({"parse.marks": ["x"]}, ["step 'parse' parameter 'marks'", "expected str", "got list"]),
        ({"parse": {"marks": "x", "depth": 1}}, ["step 'parse' has no parameter 'depth'"]),
        ({"threshold": 0.5}, ["no step of pipeline 'basic' has a parameter 'threshold'", "parse.marks"]),
    ],
)
def test_wrong_parameters(filled: World, params: dict[str, object], fragments: list[str]) -> None:
    refused(filled, ref("basic"), InvalidPipeline, *fragments, params=params)


def test_a_run_whose_pipeline_no_longer_loads_fails_with_the_reason(world: World, tmp_path: Path) -> None:
    source = PIPELINES.read_text()
    copy = tmp_path / "pipes_copy.py"
    copy.write_text(source)
    world.put("a.txt", "words")
    run_id = world.submit(f"{copy}:basic")
    copy.write_text(source + "\ndef broken(:\n")
    run = world.run_submitted(run_id)
    assert run["status"] == "failed"
    assert "pipes_copy.py line" in run["error"] and "fix the Python syntax" in run["error"]
    assert set(world.statuses(run_id).values()) == {"failed"}
    world.check_fold()
