"""Step options: one declaration, one check, the same field-named error from every way of giving them."""

from __future__ import annotations

import ast
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import datamill
from datamill.errors import InvalidPipeline, InvalidStepOption
from datamill.pipeline import Step, command_step, step
from datamill.pipeline.options import _CHECKS, _CONTAINER_CHECKS, YAML, StepOptions
from datamill.pipeline.yaml import parse_yaml_pipeline

SRC = Path(datamill.__file__).parent


def f(item) -> None:
    pass


# (field, bad value as Python, the same as YAML text, what the Python message says, what YAML says)
BAD = [
    ("retries", -1, "-1", "retries must be a whole number ≥ 0, got -1", "must be a whole number ≥ 0, got -1"),
    ("retry_backoff", -2, "-2", "retry_backoff must be a number of seconds ≥ 0", "must be a number of seconds ≥ 0"),
    ("timeout", 0, "0", "timeout must be a number of seconds > 0, or None for", "> 0, or null for no limit, got 0"),
    ("cache", "yes", "'yes'", "cache must be True or False, got 'yes'", "must be true or false, got 'yes'"),
    ("force", 1, "1", "force must be True or False", "must be true or false, got 1"),
    ("publish", {"a": 1}, "{a: 1}", "publish must be True, False or a list", "must be true, false or a list of"),
    ("inputs", ["a"], "[a]", "inputs must be a dict of argument name", "must be a mapping of argument name"),
    ("params", ["a"], "[a]", "params must be a dict of parameter name", "must be a mapping of parameter name"),
    ("name_template", "{bogus}", "'{bogus}'", "name_template '{bogus}' uses unknown field(s) bogus", "unknown field"),
    ("description", 5, "5", "description must be a string, got 5", "must be a string, got 5"),
]


def test_every_option_is_checked() -> None:
    declared = {f.name for f in dataclasses.fields(StepOptions)}
    # name is checked first (every message names the step); argv/base_dir and the container options
    # depend on the step's kind.
    assert set(_CHECKS) | {"name", "argv", "base_dir"} | set(_CONTAINER_CHECKS) == declared


@pytest.mark.parametrize(("field", "value", "yaml_value", "python_says", "yaml_says"), BAD, ids=[b[0] for b in BAD])
def test_validate_names_the_field_in_the_words_of_the_language(
    field: str, value: Any, yaml_value: str, python_says: str, yaml_says: str
) -> None:
    options = StepOptions(name="s", **{field: value})
    with pytest.raises(InvalidStepOption) as e:
        options.validate()
    assert e.value.field == field
    assert e.value.message.startswith(f"step 's': {python_says}"), e.value.message
    assert e.value.detail == {"step": "s"}
    with pytest.raises(InvalidStepOption) as e:
        options.validate(YAML)
    assert e.value.field == field and yaml_says in e.value.problem, e.value.problem


@pytest.mark.parametrize(("field", "value", "yaml_value", "python_says", "yaml_says"), BAD, ids=[b[0] for b in BAD])
def test_every_way_of_giving_options_gives_the_same_error(
    tmp_path: Path, field: str, value: Any, yaml_value: str, python_says: str, yaml_says: str
) -> None:
    makers: dict[str, Callable[[], Step]] = {
        "@step": lambda: step(name="s", **{field: value})(f),
        "command_step": lambda: command_step("s", ["tool", "{input}"], base_dir=tmp_path, **{field: value}),
        "configure": lambda: step(name="s")(f).configure(**{field: value}),
        "configure (command)": lambda: command_step("s", ["tool", "{input}"], base_dir=tmp_path).configure(
            **{field: value}
        ),
    }
    for how, make in makers.items():
        with pytest.raises(InvalidStepOption) as e:
            make()
        assert (e.value.field, e.value.message.startswith(f"step 's': {python_says}")) == (field, True), (how, e.value)

    (tmp_path / "steps.py").write_text("def f(item) -> None:\n    pass\n")
    for kind in ("command: [tool, '{input}']", "run: steps.py:f"):
        text = f"name: p\nsteps:\n  - name: s\n    {kind}\n    {field}: {yaml_value}\n"
        with pytest.raises(InvalidPipeline) as e:
            parse_yaml_pipeline(text, "p.yaml", tmp_path)
        assert e.value.message.startswith(f"p.yaml line 5: steps[0].{field}: "), (kind, e.value.message)
        assert yaml_says in e.value.message, (kind, e.value.message)


def test_validate_normalises_and_is_idempotent(tmp_path: Path) -> None:
    given = StepOptions(name="s", publish="report.txt", retry_backoff=2, timeout=5, params={"n": (1, 2)}, inputs={})
    checked = given.validate()
    assert (checked.publish, checked.retry_backoff, checked.timeout, checked.params) == (
        ("report.txt",),
        2.0,
        5.0,
        {"n": [1, 2]},
    )
    assert isinstance(checked.retry_backoff, float) and isinstance(checked.timeout, float)
    assert checked.validate() == checked
    command = StepOptions(name="c", argv=["tool"], base_dir=tmp_path).validate(command=True)
    assert command.argv == ("tool",) and command.base_dir == tmp_path.resolve()


def test_a_step_keeps_its_checked_options_and_configure_starts_from_them() -> None:
    s = step(name="s", retries=2, publish="return")(f)
    assert s.options == StepOptions(name="s", retries=2, publish="return").validate()
    changed = s.configure(timeout=3)
    assert (changed.retries, changed.publish, changed.timeout) == (2, ("return",), 3.0)
    assert changed.options.timeout == 3.0


def test_kind_specific_options(tmp_path: Path) -> None:
    with pytest.raises(InvalidStepOption, match=r"^step 'f': argv is only for command steps") as e:
        step(f).configure(argv=["tool"])
    assert e.value.field == "argv"
    with pytest.raises(InvalidStepOption, match=r"^step 'c': argv must be a non-empty list of strings") as e:
        command_step("c", ["tool"], base_dir=tmp_path).configure(argv=None)
    assert e.value.field == "argv"
    with pytest.raises(InvalidStepOption) as e:
        command_step("c", ["tool", 3], base_dir=tmp_path)  # type: ignore[list-item]
    assert e.value.field == "argv"


def test_yaml_command_errors_point_at_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(InvalidPipeline) as e:
        parse_yaml_pipeline("steps:\n  - name: c\n    command: []\n", "p.yaml", tmp_path)
    assert e.value.message.startswith("p.yaml line 3: steps[0].command: must be a non-empty list of strings")
    # An unquoted version is a YAML number: the text is gone, so the message asks for quotes.
    with pytest.raises(InvalidPipeline) as e:
        parse_yaml_pipeline("steps:\n  - name: c\n    command: [x]\n    version: 1.10\n", "p.yaml", tmp_path)
    assert e.value.message.startswith('p.yaml line 4: steps[0].version: must be a string like "2" (quote it')
    p = parse_yaml_pipeline("steps:\n  - name: c\n    command: [x]\n    version: 2\n", "p.yaml", tmp_path)
    assert p.step("c").version == "2"


def test_parameter_errors_name_the_parameter_field() -> None:
    s = step(f, params={"n": 1})
    with pytest.raises(InvalidStepOption) as e:
        s.configure(params={"m": 1})
    assert (e.value.field, e.value.detail) == ("params.m", {"step": "f", "param": "m"})
    with pytest.raises(InvalidStepOption) as e:
        s.resolve_params({"n": "one"})
    assert e.value.field == "params.n"
    with pytest.raises(InvalidStepOption) as e:
        step(f, params={"a b": 1})
    assert e.value.field == "params.a b"


def _datamill_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return names


def test_canonical_json_sits_below_the_pipeline_and_the_engine() -> None:
    imports = _datamill_imports(SRC / "canonical.py")
    assert all(n.split(".")[0] in sys.stdlib_module_names or n == "datamill.errors" for n in imports), imports
    # (Pipeline.run's lazy import of the engine is a separate matter, left to the import-layer test.)
    for name in ("step.py", "options.py", "wiring.py", "yaml.py"):
        upward = {n for n in _datamill_imports(SRC / "pipeline" / name) if n.startswith("datamill.engine")}
        assert not upward, (name, upward)
