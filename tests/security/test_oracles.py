"""Issue 8, item 3: a caller without access cannot tell a hidden thing from a missing one.

Each case is a pair of requests, one about something that exists but the caller may not read,
one about something that does not exist; both must answer the same status and the same body
once the one name (or id) that differs is swapped. The cases are data (:data:`CASES`): add one
per new way of naming a folder, item, run, task or dataflow.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from datamill.client.local import LocalClient

from .world import DEST, FLOW, PIPELINE, SRC, World, q

OWN = "Own Place"
MISSING = "No Such Place"
MISSING_ID = 987654
MISSING_FLOW = "no-such-flow"

# (name, method, url template, json body template); {hidden} is the hidden thing, filled in with
# the hidden and then the missing value.
Case = tuple[str, str, str, dict[str, Any] | None]
FOLDER_CASES: list[Case] = [
    ("get folder", "GET", "/api/v1/folders/{hidden}", None),
    ("list items", "GET", "/api/v1/folder-items/{hidden}", None),
    ("upload", "PUT", "/api/v1/content/{hidden}/x.txt", None),
    ("subfolder, no parents", "POST", "/api/v1/folders/{hidden}/sub", {"parents": False}),
    ("deeper, no parents", "POST", "/api/v1/folders/{hidden}/a/b", {"parents": False}),
    ("grants", "GET", "/api/v1/access/{hidden}", None),
    ("share", "PUT", "/api/v1/access/{hidden}", {"user": "other", "level": "read"}),
    ("lineage", "GET", "/api/v1/lineage/{hidden}/kestrel-alpha.csv", None),
    ("move into", "PATCH", f"/api/v1/folders/{q(OWN)}", {"parent": "{hidden}"}),
    ("run into", "POST", "/api/v1/runs", {"pipeline": PIPELINE, "folder": OWN, "dest": "{hidden}"}),
    ("run from", "POST", "/api/v1/runs", {"pipeline": PIPELINE, "folder": "{hidden}", "dest": OWN}),
    ("plan", "POST", "/api/v1/plan", {"pipeline": PIPELINE, "folder": "{hidden}"}),
    ("flow into", "POST", "/api/v1/dataflows", {"name": "f", "source": OWN, "dest": "{hidden}", "pipeline": PIPELINE}),
    ("flow from", "POST", "/api/v1/dataflows", {"name": "f", "source": "{hidden}", "dest": OWN, "pipeline": PIPELINE}),
    ("batch upload", "POST", "/api/v1/content/{hidden}", None),
    (
        "stream flow into",
        "POST",
        "/api/v1/dataflows",
        {"name": "f", "kind": "stream", "topic": "t", "dest": "{hidden}"},
    ),
    (
        "batch into",
        "POST",
        "/api/v1/batches",
        {"name": "b", "pipeline": PIPELINE, "dest": "{hidden}", "folders": [OWN]},
    ),
    (
        "batch from",
        "POST",
        "/api/v1/batches",
        {"name": "b", "pipeline": PIPELINE, "dest": OWN, "folders": ["{hidden}"]},
    ),
    (
        "batch of paths",
        "POST",
        "/api/v1/batches",
        {"name": "b", "pipeline": PIPELINE, "dest": OWN, "paths": ["{hidden}/x.csv"]},
    ),
]
ID_CASES: list[Case] = [
    ("run", "GET", "/api/v1/runs/{hidden}", None),
    ("run tasks", "GET", "/api/v1/runs/{hidden}/tasks", None),
    ("cancel", "POST", "/api/v1/runs/{hidden}/cancel", None),
    ("retry", "POST", "/api/v1/runs/{hidden}/retry", None),
    ("ro-crate", "GET", "/api/v1/runs/{hidden}/ro-crate", None),
]
TASK_CASES: list[Case] = [
    ("task", "GET", "/api/v1/tasks/{hidden}", None),
    ("why", "GET", "/api/v1/tasks/{hidden}/why", None),
    ("logs", "GET", "/api/v1/tasks/{hidden}/logs", None),
]
FLOW_CASES: list[Case] = [
    ("flow", "GET", "/api/v1/dataflows/{hidden}", None),
    ("history", "GET", "/api/v1/dataflows/{hidden}/history", None),
    ("edit", "PATCH", "/api/v1/dataflows/{hidden}", {"description": "x"}),
    ("start", "POST", "/api/v1/dataflows/{hidden}/start", None),
    ("run now", "POST", "/api/v1/dataflows/{hidden}/run", None),
    ("delete", "DELETE", "/api/v1/dataflows/{hidden}", None),
]


def fill(template: Any, value: str) -> Any:
    if isinstance(template, str):
        return template.replace("{hidden}", value)
    if isinstance(template, dict):
        return {k: fill(v, value) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, value) for v in template]
    return template


def answer(http: httpx.Client, world: World, role: str, case: Case, value: str, in_url: str) -> tuple[int, str]:
    _name, method, url, body = case
    r = http.request(
        method,
        url.replace("{hidden}", in_url),
        headers=world.headers(role),
        json=fill(body, value) if body is not None else None,
    )
    return r.status_code, r.text


@pytest.mark.parametrize("role", ["other", "dest_reader"])
def test_hidden_and_missing_answer_alike(http: httpx.Client, world: World, role: str) -> None:
    user = LocalClient(world.home, world.home.actor("other" if role == "other" else "dest_reader"))
    user.create_folder(OWN)
    user.put(OWN, "mine.csv", b"a\n1\n")
    hidden_src = SRC
    ids = world.ids()
    groups: list[tuple[list[Case], str, str]] = [
        (FOLDER_CASES, hidden_src, MISSING),
        (ID_CASES, str(world.run_ok), str(MISSING_ID)),
        (TASK_CASES, str(ids["task_item"]), str(MISSING_ID)),
    ]
    if role == "other":  # the destination reader may see the dataflow (and its runs: see test_leaks)
        groups.append((FLOW_CASES, FLOW, MISSING_FLOW))
    else:
        groups[1] = (ID_CASES, "1", "1")  # placeholders: runs are visible to a reader of the destination
        groups = [g for g in groups if g[0] is FOLDER_CASES]
    failures = []
    for cases, hidden, missing in groups:
        for case in cases:
            s1, b1 = answer(http, world, role, case, hidden, q(hidden))
            s2, b2 = answer(http, world, role, case, missing, q(missing))
            assert s1 < 500 and s2 < 500, (case, b1, b2)
            normalised = re.sub(rf"(?<![\w.]){re.escape(q(hidden))}(?![\w.])", q(missing), b1)
            normalised = re.sub(rf"(?<![\w.]){re.escape(hidden)}(?![\w.])", missing, normalised)
            if (s1, normalised) != (s2, b2):
                failures.append(f"{case[0]} as {role}: {s1} {b1}\n   vs missing: {s2} {b2}")
            for secret in (SRC, q(SRC), DEST if role == "other" else SRC):
                if secret != hidden and secret in b1:
                    failures.append(f"{case[0]} as {role} names {secret!r}: {b1}")
    assert not failures, "\n".join(failures)
