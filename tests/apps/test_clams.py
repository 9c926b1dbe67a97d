"""CLAMS chains as steps, against real clams-python apps served over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from datamill.engine import runs
from datamill.errors import InvalidPipeline
from datamill.pipeline import Pipeline
from datamill.pipeline.apps import clams_chain, clams_step
from datamill.pipeline.yaml import parse_yaml_pipeline
from tests.helpers import DEST, SOURCE, HomeWorld, world_of

pytestmark = pytest.mark.slow

TEXTS = [f"item {i} has some words number {i}" + " extra" * (i % 4) for i in range(20)]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[HomeWorld]:
    yield from world_of(HomeWorld, tmp_path / "home")


def put_texts(world: HomeWorld, n: int = 20) -> None:
    for i, text in enumerate(TEXTS[:n]):
        world.put(f"t{i:02d}.txt", text)


def run(world: HomeWorld, pipeline: Pipeline) -> runs.RunInfo:
    inputs = world.engine.inputs_from_folder(world.admin, SOURCE)
    return world.engine.run(world.admin, pipeline, inputs, dest=DEST)


def views(world: HomeWorld, name: str) -> list[dict]:
    return json.loads(world.read(name))["views"]


def chain(apps: dict[str, str], *names: str) -> list:
    params = {"tokenizer": {"lowercase": True}, "counter": {"label": "words"}}
    return clams_chain([clams_step(n, url=apps[n], params=params.get(n)) for n in names])


def test_a_chain_over_20_items_keeps_every_intermediate_mmif(world: HomeWorld, apps: dict[str, str]) -> None:
    put_texts(world)
    info = run(world, Pipeline("chain", chain(apps, "tokenizer", "counter")))
    assert info.status == "succeeded", info
    out = world.out()
    assert len([n for n in out if n.endswith(".tokenizer.mmif")]) == 20
    assert len([n for n in out if n.endswith(".counter.mmif")]) == 20
    first = views(world, "t03.tokenizer.mmif")
    assert [v["metadata"]["app"] for v in first if "contains" in v["metadata"]] == [
        "http://example.org/apps/toy-tokenizer/v1"
    ]
    counted = views(world, "t03.counter.mmif")
    assert [v["metadata"]["app"] for v in counted if "contains" in v["metadata"]] == [
        "http://example.org/apps/toy-tokenizer/v1",
        "http://example.org/apps/toy-counter/v1",
    ]
    count = [a for v in counted for a in v["annotations"] if "tokenCount" in a["properties"]]
    assert count[0]["properties"]["tokenCount"] == len(TEXTS[3].split())
    # provenance: the task that made the version names the app, its version and the parameters
    tasks = world.engine.tasks(world.admin, info.id)
    tok = next(t for t in tasks if t.step == "tokenizer")
    assert tok.step_code.startswith("clams:http://example.org/apps/toy-tokenizer/v1:")
    assert tok.params == {"lowercase": True}


def test_adding_a_third_app_reruns_only_it(world: HomeWorld, apps: dict[str, str]) -> None:
    put_texts(world, 3)
    first = run(world, Pipeline("chain", chain(apps, "tokenizer", "counter")))
    assert first.status == "succeeded"
    second = run(world, Pipeline("chain", chain(apps, "tokenizer", "counter", "upper")))
    assert second.status == "succeeded"
    decisions = {(t.step, t.status) for t in world.engine.tasks(world.admin, second.id)}
    assert decisions == {("tokenizer", "cached"), ("counter", "cached"), ("upper", "succeeded")}
    upper = views(world, "t00.upper.mmif")
    values = [a["properties"]["value"] for v in upper for a in v["annotations"] if "value" in a["properties"]]
    assert values == [w.upper() for w in TEXTS[0].lower().split()]


def test_an_error_view_fails_the_task_with_the_apps_message(world: HomeWorld, apps: dict[str, str]) -> None:
    put_texts(world, 2)
    info = run(world, Pipeline("broken", [clams_step("broken", url=apps["broken"], retries=0)]))
    assert info.status == "failed"
    tasks = world.engine.tasks(world.admin, info.id)
    assert all(t.status == "failed" for t in tasks)
    assert "toy failure: this app always fails" in (tasks[0].error or "")
    assert "toy-broken" in (tasks[0].error or "")


def test_an_app_that_is_down_is_retried_then_fails_with_url_and_reason(world: HomeWorld) -> None:
    from tests.helpers import free_port

    put_texts(world, 1)
    url = f"http://127.0.0.1:{free_port()}/"
    info = run(world, Pipeline("down", [clams_step("down", url=url, retries=2, retry_backoff=0.01)]))
    assert info.status == "failed"
    (task,) = world.engine.tasks(world.admin, info.id)
    assert url in (task.error or "") and "connection refused" in (task.error or "")
    assert "3 attempt(s)" in (task.error or "")
    log = "".join(world.engine.iter_log(world.admin, task.id))
    assert log.count("connection refused") == 3 and "retrying" in log


def test_a_parameter_the_app_does_not_declare_is_refused_before_the_run(world: HomeWorld, apps: dict[str, str]) -> None:
    put_texts(world, 1)
    p = Pipeline("bad", [clams_step("tokenizer", url=apps["tokenizer"], params={"lowercas": True})])
    before = world.engine.list_runs(world.admin)
    with pytest.raises(InvalidPipeline) as e:
        run(world, p)
    assert "Toy Tokenizer" in e.value.message and "'lowercas'" in e.value.message and "lowercase" in e.value.message
    assert world.engine.list_runs(world.admin) == before


def test_a_yaml_chain(world: HomeWorld, apps: dict[str, str], tmp_path: Path) -> None:
    put_texts(world, 2)
    text = f"""
name: yaml-chain
steps:
  - name: tokenizer
    clams: {{url: "{apps["tokenizer"]}"}}
    params: {{lowercase: true}}
  - name: counter
    clams: {{url: "{apps["counter"]}"}}
"""
    p = parse_yaml_pipeline(text, base_dir=tmp_path)
    assert p.step("counter").inputs == {"input": "tokenizer"}
    info = run(world, p)
    assert info.status == "succeeded"
    assert "t01.counter.mmif" in world.out()
