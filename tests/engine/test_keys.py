"""Task keys: golden values, canonical form, what changes a key and what does not, and errors."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datamill.canonical import canonical_json
from datamill.engine.keys import KeyMaker, diff_parts, key_from_parts, key_parts, task_key
from datamill.errors import InvalidPipeline

ZERO = "blake3:" + "0" * 64

# Golden values: computed once, checked equal across processes with different hash seeds.
# If one of these changes, every cache in the world is invalidated: bump KEY_SCHEMA on purpose, never by accident.
GOLDEN = [
    (
        (
            "summary",
            "py:abc",
            {"threshold": 0.5, "cols": ["a", "b"], "opts": {"z": 1, "a": None}},
            [("item:a.csv", ZERO)],
            None,
        ),
        "blake3:4fb263cc9e4a0a88d2ec3c34454fb56293bb282d917aa480eb33a851c14887c7",
    ),
    (
        ("db", "cmd:1", {}, {"items[1]:b.csv": "blake3:22", "items[0]:a.csv": "blake3:11"}, "sha256:ff"),
        "blake3:f60a789eb05dc0fdd353a6680fbf2ae8043136ffa3d1bc4436794257b28a03a0",
    ),
    (
        ("ünï", "py:x", {"s": "héllo", "n": -0.0, "big": 2**70}, [], None),
        "blake3:f3ec1bbf66db333dd2eef706f6335ec9a5880b5112ebc9cf1d5d39286fff72b0",
    ),
]


@pytest.mark.parametrize(("args", "expected"), GOLDEN)
def test_golden_values(args: tuple[Any, ...], expected: str) -> None:
    assert task_key(*args) == expected


def test_key_is_blake3_of_the_documented_canonical_json() -> None:
    parts = key_parts("summary", "py:abc", {"threshold": 0.5, "cols": ("a", "b")}, [("item:a.csv", ZERO)])
    text = (
        '{"code":"py:abc","image":null,"inputs":[["item:a.csv","' + ZERO + '"]],'
        '"params":{"cols":["a","b"],"threshold":0.5},"step":"summary","v":1}'
    )
    assert canonical_json(parts) == text
    assert task_key("summary", "py:abc", {"threshold": 0.5, "cols": ("a", "b")}, [("item:a.csv", ZERO)]) == (
        "blake3:" + blake3.blake3(text.encode()).hexdigest()
    )


@pytest.mark.slow
def test_golden_values_are_the_same_in_another_process() -> None:
    code = (
        "from datamill.engine.keys import task_key\n"
        f"print(task_key(*{GOLDEN[0][0]!r}))\n"
        f"print(task_key(*{GOLDEN[2][0]!r}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123"}
    ).stdout.split()
    assert out == [GOLDEN[0][1], GOLDEN[2][1]]


def test_key_format() -> None:
    assert re.fullmatch(r"blake3:[0-9a-f]{64}", task_key("s", "c", {}, []))


def test_param_order_and_mapping_vs_sorted_sequence_do_not_matter() -> None:
    a = task_key("s", "c", {"a": 1, "b": {"y": 2, "x": 3}}, {"in2": "d2", "in1": "d1"})
    b = task_key("s", "c", {"b": {"x": 3, "y": 2}, "a": 1}, [("in1", "d1"), ("in2", "d2")])
    assert a == b


def test_sequence_order_matters_for_inputs() -> None:
    assert task_key("s", "c", {}, [("x[0]", "d1"), ("x[1]", "d2")]) != task_key(
        "s", "c", {}, [("x[1]", "d2"), ("x[0]", "d1")]
    )


def test_tuple_and_list_params_are_the_same() -> None:
    assert task_key("s", "c", {"p": (1, 2)}, []) == task_key("s", "c", {"p": [1, 2]}, [])


def test_json_distinctions_are_kept() -> None:
    keys = {task_key("s", "c", {"p": v}, []) for v in (1, 1.0, True, "1", None, [1])}
    assert len(keys) == 6


def test_metadata_is_not_a_part() -> None:
    assert set(key_parts("s", "c", {}, [])) == {"v", "step", "code", "params", "inputs", "image"}


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (math.nan, "parameter 'p' cannot be part of a task key: nan has no canonical JSON form; use None"),
        (math.inf, "use None or a finite number"),
        ({1, 2}, "a set has no stable order; pass a sorted list"),
        (object(), "a object has no canonical form; pass plain JSON values"),
        (b"x", "bytes cannot be a parameter"),
        (Path("x"), "pass str(path)"),
        (date(2024, 1, 1), "pass value.isoformat()"),
        ({1: "a"}, "dict key 1 is not a string"),
    ],
)
def test_unkeyable_params_raise_naming_the_parameter(value: Any, fragment: str) -> None:
    with pytest.raises(InvalidPipeline) as e:
        task_key("clean", "c", {"p": value}, [])
    assert "step 'clean' parameter 'p" in e.value.message
    assert fragment in e.value.message
    assert e.value.detail["param"] == "p"


def test_nested_unkeyable_value_names_its_path() -> None:
    with pytest.raises(InvalidPipeline, match=r"parameter 'opts\['a'\]\[1\]' cannot be part of a task key"):
        task_key("s", "c", {"opts": {"a": [1, math.nan]}}, [])


def test_bad_input_pairs_are_caller_bugs() -> None:
    with pytest.raises(ValueError, match="appears twice"):
        task_key("s", "c", {}, [("a", "d"), ("a", "e")])
    with pytest.raises(TypeError):
        task_key("s", "c", {}, [("a", 1)])  # type: ignore[list-item]


def test_diff_parts_names_what_changed() -> None:
    a = key_parts("s", "c1", {"t": 0.5, "k": 1}, {"item:a.csv": "d1", "up:x": "d2"})
    b = key_parts("s", "c2", {"t": 0.7, "k": 1, "new": True}, {"item:a.csv": "d1", "up:x": "d3"}, "img")
    assert diff_parts(a, b) == ["code", "params.new", "params.t", "inputs.up:x", "image"]
    assert diff_parts(a, a) == []
    assert key_from_parts(a) == task_key("s", "c1", {"t": 0.5, "k": 1}, {"item:a.csv": "d1", "up:x": "d2"})


def test_diff_parts_sees_true_versus_one() -> None:
    assert diff_parts(key_parts("s", "c", {"p": 1}, []), key_parts("s", "c", {"p": True}, [])) == ["params.p"]


# --------------------------------------------------------------------------- properties

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
names = st.text(min_size=1, max_size=8)
digests = st.text(alphabet="0123456789abcdef", min_size=4, max_size=8).map(lambda h: "blake3:" + h)
params_st = st.dictionaries(names, json_values, max_size=4)
inputs_st = st.dictionaries(names, digests, max_size=4)


@settings(max_examples=60, deadline=None)
@given(step=names, code=names, params=params_st, inputs=inputs_st)
def test_key_is_deterministic_and_order_free(
    step: str, code: str, params: dict[str, Any], inputs: dict[str, str]
) -> None:
    k = task_key(step, code, params, inputs)
    assert k == task_key(step, code, dict(reversed(list(params.items()))), dict(reversed(list(inputs.items()))))
    assert k == task_key(step, code, params, sorted(inputs.items()))


@settings(max_examples=60, deadline=None)
@given(
    params=params_st,
    inputs=inputs_st.filter(bool),
    pname=names,
    pvalue=json_values,
    new_digest=digests,
    which=st.sampled_from(["step", "code", "param", "input", "image"]),
)
def test_changing_one_part_changes_the_key(
    params: dict[str, Any], inputs: dict[str, str], pname: str, pvalue: Any, new_digest: str, which: str
) -> None:
    base = task_key("s", "c", params, inputs)
    if which == "step":
        assert task_key("s2", "c", params, inputs) != base
    elif which == "code":
        assert task_key("s", "c2", params, inputs) != base
    elif which == "image":
        assert task_key("s", "c", params, inputs, "sha256:1") != base
    elif which == "param":
        changed = {**params, pname: pvalue}
        same = pname in params and canonical_json(params[pname]) == canonical_json(pvalue)
        assert (task_key("s", "c", changed, inputs) == base) == same
    else:
        label = sorted(inputs)[0]
        changed_inputs = {**inputs, label: new_digest}
        assert (task_key("s", "c", params, changed_inputs) == base) == (inputs[label] == new_digest)


@pytest.mark.parametrize(
    ("params", "image"),
    [
        ({}, None),
        ({"threshold": 0.5, "names": ["a", "b"]}, "sha256:" + "ab" * 32),
        # A parameter named like the part the key maker fills in, and a string that quotes it.
        ({"inputs": [], "note": '"inputs":[]', "é": {"inputs": []}}, None),
    ],
)
def test_a_key_maker_gives_the_keys_task_key_gives(params: dict, image: str | None) -> None:
    maker = KeyMaker("summary", "py:abc", params, image)
    for inputs in ([], [("item:a.csv", "blake3:00")], [('items[0]:é".csv', "blake3:01"), ("x:y", "z")]):
        assert maker.key(inputs) == task_key("summary", "py:abc", params, inputs, image)
