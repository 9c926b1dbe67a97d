"""The @step decorator and command_step: options, wiring, identity, parameters, validation."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest

from datamill.errors import InvalidPipeline
from datamill.pipeline import Context, InputRef, Step, command_step, step
from datamill.pipeline.step import Role

ITEM = InputRef(None, None, "Raw Data", "a.csv", 1, "blake3:00", 3, "text/csv")


def roles(s: Step) -> dict[str, tuple[Role, str | None]]:
    return {a.name: (a.role, a.source) for a in s.args}


def test_bare_decorator_defaults() -> None:
    @step
    def summary(item, ctx) -> dict:
        """Summarise."""
        return {}

    assert isinstance(summary, Step)
    assert summary.name == "summary"
    assert summary.kind == "python"
    assert summary.version is None
    assert summary.code.startswith("py:")
    assert summary.publish is True
    assert (summary.retries, summary.retry_backoff, summary.timeout) == (0, 1.0, None)
    assert summary.cache and not summary.force and not summary.aggregate
    assert summary.codec == "json"
    assert summary.description == "Summarise."
    assert summary.__name__ == "summary"  # type: ignore[attr-defined]
    assert roles(summary) == {"item": (Role.ITEM, None), "ctx": (Role.CTX, None)}


def test_decorator_with_options() -> None:
    @step(
        name="sum2",
        version="3",
        publish=["*.csv", "return"],
        name_template="{stem}-{name}",
        retries=2,
        retry_backoff=0.5,
        timeout=30,
        cache=False,
        force=True,
    )
    def summary(item) -> None:
        pass

    assert summary.name == "sum2"
    assert summary.code == "py:test_decorator_with_options.<locals>.summary@3"
    assert summary.publish == ("*.csv", "return")
    assert (summary.retries, summary.retry_backoff, summary.timeout) == (2, 0.5, 30.0)
    assert not summary.cache and summary.force
    assert summary.publishes("sheet.csv") and summary.publishes("return.json") and not summary.publishes("x.txt")


def test_step_is_callable_like_its_function() -> None:
    @step
    def double(x: int) -> int:
        return 2 * x

    assert double(4) == 8


def test_wiring_by_name_explicit_and_context_annotation() -> None:
    @step(inputs={"table": "to_csv"})
    def plot(table, summary, context: Context, *, bins: int = 10) -> None:
        pass

    assert roles(plot) == {
        "table": (Role.INPUT, "to_csv"),
        "summary": (Role.INPUT, "summary"),
        "context": (Role.CTX, None),
        "bins": (Role.PARAM, None),
    }
    assert plot.upstream == ("to_csv", "summary")
    assert plot.params == {"bins": 10}


def test_params_declared_in_the_decorator() -> None:
    @step(params={"threshold": 0.5, "cols": ["a"]})
    def clean(item, ctx, threshold) -> None:
        pass

    assert roles(clean)["threshold"] == (Role.PARAM, None)
    assert clean.params == {"threshold": 0.5, "cols": ["a"]}
    assert clean.resolve_params({"threshold": 1}) == {"threshold": 1.0, "cols": ["a"]}


def test_wrong_param_type_message() -> None:
    @step
    def clean(item, *, threshold: float = 0.5, bins: int = 3) -> None:
        pass

    with pytest.raises(InvalidPipeline) as e:
        clean.resolve_params({"threshold": "high"})
    assert e.value.message == (
        "step 'clean' parameter 'threshold': expected float (a number) like the default 0.5, got str 'high'"
    )
    assert e.value.detail == {"step": "clean", "param": "threshold"}
    with pytest.raises(InvalidPipeline, match="parameter 'bins': expected int"):
        clean.resolve_params({"bins": 2.5})
    with pytest.raises(InvalidPipeline, match="parameter 'bins': expected int"):
        clean.resolve_params({"bins": True})
    assert clean.resolve_params({"threshold": 1}) == {"threshold": 1.0, "bins": 3}
    with pytest.raises(InvalidPipeline, match=r"has no parameter 'bns' \(its parameters: bins, threshold\)"):
        clean.resolve_params({"bns": 2})


@pytest.mark.parametrize(
    ("default", "value", "expected"),
    [
        (True, 1, "expected bool (true/false) like the default True, got int 1"),
        ("a", 1, "expected str like the default 'a', got int 1"),
        ([1], {"a": 1}, "expected list like the default [1], got dict {'a': 1}"),
        (None, {1, 2}, "a set has no stable order"),
    ],
)
def test_param_type_table(default: Any, value: Any, expected: str) -> None:
    @step(params={"p": default})
    def s(ctx) -> None:
        pass

    with pytest.raises(InvalidPipeline, match="step 's' parameter 'p'") as e:
        s.resolve_params({"p": value})
    assert expected in e.value.message


def test_unkeyable_default_is_refused_at_definition() -> None:
    with pytest.raises(InvalidPipeline, match="step 'bad' parameter 'p' cannot be part of a task key: a set"):

        @step(params={"p": {1, 2}})
        def bad(ctx) -> None:
            pass


def test_code_digest_ignores_decorators_comments_and_formatting(tmp_path: Path) -> None:
    src1 = "def f(item):\n    # a comment\n    return   item\n"
    src2 = "def f(item):\n    return item\n"
    src3 = "def f(item):\n    return [item]\n"
    codes = []
    for i, src in enumerate((src1, src2, src3)):
        path = tmp_path / f"mod{i}.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(f"_codetest{i}", path)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        codes.append(step(mod.f).code)
        codes.append(step(retries=3, publish=False)(mod.f).code)
    assert codes[0] == codes[1] == codes[2] == codes[3]
    assert codes[4] == codes[5] != codes[0]


def test_source_digest_stays_the_same_for_the_same_function() -> None:
    def f(item) -> None:
        pass

    assert step(f).code == step(f).code


def test_missing_source_asks_for_a_version() -> None:
    ns: dict[str, Any] = {}
    exec("def made(item):\n    return 1\n", ns)
    with pytest.raises(InvalidPipeline, match=r"cannot read the source .* Pass version='1' to @step"):
        step(ns["made"])
    assert step(version="1")(ns["made"]).code == "py:made@1"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"retries": -1}, "retries must be a whole number ≥ 0, got -1"),
        ({"retries": 1.5}, "retries must be a whole number ≥ 0"),
        ({"retry_backoff": -2}, "retry_backoff must be a number of seconds ≥ 0"),
        ({"timeout": 0}, "timeout must be a number of seconds > 0"),
        ({"cache": "yes"}, "cache must be True or False"),
        ({"version": 2}, "version must be a non-empty string"),
        ({"publish": [1]}, "publish must be True, False or a list of output names"),
        ({"name_template": "{stem}{bogus}"}, "uses unknown field(s) bogus; available: {ext}, {item}, {name}"),
        ({"name": "bad name"}, "step name 'bad name' is not valid"),
        ({"name": "items"}, "a step cannot be called 'items'"),
        ({"codec": "nope"}, "no codec named 'nope'"),
        ({"inputs": {"other": "x"}}, "inputs= names 'other', but f() has no parameter of that name"),
        ({"inputs": {"item": "x"}}, "inputs= cannot rewire 'item'"),
    ],
)
def test_invalid_options(kwargs: dict[str, Any], fragment: str) -> None:
    def f(item) -> None:
        pass

    with pytest.raises(InvalidPipeline) as e:
        step(**kwargs)(f)
    assert fragment in e.value.message


def test_invalid_signatures() -> None:
    def both(item, items) -> None:
        pass

    def kwonly(item, *, table) -> None:
        pass

    def star(*tables) -> None:
        pass

    def agg(item) -> None:
        pass

    with pytest.raises(InvalidPipeline, match="takes both 'item' and 'items'"):
        step(both)
    with pytest.raises(InvalidPipeline, match=r"keyword-only parameter 'table' has no default\. Give it one"):
        step(kwonly)
    with pytest.raises(InvalidPipeline, match=r"\*tables cannot be wired"):
        step(star)
    with pytest.raises(InvalidPipeline, match="is aggregate but takes 'item'"):
        step(aggregate=True)(agg)
    with pytest.raises(InvalidPipeline, match="already a step"):
        step(step(agg))  # type: ignore[arg-type]


def test_items_makes_a_step_aggregate() -> None:
    @step
    def bundle(items, ctx) -> bytes:
        return b""

    assert bundle.aggregate and bundle.uses_items


def test_return_codec_from_annotation() -> None:
    @step
    def a(item) -> bytes:
        return b""

    @step
    def b(item) -> pd.DataFrame:  # type: ignore[name-defined]  # noqa: F821 - only the annotation text is read
        return None

    @step
    def c(item) -> dict[str, int]:
        return {}

    @step
    def d(item):  # type: ignore[no-untyped-def]
        return None

    @step(codec="png")
    def e(item) -> Any:
        return None

    assert [s.codec for s in (a, b, c, d, e)] == ["bytes", "parquet", "json", None, "png"]


def test_published_names() -> None:
    @step
    def summary(item) -> dict:
        return {}

    @step(name_template="{step}/{stem}{ext}")
    def plot(item) -> None:
        pass

    assert summary.published_name("return.json", ITEM) == "a.summary.json"
    assert summary.published_name("Sheet1.csv", ITEM) == "a.Sheet1.csv"
    assert summary.published_name("return.json", None, "tabular") == "summary.json"
    assert summary.published_name("db.sqlite", None, "tabular") == "db.sqlite"
    assert plot.published_name("return.png", ITEM) == "plot/a.png"

    @step(name_template="../{stem}")
    def bad(item) -> None:
        pass

    with pytest.raises(InvalidPipeline, match="is not a valid file name"):
        bad.published_name("return.json", ITEM)


def test_configure_returns_a_changed_copy() -> None:
    @step
    def clean(item, *, threshold: float = 0.5) -> None:
        pass

    changed = clean.configure(name="clean2", retries=3, params={"threshold": 0.9})
    assert (changed.name, changed.retries, changed.params) == ("clean2", 3, {"threshold": 0.9})
    assert (clean.name, clean.retries, clean.params) == ("clean", 0, {"threshold": 0.5})
    assert changed.code == clean.code
    with pytest.raises(InvalidPipeline, match="expected float"):
        clean.configure(params={"threshold": "x"})


# --------------------------------------------------------------------------- command steps


def test_command_step_placeholders_and_roles(tmp_path: Path) -> None:
    s = command_step(
        "convert",
        ["tool", "--mode={mode}", "{input}", "{table}", "{output_dir}", "{scratch}/{stem}.tmp"],
        params={"mode": "fast"},
        inputs={"table": "to_csv"},
        base_dir=tmp_path,
    )
    assert s.kind == "command"
    assert roles(s) == {
        "mode": (Role.PARAM, None),
        "input": (Role.ITEM, None),
        "table": (Role.INPUT, "to_csv"),
    }
    assert not s.aggregate
    agg = command_step("bundle", ["zip", "-j", "{output_dir}/all.zip", "{inputs}"], base_dir=tmp_path)
    assert agg.aggregate
    with pytest.raises(InvalidPipeline, match=re.escape("uses both {input} and {inputs}")):
        command_step("x", ["t", "{input}", "{inputs}"], base_dir=tmp_path)
    with pytest.raises(InvalidPipeline, match=re.escape("uses {stem} without {input}")):
        command_step("x", ["t", "{stem}"], base_dir=tmp_path)
    with pytest.raises(InvalidPipeline, match=r"placeholder \{input!r\} is not a plain name"):
        command_step("x", ["t", "{input!r}"], base_dir=tmp_path)
    with pytest.raises(InvalidPipeline, match="argv must be a non-empty list"):
        command_step("x", "tool {input}", base_dir=tmp_path)  # type: ignore[arg-type]


def test_command_identity_covers_scripts_next_to_the_pipeline(tmp_path: Path) -> None:
    script = tmp_path / "scripts" / "conv.py"
    script.parent.mkdir()
    script.write_text("print(1)\n")
    argv = ["python", "scripts/conv.py", "{input}", "{output_dir}"]
    first = command_step("conv", argv, base_dir=tmp_path)
    assert list(first.scripts) == ["scripts/conv.py"]
    assert command_step("conv", argv, base_dir=tmp_path).code == first.code
    script.write_text("print(2)\n")
    assert command_step("conv", argv, base_dir=tmp_path).code != first.code
    assert command_step("conv", [*argv, "-v"], base_dir=tmp_path).code != first.code
    assert command_step("conv", argv, base_dir=tmp_path, version="2").code != first.code


def test_command_step_base_dir_defaults_to_the_calling_file() -> None:
    s = command_step("x", ["true"])
    assert s.base_dir == Path(__file__).resolve().parent
    with pytest.raises(TypeError, match="command step"):
        s()
