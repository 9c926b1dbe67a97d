"""Provenance of container tasks, real podman: the image and its digest in metadata, PROV and RO-Crate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datamill.client.local import LocalClient
from datamill.executors.container import image_digest
from datamill.provenance import Lineage, to_prov_json, to_ro_crate
from tests.containers.conftest import Images
from tests.helpers import open_home

pytestmark = pytest.mark.slow


def test_published_outputs_of_a_container_task_record_the_image_and_its_digest(images: Images, tmp_path: Path) -> None:
    home = open_home(tmp_path / "home")
    try:
        admin = home.admin
        for folder in ("Raw", "Out"):
            home.store.create_folder(admin, folder)
        home.store.put(admin, "Raw", "x.txt", b"hello\n", "text/plain")
        client = LocalClient(home)
        info = client.run(f"image://{images.upper}", "Raw", "Out")
        assert info.status == "succeeded"
        digest = image_digest(images.upper)

        made_by = client.item("Out/x.upper.txt").metadata["provenance"]["wasGeneratedBy"]
        assert (made_by["image"], made_by["image_digest"]) == (images.upper, digest)

        prov = json.loads(to_prov_json(Lineage(home).upstream(admin, "Out/x.upper.txt")))
        (task,) = [a for a in prov["activity"].values() if a.get("dm:step") == "image"]
        assert task["dm:image"] == images.upper
        assert task["dm:image_digest"] == digest

        crate = to_ro_crate(home, admin, info.id, tmp_path / "crate")
        graph = json.loads((crate / "ro-crate-metadata.json").read_text())["@graph"]
        by_id = {e["@id"]: e for e in graph}
        (tool,) = [e for e in graph if e.get("@type") == "SoftwareApplication" and e.get("name") == "image"]
        image = by_id[tool["containerImage"]["@id"]]
        assert image["@type"] == "ContainerImage"
        assert (image["name"], image["tag"]) == (images.upper.rsplit(":", 1)[0], "1")
        assert "sha256:" + image["sha256"] == digest
        assert not [
            e for e in graph if e.get("@type") == "SoftwareApplication" and "containerImage" in e and e is not tool
        ]
    finally:
        home.close()
