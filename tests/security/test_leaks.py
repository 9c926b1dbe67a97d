"""Issue 8, item 2: what a reader of a dataflow's destination (or source) must not learn of the other side.

Each test reproduces one leak over real HTTP with the world of :mod:`world`: ``alice``'s private
source feeds a dataflow whose destination ``dest_reader`` may read (and ``src_reader`` the source
only). Lineage already hid these; the same rule now holds for item metadata, events, runs, tasks,
logs and dataflows.
"""

from __future__ import annotations

import hashlib
import json

import httpx

from datamill.store.visibility import HIDDEN

from .leak_pipelines import REF
from .world import DEST, DOOMED, FLOW, ITEMS, SRC, World, q


def get(http: httpx.Client, world: World, role: str, url: str, **kwargs: object) -> httpx.Response:
    r = http.get(url, headers=world.headers(role), **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 200, (url, r.text)
    return r


def assert_clean(world: World, role: str, text: str) -> None:
    found = [s for s in world.secrets_for(role) if s in text]
    assert not found, f"{role} sees {found} in {text[:800]}"


def test_provenance_metadata_of_destination_items_hides_private_inputs(http: httpx.Client, world: World) -> None:
    item = get(http, world, "dest_reader", f"/api/v1/items/{q(DEST)}/total.json").json()
    assert item["metadata"]["provenance"]["wasDerivedFrom"] == [{"folder": HIDDEN, "name": HIDDEN}] * len(ITEMS)
    assert item["metadata"]["provenance"]["wasGeneratedBy"]["run"] == world.run_ok
    for url in (f"/api/v1/folder-items/{q(DEST)}", f"/api/v1/find/{q(DEST)}"):
        assert_clean(world, "dest_reader", get(http, world, "dest_reader", url).text)
    # A metadata filter cannot confirm a guess of the hidden provenance either.
    owner_meta = get(http, world, "owner", f"/api/v1/items/{q(DEST)}/total.json").json()["metadata"]
    guess = json.dumps({"provenance": owner_meta["provenance"]})
    for role, n in (("dest_reader", 0), ("owner", 1)):
        found = get(http, world, role, f"/api/v1/find/{q(DEST)}", params={"metadata": guess}).json()
        assert len(found) == n, role


def test_events_of_the_destination_hide_private_planned_ids(http: httpx.Client, world: World) -> None:
    page = get(http, world, "dest_reader", "/api/v1/events", params={"since": 0}).json()["events"]
    queued = [e for e in page if e["kind"] == "task.queued" and e["data"]["step"] == "measure"]
    assert queued and {e["data"]["planned_id"] for e in queued} == {f"measure[{HIDDEN}]"}
    failed = [e for e in page if e["kind"] == "task.finished" and e["data"]["status"] == "failed"]
    assert failed and all(DOOMED not in (e["data"]["error"] or "") for e in failed)
    assert_clean(world, "dest_reader", json.dumps(page))
    # The same over the SSE stream: read it until a marker event everybody may see.
    text = _sse_until_marker(http, world, "dest_reader", "Marker Public")
    assert f"measure[{HIDDEN}]" in text
    assert_clean(world, "dest_reader", text)


def test_runs_and_tasks_hide_the_private_source_and_inputs(http: httpx.Client, world: World) -> None:
    runs = get(http, world, "dest_reader", "/api/v1/runs").json()
    assert {r["id"] for r in runs} == {world.run_ok, world.run_failed, world.run_batch}
    for r in runs:
        # A batch's run has no source folder: its inputs come from a selection.
        assert r["source_folder"] == (None if r["id"] == world.run_batch else HIDDEN) and r["dest_folder"] == DEST
        assert r["inputs"] and all(i == {"folder": HIDDEN, "name": HIDDEN} for i in r["inputs"])
    tasks = get(http, world, "dest_reader", f"/api/v1/runs/{world.run_failed}/tasks").json()
    per_item = [t for t in tasks if t["step"] == "measure"]
    assert all(t["planned_id"] == f"measure[{HIDDEN}]" and t["item_name"] == HIDDEN for t in per_item)
    assert all(t["item_version_id"] is None for t in per_item)
    bad = get(http, world, "dest_reader", f"/api/v1/tasks/{world.task(world.run_failed, f'measure[{SRC}/{DOOMED}')}")
    assert bad.json()["status"] == "failed" and bad.json()["traceback"] is None
    why = get(http, world, "dest_reader", f"/api/v1/tasks/{world.task(world.run_ok, 'measure[')}/why").json()
    assert why["parts"]["inputs"] == [[f"item:{HIDDEN}", HIDDEN]]
    for url in (
        f"/api/v1/runs/{world.run_ok}",
        f"/api/v1/runs/{world.run_failed}",
        f"/api/v1/runs/{world.run_failed}/tasks",
        f"/api/v1/tasks/{world.task(world.run_failed, 'total')}",
        f"/api/v1/tasks/{world.task(world.run_failed, 'total')}/why",
    ):
        assert_clean(world, "dest_reader", get(http, world, "dest_reader", url).text)


def test_logs_may_quote_inputs_so_only_their_readers_get_them(http: httpx.Client, world: World) -> None:
    task = world.task(world.run_failed, f"measure[{SRC}/{DOOMED}")
    refused = http.get(f"/api/v1/tasks/{task}/logs", headers=world.headers("dest_reader"))
    assert refused.status_code == 403 and refused.json()["code"] == "permission_denied"
    assert_clean(world, "dest_reader", refused.text)
    assert DOOMED in get(http, world, "src_reader", f"/api/v1/tasks/{task}/logs").text


def test_dataflows_hide_the_private_source_and_mask_webhooks(http: httpx.Client, world: World) -> None:
    flows = get(http, world, "dest_reader", "/api/v1/dataflows").json()
    assert [(f["name"], f["source"], f["destination"]) for f in flows] == [(FLOW, HIDDEN, DEST)]
    assert flows[0]["webhooks"] == [f"https://hooks.example.org/{HIDDEN}"]
    history = get(http, world, "dest_reader", f"/api/v1/dataflows/{FLOW}/history").json()
    assert [v["config"]["source"] for v in history] == [HIDDEN]
    for url in ("/api/v1/dataflows", f"/api/v1/dataflows/{FLOW}", f"/api/v1/dataflows/{FLOW}/history"):
        assert_clean(world, "dest_reader", get(http, world, "dest_reader", url).text)
    # The owner sees all of it.
    mine = get(http, world, "owner", f"/api/v1/dataflows/{FLOW}").json()
    assert mine["source"] == SRC and mine["webhooks"] == ["https://hooks.example.org/services/hook-secret-5x"]


def test_readers_of_the_source_do_not_learn_the_destination(http: httpx.Client, world: World) -> None:
    run = get(http, world, "src_reader", f"/api/v1/runs/{world.run_ok}").json()
    assert run["source_folder"] == SRC and run["dest_folder"] == HIDDEN
    flow = get(http, world, "src_reader", f"/api/v1/dataflows/{FLOW}").json()
    assert flow["source"] == SRC and flow["destination"] == HIDDEN
    refused = http.post(f"/api/v1/dataflows/{FLOW}/run", headers=world.headers("src_reader"))
    assert refused.status_code == 403
    for text in (json.dumps(run), json.dumps(flow), refused.text):
        assert_clean(world, "src_reader", text)


def test_the_embedded_client_gets_the_same_redactions(sqlite_world: World) -> None:
    """The rule lives in the core: the Python client on a home hides the same things as the API."""
    from datamill.client.local import LocalClient

    dest_reader = LocalClient(sqlite_world.home, sqlite_world.home.actor("dest_reader"))
    item = dest_reader.item(f"{DEST}/total.json")
    assert item.metadata["provenance"]["wasDerivedFrom"] == [{"folder": HIDDEN, "name": HIDDEN}] * len(ITEMS)
    texts = [
        json.dumps([e.to_dict() for e in dest_reader.events(since=0)]),
        json.dumps([r.to_dict() for r in dest_reader.runs()]),
        json.dumps([t.to_dict() for t in dest_reader.tasks(sqlite_world.run_failed)]),
        json.dumps([v.to_dict() for v in dest_reader.dataflow_history(FLOW)]),
        json.dumps([i.to_dict() for i in dest_reader.find(DEST)]),
    ]
    for text in texts:
        assert_clean(sqlite_world, "dest_reader", text)


def test_runs_and_dataflows_name_no_server_path_of_the_pipeline(http: httpx.Client, world: World) -> None:
    # The registered pipeline is a file on the server: only site admins learn where it is.
    path = REF.rsplit(":", 1)[0]
    for role in ("owner", "dest_reader", "src_reader"):
        run = get(http, world, role, f"/api/v1/runs/{world.run_ok}").json()
        assert run["pipeline_ref"] == HIDDEN and path not in json.dumps(run), role
        assert path not in get(http, world, role, "/api/v1/runs").text, role
    assert get(http, world, "site_admin", f"/api/v1/runs/{world.run_ok}").json()["pipeline_ref"] == REF


def _sse_until_marker(http: httpx.Client, world: World, role: str, marker: str) -> str:
    """The SSE stream from the start as ``role`` sees it, read until a public folder named ``marker`` appears."""
    seen = []
    with http.stream("GET", "/api/v1/events/stream", params={"since": 0}, headers=world.headers(role)) as stream:
        lines = stream.iter_lines()
        assert next(lines) == "retry: 3000"
        world.home.store.create_folder(world.home.admin, marker, public_read=True)
        for line in lines:
            seen.append(line)
            if line.startswith("data:") and marker in line:
                break
    return "\n".join(seen)


def test_stream_events_reach_only_readers_of_the_streams_destination(http: httpx.Client, world: World) -> None:
    """alice's stream dataflow lands in DEST; she moves DEST away and ``other`` makes a folder of the old
    name. The stream's rejections and heartbeats (they name the files' paths) stay with DEST's readers:
    they are never sent to the new folder's owner, over the event list or SSE."""
    from datamill.dataflows.dataflow import Dataflows
    from datamill.dataflows.ingest import Status, write_status
    from datamill.dataflows.staging import Message, Stager, Target
    from datamill.streams.chunks import Chunk

    home = world.home
    alice = home.actor("alice")
    flow = Dataflows(home.db).create(
        alice, "plover-stream", {"kind": "stream", "topic": "plover-topic", "destination": DEST,
                                 "broker": {"bootstrap": "127.0.0.1:9"}},
    )  # fmt: skip
    home.store.create_folder(alice, "Harbor Archive")
    home.store.move_folder(alice, DEST, "Harbor Archive")
    home.store.create_folder(home.actor("other"), DEST)  # the old name, taken by someone else
    target = Target(flow.id, "plover-stream", "plover-topic", DEST, alice)
    data = b"secret plover bytes"
    digest = hashlib.sha512(data).digest()
    value = Chunk("plover-secret.bin", digest, digest, 0, 1, 1, "night", "", data).encode()
    out = Stager(home, target).apply([Message(0, 0, value)])
    assert out.files == [] and "night/plover-secret.bin" in out.rejected[0]  # alice may not write there
    status = Status(state="running", messages=1, rejected=1)
    status.error(out.rejected[0])
    write_status(home, target, "member-1", status, heartbeat=True)

    def stream_events(role: str) -> list[dict[str, object]]:
        page = get(http, world, role, "/api/v1/events", params={"since": 0}).json()["events"]
        return [e for e in page if str(e["kind"]).startswith("stream.")]

    # DEST's readers get both (they may read where the files belong), with the file's path.
    for role in ("dest_reader", "owner"):
        kinds = {e["kind"] for e in stream_events(role)}
        assert kinds == {"stream.rejected", "stream.heartbeat"}, role
        assert "plover-secret.bin" in json.dumps(stream_events(role))
    # The new folder's owner, and everyone else who may not read DEST, gets neither.
    for role in ("other", "src_reader"):
        page = get(http, world, role, "/api/v1/events", params={"since": 0}).text
        assert stream_events(role) == [] and "plover-secret" not in page and "plover-stream" not in page, role
        sse = _sse_until_marker(http, world, role, f"Marker {role}")
        assert "plover-secret" not in sse and "plover-stream" not in sse and "stream.rejected" not in sse, role
