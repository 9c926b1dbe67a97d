"""Every :class:`~datamill.errors.DatamillError` subclass: the JSON the API answers with, and a docstring
that says what to do.

A tiny route added to the served app raises each class; the answer goes through the app's real
exception handlers and middleware over HTTP on loopback.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import datamill.api.app  # noqa: F401  (imports every module that defines error classes)
from datamill import errors
from datamill.api import ServerHandle
from datamill.errors import DatamillError, NotFound, RangeNotSatisfiable, TooManyRequests, Unauthorized
from datamill.home import Home


def _subclasses(cls: type[DatamillError]) -> list[type[DatamillError]]:
    out: list[type[DatamillError]] = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


CLASSES = [DatamillError, *_subclasses(DatamillError)]
#: The classes callers may raise and catch; private ones (``_Collision``) always carry a message of their own.
PUBLIC = [c for c in CLASSES if not c.__name__.startswith("_")]


def test_the_walk_finds_every_error_class_of_the_errors_module() -> None:
    declared = {v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, DatamillError)}
    assert declared <= set(CLASSES)
    assert len(set(CLASSES)) == len(CLASSES)


@pytest.fixture
def raising(server: ServerHandle, home: Home) -> httpx.Client:
    """A client of the served app, to which a route was added that raises the class it is named after."""
    by_name = {c.__qualname__: c for c in CLASSES}

    def raise_error(name: str, message: str = "", key: str = "") -> None:
        cls = by_name[name]
        detail: dict[str, Any] = {"key": key} if key else {}
        raise cls(message or None, **detail)

    server.app.add_api_route("/api/v1/test-raise/{name}", raise_error, methods=["GET"])
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {home.admin_token()}"}, timeout=30)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__qualname__)
def test_the_api_answers_every_error_in_the_one_shape(raising: httpx.Client, cls: type[DatamillError]) -> None:
    with raising:
        default = raising.get(f"/api/v1/test-raise/{cls.__qualname__}")
        custom = raising.get(
            f"/api/v1/test-raise/{cls.__qualname__}", params={"message": "what went wrong; do this", "key": "v"}
        )
    assert 400 <= cls.status < 600 and cls.code and cls.code == cls.code.lower()
    for r in (default, custom):
        assert r.status_code == cls.status
        assert r.headers["content-type"] == "application/json"
        assert set(r.json()) == {"ok", "status", "code", "error", "detail"}
    assert default.json() == {
        "ok": False,
        "status": cls.status,
        "code": cls.code,
        "error": (cls.__doc__ or cls.code).strip(),
        "detail": {},
    }
    assert custom.json() == {
        "ok": False,
        "status": cls.status,
        "code": cls.code,
        "error": "what went wrong; do this",
        "detail": {"key": "v"},
    }
    if issubclass(cls, Unauthorized):
        assert custom.headers["www-authenticate"] == 'Bearer realm="datamill"'
    if issubclass(cls, TooManyRequests):
        assert custom.headers["retry-after"] == "5"
    if issubclass(cls, RangeNotSatisfiable):
        assert "content-range" not in custom.headers  # only when the error says the size


def test_a_not_found_about_a_path_does_not_name_it(raising: httpx.Client, server: ServerHandle) -> None:
    def missing() -> None:
        raise NotFound("no folder 'secret/plans'", path="secret/plans", hint="x")

    server.app.add_api_route("/api/v1/test-missing", missing, methods=["GET"])
    with raising:
        body = raising.get("/api/v1/test-missing").json()
    assert body["error"] == (NotFound.__doc__ or "").strip() and body["detail"] == {"hint": "x"}


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__qualname__)
def test_every_error_class_says_what_is_wrong_and_what_to_do(cls: type[DatamillError]) -> None:
    # The docstring is the message of an error raised without one: its own, never a parent's.
    doc = cls.__dict__.get("__doc__")
    assert doc, f"{cls.__qualname__} has no docstring of its own"
    sentences = [s for s in doc.strip().split(". ") if s]
    assert len(sentences) >= 2, f"{cls.__qualname__}: say what is wrong, then what to do: {doc!r}"
    assert doc.strip().endswith("."), doc
