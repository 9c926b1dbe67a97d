"""Property-based fuzzing of the API over its own OpenAPI document (schemathesis).

A real server on loopback is fuzzed twice, as the site admin and anonymously, with schemathesis'
generated requests (valid and invalid, and the boundary values of its coverage phase). Every
answer must be no 5xx and match the document: a documented status, content type, body schema and
headers. The budget is bounded per operation (:data:`MAX_EXAMPLES`) so that both runs together
take a couple of minutes on a loaded machine.

Two adjustments keep requests short and the run meaningful, without hiding anything: long-poll
``wait`` parameters are capped (they only delay the same answer), and the admin's own token is
never revoked mid-run (which would turn the rest of the run into 401s).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from datamill.api import ServerHandle, start_background_server
from datamill.api.app import create_app
from datamill.client.local import LocalClient
from datamill.config import load_settings
from datamill.home import Home

#: Generated requests per operation and run (the coverage phase adds its boundary cases).
MAX_EXAMPLES = 10
#: Seconds a request may take; an event stream is read for at most this long.
REQUEST_TIMEOUT = 10

CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


class World:
    """A served home with a little in it, and the admin's token."""

    def __init__(self, home: Home, server: ServerHandle, token: str, token_id: int) -> None:
        self.home = home
        self.server = server
        self.token = token
        self.token_id = token_id


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = Home(load_settings(environ={}, home=str(tmp_path_factory.mktemp("fuzz-home")), demo=False))
    local = LocalClient(home)
    local.create_folder("f/sub")
    local.put("f", "a.txt", b"hello", metadata={"k": 1})
    local.create_user("ana")
    new = local.create_token("admin", name="fuzzing")
    server = start_background_server(home)
    try:
        yield World(home, server, new.token, new.id)
    finally:
        server.stop()
        home.close()


def _document() -> dict[str, Any]:
    """The server's OpenAPI document (it depends on no home's contents, so a scratch home will do).

    Built at import because schemathesis parametrizes the tests from it at collection time.
    """
    with tempfile.TemporaryDirectory(prefix="datamill-openapi-") as scratch:
        home = Home(load_settings(environ={}, home=scratch, demo=False))
        try:
            return create_app(home).openapi()
        finally:
            home.close()


schema = schemathesis.openapi.from_dict(
    _document(),
    config=SchemathesisConfig.from_dict(
        {"generation": {"max-examples": MAX_EXAMPLES}, "request-timeout": REQUEST_TIMEOUT, "max-stream-events": 1}
    ),
)


def tame(case: Any, world: World) -> None:
    """Keep a generated request short and the admin's token alive (see the module docstring)."""
    if isinstance(case.query, dict) and "wait" in case.query:
        case.query["wait"] = 0
    if case.method == "DELETE" and case.path == "/api/v1/tokens/{token_id}":
        if case.path_parameters and case.path_parameters.get("token_id") == world.token_id:
            case.path_parameters["token_id"] = world.token_id + 1_000_000


@schema.parametrize()
def test_fuzz_as_admin(case: Any, world: World) -> None:
    tame(case, world)
    headers = {"Authorization": f"Bearer {world.token}"}
    case.call_and_validate(base_url=world.server.url, headers=headers, checks=CHECKS)


@schema.parametrize()
def test_fuzz_anonymous(case: Any, world: World) -> None:
    tame(case, world)
    if case.headers:  # a generated Authorization header would not be anonymous
        case.headers.pop("Authorization", None)
    case.call_and_validate(base_url=world.server.url, checks=CHECKS)


def test_the_document_declares_errors_and_content_types() -> None:
    doc = _document()
    error_ref = {"$ref": "#/components/schemas/Error"}
    assert set(doc["components"]["schemas"]["Error"]["required"]) == {"status", "code", "error", "detail"}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            responses = op["responses"]
            if path != "/api/v1/health":
                assert {"401", "422", "500"} <= set(responses), (method, path)
            for status, response in responses.items():
                if int(status) >= 400 and method != "head":
                    assert response["content"] == {"application/json": {"schema": error_ref}}, (method, path, status)
    paths = doc["paths"]
    sse = paths["/api/v1/events/stream"]["get"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert sse["properties"]["data"]["contentSchema"] == {"$ref": "#/components/schemas/Event"}
    assert {"seq", "kind", "data"} <= set(doc["components"]["schemas"]["Event"]["properties"])
    assert "*/*" in paths["/api/v1/content/{path}"]["get"]["responses"]["200"]["content"]
    assert "application/octet-stream" in paths["/api/v1/content/{path}"]["put"]["requestBody"]["content"]
    assert "text/plain" in paths["/api/v1/tasks/{task_id}/logs"]["get"]["responses"]["200"]["content"]
    assert list(paths["/api/v1/runs/{run_id}/ro-crate"]["get"]["responses"]["200"]["content"]) == ["application/zip"]
    lineage = paths["/api/v1/lineage/{path}"]["get"]["responses"]["200"]["content"]
    assert {"application/json", "text/plain", "text/provenance-notation", "application/zip"} <= set(lineage)
    assert "content" not in paths["/api/v1/content/{path}"]["head"]["responses"]["200"]
