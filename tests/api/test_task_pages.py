"""``GET /runs/{id}/tasks`` in pages, each parameter set big enough to matter sent once by its digest.

A run whose tasks share a big table answered the table once per task, built in the server's
memory; the list now names the set and ``GET /runs/{id}/params/{digest}`` answers it once.
"""

from __future__ import annotations

import httpx
import pytest

from datamill.api import ServerHandle
from datamill.client.local import LocalClient
from datamill.client.remote import RemoteClient
from datamill.engine import paramsets
from datamill.limits import INT64_MAX
from tests.engine.pipelines import ref

LOOKUPS = ref("lookups")
#: a lookup table of about 100 KiB of JSON: far above the inline bound
TABLE = {f"i{i:03}": f"entry {i}" for i in range(20)} | {f"pad{i:04}": "p" * 30 for i in range(2500)}
#: items of the run: two tasks each (look_up, label), all sharing the table's set
ITEMS = 20


@pytest.fixture
def run_id(local: LocalClient) -> int:
    """A queued run of 2 x :data:`ITEMS` tasks whose parameters hold :data:`TABLE`."""
    local.create_folder("Raw")
    local.create_folder("Out")
    for i in range(ITEMS):
        local.put("Raw", f"i{i:03}.txt", f"{i}\n".encode())
    return local.submit_run(LOOKUPS, "Raw", "Out", params={"table": TABLE})


def test_a_shared_big_set_is_sent_once(
    http: httpx.Client, admin: RemoteClient, local: LocalClient, run_id: int
) -> None:
    size = len(paramsets.encode({"table": TABLE})[1].encode())  # type: ignore[index]
    assert size > paramsets.INLINE_BYTES
    r = http.get(f"/runs/{run_id}/tasks")
    assert r.status_code == 200, r.text
    listed = r.json()
    assert len(listed) == 2 * ITEMS
    assert len(r.content) < 2 * size  # was 2 x ITEMS x size
    digests = {t["params_digest"] for t in listed}
    assert all(t["params"] is None for t in listed) and None not in digests
    sets = {d: http.get(f"/runs/{run_id}/params/{d}").json() for d in digests}
    assert all(s["table"] == TABLE for s in sets.values())
    for t in listed:
        assert t["params_size"] == len(paramsets.encode(sets[t["params_digest"]])[1].encode())  # type: ignore[index]
    # The remote client fills the sets in: the same tasks as the embedded client reads.
    full = [t.to_dict() for t in local.tasks(run_id)]
    assert [t.to_dict() for t in admin.tasks(run_id)] == full
    assert all(t["params"]["table"] == TABLE for t in full)
    # A single task keeps its full parameters.
    assert http.get(f"/tasks/{listed[0]['id']}").json()["params"]["table"] == TABLE


def test_a_small_set_is_inline(http: httpx.Client, local: LocalClient, run_id: int) -> None:
    small = local.submit_run(LOOKUPS, "Raw", "Out", params={"table": {"i001": "one"}, "label.mark": "!"})
    listed = http.get(f"/runs/{small}/tasks").json()
    by_step = {t["step"]: t for t in listed}
    assert by_step["look_up"]["params"] == {"table": {"i001": "one"}}
    assert by_step["label"]["params"] == {"table": {"i001": "one"}, "mark": "!"}
    assert by_step["label"]["params_size"] == len(paramsets.encode(by_step["label"]["params"])[1].encode())  # type: ignore[index]
    assert [t.params for t in local.tasks(small)] == [t["params"] for t in listed]


def test_pages_hold_every_task_once_in_order(
    http: httpx.Client, admin: RemoteClient, local: LocalClient, run_id: int
) -> None:
    everything = [t.id for t in local.tasks(run_id)]
    seen: list[int] = []
    after = 0
    while True:
        page = http.get(f"/runs/{run_id}/tasks", params={"after": after, "limit": 7}).json()
        seen += [t["id"] for t in page]
        if len(page) < 7:
            break
        after = page[-1]["id"]
    assert seen == everything and len(everything) == 2 * ITEMS
    assert http.get(f"/runs/{run_id}/tasks", params={"after": everything[-1]}).json() == []
    # The client pages the same way, with a page smaller than the run.
    admin.TASK_PAGE = 7
    assert [t.id for t in admin.tasks(run_id)] == everything


def test_bad_bounds_are_422(http: httpx.Client, run_id: int) -> None:
    for query, words in (
        ({"limit": 0}, "greater than or equal to 1"),
        ({"limit": 10_001}, "less than or equal to 10000"),
        ({"after": -1}, "greater than or equal to 0"),
        ({"after": INT64_MAX + 1}, "less than or equal to"),
        ({"after": "last"}, "integer"),
    ):
        r = http.get(f"/runs/{run_id}/tasks", params=query)
        assert r.status_code == 422, (query, r.text)
        body = r.json()
        assert body["code"] == "invalid_request" and words in body["error"], (query, body)


def test_a_set_the_run_does_not_use_is_not_found(
    http: httpx.Client, local: LocalClient, run_id: int, server: ServerHandle
) -> None:
    digest = http.get(f"/runs/{run_id}/tasks").json()[0]["params_digest"]
    other = local.submit_run(LOOKUPS, "Raw", "Out")  # no parameters: uses no set
    unknown = "blake3:" + "0" * 64
    answers = [http.get(f"/runs/{other}/params/{d}") for d in (digest, unknown)]
    assert [a.status_code for a in answers] == [404, 404]
    assert [a.json()["code"] for a in answers] == ["not_found", "not_found"]
    # The same words for a set that exists elsewhere as for one that exists nowhere.
    assert answers[0].json()["error"].replace(digest, "D") == answers[1].json()["error"].replace(unknown, "D")
    # The run's own parameters (the user's set) are readable through it.
    run = local.run_info(run_id)
    user_digest = paramsets.encode(run.params["user"])[0]  # type: ignore[index]
    assert http.get(f"/runs/{run_id}/params/{user_digest}").json() == {"table": TABLE}
