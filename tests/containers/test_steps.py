"""Container steps in pipelines, with real podman: items with outputs, one failing task, digests in keys, allow-list."""

from __future__ import annotations

from pathlib import Path

import pytest

import datamill
from datamill import Pipeline
from datamill.engine.registry import Pipelines
from datamill.errors import ImageNotAllowed, InvalidStepOption
from datamill.pipeline import load_pipeline
from tests.containers.conftest import Images, containers_named, podman
from tests.helpers import open_home

pytestmark = pytest.mark.slow


def _upper(image: str) -> Pipeline:
    step = datamill.container_step(
        "upper",
        image,
        ["sh", "-c", "grep -q bad {input} && exit 3; (cat /v; tr a-z A-Z < {input}) > {output_dir}/{stem}.up.txt"],
    )
    return Pipeline("upper", [step])


def _inputs(tmp_path: Path) -> list[Path]:
    files = []
    for name, text in (("a.txt", "alpha\n"), ("b.txt", "bad\n"), ("c.txt", "gamma\n")):
        (tmp_path / name).write_text(text)
        files.append(tmp_path / name)
    return files


def test_items_with_outputs_and_a_failure_of_only_its_task(images: Images, tmp_path: Path) -> None:
    result = _upper(images.a).run(_inputs(tmp_path), home=tmp_path / "home", raise_on_failure=False)
    by_item = {t["item_name"]: t for t in result.tasks}
    assert by_item["inputs/a.txt"]["status"] == "succeeded"
    assert by_item["inputs/c.txt"]["status"] == "succeeded"
    assert by_item["inputs/b.txt"]["status"] == "failed"
    assert "exited with status 3" in by_item["inputs/b.txt"]["error"]
    assert result.outputs["upper[inputs/a.txt]"]["a.up.txt"].read_text() == "a\nALPHA\n"
    assert result.outputs["upper[inputs/c.txt]"]["c.up.txt"].read_text() == "a\nGAMMA\n"
    assert not [n for n in containers_named("datamill-") if n.endswith(tuple(f"-{t['id']}-1" for t in result.tasks))]


def test_retagging_an_image_reruns_its_tasks_and_the_same_digest_is_cached(images: Images, tmp_path: Path) -> None:
    tag = f"localhost/{images.tag}:current"
    home = tmp_path / "home"
    files = _inputs(tmp_path)[:1]
    podman("tag", images.a, tag)
    first = _upper(tag).run(files, home=home)
    assert [t["status"] for t in first.tasks] == ["succeeded"]
    assert first.outputs["upper[inputs/a.txt]"]["a.up.txt"].read_text() == "a\nALPHA\n"
    digest_a = first.run["params"]["images"][tag]

    again = _upper(tag).run(files, home=home)
    assert [t["status"] for t in again.tasks] == ["cached"]

    podman("tag", images.b, tag)  # the same tag, other content
    moved = _upper(tag).run(files, home=home)
    assert [t["status"] for t in moved.tasks] == ["succeeded"]
    assert moved.run["params"]["images"][tag] != digest_a
    assert moved.outputs["upper[inputs/a.txt]"]["a.up.txt"].read_text() == "b\nALPHA\n"
    assert moved.tasks[0]["key"] != first.tasks[0]["key"]

    podman("tag", images.a, tag)  # back to the first content: its key, so its cached result
    back = _upper(tag).run(files, home=home)
    assert [t["status"] for t in back.tasks] == ["cached"]
    assert back.tasks[0]["key"] == first.tasks[0]["key"]


def test_plan_and_why_show_the_image_and_its_digest(images: Images, tmp_path: Path) -> None:
    from datamill.engine.planner import plan
    from datamill.executors.container import image_digest
    from datamill.pipeline.inputs import InputRef

    ref = InputRef(1, 1, "in", "a.txt", 1, "blake3:00", 1, "text/plain")
    planned = plan(_upper(images.a), [ref])
    shown = planned.to_dict()
    assert shown["images"] == {images.a: image_digest(images.a)}
    assert shown["tasks"][0]["image_digest"] == image_digest(images.a)
    parts = planned.key_parts_for(planned.tasks[0], {})
    assert parts["image"] == image_digest(images.a)


def test_yaml_container_step_with_the_images_default_command(images: Images, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        f"name: dflt\nsteps:\n  - name: copy\n    image: {images.busybox}\n    memory: 64m\n"
        "  - name: shout\n    image: " + images.busybox + "\n"
        "    command: [sh, -c, 'tr a-z A-Z < {input} > {output_dir}/{stem}.txt']\n"
    )
    pipeline = load_pipeline(str(tmp_path / "p.yaml"))
    assert [s.kind for s in pipeline.steps] == ["container", "container"]
    assert pipeline.step("copy").argv == ("{input}", "{output_dir}")  # the DMS's shape
    (tmp_path / "x.txt").write_text("hi\n")
    result = Pipeline("shout", [pipeline.step("shout")]).run([tmp_path / "x.txt"], home=tmp_path / "home")
    assert result.outputs["shout[inputs/x.txt]"]["x.txt"].read_text() == "HI\n"


def test_bad_container_options_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidStepOption, match="memory"):
        datamill.container_step("s", "localhost/x:1", ["true"], memory="lots")
    with pytest.raises(InvalidStepOption, match="network"):
        datamill.container_step("s", "localhost/x:1", ["true"], network="bridge")
    with pytest.raises(InvalidStepOption, match="only for container steps"):
        datamill.command_step("s", ["true"]).configure(image="localhost/x:1")


def test_a_disallowed_image_is_refused_when_the_pipeline_is_registered(tmp_path: Path) -> None:
    (tmp_path / "evil.py").write_text(
        "import datamill\n"
        "p = datamill.Pipeline('evil', [datamill.container_step('s', 'docker.io/evil/miner:1', ['mine'])])\n"
    )
    home = open_home(tmp_path / "home")
    try:
        with pytest.raises(ImageNotAllowed) as err:
            Pipelines(home.db, home.settings.image_patterns).add(home.admin, "evil", str(tmp_path / "evil.py") + ":p")
        assert "allowed_images" in err.value.message and "docker.io/evil/miner:1" in err.value.message
        assert "evil" not in [p["name"] for p in Pipelines(home.db).list(home.admin)]  # nothing saved
    finally:
        home.close()
