"""YAML pipelines: a valid file, and errors that name the file, the line and the field."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

from datamill.errors import InvalidPipeline
from datamill.pipeline import load_pipeline
from datamill.pipeline.yaml import load_yaml_pipeline, parse_yaml_pipeline

STEPS_PY = """
from datamill.pipeline import step

@step(params={"threshold": 0.5})
def summary(item, ctx) -> dict:
    return {"t": ctx.params["threshold"]}

def shout(summary, *, times: int = 1) -> str:
    return "!" * times
"""


def write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    (tmp_path / "yaml_steps_for_test.py").write_text(STEPS_PY)
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture(autouse=True)
def _forget_step_module() -> object:
    yield
    sys.modules.pop("yaml_steps_for_test", None)


def error(path: Path) -> str:
    with pytest.raises(InvalidPipeline) as e:
        load_yaml_pipeline(path.name)
    return e.value.message


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_valid_file(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "conv.py").write_text("print('hi')\n")
    (tmp_path / "local_steps.py").write_text("def count(items) -> int:\n    return len(items)\n")
    path = write(
        tmp_path,
        """
        name: demo
        description: A demo pipeline
        steps:
          - name: summary
            run: yaml_steps_for_test:summary
            params: {threshold: 0.7}
            retries: 2
            timeout: 30
          - name: loud
            run: yaml_steps_for_test:shout
            inputs: {summary: summary}
            params:
              times: 3
            publish: [return]
            version: "2"
          - name: convert
            command: [python, scripts/conv.py, "{input}", "{output_dir}"]
            cache: false
          - run: local_steps.py:count
            aggregate: true
            publish: false
        """,
    )
    p = load_pipeline(str(path))
    assert p.name == "demo" and p.description == "A demo pipeline"
    assert p.names == ("summary", "loud", "convert", "count")
    summary = p.step("summary")
    assert summary.params == {"threshold": 0.7}
    assert (summary.retries, summary.timeout) == (2, 30.0)
    loud = p.step("loud")
    assert loud.params == {"times": 3} and loud.version == "2" and loud.publish == ("return",)
    assert loud.upstream == ("summary",)
    convert = p.step("convert")
    assert convert.kind == "command" and not convert.cache
    assert list(convert.scripts) == ["scripts/conv.py"]
    assert p.step("count").aggregate and p.step("count").publish is False
    assert p.ref == str(path.resolve())
    assert load_pipeline(str(path)) is p  # cached until the file changes


def test_malformed_yaml_reports_line_and_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name: demo
        steps:
          - name: a
            run: m:f
           bad: indent
        """,
    )
    msg = error(path)
    assert re.match(r"pipeline\.yaml line 5, column \d+: not valid YAML: ", msg), msg


def test_unknown_step_module(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name: demo
        steps:
          - name: a
            run: yaml_steps_for_test:summary
          - name: b
            run: no_such_module_for_test:fn
        """,
    )
    assert error(path) == (
        "pipeline.yaml line 6: steps[1].run: cannot import module 'no_such_module_for_test': "
        "no module named 'no_such_module_for_test'"
    )


def test_missing_function(tmp_path: Path) -> None:
    path = write(tmp_path, "steps:\n  - run: yaml_steps_for_test:nope\n")
    assert error(path) == "pipeline.yaml line 2: steps[0].run: module 'yaml_steps_for_test' has no function 'nope'"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("retries", "-1", "steps[1].retries: must be a whole number ≥ 0, got -1"),
        ("retries", "two", "steps[1].retries: must be a whole number ≥ 0, got 'two'"),
        ("timeout", "0", "steps[1].timeout: must be a number of seconds > 0, or null for no limit, got 0"),
        ("cache", "maybe", "steps[1].cache: must be true or false, got 'maybe'"),
        ("version", "1.10", 'steps[1].version: must be a string like "2" (quote it: version: "1.10"'),
        ("publish", "{a: 1}", "steps[1].publish: must be true, false or a list of output names"),
        ("inputs", "[a]", "steps[1].inputs: must be a mapping of argument name → step name"),
        ("colour", "red", "steps[1].colour: unknown field 'colour'; allowed fields: name, run, command"),
    ],
)
def test_wrong_field_names_the_line(tmp_path: Path, field: str, value: str, message: str) -> None:
    path = write(
        tmp_path,
        f"""
        name: demo
        steps:
          - name: a
            run: yaml_steps_for_test:summary
          - name: b
            run: yaml_steps_for_test:shout
            {field}: {value}
        """,
    )
    msg = error(path)
    assert msg.startswith(f"pipeline.yaml line 7: {message}"), msg


def test_wrong_param_type_names_the_param_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        steps:
          - name: a
            run: yaml_steps_for_test:summary
            params:
              threshold: high
        """,
    )
    assert error(path) == (
        "pipeline.yaml line 5: steps[0].params.threshold: step 'a' parameter 'threshold': "
        "expected float (a number) like the default 0.5, got str 'high'"
    )


def test_unknown_param(tmp_path: Path) -> None:
    path = write(tmp_path, "steps:\n  - run: yaml_steps_for_test:shout\n    params: {tims: 2}\n    inputs: {}\n")
    msg = error(path)
    assert msg.startswith("pipeline.yaml line 3: steps[0].params.tims: step 'shout' has no parameter 'tims'"), msg


def test_unknown_step_reference_names_the_input_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name: demo
        steps:
          - name: loud
            run: yaml_steps_for_test:shout
            inputs:
              summary: summry
        """,
    )
    msg = error(path)
    assert msg.startswith(
        "pipeline.yaml line 6: steps[0].inputs.summary: pipeline 'demo': step 'loud' parameter 'summary' "
        "reads from step 'summry', but the pipeline has no such step"
    ), msg


def test_cycle(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name: demo
        steps:
          - name: a
            command: [tool, "{b}"]
          - name: b
            command: [tool, "{a}"]
        """,
    )
    msg = error(path)
    assert "steps form a cycle: " in msg and msg.startswith("pipeline.yaml line "), msg


def test_structure_errors(tmp_path: Path) -> None:
    cases = {
        "": "pipeline.yaml: the file is empty; a pipeline needs 'name' and 'steps'",
        "- a\n- b\n": "pipeline.yaml line 1: the file must be a mapping with 'name' and 'steps', not a list",
        "name: x\n": "pipeline.yaml line 1: steps: missing: list the pipeline's steps under 'steps:'",
        "name: x\nsteps: []\n": "pipeline.yaml line 2: steps: must be a non-empty list of steps",
        "name: x\nowner: me\nsteps: []\n": "pipeline.yaml line 2: owner: unknown field 'owner'",
        "steps:\n  - name: a\n": "pipeline.yaml line 2: steps[0]: give exactly one of 'run' (module:function)",
        "steps:\n  - command: [x]\n": "pipeline.yaml line 2: steps[0].name: missing: a command step needs a name",
        "steps:\n  - run: nocolon\n": "pipeline.yaml line 2: steps[0].run: must look like 'package.module:function'",
        "steps:\n  - run: a:b\n    run: c:d\n": "pipeline.yaml line 3: run: duplicate key 'run' (first on line 2)",
        "steps:\n  - name: a b\n    command: [x]\n": "pipeline.yaml line 2: steps[0]: step name 'a b' is not valid",
    }
    for text, expected in cases.items():
        path = tmp_path / "pipeline.yaml"
        path.write_text(text)
        msg = error(path)
        assert msg.startswith(expected), (text, msg)


def test_parse_from_text_with_a_display_name(tmp_path: Path) -> None:
    p = parse_yaml_pipeline("name: t\nsteps:\n  - name: c\n    command: 'echo {input}'\n", "inline.yaml", tmp_path)
    assert p.step("c").argv == ("echo", "{input}")
    with pytest.raises(
        InvalidPipeline, match=r"^inline\.yaml line 2, column 1: not valid YAML: while parsing a flow node"
    ):
        parse_yaml_pipeline("name: [\n", "inline.yaml")


# ------------------------------------------------------------------ bounded sizes (issue 8, item 6)


def _alias_bomb(levels: int) -> str:
    """A few hundred bytes that expand to 9**levels values through anchors and aliases."""
    nodes = ["&a0 [" + ", ".join(["lol"] * 9) + "]"]
    nodes += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return f"name: bomb\nsteps:\n  - name: a\n    command: [echo]\n    retries: [{', '.join(nodes)}]\n"


def test_an_alias_bomb_is_refused_with_a_short_message(tmp_path: Path) -> None:
    text = _alias_bomb(9)
    assert len(text) < 600
    (tmp_path / "bomb.yaml").write_text(text)
    message = error(tmp_path / "bomb.yaml")
    assert message.startswith("bomb.yaml line 5: the file expands to more than 100000 values")
    assert len(message) < 300


def test_anchors_within_bounds_still_work(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name: shared
        steps:
          - name: a
            command: [echo, "{input}"]
            retries: &r 2
          - name: b
            command: [echo, "{input}"]
            retries: *r
        """,
    )
    assert [s.retries for s in load_yaml_pipeline(path.name).steps] == [2, 2]


def test_values_quoted_in_errors_are_cut_short(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        name: long
        steps:
          - name: a
            command: [echo]
            retries: "{"x" * 5000}"
        """,
    )
    message = error(path)
    assert message.startswith("pipeline.yaml line 5: steps[0].retries: must be a whole number ≥ 0, got 'xxx")
    assert len(message) <= 300
    (tmp_path / "key.yaml").write_text(f"name: k\n{'k' * 1000}: 1\nsteps: []\n")  # an unknown field
    assert len(error(tmp_path / "key.yaml")) <= 300


def test_oversized_self_referring_and_deep_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "big.yaml").write_text("name: big\n# " + "x" * (1 << 20) + "\nsteps: []\n")
    assert "larger than 1 MiB" in error(tmp_path / "big.yaml")
    (tmp_path / "self.yaml").write_text("name: s\nsteps: &s [*s]\n")
    assert "refers to a value that contains it" in error(tmp_path / "self.yaml")
    (tmp_path / "deep.yaml").write_text("name: d\nsteps: " + "[" * 500_000 + "]" * 500_000 + "\n")
    assert "nested more than 64 levels deep" in error(tmp_path / "deep.yaml")
    # Nesting by indentation cannot go as deep in 1 MiB, and ends as cleanly.
    (tmp_path / "block.yaml").write_text("name: d\nsteps:\n" + "".join(" " * i + "-\n" for i in range(1, 1400)))
    assert "nested too deeply" in error(tmp_path / "block.yaml")


def test_a_main_module_is_never_imported(tmp_path: Path) -> None:
    path = write(tmp_path, "name: m\nsteps:\n  - name: a\n    run: unittest.__main__:main\n")
    assert "__main__ module" in error(path)
    assert "unittest.__main__" not in sys.modules
