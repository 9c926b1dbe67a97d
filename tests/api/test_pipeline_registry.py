"""Only site admins decide what code the server runs: the pipeline registry, over real HTTP.

A non-admin chooses a pipeline by its registered name; anything else they send (a module, a
``__main__`` module, a file they wrote, ``~user`` paths, paths that exist or not) is refused with
the same answer, before anything is imported, opened or stat-ed. The attacks go to a real
``datamill up`` in a subprocess, whose working directory is on its ``sys.path`` (``python -m``):
each module or file they name would leave a marker file behind if it were ever imported.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from datamill.client.local import LocalClient
from datamill.client.remote import RemoteClient
from datamill.db.models import Dataflow
from datamill.engine.registry import Pipelines
from datamill.errors import AlreadyExists, Conflict, NotFound, PermissionDenied, UnknownPipeline
from datamill.home import Home
from tests.helpers import Up as Server
from tests.helpers import open_home

COUNTING = Path(__file__).resolve().parents[1] / "client" / "counting_pipeline.py"
COUNTING_REF = f"{COUNTING}:pipeline"


class Up:
    """A ``datamill up`` subprocess: its URL, admin token, working directory and marker directory."""

    def __init__(self, url: str, token: str, cwd: Path, markers: Path) -> None:
        self.url, self.token, self.cwd, self.markers = url, token, cwd, markers

    def http(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _marker_code(markers: Path, name: str) -> str:
    """Python source that, when executed, leaves ``markers/name`` behind (and defines a pipeline)."""
    return textwrap.dedent(
        f"""
        from pathlib import Path
        Path({str(markers)!r}, {name!r}).write_text("imported")
        from datamill.pipeline import Pipeline, step

        @step
        def f(item):
            return {{"x": 1}}

        pipeline = Pipeline("evil", steps=[f])
        """
    )


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    """``python -m datamill.cli up`` on a fresh home, run from a directory holding a planted module."""
    cwd, markers, home = tmp_path / "srv", tmp_path / "markers", tmp_path / "home"
    cwd.mkdir()
    markers.mkdir()
    # A module an attacker managed to put on the server's sys.path (its working directory).
    (cwd / "planted_mod.py").write_text(_marker_code(markers, "planted_mod"))
    server = Server(home, env={"DATAMILL_EXECUTOR": "inline"}, cwd=cwd)
    try:
        yield Up(server.url, server.token, cwd, markers)
    finally:
        server.stop()


def _user(up: Up, name: str) -> str:
    """Create a user (not a site admin) over the API; returns a token of theirs."""
    with RemoteClient(up.url, up.token) as admin:
        admin.create_user(name)
        return admin.create_token(name).token


@pytest.mark.slow
def test_a_non_admin_cannot_make_the_server_import_or_run_anything(up: Up, tmp_path: Path) -> None:
    ana_token = _user(up, "ana")
    # ana's own folders, so that every request gets as far as the pipeline.
    with RemoteClient(up.url, ana_token) as ana:
        ana.create_folder("In")
        ana.create_folder("Out")
        ana.put("In", "a.txt", b"1\n")
    with RemoteClient(up.url, up.token) as admin:
        admin.add_pipeline("counting", COUNTING_REF)
    # A file ana wrote and a YAML file next to it, each leaving a marker if ever executed.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "evil.py").write_text(_marker_code(up.markers, "evil_py"))
    (mine / "evil.yaml").write_text("name: evil\nsteps:\n  - name: f\n    run: evil.py:f\n")
    attacks = [
        "venv.__main__:x",
        "unittest.__main__:x",
        "planted_mod:pipeline",
        "planted_mod",
        f"{mine}/evil.py:pipeline",
        f"{mine}/evil.py",
        f"{mine}/evil.yaml",
        "~root/x.py:a",
        "~/x.py:a",
        "/etc/shadow",
        "/etc/nope",
        "/etc/shadow:x",
        "/etc/nope:x",
        "/etc",
        "datamill.demo.pipeline:tabular",  # even an installed pipeline, when not chosen by its name
        "x" * 100_000,
    ]
    before = sorted(p.name for p in up.cwd.iterdir())
    answers: list[dict[str, Any]] = []
    with up.http(ana_token) as http:
        made = http.post("/dataflows", json={"name": "mine", "source": "In", "dest": "Out", "pipeline": "counting"})
        assert made.status_code == 201, made.text
        for ref in attacks:
            for method, path, body in (
                ("POST", "/plan", {"pipeline": ref, "folder": "In"}),
                ("POST", "/runs", {"pipeline": ref, "folder": "In", "dest": "Out"}),
                ("POST", "/dataflows", {"name": "evil", "source": "In", "dest": "Out", "pipeline": ref}),
                ("PATCH", "/dataflows/mine", {"pipeline": ref}),
            ):
                r = http.request(method, path, json=body)
                assert r.headers["content-type"].startswith("application/json"), (ref, path, r.text[:300])
                got = r.json()
                assert (r.status_code, got["code"]) == (400, "unknown_pipeline"), (ref, path, got)
                assert len(r.content) < 1000
                # The same answer whatever the text names: only the echo of the caller's own text differs.
                shown = ref if len(ref) <= 100 else ref[:100] + "…"
                answers.append(
                    {**got, "error": got["error"].replace(repr(shown), "<ref>"), "detail": sorted(got["detail"])}
                )
        assert http.get("/runs").json() == []
        assert http.get("/dataflows/mine").json()["pipeline"] == "counting"
    assert all(a == answers[0] for a in answers), answers
    assert "no registered pipeline <ref>" in answers[0]["error"] and "datamill pipelines ls" in answers[0]["error"]
    assert list(up.markers.iterdir()) == []  # nothing was imported or executed
    assert sorted(p.name for p in up.cwd.iterdir()) == before  # no virtual environment made, nothing written


@pytest.mark.slow
def test_a_site_admin_gets_clear_4xx_errors_for_references_that_cannot_be_pipelines(up: Up, tmp_path: Path) -> None:
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n")
    with up.http(up.token) as http, RemoteClient(up.url, up.token) as admin:
        admin.create_folder("In")
        admin.put("In", "a.txt", b"1\n")
        for ref in ("venv.__main__:x", "unittest.__main__:x", "__main__:x", f"{tmp_path}/exits.py:pipeline"):
            r = http.post("/plan", json={"pipeline": ref, "folder": "In"})
            assert r.headers["content-type"].startswith("application/json"), (ref, r.text[:300])
            assert (r.status_code, r.json()["code"]) == (400, "invalid_pipeline"), (ref, r.text)
        assert "__main__ module" in http.post("/plan", json={"pipeline": "venv.__main__:x", "folder": "In"}).text
    assert sorted(p.name for p in up.cwd.iterdir()) == ["planted_mod.py"]


@pytest.mark.slow
def test_registered_names_work_for_everyone_and_only_admins_register(up: Up) -> None:
    ana_token = _user(up, "ana")
    with RemoteClient(up.url, up.token) as admin, RemoteClient(up.url, ana_token) as ana:
        ana.create_folder("In")
        ana.create_folder("Out")
        ana.put("In", "a.txt", b"1\n2\n")
        with pytest.raises(PermissionDenied):
            ana.add_pipeline("mine", COUNTING_REF)
        made = admin.add_pipeline("counting", COUNTING_REF, description="lines per file")
        assert (made["name"], made["ref"], made["origin"]) == ("counting", COUNTING_REF, "admin")
        with pytest.raises(AlreadyExists):
            admin.add_pipeline("counting", COUNTING_REF)
        with pytest.raises(AlreadyExists):
            admin.add_pipeline("tabular", COUNTING_REF)  # an installed package's name

        listed = {p.name: p.to_dict() for p in ana.pipelines()}
        assert listed["counting"] == {
            "name": "counting",
            "description": "lines per file",
            "origin": "admin",
            "steps": ["count", "total"],
        }
        assert listed["tabular"]["origin"] == "package" and listed["tabular"]["package"] == "datamill"
        assert all("ref" not in p and "registered_by" not in p for p in listed.values())  # no server paths
        assert {p["name"]: p["ref"] for p in admin.pipelines()}["counting"] == COUNTING_REF

        assert ana.plan("counting", "In")["counts"]["run"] >= 1
        run = ana.run("counting", "In", "Out", params={"count.scale": 2})
        assert run["status"] == "succeeded", run
        flow = ana.create_dataflow("counts", "In", "Out", "counting", trigger="manual")
        assert flow["pipeline"] == "counting"
        assert ana.edit_dataflow("counts", params={"scale": 3})["version"] == 2

        with pytest.raises(PermissionDenied):
            ana.remove_pipeline("counting")
        with pytest.raises(NotFound):
            admin.remove_pipeline("nope")
        with pytest.raises(Conflict):
            admin.remove_pipeline("tabular")
        admin.remove_pipeline("counting")
        with pytest.raises(UnknownPipeline):
            ana.plan("counting", "In")
        with pytest.raises(UnknownPipeline):
            ana.run_dataflow("counts")  # its pipeline is no longer registered
        kinds = [(e.kind, e.data["name"]) for e in admin.events(kinds=["pipeline.registered", "pipeline.removed"])]
        assert kinds == [("pipeline.registered", "counting"), ("pipeline.removed", "counting")]
        assert ana.events(kinds=["pipeline.registered", "pipeline.removed"]) == []  # they name server paths


@pytest.mark.slow
def test_yaml_alias_bomb_is_a_small_error(up: Up, tmp_path: Path) -> None:
    levels = ["&a [" + ", ".join(["lol"] * 9) + "]"]
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"&{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(f"name: bomb\nsteps:\n  - name: a\n    run: x:y\n    retries: [{', '.join(levels)}]\n")
    assert bomb.stat().st_size < 600
    with up.http(up.token) as http, RemoteClient(up.url, up.token) as admin:
        admin.create_folder("In")
        admin.put("In", "a.txt", b"1\n")
        r = http.post("/plan", json={"pipeline": str(bomb), "folder": "In"})
        assert (r.status_code, r.json()["code"]) == (400, "invalid_pipeline")
        assert len(r.content) < 2000 and "expands to more than" in r.json()["error"]


# ------------------------------------------------------------------ the registry on each database


@pytest.fixture
def db_home(tmp_path: Path, db_url: str) -> Iterator[Home]:
    h = open_home(tmp_path / "home", db_url, executor="inline")
    yield h
    h.close()


def test_registry_rules_on_each_database(db_home: Home, tmp_path: Path) -> None:
    admin = LocalClient(db_home)
    admin.create_user("bob")
    bob = admin.as_user("bob")
    registry = Pipelines(db_home.db)
    with pytest.raises(PermissionDenied):
        registry.add(bob.actor, "x", COUNTING_REF)
    admin.add_pipeline("counting", COUNTING_REF)
    assert [p["name"] for p in bob.pipelines()] == ["counting", "tabular"]

    # bob's own run of a registered pipeline; once it is unregistered, he may not re-run it.
    bob.create_folder("In")
    bob.create_folder("Out")
    bob.put("In", "a.txt", b"boom\n")
    failed = bob.run("counting", "In", "Out")
    assert failed["status"] == "failed"
    assert bob.retry_run(failed["id"]) > failed["id"]
    admin.remove_pipeline("counting")
    with pytest.raises(UnknownPipeline, match="no longer registered"):
        bob.retry_run(failed["id"])
    assert admin.retry_run(failed["id"]) > 0  # a site admin may

    # A dataflow of bob's that names a reference (as before registries existed) never runs it.
    marker = tmp_path / "imported"
    evil = tmp_path / "evil.py"
    evil.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('x')\n")
    admin.create_dataflow("legacy", "In", "Out", COUNTING_REF, trigger="manual")
    with db_home.db.write() as conn:  # as an old database would hold it: bob's, with a reference
        config = conn.execute(select(Dataflow.config).where(Dataflow.name == "legacy")).scalar_one()
        config = {**config, "pipeline": f"{evil}:pipeline"}
        conn.execute(update(Dataflow).where(Dataflow.name == "legacy").values(owner_id=bob.actor.id, config=config))
    with pytest.raises(UnknownPipeline):
        admin.run_dataflow("legacy")  # it runs as its owner chose it, whoever asks
    with pytest.raises(UnknownPipeline):
        bob.edit_dataflow("legacy", description="keep the reference")
    assert not marker.exists()

    kinds = [e.kind for e in admin.events(kinds=["pipeline.registered", "pipeline.removed"])]
    assert kinds == ["pipeline.registered", "pipeline.removed"]


def test_admin_cannot_give_a_non_admins_dataflow_a_reference(db_home: Home) -> None:
    admin = LocalClient(db_home)
    admin.create_user("bob")
    bob = admin.as_user("bob")
    bob.create_folder("In")
    bob.create_folder("Out")
    admin.add_pipeline("counting", COUNTING_REF)
    bob.create_dataflow("counts", "In", "Out", "counting", trigger="manual")
    with pytest.raises(UnknownPipeline, match="runs as its owner 'bob'"):
        admin.edit_dataflow("counts", pipeline=COUNTING_REF)
    assert admin.edit_dataflow("counts", description="still by name")["pipeline"] == "counting"
