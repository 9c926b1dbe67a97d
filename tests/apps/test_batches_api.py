"""Batches over the API (a served home whose scheduler runs the batch), the SSE status stream, and the CLI."""

from __future__ import annotations

import io
import json
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from datamill.api import ServerHandle
from datamill.client.local import LocalClient
from datamill.client.remote import RemoteClient
from datamill.errors import NotFound
from datamill.home import Home
from tests.helpers import cli_env, datamill, open_home, serve

pytestmark = pytest.mark.slow


@pytest.fixture
def served(tmp_path: Path, apps: dict[str, str]) -> Iterator[tuple[Home, ServerHandle, LocalClient]]:
    home = open_home(tmp_path / "home")
    local = LocalClient(home)
    local.create_folder("Raw")
    local.create_folder("Out")
    for i in range(5):
        local.put("Raw", f"doc{i}.txt", f"words for document {i}".encode(), "text/plain")
    pipeline = tmp_path / "chain.yaml"
    pipeline.write_text(
        f"""name: chain
steps:
  - name: tokenizer
    clams: {{url: "{apps["tokenizer"]}"}}
  - name: counter
    clams: {{url: "{apps["counter"]}"}}
"""
    )
    local.add_pipeline("chain", str(pipeline))
    try:
        with serve(home, services=True) as handle:
            yield home, handle, local
    finally:
        home.close()


def test_a_batch_over_the_api_with_its_live_status(served: tuple[Home, ServerHandle, LocalClient]) -> None:
    home, server, _local = served
    remote = RemoteClient(server.url, home.admin_token())
    try:
        info = remote.create_batch("api", "chain", "Out", folders=["Raw"])
        assert info.counts.unstarted == 5 and [b.name for b in remote.batches()] == ["api"]
        run_id = remote.start_batch("api")
        events = []
        with httpx.stream(
            "GET",
            f"{server.url}/api/v1/batches/api/stream",
            headers={"Authorization": f"Bearer {home.admin_token()}"},
            timeout=120,
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        # the stream ends by itself once the run has ended; its last grid is the final one
        assert events and events[-1]["run"] == run_id and events[-1]["run_status"] == "succeeded"
        assert events[-1]["counts"] == {
            "items": 5,
            "completed": 5,
            "successful": 5,
            "failed": 0,
            "running": 0,
            "unstarted": 0,
        }
        status = remote.batch_status("api")
        assert status.to_dict() == events[-1]
        data = b"".join(remote.batch_zip("api"))
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            assert sorted(zf.namelist()) == sorted(
                f"doc{i}.{s}.mmif" for i in range(5) for s in ("tokenizer", "counter")
            )
        copy = remote.duplicate_batch("api", "api-2")
        assert copy.items == info.items and copy.runs == []
        remote.delete_batch("api-2")
        assert [b.name for b in remote.batches()] == ["api"]
    finally:
        remote.close()


def test_the_api_hides_batches_from_users_who_may_not_read_them(served: tuple[Home, ServerHandle, LocalClient]) -> None:
    _home, server, local = served
    local.create_batch("private", "chain", "Out", folders=["Raw"])
    local.create_user("eve")
    token = local.create_token("eve").token
    eve = RemoteClient(server.url, token)
    try:
        assert eve.batches() == []
        with pytest.raises(NotFound):
            eve.batch("private")
        with pytest.raises(NotFound):
            b"".join(eve.batch_zip("private"))
        r = httpx.get(f"{server.url}/api/v1/batches/private/stream", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 404
    finally:
        eve.close()


def test_the_cli(served: tuple[Home, ServerHandle, LocalClient], tmp_path: Path) -> None:
    home, server, _local = served
    remote = ["--url", server.url, "--token", home.admin_token()]
    listing = tmp_path / "list.txt"
    listing.write_text("Raw/doc0.txt\n# a comment\nRaw/doc1.txt\n")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(datamill(*remote, *args), env=cli_env(), capture_output=True, text=True, timeout=120)

    made = cli("batch", "create", "picked", "--pipeline", "chain", "--to", "Out", "--items-from", str(listing))
    assert made.returncode == 0, made.stderr
    assert "created batch 'picked' of 2 items" in made.stderr + made.stdout
    started = cli("batch", "start", "picked", "--json")
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["id"]
    watched = cli("runs", "watch", str(run_id))
    assert watched.returncode == 0, watched.stderr
    shown = cli("batch", "show", "picked")
    assert shown.returncode == 0 and "2 completed (2 successful" in shown.stdout
    assert "Raw/doc1.txt" in shown.stdout and "succeeded" in shown.stdout
    ls = cli("batch", "ls", "--json")
    assert [b["name"] for b in json.loads(ls.stdout)] == ["picked"]
    out = tmp_path / "picked.zip"
    got = cli("batch", "download", "picked", "-o", str(out))
    assert got.returncode == 0, got.stderr
    assert len(zipfile.ZipFile(out).namelist()) == 4
    missing = cli("batch", "show", "nope")
    assert missing.returncode != 0 and "no batch 'nope'" in missing.stderr
