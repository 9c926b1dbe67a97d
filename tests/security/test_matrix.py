"""Every role against every operation over real HTTP: the expected status, the error shape, and no leak.

The matrix is data: :data:`OPERATIONS` names each request (a template filled from
:meth:`World.ids`, and ``{role}`` for requests that create something), :data:`EXPECTED` gives the
status per role in :data:`~world.ROLES` order. A new role is a new column, a new operation a new
row. Every answer (bodies, headers, and the files inside a zip) is scanned for the secrets of
:meth:`World.secrets_for` the role.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any
from urllib.parse import unquote

import httpx

from datamill.client.remote import _encode_batch

from .world import DEST, PIPELINE, ROLES, SRC, UNAUTHENTICATED, World

SHAPE = {"ok", "status", "code", "error", "detail"}


def _batch_body() -> dict[str, Any]:
    """A batch upload (``POST /content/{folder}``) of one small file, as the remote client sends it."""
    body, ctype = _encode_batch([("batch-new.txt", b"new", None)], {})
    return {"content": body, "headers": {"Content-Type": ctype}}


# name -> (method, url template, request kwargs)
OPERATIONS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "get_src_folder": ("GET", "/api/v1/folders/{src}", {}),
    "list_src": ("GET", "/api/v1/folder-items/{src}", {}),
    "get_src_item": ("GET", "/api/v1/items/{src}/{item}", {}),
    "src_versions": ("GET", "/api/v1/versions/{src}/{item}", {}),
    "download_src": ("GET", "/api/v1/content/{src}/{item}", {}),
    "find_src": ("GET", "/api/v1/find/{src}", {"params": {"name": "*"}}),
    "find_src_paged": ("GET", "/api/v1/find/{src}", {"params": {"limit": "1", "after": "{item_path}"}}),
    "src_grants": ("GET", "/api/v1/access/{src}", {}),
    "upload_src": ("PUT", "/api/v1/content/{src}/new-{role}.txt", {"content": b"new"}),
    "create_src_sub": ("POST", "/api/v1/folders/{src}/sub-{role}", {"json": {}}),
    "list_dest": ("GET", "/api/v1/folder-items/{dest}", {}),
    "get_dest_item": ("GET", "/api/v1/items/{dest}/total.json", {}),
    "find_dest": ("GET", "/api/v1/find/{dest}", {"params": {"name": "*"}}),
    "lineage_dest": ("GET", "/api/v1/lineage/{dest}/total.json", {}),
    "upload_dest": ("PUT", "/api/v1/content/{dest}/new-{role}.txt", {"content": b"new"}),
    "batch_upload_src": ("POST", "/api/v1/content/{src}", _batch_body()),
    "batch_upload_dest": ("POST", "/api/v1/content/{dest}", _batch_body()),
    "list_batches": ("GET", "/api/v1/batches", {}),
    "get_batch": ("GET", "/api/v1/batches/{batch}", {}),
    "batch_status": ("GET", "/api/v1/batches/{batch}/status", {}),
    "batch_download": ("GET", "/api/v1/batches/{batch}/download", {}),
    "batch_duplicate": ("POST", "/api/v1/batches/{batch}/duplicate", {"json": {"name": "copy-{role}"}}),
    "batch_retry": ("POST", "/api/v1/batches/{batch}/retry", {}),
    "batch_start": ("POST", "/api/v1/batches/{batch}/start", {}),
    "create_batch_src": (
        "POST",
        "/api/v1/batches",
        {"json": {"name": "new-{role}", "pipeline": PIPELINE, "dest": DEST, "folders": [SRC]}},
    ),
    "list_runs": ("GET", "/api/v1/runs", {}),
    "get_run": ("GET", "/api/v1/runs/{run_ok}", {}),
    "get_failed_run": ("GET", "/api/v1/runs/{run_failed}", {}),
    "run_tasks": ("GET", "/api/v1/runs/{run_failed}/tasks", {}),
    "get_failed_task": ("GET", "/api/v1/tasks/{task_failed}", {}),
    "get_total_task": ("GET", "/api/v1/tasks/{task_total}", {}),
    "why": ("GET", "/api/v1/tasks/{task_item}/why", {}),
    "why_total": ("GET", "/api/v1/tasks/{task_total}/why", {}),
    "logs": ("GET", "/api/v1/tasks/{task_failed}/logs", {}),
    "ro_crate": ("GET", "/api/v1/runs/{run_ok}/ro-crate", {}),
    "cancel_run": ("POST", "/api/v1/runs/{run_ok}/cancel", {}),
    "retry_run": ("POST", "/api/v1/runs/{run_failed}/retry", {}),
    "plan_src": ("POST", "/api/v1/plan", {"json": {"pipeline": PIPELINE, "folder": SRC}}),
    "list_flows": ("GET", "/api/v1/dataflows", {}),
    "get_flow": ("GET", "/api/v1/dataflows/{flow}", {}),
    "flow_history": ("GET", "/api/v1/dataflows/{flow}/history", {}),
    "edit_flow": ("PATCH", "/api/v1/dataflows/{flow}", {"json": {"description": "by {role}"}}),
    "run_flow": ("POST", "/api/v1/dataflows/{flow}/run", {}),
    "events": ("GET", "/api/v1/events", {"params": {"since": 0}}),
}

U = [401, 401, 401]  # anonymous, revoked, expired
# Columns after U: other, src_reader, src_writer, src_admin, dest_reader, owner, site_admin
SRC_READ = [*U, 404, 200, 200, 200, 404, 200, 200]
DEST_READ = [*U, 404, 404, 404, 404, 200, 200, 200]
RUN_READ = [*U, 404, 200, 200, 200, 200, 200, 200]
EVERYONE = [*U, 200, 200, 200, 200, 200, 200, 200]
EXPECTED: dict[str, list[int]] = {
    "get_src_folder": SRC_READ,
    "list_src": SRC_READ,
    "get_src_item": SRC_READ,
    "src_versions": SRC_READ,
    "download_src": SRC_READ,
    "find_src": SRC_READ,
    "find_src_paged": SRC_READ,
    "src_grants": SRC_READ,
    "upload_src": [*U, 404, 403, 201, 201, 404, 201, 201],
    "create_src_sub": [*U, 404, 403, 201, 201, 404, 201, 201],
    "list_dest": DEST_READ,
    "get_dest_item": DEST_READ,
    "find_dest": DEST_READ,
    "lineage_dest": DEST_READ,
    "upload_dest": [*U, 404, 404, 404, 404, 403, 201, 201],
    # A batch upload answers as a single upload does.
    "batch_upload_src": [*U, 404, 403, 201, 201, 404, 201, 201],
    "batch_upload_dest": [*U, 404, 404, 404, 404, 403, 201, 201],
    # A batch is seen by its owner, site admins and the readers of its destination (each sees
    # only the items they may read); only its owner or a site admin starts, retries or copies it.
    "list_batches": EVERYONE,
    "get_batch": DEST_READ,
    "batch_status": DEST_READ,
    "batch_download": DEST_READ,
    # A reader of the destination may copy it, but reads none of its items: an empty batch is refused.
    "batch_duplicate": [*U, 404, 404, 404, 404, 400, 201, 201],
    # The owner's retry queues a run: until it ends there is nothing to retry (400 for the site admin).
    "batch_retry": [*U, 404, 404, 404, 404, 403, 201, 400],
    "batch_start": [*U, 404, 404, 404, 404, 403, 201, 201],
    "create_batch_src": [*U, 404, 404, 404, 404, 404, 201, 201],
    "list_runs": EVERYONE,
    "get_run": RUN_READ,
    "get_failed_run": RUN_READ,
    "run_tasks": RUN_READ,
    "get_failed_task": RUN_READ,
    "get_total_task": RUN_READ,
    "why": RUN_READ,
    "why_total": RUN_READ,
    # A log may quote its inputs: only for who may read them.
    "logs": [*U, 404, 200, 200, 200, 403, 200, 200],
    "ro_crate": RUN_READ,
    # Cancelling needs write on the destination; the run has ended, so it answers cancelled: false.
    "cancel_run": [*U, 404, 403, 403, 403, 403, 200, 200],
    # Retrying needs to read both sides (and write the destination).
    "retry_run": [*U, 404, 403, 403, 403, 403, 201, 201],
    "plan_src": [*U, 404, 200, 200, 200, 404, 200, 200],
    "list_flows": EVERYONE,
    "get_flow": RUN_READ,
    "flow_history": RUN_READ,
    "edit_flow": [*U, 404, 403, 403, 403, 403, 200, 200],
    "run_flow": [*U, 404, 403, 403, 403, 403, 201, 201],
    "events": EVERYONE,
}


def fill(template: Any, values: dict[str, Any]) -> Any:
    """A request template with ``{...}`` fields filled in, recursively."""
    if isinstance(template, str):
        return template.format(**values)
    if isinstance(template, dict):
        return {k: fill(v, values) for k, v in template.items()}
    return template


def request(http: httpx.Client, world: World, role: str, op: str) -> httpx.Response:
    """Make the operation's request as ``role``."""
    method, url, kwargs = OPERATIONS[op]
    values = {**world.ids(), "role": role}
    filled = fill(kwargs, values)
    headers = {**filled.pop("headers", {}), **world.headers(role)}
    return http.request(method, fill(url, values), headers=headers, **filled)


def answer_text(r: httpx.Response) -> str:
    """Everything an answer carries, as text: headers, body, and the files of a zip body."""
    parts = [json.dumps(dict(r.headers)), r.text if "zip" not in r.headers.get("content-type", "") else ""]
    if "zip" in r.headers.get("content-type", ""):
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            parts += [f"{n}\n{z.read(n).decode('utf-8', 'replace')}" for n in z.namelist()]
    return "\n".join(parts)


def leaks(world: World, role: str, text: str) -> list[str]:
    """The secrets of ``role`` found in ``text``."""
    return [s for s in world.secrets_for(role) if s in text]


def test_every_role_against_every_operation(http: httpx.Client, world: World) -> None:
    assert set(EXPECTED) == set(OPERATIONS)
    failures = []
    for op, expected in EXPECTED.items():
        for role, status in zip(ROLES, expected, strict=True):
            r = request(http, world, role, op)
            if r.status_code != status:
                failures.append(f"{op} as {role}: {r.status_code}, expected {status}: {r.text[:300]}")
                continue
            if status >= 400:
                body = r.json()
                if set(body) != SHAPE or body["status"] != status:
                    failures.append(f"{op} as {role}: error shape {body}")
            found = leaks(world, role, answer_text(r))
            if found:
                failures.append(f"{op} as {role} leaks {found}: {r.text[:500]}")
    assert not failures, "\n".join(failures)


def test_the_secrets_are_really_there_for_those_who_may_see_them(http: httpx.Client, world: World) -> None:
    """The scan is meaningful: the owner's answers do hold what the others must not see."""
    runs = request(http, world, "owner", "get_run").text
    assert SRC in runs and DEST in runs and world.src_digests[0] in runs
    assert "hook-secret-5x" in request(http, world, "owner", "get_flow").text
    meta = request(http, world, "owner", "get_dest_item").json()["metadata"]
    assert {e["folder"] for e in meta["provenance"]["wasDerivedFrom"]} == {SRC}
    tasks = request(http, world, "src_reader", "run_tasks").text
    assert "kestrel-doomed.csv asked to fail" in tasks
    assert "kestrel-doomed.csv" in request(http, world, "src_reader", "logs").text
    assert DEST not in tasks and DEST not in request(http, world, "src_reader", "get_run").text


# The web app's pages, signed in through the login URL (``/?token=``) as each role. Columns as
# above; the unauthenticated roles have no session and are sent to the sign-in page (303).
WEB_PAGES: dict[str, str] = {
    "web_folders": "/folders",
    "web_src": "/folders/{src}",
    "web_dest": "/folders/{dest}",
    "web_src_item": "/item/{src}/{item}",
    "web_dest_item": "/item/{dest}/total.json",
    "web_runs": "/runs",
    "web_run": "/runs/{run_ok}",
    "web_run_panel": "/runs/{run_failed}/panel",
    "web_failed_task": "/tasks/{task_failed}",
    "web_flows": "/dataflows",
    "web_flow": "/dataflows/{flow}",
    "web_flow_history": "/dataflows/{flow}/history",
    "web_flow_edit": "/dataflows/{flow}/edit",
    "web_events": "/events",
    "web_admin": "/admin",
}
W = [303, 303, 303]
WEB_EXPECTED: dict[str, list[int]] = {
    "web_folders": [*W, 200, 200, 200, 200, 200, 200, 200],
    "web_src": [*W, 404, 200, 200, 200, 404, 200, 200],
    "web_dest": [*W, 404, 404, 404, 404, 200, 200, 200],
    "web_src_item": [*W, 404, 200, 200, 200, 404, 200, 200],
    "web_dest_item": [*W, 404, 404, 404, 404, 200, 200, 200],
    "web_runs": [*W, 200, 200, 200, 200, 200, 200, 200],
    "web_run": [*W, 404, 200, 200, 200, 200, 200, 200],
    "web_run_panel": [*W, 404, 200, 200, 200, 200, 200, 200],
    "web_failed_task": [*W, 404, 200, 200, 200, 200, 200, 200],
    "web_flows": [*W, 200, 200, 200, 200, 200, 200, 200],
    "web_flow": [*W, 404, 200, 200, 200, 200, 200, 200],
    "web_flow_history": [*W, 404, 200, 200, 200, 200, 200, 200],
    # The form shows only to those who may change the dataflow (the API's edit_flow row); the others
    # who see the dataflow get a 403 page saying who may, and no Edit button on its page.
    "web_flow_edit": [*W, 404, 403, 403, 403, 403, 200, 200],
    "web_events": [*W, 200, 200, 200, 200, 200, 200, 200],
    # The admin pages do not exist for anyone else.
    "web_admin": [*W, 404, 404, 404, 404, 404, 404, 200],
}


def web_session(world: World, role: str) -> httpx.Client:
    """An HTTP client signed in to the web app as ``role`` (none for the unauthenticated roles); close it."""
    c = httpx.Client(base_url=world.url, timeout=30, follow_redirects=False)
    token = world.tokens[role]
    if role not in UNAUTHENTICATED:
        assert token is not None
        r = c.get("/", params={"token": token})
        assert r.status_code == 303 and c.cookies, (role, r.status_code)
    elif token is not None:
        assert c.get("/", params={"token": token}).status_code == 401  # revoked or expired: no session
    return c


def test_every_role_against_every_web_page(world: World) -> None:
    assert set(WEB_EXPECTED) == set(WEB_PAGES)
    values = world.ids()
    failures = []
    for i, role in enumerate(ROLES):
        c = web_session(world, role)
        try:
            for page, url in WEB_PAGES.items():
                r = c.get(fill(url, values))
                status = WEB_EXPECTED[page][i]
                if r.status_code != status:
                    failures.append(f"{page} as {role}: {r.status_code}, expected {status}: {r.text[:300]}")
                    continue
                text = answer_text(r)
                if page == "web_flow" and status == 200:
                    # The Edit button shows exactly to those whom the form is shown.
                    may_edit = WEB_EXPECTED["web_flow_edit"][i] == 200
                    if ('/edit">Edit</a>' in r.text) != may_edit:
                        failures.append(f"{page} as {role}: Edit button shown={not may_edit}, expected {may_edit}")
                if status == 303:
                    # Sent to sign in, and back to the page asked for afterwards: only the caller's
                    # own URL comes back (in Location); the body must hold nothing.
                    asked = fill(url, values)
                    if unquote(r.headers.get("location", "")) != f"/signin?next={unquote(asked)}":
                        failures.append(f"{page} as {role}: redirected to {r.headers.get('location')}")
                    text = r.text
                found = leaks(world, role, text)
                if found:
                    failures.append(f"{page} as {role} leaks {found}: {r.text[:500]}")
        finally:
            c.close()
    assert not failures, "\n".join(failures)
