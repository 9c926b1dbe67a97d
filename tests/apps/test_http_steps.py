"""Generic HTTP app steps against a real plain HTTP app on 127.0.0.1 (tests/apps/toyapps.py ``echo``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from datamill.engine.apps import clear_app_cache
from datamill.errors import InvalidPipeline, InvalidStepOption
from datamill.pipeline import Pipeline
from datamill.pipeline.apps import http_step
from datamill.pipeline.yaml import parse_yaml_pipeline
from tests.helpers import DEST, SOURCE, HomeWorld, open_home

pytestmark = pytest.mark.slow

SECRET = "s3cret"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[HomeWorld]:
    home = open_home(tmp_path / "home", app_secrets=f"ECHO_TOKEN={SECRET};OTHER=x")
    try:
        yield HomeWorld(home)
    finally:
        home.close()


def run(world: HomeWorld, pipeline: Pipeline):
    inputs = world.engine.inputs_from_folder(world.admin, SOURCE)
    return world.engine.run(world.admin, pipeline, inputs, dest=DEST)


def auth() -> dict[str, str]:
    return {"Authorization": "Bearer ${secret:ECHO_TOKEN}"}


def test_posts_each_item_and_stores_the_answer(world: HomeWorld, apps: dict[str, str]) -> None:
    world.put("a.txt", "hello")
    world.put("b.txt", "world")
    info = run(world, Pipeline("echo", [http_step("shout", apps["echo"], headers=auth())]))
    assert info.status == "succeeded", info
    assert world.read("a.shout.txt") == b"HELLO"
    assert world.read("b.shout.txt") == b"WORLD"


def test_the_secret_is_never_in_the_key_the_log_or_the_settings(world: HomeWorld, apps: dict[str, str]) -> None:
    world.put("a.txt", "hello")
    info = run(world, Pipeline("echo", [http_step("shout", apps["echo"], headers=auth())]))
    (task,) = world.engine.tasks(world.admin, info.id)
    log = "".join(world.engine.iter_log(world.admin, task.id))
    assert "POST" in log and SECRET not in log
    assert SECRET not in task.step_code
    the_plan = world.engine.plan(Pipeline("echo", [http_step("shout", apps["echo"], headers=auth())]), [])
    assert SECRET not in repr(the_plan.to_dict())
    assert SECRET not in repr(world.home.settings) and world.home.settings.public_dict()["app_secrets"] == "***"


def test_a_missing_secret_fails_the_task_naming_it(world: HomeWorld, apps: dict[str, str]) -> None:
    world.put("a.txt", "hello")
    step = http_step("shout", apps["echo"], headers={"Authorization": "Bearer ${secret:NOPE}"})
    info = run(world, Pipeline("echo", [step]))
    (task,) = world.engine.tasks(world.admin, info.id)
    assert task.status == "failed" and "'NOPE'" in (task.error or "") and "app_secrets" in (task.error or "")


def test_5xx_is_retried_with_backoff(world: HomeWorld, apps: dict[str, str]) -> None:
    world.put("a.txt", "x")
    step = http_step("flaky", apps["echo"] + "flaky", headers=auth(), retries=3, retry_backoff=0.01)
    info = run(world, Pipeline("flaky", [step]))
    assert info.status == "succeeded"
    (task,) = world.engine.tasks(world.admin, info.id)
    log = "".join(world.engine.iter_log(world.admin, task.id))
    assert "-> 503" in log and "retrying in 0.01 s" in log and "-> 200" in log


def test_an_error_answer_fails_the_task_with_status_and_body(world: HomeWorld, apps: dict[str, str]) -> None:
    world.put("a.txt", "x")
    step = http_step("fail", apps["echo"] + "fail", headers=auth(), retries=1, retry_backoff=0.01)
    info = run(world, Pipeline("fail", [step]))
    (task,) = world.engine.tasks(world.admin, info.id)
    assert task.status == "failed"
    assert "answered HTTP 500 (after 2 attempt(s)): echo exploded" in (task.error or "")
    no_auth = run(world, Pipeline("noauth", [http_step("noauth", apps["echo"])]))
    (task,) = world.engine.tasks(world.admin, no_auth.id)
    assert "HTTP 401" in (task.error or "") and "attempt(s)" in (task.error or "")


def test_the_apps_version_is_in_the_key(world: HomeWorld, apps: dict[str, str]) -> None:
    world.put("a.txt", "x")
    clear_app_cache()
    by_body = http_step("shout", apps["echo"], headers=auth(), version_url=apps["echo"] + "version")
    by_header = http_step(
        "shout", apps["echo"], headers=auth(), version_url=apps["echo"] + "version", version_header="X-App-Version"
    )
    unversioned = http_step("shout", apps["echo"], headers=auth())
    codes = []
    for s in (by_body, by_header, unversioned):
        info = run(world, Pipeline("v", [s]))
        (task,) = world.engine.tasks(world.admin, info.id)
        codes.append(task.step_code)
    assert codes[0].startswith("http:echo-2.1:") and codes[1].startswith("http:echo-2.1:")
    assert codes[2].startswith("http:?:") and codes[2] != codes[0]


def test_a_chain_of_http_steps_in_yaml(world: HomeWorld, apps: dict[str, str], tmp_path: Path) -> None:
    world.put("a.txt", "quiet")
    text = f"""
name: twice
steps:
  - name: once
    http: {{url: "{apps["echo"]}", headers: {{Authorization: "Bearer ${{secret:ECHO_TOKEN}}"}}}}
  - name: again
    http: {{url: "{apps["echo"]}", headers: {{Authorization: "Bearer ${{secret:ECHO_TOKEN}}"}}}}
    input: once
    timeout: 30
"""
    info = run(world, parse_yaml_pipeline(text, base_dir=tmp_path))
    assert info.status == "succeeded"
    assert world.read("a.again.txt") == b"QUIET"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"url": "ftp://x/"}, "url"),
        ({"url": "http://u:pw@127.0.0.1/"}, "url"),
        ({"url": "http://127.0.0.1/", "method": "DELETE"}, "method"),
        ({"url": "http://127.0.0.1/", "concurrency": 0}, "concurrency"),
        ({"url": "http://127.0.0.1/", "retries": -1}, "retries"),
    ],
)
def test_bad_options_are_refused_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidStepOption) as e:
        http_step("s", **kwargs)
    assert e.value.field == field and "step 's'" in e.value.message
    assert "pw" not in e.value.message


def test_bad_yaml_app_steps_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(InvalidPipeline) as e:
        parse_yaml_pipeline("name: x\nsteps:\n  - name: a\n    http: {url: 'http://127.0.0.1/', verb: GET}\n")
    assert "line 4" in e.value.message and "verb" in e.value.message
    with pytest.raises(InvalidPipeline) as e:
        parse_yaml_pipeline("name: x\nsteps:\n  - name: a\n    http: {url: 'http://127.0.0.1/'}\n    run: m:f\n")
    assert "exactly one of" in e.value.message
