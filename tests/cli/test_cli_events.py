"""``datamill events``: listing, filters, JSON Lines and --follow."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from datamill.client import connect


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_events_json_lines(dm: Any, files: Path) -> None:
    dm.ok("put", "-p", str(files / "a.csv"), "A")
    r = dm.ok("events", "--json")
    evs = _lines(r.stdout)
    kinds = [e["kind"] for e in evs]
    assert "folder.created" in kinds and "item.created" in kinds
    seqs = [e["seq"] for e in evs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    created = next(e for e in evs if e["kind"] == "item.created")
    assert created["data"]["name"] == "a.csv"
    after = _lines(dm.ok("events", "--json", "--since", str(created["seq"] - 1)).stdout)
    assert after[0]["seq"] == created["seq"]


def test_events_kind_filter_and_human_lines(dm: Any, files: Path) -> None:
    dm.ok("put", "-p", str(files / "a.csv"), "A")
    dm.ok("meta", "A/a.csv", "n=1")
    evs = _lines(dm.ok("events", "--json", "--kind", "item.").stdout)
    assert evs and all(e["kind"].startswith("item.") for e in evs)
    evs = _lines(dm.ok("events", "--json", "-k", "metadata.changed", "-k", "folder.created").stdout)
    assert {e["kind"] for e in evs} == {"metadata.changed", "folder.created"}
    human = dm.ok("events", "--kind", "item.created").stdout.splitlines()
    assert len(human) == 1 and "item.created" in human[0] and "name=a.csv" in human[0]


def test_events_count(dm: Any, files: Path) -> None:
    dm.ok("put", "-p", str(files / "run-7"), "A")
    assert len(_lines(dm.ok("events", "--json", "-n", "2").stdout)) == 2


def test_follow_prints_new_events(dm: Any, files: Path) -> None:
    dm.ok("folder", "create", "A")
    (last,) = _lines(dm.ok("events", "--json").stdout)[-1:]

    def writer() -> None:
        with connect(home=dm.home) as client:
            client.put("A", "late.txt", b"late")

    t = threading.Timer(0.2, writer)
    t.start()
    try:
        r = dm.ok("events", "--follow", "--json", "--since", str(last["seq"]), "--kind", "item.", "--count", "1")
    finally:
        t.join()
    (ev,) = _lines(r.stdout)
    assert ev["kind"] == "item.created" and ev["data"]["name"] == "late.txt"


def test_follow_ends_quietly_on_ctrl_c(dm: Any, monkeypatch: Any) -> None:
    dm.ok("folder", "create", "A")

    def interrupted(self: Any, *args: Any, **kw: Any) -> Any:
        yield from self.events(0, 1)
        raise KeyboardInterrupt

    monkeypatch.setattr("datamill.client.base.Client.follow", interrupted)
    r = dm("events", "--follow")
    assert r.exit_code == 0
    assert "user.created" in r.stdout
