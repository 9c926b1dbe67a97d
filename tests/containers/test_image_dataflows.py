"""Dataflows whose implementation is a container image (the DMS's ``image`` field).

Saving needs no podman (the allow-list is checked then); running one does (the tests marked slow).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from datamill.api import ServerHandle
from datamill.client.remote import RemoteClient
from datamill.dataflows.dataflow import Dataflows
from datamill.errors import DatamillError, ImageNotAllowed, InvalidDataflow
from datamill.pipeline import load_pipeline
from tests.containers.conftest import Images, containers_named
from tests.dataflows.flow_pipelines import ref
from tests.dataflows.flow_world import DEST, SOURCE, FlowWorld
from tests.helpers import T0, serve, world_of

EVIL = "docker.io/evil/miner:1"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[FlowWorld]:
    """A dataflow world whose dataflows check images against the home's allowed_images (localhost/*)."""
    for w in world_of(FlowWorld, tmp_path / "home"):
        w.flows = Dataflows(w.home.db, w.home.settings.image_patterns)
        yield w


def _image_flow(w: FlowWorld, image: str, name: str = "flow") -> dict[str, object]:
    cfg = {"source": SOURCE, "destination": DEST, "image": image}
    return w.flows.create(w.admin, name, cfg).to_dict()


def test_an_images_pipeline_is_one_container_step_with_a_stable_reference() -> None:
    first = load_pipeline("image://localhost/tool:1")
    again = load_pipeline("image://localhost/tool:1")
    assert first.ref == "image://localhost/tool:1"
    (step,) = first.steps
    assert (step.kind, step.image, step.argv) == ("container", "localhost/tool:1", ("{input}", "{output_dir}"))
    assert step.code == again.steps[0].code  # the same step: the same task keys (the image's digest joins at plan time)


@pytest.mark.slow
def test_a_dataflow_with_an_image_runs_it_over_new_items(images: Images, world: FlowWorld) -> None:
    w = world
    info = _image_flow(w, images.upper)
    assert (info["image"], info["pipeline"]) == (images.upper, "")
    w.flows.set_state(w.admin, "flow", "running")
    assert w.poll(T0) == []
    w.put("x.txt", "hello\n")
    w.put("y.txt", "bad\n")
    (run_id,) = w.poll(T0 + 1)
    assert w.run(run_id)["pipeline_ref"] == f"image://{images.upper}"
    w.drive()
    # published as <stem>.<file it wrote>, as every step's named outputs
    assert w.read("x.upper.txt") == b"HELLO\n"
    tasks = {t.item_name: t for t in w.engine.tasks(w.admin, run_id)}
    assert tasks[f"{SOURCE}/x.txt"].status == "succeeded"
    assert tasks[f"{SOURCE}/y.txt"].status == "failed"
    assert "exited with status 4" in str(tasks[f"{SOURCE}/y.txt"].error)
    assert "y.upper.txt" not in w.out()
    # A new item: one new task; x is not run again (the same key: the image's step is stable).
    w.put("z.txt", "zed\n")
    (again,) = w.poll(T0 + 2)
    w.drive()
    assert w.read("z.upper.txt") == b"ZED\n"
    assert w.run_inputs(again) == ["z.txt"]
    rerun = w.engine.submit(w.admin, f"image://{images.upper}", w.engine.inputs_from_folder(w.admin, SOURCE))
    w.drive([rerun])
    statuses = {t.item_name: t.status for t in w.engine.tasks(w.admin, rerun)}
    assert statuses[f"{SOURCE}/x.txt"] == statuses[f"{SOURCE}/z.txt"] == "cached"
    assert not [n for n in containers_named("datamill-") if images.tag in n]


def test_a_disallowed_image_is_refused_when_created_naming_the_setting(world: FlowWorld) -> None:
    with pytest.raises(ImageNotAllowed) as err:
        _image_flow(world, EVIL)
    assert "allowed_images" in err.value.message and EVIL in err.value.message
    assert err.value.detail["setting"] == "allowed_images"
    assert world.flows.all(world.admin) == []  # nothing saved


def test_a_disallowed_image_is_refused_when_edited_and_the_version_stays(world: FlowWorld) -> None:
    _image_flow(world, "localhost/tool:1")
    with pytest.raises(ImageNotAllowed, match="allowed_images"):
        world.flows.edit(world.admin, "flow", {"image": EVIL})
    kept = world.flows.get(world.admin, "flow")
    assert (kept.version, kept.image) == (1, "localhost/tool:1")
    # Switching to a pipeline drops the image, and back again drops the pipeline.
    assert world.flows.edit(world.admin, "flow", {"pipeline": ref("echo_pipeline")}).image is None
    back = world.flows.edit(world.admin, "flow", {"image": "localhost/tool:2"})
    assert (back.image, back.pipeline, back.version) == ("localhost/tool:2", "", 3)


def test_a_dataflow_names_exactly_one_of_pipeline_and_image(world: FlowWorld) -> None:
    both = {"source": SOURCE, "destination": DEST, "image": "localhost/tool:1", "pipeline": ref("echo_pipeline")}
    with pytest.raises(InvalidDataflow, match="not both"):
        world.flows.create(world.admin, "both", both)
    with pytest.raises(InvalidDataflow, match=r"pipeline: a pipeline .* or a container image"):
        world.flows.create(world.admin, "none", {"source": SOURCE, "destination": DEST})
    with pytest.raises(InvalidDataflow, match=r"image: .*must name a container image"):
        world.flows.create(world.admin, "bad", {"source": SOURCE, "destination": DEST, "image": "a b"})
    assert world.flows.all(world.admin) == []


@pytest.fixture
def served(world: FlowWorld) -> Iterator[ServerHandle]:
    with serve(world.home) as handle:
        yield handle


def test_the_api_refuses_a_disallowed_image_with_400_naming_the_setting(world: FlowWorld, served: ServerHandle) -> None:
    client = RemoteClient(served.url, world.home.admin_token())
    try:
        with pytest.raises(DatamillError) as err:
            client.create_dataflow("evil", SOURCE, DEST, image=EVIL)
        assert (err.value.status, err.value.code) == (400, "image_not_allowed")
        assert "allowed_images" in err.value.message

        made = client.create_dataflow("ok", SOURCE, DEST, image="localhost/tool:1")
        assert (made.image, made.pipeline) == ("localhost/tool:1", "")
        with pytest.raises(DatamillError) as edit_err:
            client.edit_dataflow("ok", image=EVIL)
        assert (edit_err.value.status, edit_err.value.code) == (400, "image_not_allowed")
        assert client.dataflow("ok").version == 1

        raw = client._http.post("/dataflows", json={"name": "raw", "source": SOURCE, "dest": DEST, "image": EVIL})
        assert raw.status_code == 400
        assert raw.json()["detail"]["setting"] == "allowed_images"
    finally:
        client.close()
