"""The CLI with container images, real podman: ``flow create --image``, ``plan`` and ``why`` show digests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from datamill.executors.container import image_digest
from tests.cli.conftest import Dm
from tests.containers.conftest import Images

pytestmark = pytest.mark.slow


@pytest.fixture
def dm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Dm:
    """``datamill`` on a fresh home with ``Raw`` (x.txt, y.txt) and an empty ``Out``; no outer DATAMILL_*."""
    for name in list(os.environ):
        if name.startswith("DATAMILL_"):
            monkeypatch.delenv(name)
    d = Dm(tmp_path / "home")
    for name, text in (("x.txt", "hello\n"), ("y.txt", "world\n")):
        (tmp_path / name).write_text(text)
    d.ok("folder", "create", "Out")
    d.ok("put", "-p", str(tmp_path / "x.txt"), str(tmp_path / "y.txt"), "Raw")
    return d


def _error(result: object) -> str:
    assert getattr(result, "exit_code", None) == 1
    lines = [line for line in getattr(result, "stderr", "").splitlines() if line.startswith("error: ")]
    assert len(lines) == 1
    return lines[0]


def test_flow_create_with_an_image_runs_it_and_refuses_a_disallowed_one(images: Images, dm: Dm) -> None:
    created = dm.json("flow", "create", "up", "--source", "Raw", "--to", "Out", "--image", images.upper)
    assert (created["image"], created["pipeline"]) == (images.upper, "")
    shown = dm.ok("flow", "show", "up").stdout
    assert f"image        {images.upper}" in shown
    assert f"image:{images.upper}" in dm.ok("flow", "ls").stdout
    dm.ok("flow", "run", "up")
    assert dm.ok("get", "Out/x.upper.txt", "-o", "-").stdout == "HELLO\n"
    assert dm.ok("get", "Out/y.upper.txt", "-o", "-").stdout == "WORLD\n"

    refused = _error(dm("flow", "create", "evil", "--source", "Raw", "--to", "Out", "--image", "docker.io/evil/x:1"))
    assert "'docker.io/evil/x:1' is not allowed" in refused and "allowed_images" in refused
    edited = _error(dm("flow", "edit", "up", "--image", "docker.io/evil/x:1"))
    assert "allowed_images" in edited
    assert dm.json("flow", "show", "up")["version"] == 1
    neither = _error(dm("flow", "create", "none", "--source", "Raw", "--to", "Out"))
    assert "a pipeline" in neither and "image" in neither


def test_plan_and_why_show_the_image_and_its_digest(images: Images, dm: Dm) -> None:
    ref = f"image://{images.upper}"
    digest = image_digest(images.upper)
    table = dm.ok("plan", ref, "--on", "Raw").stdout
    assert f"{images.upper} ({digest[:19]})" in table  # sha256: and 12 hex digits, as podman shortens IDs
    assert table.count(digest[:19]) == 2  # both items' tasks
    planned = dm.json("plan", ref, "--on", "Raw")
    assert {t["image_digest"] for t in planned["tasks"]} == {digest}

    ran = dm.json("run", ref, "--on", "Raw", "--to", "Out")
    task = dm.json("runs", "show", str(ran["id"]))["tasks"][0]["id"]
    why = dm.ok("why", str(task)).stdout
    assert f"{images.upper} ({digest})" in why
    assert dm.json("why", str(task))["image"] == images.upper
    # Python steps show no image row
    assert "image" not in dm.ok("plan", "datamill.demo.pipeline:tabular", "--on", "Raw").stdout.splitlines()[0]
