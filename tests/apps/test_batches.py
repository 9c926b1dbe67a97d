"""Batches over real CLAMS apps: a 2-app chain over 20 text items, status grid, retry of failures only,
zip download, duplicate, and what other users see."""

from __future__ import annotations

import io
import json
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from datamill.client.local import LocalClient
from datamill.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from datamill.home import Home
from tests.helpers import free_port, open_home

from .conftest import start_apps, stop_apps

pytestmark = pytest.mark.slow

TEXTS = {f"t{i:02d}.txt": f"text number {i} with a few words" + " more" * (i % 3) for i in range(20)}


def chain_yaml(path: Path, tokenizer: str, counter: str, name: str = "chain") -> str:
    path.write_text(
        f"""name: {name}
steps:
  - name: tokenizer
    clams: {{url: "{tokenizer}", retries: 0}}
    params: {{lowercase: true}}
  - name: counter
    clams: {{url: "{counter}", retries: 0}}
"""
    )
    return str(path)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    h = open_home(tmp_path / "home")
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def client(home: Home) -> LocalClient:
    c = LocalClient(home)
    c.create_folder("Raw")
    c.create_folder("Out")
    for name, text in TEXTS.items():
        c.put("Raw", name, text.encode(), "text/plain")
    return c


def test_a_batch_runs_a_chain_over_20_items(client: LocalClient, apps: dict[str, str], tmp_path: Path) -> None:
    ref = chain_yaml(tmp_path / "chain.yaml", apps["tokenizer"], apps["counter"])
    info = client.create_batch("news", ref, "Out", folders=["Raw"], description="twenty texts")
    assert len(info.items) == 20 and info.status == "new"
    assert (info.counts.items, info.counts.unstarted, info.counts.completed) == (20, 20, 0)

    run_id = client.start_batch("news")
    assert client.execute(run_id).status == "succeeded"
    status = client.batch_status("news")
    assert status.run == run_id and status.steps == ["tokenizer", "counter"]
    assert (status.counts.completed, status.counts.successful, status.counts.unstarted) == (20, 20, 0)
    assert all(r.status == "succeeded" and [c.step for c in r.cells] == ["tokenizer", "counter"] for r in status.rows)
    assert all(c.progress == 1.0 for r in status.rows for c in r.cells)
    # every intermediate MMIF is an item version, with the app and version in its provenance
    out = {i.name for i in client.list_items("Out")}
    assert out == {f"{n[:-4]}.{s}.mmif" for n in TEXTS for s in ("tokenizer", "counter")}
    version = client.version("Out/t05.tokenizer.mmif")
    task = client.task(
        next(c.task for r in status.rows if r.item == "Raw/t05.txt" for c in r.cells if c.step == "tokenizer")
    )
    assert version.run_id == run_id
    assert task.step_code.startswith("clams:http://example.org/apps/toy-tokenizer/v1:") and task.params == {
        "lowercase": True
    }
    counted = json.loads(client.get("Out/t05.counter.mmif"))
    count = [
        a["properties"]["tokenCount"]
        for v in counted["views"]
        for a in v["annotations"]
        if "tokenCount" in a["properties"]
    ]
    assert count == [len(TEXTS["t05.txt"].split())]
    assert [b.name for b in client.batches()] == ["news"] and client.batch("news").status == "succeeded"


def test_retry_reruns_only_the_failures(client: LocalClient, apps: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    counter = f"http://127.0.0.1:{port}/"
    ref = chain_yaml(tmp_path / "chain.yaml", apps["tokenizer"], counter)
    client.create_batch("flaky", ref, "Out", paths=[f"Raw/{n}" for n in list(TEXTS)[:4]])
    first = client.execute(client.start_batch("flaky"))
    assert first.status == "failed"
    status = client.batch_status("flaky")
    assert (status.counts.completed, status.counts.successful, status.counts.failed) == (4, 0, 4)
    errors = {c.error for r in status.rows for c in r.cells if c.step == "counter"}
    assert len(errors) == 1 and counter in errors.pop()  # type: ignore[operator]

    procs: list[subprocess.Popen[bytes]] = []
    try:
        _urls, procs = start_apps(("counter",), ports={"counter": port})
        retried = client.retry_batch("flaky")
        assert client.execute(retried).status == "succeeded"
    finally:
        stop_apps(procs)
    statuses = {(t.step, t.status) for t in client.tasks(retried)}
    assert statuses == {("tokenizer", "cached"), ("counter", "succeeded")}
    assert client.batch("flaky").runs == [first.id, retried]
    assert client.batch_status("flaky").counts.successful == 4
    with pytest.raises(InvalidInput, match="nothing to retry"):
        client.retry_batch("flaky")


def test_download_zips_every_output(client: LocalClient, apps: dict[str, str], tmp_path: Path) -> None:
    ref = chain_yaml(tmp_path / "chain.yaml", apps["tokenizer"], apps["counter"])
    client.create_batch("z", ref, "Out", search={"folder": "Raw", "name": "t0[0-2].txt"})
    client.execute(client.start_batch("z"))
    target = tmp_path / "z.zip"
    size = client.download_batch("z", target)
    assert size == target.stat().st_size
    with zipfile.ZipFile(target) as zf:
        names = sorted(zf.namelist())
        assert names == sorted(f"t0{i}.{s}.mmif" for i in range(3) for s in ("tokenizer", "counter"))
        for n in names:
            assert zf.read(n) == client.get(f"Out/{n}")
    assert zipfile.ZipFile(io.BytesIO(b"".join(client.batch_zip("z")))).testzip() is None


def test_duplicate_and_bad_input(client: LocalClient, apps: dict[str, str], tmp_path: Path) -> None:
    ref = chain_yaml(tmp_path / "chain.yaml", apps["tokenizer"], apps["counter"])
    client.create_batch("one", ref, "Out", folders=["Raw"])
    copy = client.duplicate_batch("one", "two")
    assert copy.items == client.batch("one").items and copy.runs == [] and copy.pipeline == client.batch("one").pipeline
    with pytest.raises(Conflict, match="exists"):
        client.create_batch("two", ref, "Out", folders=["Raw"])
    with pytest.raises(InvalidInput, match="name"):
        client.create_batch("bad name/", ref, "Out", folders=["Raw"])
    with pytest.raises(InvalidInput, match="no items"):
        client.create_batch("empty", ref, "Out", search={"folder": "Raw", "name": "*.nothing"})
    with pytest.raises(NotFound):
        client.create_batch("x", ref, "Out", paths=["Raw/missing.txt"])
    with pytest.raises(InvalidInput, match="never started"):
        client.retry_batch("two")
    with pytest.raises(NotFound):
        client.batch("nope")


def test_a_batch_from_another_batchs_outputs(client: LocalClient, apps: dict[str, str], tmp_path: Path) -> None:
    ref = chain_yaml(tmp_path / "chain.yaml", apps["tokenizer"], apps["counter"])
    client.create_batch("src", ref, "Out", paths=["Raw/t00.txt", "Raw/t01.txt"])
    client.execute(client.start_batch("src"))
    derived = client.create_batch("derived", ref, "Out", from_batch="src")
    assert sorted(derived.items) == sorted(f"Out/t0{i}.{s}.mmif" for i in range(2) for s in ("tokenizer", "counter"))
    assert derived.source == {"batch": "src"}


def test_other_users_see_only_items_they_may_read(
    client: LocalClient, home: Home, apps: dict[str, str], tmp_path: Path
) -> None:
    ref = chain_yaml(tmp_path / "chain.yaml", apps["tokenizer"], apps["counter"])
    client.create_folder("Secret")
    client.put("Secret", "hidden-name.txt", b"secret words here", "text/plain")
    client.add_pipeline("chain", ref)  # users choose registered pipelines (only admins give references)
    client.create_batch("mixed", "chain", "Out", paths=["Raw/t00.txt", "Secret/hidden-name.txt"])
    client.execute(client.start_batch("mixed"))
    client.create_user("bob")
    client.create_user("carol")
    client.share("Raw", "bob", "read")
    client.share("Out", "bob", "read")
    bob = client.as_user("bob")
    seen = bob.batch("mixed")
    assert seen.items == ["Raw/t00.txt"] and seen.counts.items == 1
    status = bob.batch_status("mixed")
    assert [r.item for r in status.rows] == ["Raw/t00.txt"]
    assert "hidden-name" not in json.dumps(status.to_dict()) + json.dumps(seen.to_dict())
    with zipfile.ZipFile(io.BytesIO(b"".join(bob.batch_zip("mixed")))) as zf:
        assert sorted(zf.namelist()) == ["t00.counter.mmif", "t00.tokenizer.mmif"]
    with pytest.raises(PermissionDenied):
        bob.start_batch("mixed")
    with pytest.raises(PermissionDenied):
        bob.retry_batch("mixed")
    carol = client.as_user("carol")
    assert carol.batches() == []
    with pytest.raises(NotFound) as e:
        carol.batch_status("mixed")
    assert "hidden-name" not in e.value.message
    # a duplicate publishes into the same folder: bob needs write there, and gets only what he may read
    with pytest.raises(PermissionDenied):
        bob.duplicate_batch("mixed", "bobs")
    client.share("Out", "bob", "write")
    assert bob.duplicate_batch("mixed", "bobs").items == ["Raw/t00.txt"]
