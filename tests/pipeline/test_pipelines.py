"""Pipeline construction (validation, order, modes) and load_pipeline references."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest

from datamill.errors import InvalidPipeline
from datamill.pipeline import Pipeline, command_step, load_pipeline, step

EXAMPLE = Path(__file__).resolve().parent / "example_pipeline.py"


@step
def read(item) -> bytes:
    return item.read_bytes()


@step
def clean(read) -> bytes:
    return read


@step
def summary(clean) -> dict:
    return {}


@step(aggregate=True)
def database(clean) -> bytes:
    return b""


@step
def annotate(clean, database) -> str:
    return ""


@step
def settings() -> dict:
    return {}


def test_order_modes_and_edges() -> None:
    p = Pipeline("tabular", steps=[annotate, summary, database, clean, read, settings])
    assert p.names == ("read", "clean", "summary", "database", "annotate", "settings")
    assert [n for n in p.names if p.per_item(n)] == ["read", "clean", "summary", "annotate"]
    assert not p.per_item("database") and not p.per_item("settings")
    assert p.upstream("annotate") == ("clean", "database")
    assert p.downstream("clean") == ("summary", "database", "annotate")
    assert ("database", "annotate") in p.edges
    assert len(p) == 6 and "read" in p and "nope" not in p
    assert repr(p).startswith("<Pipeline tabular: read -> clean")


def test_plain_functions_are_wrapped() -> None:
    def load(item) -> bytes:
        return b""

    p = Pipeline.from_steps(load, name="one")
    assert p.names == ("load",) and p.name == "one"


def test_unknown_reference() -> None:
    @step
    def plot(summry) -> None:
        pass

    with pytest.raises(InvalidPipeline) as e:
        Pipeline("tabular", steps=[read, clean, summary, plot])
    assert e.value.message == (
        "pipeline 'tabular': step 'plot' parameter 'summry' reads from step 'summry', but the pipeline has no "
        "such step (steps: read, clean, summary, plot); to make 'summry' a parameter instead, make it "
        "keyword-only with a default (def plot(..., *, summry=...)) or declare it in params="
    )
    assert e.value.detail == {"step": "plot", "param": "summry"}


def test_unknown_explicit_reference_and_command_placeholder(tmp_path: Path) -> None:
    @step(inputs={"table": "to_csv"})
    def plot(table) -> None:
        pass

    with pytest.raises(InvalidPipeline, match="parameter 'table' reads from step 'to_csv', but the pipeline has no"):
        Pipeline("p", steps=[plot])
    conv = command_step("conv", ["tool", "{input}", "{mode}"], base_dir=tmp_path)
    with pytest.raises(InvalidPipeline, match=re.escape("to make {mode} a parameter, declare it in params=")):
        Pipeline("p", steps=[conv])


def test_cycle_message_lists_the_cycle() -> None:
    @step
    def a(c, item) -> None:
        pass

    @step
    def b(a) -> None:
        pass

    @step
    def c(b) -> None:
        pass

    with pytest.raises(InvalidPipeline) as e:
        Pipeline("loop", steps=[a, b, c])
    assert "steps form a cycle: a -> b -> c -> a" in e.value.message
    assert e.value.detail["cycle"] == ["a", "b", "c", "a"]


def test_self_reference() -> None:
    @step(inputs={"prev": "grow"})
    def grow(prev) -> None:
        pass

    with pytest.raises(InvalidPipeline, match=re.escape("step 'grow' reads its own output (cycle: grow -> grow)")):
        Pipeline("p", steps=[grow])


def test_duplicate_names() -> None:
    other = step(name="read")(lambda_free_read)
    with pytest.raises(InvalidPipeline) as e:
        Pipeline("p", steps=[read, clean, other])
    assert e.value.message == (
        "pipeline 'p': two steps are named 'read' (steps[0] and steps[2]); step names must be unique: "
        "rename one with name=..."
    )


def lambda_free_read(item) -> bytes:
    return b""


def test_other_invalid_pipelines() -> None:
    with pytest.raises(InvalidPipeline, match="has no steps"):
        Pipeline("p", steps=[])
    with pytest.raises(InvalidPipeline, match="a pipeline needs a name"):
        Pipeline("", steps=[read])
    with pytest.raises(InvalidPipeline, match=r"steps\[1\] is a int, not a step"):
        Pipeline("p", steps=[read, 3])  # type: ignore[list-item]
    with pytest.raises(InvalidPipeline, match=r"has no step 'nope' \(steps: read\)"):
        Pipeline("p", steps=[read]).step("nope")


def test_per_item_step_reading_an_aggregate_is_fine() -> None:
    p = Pipeline("p", steps=[read, clean, database, annotate])
    assert p.per_item("annotate")


# --------------------------------------------------------------------------- references


def test_ref_found_for_a_module_level_pipeline() -> None:
    # Imported by its package path: whether tests/pipeline itself is on sys.path depends on which
    # tests ran before (loading a pipeline by file path puts its folder there).
    from tests.pipeline import example_pipeline

    assert example_pipeline.pipeline.ref == "tests.pipeline.example_pipeline:pipeline"
    assert load_pipeline("tests.pipeline.example_pipeline:pipeline") is example_pipeline.pipeline
    assert load_pipeline("tests.pipeline.example_pipeline") is example_pipeline.pipeline


def test_pipeline_made_in_a_function_has_no_ref() -> None:
    assert Pipeline("p", steps=[read]).ref is None


def test_load_by_file_path(tmp_path: Path) -> None:
    p = load_pipeline(f"{EXAMPLE}:pipeline")
    assert p.name == "example"
    assert p.ref == f"{EXAMPLE}:pipeline"
    assert load_pipeline(str(EXAMPLE)) is p  # the file's only pipeline; cached while unchanged
    # A relative path works and is recorded absolute.
    os.chdir(EXAMPLE.parent)
    try:
        assert load_pipeline("./example_pipeline.py").ref == f"{EXAMPLE}:pipeline"
    finally:
        os.chdir(tmp_path)


def test_file_reload_after_change_and_sibling_imports(tmp_path: Path) -> None:
    (tmp_path / "helpers_for_test.py").write_text("FACTOR = 2\n")
    f = tmp_path / "pipes.py"
    f.write_text(
        textwrap.dedent(
            """
            from helpers_for_test import FACTOR
            from datamill.pipeline import Pipeline, step

            @step
            def double(item) -> int:
                return FACTOR

            pipeline = Pipeline("one", steps=[double])
            """
        )
    )
    assert load_pipeline(str(f)).name == "one"
    f.write_text(f.read_text().replace('"one"', '"two"') + "\n")
    os.utime(f, ns=(1, 1))  # make sure the change is seen even within one mtime tick
    assert load_pipeline(str(f)).name == "two"
    sys.modules.pop("helpers_for_test", None)


def test_several_or_no_pipelines_in_a_file(tmp_path: Path) -> None:
    f = tmp_path / "two.py"
    f.write_text(
        "from datamill.pipeline import Pipeline, step\n"
        "@step\ndef s(item) -> bytes:\n    return b''\n"
        "first = Pipeline('a', steps=[s])\nsecond = Pipeline('b', steps=[s])\n"
    )
    with pytest.raises(InvalidPipeline, match=r"defines several pipelines \(first, second\); say which one"):
        load_pipeline(str(f))
    assert load_pipeline(f"{f}:second").name == "b"
    with pytest.raises(InvalidPipeline, match=r"has no attribute 'third' \(pipelines: first, second\)"):
        load_pipeline(f"{f}:third")
    with pytest.raises(InvalidPipeline, match="names a step, not a pipeline"):
        load_pipeline(f"{f}:s")
    none = tmp_path / "none.py"
    none.write_text("X = 1\n")
    with pytest.raises(InvalidPipeline, match="defines no Pipeline"):
        load_pipeline(str(none))


def test_bad_references(tmp_path: Path) -> None:
    with pytest.raises(InvalidPipeline, match="no module named 'no_such_module_xyz'"):
        load_pipeline("no_such_module_xyz:pipeline")
    with pytest.raises(InvalidPipeline, match="cannot be read"):
        load_pipeline(str(tmp_path / "missing.py"))
    bad = tmp_path / "broken.py"
    bad.write_text("def f(:\n")
    with pytest.raises(InvalidPipeline, match=r"broken\.py line 1: .*fix the Python syntax"):
        load_pipeline(str(bad))
    boom = tmp_path / "boom.py"
    boom.write_text("raise RuntimeError('no database')\n")
    with pytest.raises(InvalidPipeline, match=r"loading pipeline file .* failed: RuntimeError: no database"):
        load_pipeline(str(boom))
    with pytest.raises(InvalidPipeline, match="empty pipeline reference"):
        load_pipeline("  ")
    with pytest.raises(InvalidPipeline, match="names a bytes, not a Pipeline"):
        load_pipeline("example_pipeline:CSV_A")


def test_invalid_pipeline_in_a_file_keeps_its_message(tmp_path: Path) -> None:
    f = tmp_path / "cyc.py"
    f.write_text(
        "from datamill.pipeline import Pipeline, step\n"
        "@step\ndef a(b) -> None: ...\n@step\ndef b(a) -> None: ...\n"
        "pipeline = Pipeline('cyc', steps=[a, b])\n"
    )
    with pytest.raises(InvalidPipeline, match="steps form a cycle"):
        load_pipeline(str(f))
