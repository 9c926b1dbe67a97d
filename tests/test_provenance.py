"""Provenance on a real scenario: two runs of the example pipeline, lineage both ways, access, exports.

The scenario (built once for the module): folders ``Raw`` and ``Out``; ``Raw/a.csv`` and
``Raw/b.csv``; run 1 of the example pipeline (parse -> stats -> report per item, ``columns`` not
published, aggregate ``total``); then ``a.csv`` gets a second version with one more row and run 2
reruns what changed (b's tasks are cached). Every test reads it; none changes it, except that the
access test adds a user.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import prov
import pytest
from prov.model import (
    ProvActivity,
    ProvAssociation,
    ProvDerivation,
    ProvDocument,
    ProvEntity,
    ProvGeneration,
    ProvUsage,
)
from rocrate.rocrate import ROCrate
from typer.testing import CliRunner

from datamill.api import ServerHandle
from datamill.cli import app as cli_app
from datamill.engine.engine import Engine
from datamill.errors import InvalidInput, NotFound
from datamill.home import Home
from datamill.provenance import (
    HIDDEN,
    Lineage,
    LineageGraph,
    Node,
    Rel,
    lineage_crate,
    to_json,
    to_prov,
    to_prov_json,
    to_prov_n,
    to_ro_crate,
    to_tree,
)
from datamill.store import users
from datamill.store.access import Level
from datamill.store.blobs import digest_bytes
from tests.helpers import open_home, serve

EXAMPLE_REF = f"{Path(__file__).resolve().parent / 'pipeline' / 'example_pipeline.py'}:pipeline"
CSV_A1 = b"x,y,label\n1,2,a\n3,4,b\n"
CSV_A2 = CSV_A1 + b"5,6,c\n"
CSV_B = b"x,y,label\n10,20,c\n"


@dataclass
class Scenario:
    home: Home
    run1: int
    run2: int
    lineage: Lineage

    def vid(self, path: str, version: int) -> int:
        return self.home.store.get_version(self.home.admin, path, version).version_id


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    home = open_home(tmp_path_factory.mktemp("home"))
    admin = home.admin
    engine = Engine(home)
    for folder in ("Raw", "Out"):
        home.store.create_folder(admin, folder)
    home.store.put(admin, "Raw", "a.csv", CSV_A1, "text/csv")
    home.store.put(admin, "Raw", "b.csv", CSV_B, "text/csv")

    def run() -> int:
        done = engine.run(
            admin, EXAMPLE_REF, engine.inputs_from_folder(admin, "Raw"), source="Raw", dest="Out", executor="inline"
        )
        assert done["status"] == "succeeded", done
        return int(done["id"])

    run1 = run()
    home.store.put(admin, "Raw", "a.csv", CSV_A2, "text/csv")
    run2 = run()
    try:
        yield Scenario(home, run1, run2, Lineage(home))
    finally:
        home.close()


def tasks(graph: LineageGraph) -> list[Node]:
    return [n for n in graph.of_type("task") if n.visible]


def generated_by(graph: LineageGraph, entity: str) -> Node:
    (edge,) = graph.edges_from(entity, Rel.WAS_GENERATED_BY)
    return graph.nodes[edge.target]


def used(graph: LineageGraph, activity: str) -> dict[str, str]:
    """{entity id: role} of what an activity used."""
    return {e.target: e.role or "" for e in graph.edges_from(activity, Rel.USED)}


# ---------------------------------------------------------------------------------------------- upstream


def test_upstream_of_a_report_reaches_its_input_through_report_stats_parse(scenario: Scenario) -> None:
    s = scenario
    g = s.lineage.upstream(s.home.admin, "Out/a.report.txt", version=1)
    assert g.root == f"dm:version/{s.vid('Out/a.report.txt', 1)}"
    assert g.direction == "upstream"
    assert sorted(g.versions()) == [
        ("Out/a.parse.json", 1), ("Out/a.report.txt", 1), ("Out/a.stats.json", 1), ("Raw/a.csv", 1),
    ]  # fmt: skip

    # The chain, edge by edge: report <- stats <- parse <- Raw/a.csv v1, all in run 1.
    raw = f"dm:version/{s.vid('Raw/a.csv', 1)}"
    report = generated_by(g, g.root)
    assert (report.attrs["step"], report.attrs["run"]) == ("report", s.run1)
    stats_json = f"dm:version/{s.vid('Out/a.stats.json', 1)}"
    assert used(g, report.id) == {raw: "item", stats_json: "stats"}
    stats = generated_by(g, stats_json)
    assert (stats.attrs["step"], stats.attrs["params"], stats.attrs["run"]) == ("stats", {"scale": 1.0}, s.run1)
    parse_json = f"dm:version/{s.vid('Out/a.parse.json', 1)}"
    assert used(g, stats.id) == {parse_json: "parse"}
    parse = generated_by(g, parse_json)
    assert parse.attrs["step"] == "parse" and used(g, parse.id) == {raw: "item"}
    assert g.edges_from(raw, Rel.WAS_GENERATED_BY) == []  # uploaded: the walk ends there
    assert {t.attrs["step"] for t in tasks(g)} == {"report", "stats", "parse"}

    # Derivations, runs and agents.
    derived = {e.target for e in g.edges_from(g.root, Rel.WAS_DERIVED_FROM)}
    assert derived == {raw, stats_json}
    for t in tasks(g):
        assert g.edges_from(t.id, Rel.WAS_STARTED_BY)[0].target == f"dm:run/{s.run1}"
        assert [e.target for e in g.edges_from(t.id, Rel.WAS_ASSOCIATED_WITH)] == ["dm:user/admin"]
    run = g.nodes[f"dm:run/{s.run1}"]
    assert run.attrs["pipeline"] == "example" and run.attrs["pipeline_ref"] == EXAMPLE_REF
    assert g.edges_from(raw, Rel.WAS_ATTRIBUTED_TO)[0].target == "dm:user/admin"
    node = g.nodes[raw]
    assert node.attrs["digest"] == digest_bytes(CSV_A1) and node.attrs["folder"] == "Raw"

    text = to_tree(g)
    lines = text.splitlines()
    assert lines[0].startswith("Out/a.report.txt v1")
    order = [next(i for i, line in enumerate(lines) if f"⚙ {step} " in line) for step in ("report", "stats", "parse")]
    assert order == sorted(order)
    assert "Raw/a.csv v1" in lines[-1] and "scale=1.0" in text


def test_depth_limits_how_many_tasks_are_followed(scenario: Scenario) -> None:
    s = scenario
    g = s.lineage.upstream(s.home.admin, "Out/a.report.txt", version=1, depth=1)
    assert [t.attrs["step"] for t in tasks(g)] == ["report"]
    assert sorted(g.versions()) == [("Out/a.report.txt", 1), ("Out/a.stats.json", 1), ("Raw/a.csv", 1)]


def test_upstream_of_the_aggregate_reaches_every_input(scenario: Scenario) -> None:
    s = scenario
    g1 = s.lineage.upstream(s.home.admin, "Out/total.json", version=1)
    raw1 = {p: v for p, v in g1.versions() if p.startswith("Raw/")}
    assert raw1 == {"Raw/a.csv": 1, "Raw/b.csv": 1}
    total = generated_by(g1, g1.root)
    assert total.attrs["step"] == "total" and total.attrs["item"] is None
    assert sorted(g1.nodes[e].attrs["path"] for e in used(g1, total.id)) == ["Out/a.stats.json", "Out/b.stats.json"]

    # The second run's total: a.csv v2 (changed) and b.csv v1 (its tasks were cached).
    g2 = s.lineage.upstream(s.home.admin, "Out/total.json")
    assert g2.nodes[g2.root].attrs["version"] == 2
    raw2 = sorted((p, v) for p, v in g2.versions() if p.startswith("Raw/"))
    assert raw2 == [("Raw/a.csv", 2), ("Raw/b.csv", 1)]
    assert generated_by(g2, g2.root).attrs["run"] == s.run2


def test_after_an_input_change_new_outputs_derive_from_the_new_version(scenario: Scenario) -> None:
    s = scenario
    g = s.lineage.upstream(s.home.admin, "Out/a.report.txt")  # current: version 2, made by run 2
    assert g.nodes[g.root].attrs["version"] == 2
    assert ("Raw/a.csv", 2) in g.versions() and ("Raw/a.csv", 1) not in g.versions()
    assert {t.attrs["run"] for t in tasks(g)} == {s.run2}
    assert {t.attrs["status"] for t in tasks(g)} == {"succeeded"}

    # b's report was not made again: its only version is still run 1's, derived from b.csv v1.
    gb = s.lineage.upstream(s.home.admin, "Out/b.report.txt")
    assert gb.nodes[gb.root].attrs["version"] == 1
    assert ("Raw/b.csv", 1) in gb.versions()
    assert {t.attrs["run"] for t in tasks(gb)} == {s.run1}


# ---------------------------------------------------------------------------------------------- downstream


def test_downstream_of_an_input_has_its_outputs_and_not_the_others(scenario: Scenario) -> None:
    s = scenario
    g = s.lineage.downstream(s.home.admin, "Raw/a.csv", version=1)
    assert g.direction == "downstream"
    assert sorted(g.versions()) == [
        ("Out/a.parse.json", 1), ("Out/a.report.txt", 1), ("Out/a.stats.json", 1), ("Out/total.json", 1),
        ("Raw/a.csv", 1),
    ]  # fmt: skip
    assert not [p for p, _ in g.versions() if p.startswith("Out/b.")]
    # Outputs that were not published are entities too (the 'columns' step writes one per column).
    assert sorted(n.attrs["name"] for n in g.of_type("output")) == ["label.txt", "x.txt", "y.txt"]
    assert {t.attrs["run"] for t in tasks(g)} == {s.run1}
    report = g.find_version("Out/a.report.txt", 1)
    assert report is not None
    assert generated_by(g, report.id).attrs["step"] == "report"
    assert (report.id, g.root) in {(e.source, e.target) for e in g.edges if e.kind is Rel.WAS_DERIVED_FROM}
    tree = to_tree(g)
    assert tree.splitlines()[0].startswith("Raw/a.csv v1") and "Out/total.json v1" in tree

    g2 = s.lineage.downstream(s.home.admin, "Raw/a.csv", version=2)
    assert sorted(p for p, v in g2.versions() if p.startswith("Out/")) == [
        "Out/a.parse.json", "Out/a.report.txt", "Out/a.stats.json", "Out/total.json",
    ]  # fmt: skip
    assert {v for p, v in g2.versions() if p.startswith("Out/")} == {2}


def test_downstream_through_cached_tasks(scenario: Scenario) -> None:
    s = scenario
    g = s.lineage.downstream(s.home.admin, "Raw/b.csv")
    # Both totals used b's stats; b's report was reused by run 2's cached task, not made again.
    assert ("Out/total.json", 1) in g.versions() and ("Out/total.json", 2) in g.versions()
    assert not [p for p, _ in g.versions() if p.startswith("Out/a.")]
    report = g.find_version("Out/b.report.txt", 1)
    assert report is not None
    assert generated_by(g, report.id).attrs["run"] == s.run1
    reusers = [g.nodes[e.target] for e in g.edges_from(report.id, Rel.WAS_INFLUENCED_BY)]
    assert [(t.attrs["run"], t.attrs["status"]) for t in reusers] == [(s.run2, "cached")]
    assert "(reused)" in to_tree(g)


# ---------------------------------------------------------------------------------------------- access


def test_a_reader_of_the_outputs_only_sees_the_inputs_as_not_visible(scenario: Scenario) -> None:
    s = scenario
    with s.home.db.write() as conn:
        users.create_user(conn, "viewer")
    s.home.store.share(s.home.admin, "Out", "viewer", Level.READ)
    viewer = s.home.actor("viewer")

    g = s.lineage.upstream(viewer, "Out/a.report.txt", version=1)
    raw = g.nodes[f"dm:version/{s.vid('Raw/a.csv', 1)}"]
    assert (raw.visible, raw.label, raw.attrs) == (False, HIDDEN, {})
    assert sorted(g.versions()) == [("Out/a.parse.json", 1), ("Out/a.report.txt", 1), ("Out/a.stats.json", 1)]
    assert {t.attrs["step"] for t in tasks(g)} == {"report", "stats", "parse"}
    dumped = json.dumps(to_json(g)) + to_prov_n(g) + to_tree(g)
    assert "a.csv" not in dumped and digest_bytes(CSV_A1) not in dumped
    assert HIDDEN in to_tree(g)

    with pytest.raises(NotFound):
        s.lineage.upstream(viewer, "Raw/a.csv")
    with pytest.raises(NotFound):
        s.lineage.downstream(viewer, "Raw/a.csv")
    # Downstream of an output the viewer can read works as usual.
    assert ("Out/a.report.txt", 1) in s.lineage.downstream(viewer, "Out/a.stats.json", version=1).versions()


# ---------------------------------------------------------------------------------------------- PROV


def records(doc: ProvDocument, cls: type) -> list[Any]:
    return [r for r in doc.get_records() if isinstance(r, cls)]


def test_prov_json_parses_back_with_the_expected_records(scenario: Scenario) -> None:
    s = scenario
    g = s.lineage.upstream(s.home.admin, "Out/a.report.txt", version=1)
    doc = ProvDocument.deserialize(content=to_prov_json(g), format="json")
    assert doc == to_prov(g)

    entities = {str(r.identifier): r for r in records(doc, ProvEntity)}
    report_id = f"dm:version/{s.vid('Out/a.report.txt', 1)}"
    attrs = {str(k): v for k, v in entities[report_id].attributes}
    assert (attrs["dm:name"], attrs["dm:folder"], attrs["dm:version"]) == ("a.report.txt", "Out", 1)
    assert attrs["dm:digest"] == s.home.store.get_version(s.home.admin, "Out/a.report.txt", 1).digest

    activities = {str(r.identifier): r for r in records(doc, ProvActivity)}
    steps = {}
    for name, act in activities.items():
        if name.startswith("dm:task/"):
            a = {str(k): v for k, v in act.attributes}
            steps[a["dm:step"]] = a
            assert act.get_startTime() is not None and act.get_endTime() is not None
            assert a["dm:step_code"].startswith("py:")
    assert set(steps) == {"report", "stats", "parse"}
    assert json.loads(steps["stats"]["dm:params"]) == {"scale": 1.0}
    assert str(steps["report"]["dm:run"]) == f"dm:run/{s.run1}"
    assert f"dm:run/{s.run1}" in activities

    def pairs(cls: type) -> set[tuple[str, str]]:
        return {tuple(str(v) for _, v in list(r.formal_attributes)[:2]) for r in records(doc, cls)}  # type: ignore[misc]

    raw = f"dm:version/{s.vid('Raw/a.csv', 1)}"
    report_task = generated_by(g, report_id).id
    assert (report_id, report_task) in pairs(ProvGeneration)
    assert (report_task, raw) in pairs(ProvUsage)
    assert (report_id, raw) in pairs(ProvDerivation)
    assert (report_task, "dm:user/admin") in pairs(ProvAssociation)


def test_prov_n_parses_back_and_names_every_statement(scenario: Scenario) -> None:
    s = scenario
    g = s.lineage.downstream(s.home.admin, "Raw/b.csv", version=1)
    text = to_prov_n(g)
    assert text.startswith("document") and text.rstrip().endswith("endDocument")
    assert re.search(r"^\s*prefix dm <urn:datamill:>", text, re.M)
    doc = prov.read(text, format="provn")
    assert doc == to_prov(g)

    raw = f"dm:version/{s.vid('Raw/b.csv', 1)}"
    assert re.search(rf"^\s*entity\({re.escape(raw)}, \[.*dm:name=\"b\.csv\"", text, re.M)
    for statement in ("activity", "agent", "used", "wasGeneratedBy", "wasDerivedFrom", "wasAssociatedWith",
                      "wasAttributedTo", "wasStartedBy", "wasInfluencedBy"):  # fmt: skip
        assert re.search(rf"^\s*{statement}\(", text, re.M), statement
    assert re.search(rf"^\s*used\(dm:task/\d+, {re.escape(raw)}, -, \[prov:role=\"item\"\]\)", text, re.M)
    # Every relation of the graph is a statement of the document.
    assert len(text.splitlines()) >= len(g.nodes) + len(g.edges)


# ---------------------------------------------------------------------------------------------- RO-Crate


def crate_entities(path: Path) -> dict[str, dict[str, Any]]:
    crate = ROCrate(path)
    return {e.id: e.as_jsonld() for e in crate.get_entities()}


def ids(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [v["@id"] for v in items]


def test_ro_crate_of_a_run_has_the_create_action_and_the_files(scenario: Scenario, tmp_path: Path) -> None:
    s = scenario
    dest = to_ro_crate(s.home, s.home.admin, s.run1, tmp_path / "crate")
    assert (dest / "ro-crate-metadata.json").is_file()
    crate = ROCrate(dest)
    ents = crate_entities(dest)

    action = ents[f"#run-{s.run1}"]
    assert action["@type"] == "CreateAction"
    assert ids(action["instrument"]) == [crate.mainEntity.id]
    workflow = ents[crate.mainEntity.id]
    assert "ComputationalWorkflow" in workflow["@type"] and workflow["identifier"] == EXAMPLE_REF
    assert ids(action["agent"]) == ["#user-admin"] and ents["#user-admin"]["@type"] == "Person"
    inputs = ids(action["object"])
    assert inputs == ["inputs/Raw/a.csv", "inputs/Raw/b.csv"]
    results = ids(action["result"])
    names = (
        "a.parse.json",
        "a.report.txt",
        "a.stats.json",
        "b.parse.json",
        "b.report.txt",
        "b.stats.json",
        "total.json",
    )
    assert sorted(results) == [f"outputs/Out/{n}" for n in names]

    # Files are in the crate, and their digests match the store's versions.
    for rel, (path, version) in {
        "inputs/Raw/a.csv": ("Raw/a.csv", 1),
        "outputs/Out/a.report.txt": ("Out/a.report.txt", 1),
        "outputs/Out/total.json": ("Out/total.json", 1),
    }.items():
        info = s.home.store.get_version(s.home.admin, path, version)
        assert ents[rel]["identifier"] == info.digest
        assert ents[rel]["contentSize"] == str(info.size)
        assert digest_bytes((dest / rel).read_bytes()) == info.digest
    assert (dest / "inputs/Raw/a.csv").read_bytes() == CSV_A1
    assert (dest / "pipeline/example_pipeline.py").is_file()

    # Steps and tasks (Provenance Run Crate): a HowToStep per step, a CreateAction + ControlAction per task.
    assert {ents[i]["name"] for i in ids(workflow["step"])} == {"parse", "stats", "columns", "report", "total"}
    controls = [e for e in ents.values() if e.get("@type") == "ControlAction"]
    assert len(controls) == 9
    for c in controls:
        task = ents[ids(c["object"])[0]]
        step = ents[ids(c["instrument"])[0]]
        assert task["@type"] == "CreateAction" and step["@type"] == "HowToStep"
        assert ents[ids(task["instrument"])[0]]["name"] == step["name"]
    organize = next(e for e in ents.values() if e.get("@type") == "OrganizeAction")
    assert ids(organize["result"]) == [f"#run-{s.run1}"]
    conforms = ids(ents["./"]["conformsTo"])
    assert (
        "https://w3id.org/ro/wfrun/provenance/0.5" in conforms and "https://w3id.org/ro/wfrun/process/0.5" in conforms
    )


def test_ro_crate_zip_and_lineage_crate(scenario: Scenario, tmp_path: Path) -> None:
    s = scenario
    out = lineage_crate(s.home, s.home.admin, "Out/a.report.txt", tmp_path / "report.zip", version=2)
    assert zipfile.is_zipfile(out)
    with zipfile.ZipFile(out) as zf:
        zf.extractall(tmp_path / "unzipped")
    ents = crate_entities(tmp_path / "unzipped")
    assert f"#run-{s.run2}" in ents
    assert ents["inputs/Raw/a.csv"]["identifier"] == digest_bytes(CSV_A2)
    assert (tmp_path / "unzipped/inputs/Raw/a.csv").read_bytes() == CSV_A2
    with pytest.raises(InvalidInput, match="not made by a run"):
        lineage_crate(s.home, s.home.admin, "Raw/a.csv", tmp_path / "nope")
    with pytest.raises(InvalidInput, match="not an empty directory"):
        to_ro_crate(s.home, s.home.admin, s.run1, tmp_path / "unzipped")


# ---------------------------------------------------------------------------------------------- CLI and API


@pytest.fixture
def cli(scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in [n for n in os.environ if n.startswith("DATAMILL_")]:
        monkeypatch.delenv(name)
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        result = runner.invoke(cli_app, ["--home", str(scenario.home.path), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        return result

    return invoke


def test_cli_lineage_formats(scenario: Scenario, cli: Any, tmp_path: Path) -> None:
    tree = cli("lineage", "Out/a.report.txt", "--version", "1").stdout
    assert tree.startswith("Out/a.report.txt v1") and "⚙ report" in tree and "Raw/a.csv v1" in tree

    data = json.loads(cli("lineage", "Out/a.report.txt", "--format", "json").stdout)
    assert data["direction"] == "upstream"
    paths = {(n.get("path"), n.get("version")) for n in data["nodes"] if n["type"] == "version"}
    assert ("Raw/a.csv", 2) in paths and ("Out/a.report.txt", 2) in paths
    assert {e["kind"] for e in data["edges"]} >= {"used", "wasGeneratedBy", "wasDerivedFrom", "wasAssociatedWith"}

    doc = ProvDocument.deserialize(
        content=cli("lineage", "Out/total.json", "--format", "prov-json").stdout, format="json"
    )
    assert len(records(doc, ProvActivity)) > 0

    down = cli("lineage", "Raw/b.csv", "--down").stdout
    assert down.startswith("Raw/b.csv v1") and "Out/total.json v2" in down and "Out/a." not in down

    cli("lineage", "Out/total.json", "--format", "prov-n", "-o", str(tmp_path / "total.provn"))
    assert prov.read(str(tmp_path / "total.provn"), format="provn") is not None
    cli("lineage", "Out/total.json", "--format", "ro-crate", "-o", str(tmp_path / "crate"))
    assert f"#run-{scenario.run2}" in crate_entities(tmp_path / "crate")


def test_cli_lineage_errors(scenario: Scenario) -> None:
    runner = CliRunner()
    home = str(scenario.home.path)
    result = runner.invoke(cli_app, ["--home", home, "lineage", "Out/a.report.txt", "--format", "xml"])
    assert result.exit_code == 1 and "unknown format" in result.stderr
    result = runner.invoke(cli_app, ["--home", home, "lineage", "Out/nothing.txt"])
    assert result.exit_code == 1 and "no item" in result.stderr


@pytest.fixture(scope="module")
def server(scenario: Scenario) -> Iterator[ServerHandle]:
    with serve(scenario.home) as handle:
        yield handle


def test_api_lineage_and_run_crate(scenario: Scenario, server: ServerHandle) -> None:
    s = scenario
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {s.home.admin_token()}"}) as client:
        check_api(s, client)


def check_api(s: Scenario, client: httpx.Client) -> None:
    r = client.get("/api/v1/lineage/Out/a.report.txt", params={"version": 1})
    assert r.status_code == 200
    assert ("Raw/a.csv", 1) in {(n.get("path"), n.get("version")) for n in r.json()["nodes"]}
    r = client.get("/api/v1/lineage/Raw/a.csv", params={"version": 1, "down": "true", "format": "prov-n"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/provenance-notation")
    assert prov.read(r.text, format="provn") is not None and "wasGeneratedBy(" in r.text
    r = client.get("/api/v1/lineage/Out/a.report.txt", params={"format": "prov-json"})
    assert ProvDocument.deserialize(content=r.text, format="json") is not None
    r = client.get("/api/v1/lineage/Out/a.report.txt", params={"format": "nope"})
    assert r.status_code in (400, 422)

    r = client.get(f"/api/v1/runs/{s.run1}/ro-crate")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        names = set(zf.namelist())
        meta = json.loads(zf.read("ro-crate-metadata.json"))
    assert {"ro-crate-metadata.json", "inputs/Raw/a.csv", "outputs/Out/total.json"} <= names
    assert any(e["@id"] == f"#run-{s.run1}" for e in meta["@graph"])
    assert client.get("/api/v1/runs/999/ro-crate").status_code == 404
    assert client.get("/api/v1/lineage/Nope/x.txt").status_code == 404


def test_cli_lineage_against_a_server(
    scenario: Scenario, server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("DATAMILL_")]:
        monkeypatch.delenv(name)
    runner = CliRunner()
    base = ["--url", server.url, "--token", scenario.home.admin_token() or ""]
    result = runner.invoke(cli_app, [*base, "lineage", "Out/a.report.txt", "--version", "1"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Out/a.report.txt v1") and "⚙ stats" in result.stdout
    result = runner.invoke(cli_app, [*base, "lineage", "Raw/a.csv", "--version", "1", "--down", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["direction"] == "downstream"
    crate = tmp_path / "remote-crate"
    result = runner.invoke(cli_app, [*base, "lineage", "Out/total.json", "--format", "ro-crate", "-o", str(crate)])
    assert result.exit_code == 0, result.stderr
    assert f"#run-{scenario.run2}" in crate_entities(crate)
    result = runner.invoke(cli_app, [*base, "lineage", "Out/none.json"])
    assert result.exit_code == 1 and "No such object" in result.stderr


# ---------------------------------------------------------------------------------------------- items steps

BUNDLE_PIPELINE = """
from datamill.pipeline import InputFile, Pipeline, step


@step
def size(item: InputFile) -> dict:
    return {"bytes": len(item.read_bytes())}


@step(aggregate=True)
def bundle(items: list[InputFile]) -> dict:
    return {"names": [i.name for i in items]}


pipeline = Pipeline("bundle", steps=[size, bundle])
"""


def test_an_aggregate_step_taking_items_derives_from_every_input(tmp_path: Path) -> None:
    """A step taking ``items`` reads every input of its run, though no task input row says so."""
    (tmp_path / "bundle_pipeline.py").write_text(BUNDLE_PIPELINE)
    ref = f"{tmp_path / 'bundle_pipeline.py'}:pipeline"
    home = open_home(tmp_path / "home")
    try:
        admin, engine = home.admin, Engine(home)
        home.store.create_folder(admin, "In")
        home.store.create_folder(admin, "Out")
        for name in ("one.txt", "two.txt"):
            home.store.put(admin, "In", name, name.encode(), "text/plain")
        inputs = engine.inputs_from_folder(admin, "In")
        done = engine.run(admin, ref, inputs, source="In", dest="Out", executor="inline")
        assert done["status"] == "succeeded"
        lin = Lineage(home)

        up = lin.upstream(admin, "Out/bundle.json")
        bundle = generated_by(up, up.root)
        assert bundle.attrs["step"] == "bundle"
        assert sorted((up.nodes[e].attrs["path"], role) for e, role in used(up, bundle.id).items()) == [
            ("In/one.txt", "items"), ("In/two.txt", "items"),
        ]  # fmt: skip

        down = lin.downstream(admin, "In/two.txt")
        assert sorted(p for p, _ in down.versions()) == ["In/two.txt", "Out/bundle.json", "Out/two.size.json"]

        # Once the pipeline no longer loads, an aggregate task with no recorded input is taken to read the items.
        (tmp_path / "bundle_pipeline.py").unlink()
        up = Lineage(home).upstream(admin, "Out/bundle.json")
        assert sorted(p for p, _ in up.versions()) == ["In/one.txt", "In/two.txt", "Out/bundle.json"]
    finally:
        home.close()
