"""``KEY=VALUE`` parsing and output helpers."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from datamill.cli import output
from datamill.cli.params import parse_pair, parse_pairs, parse_value
from datamill.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("0.5", 0.5),
        ("true", True),
        ("null", None),
        ('["a"]', ["a"]),
        ('{"k": 1}', {"k": 1}),
        ('"quoted"', "quoted"),
        ("xrd-1", "xrd-1"),
        ("", ""),
        ("NaN", "NaN"),
        ("Infinity", "Infinity"),
        ("a=b", "a=b"),
    ],
)
def test_parse_value(text: str, value: Any) -> None:
    assert parse_value(text) == value


def test_parse_pairs() -> None:
    assert parse_pairs(["n=3", "url=http://x/?a=b", "n=4"]) == {"n": 4, "url": "http://x/?a=b"}
    assert parse_pairs(None) == {}
    assert parse_pair(" k =v") == ("k", "v")


@pytest.mark.parametrize("bad", ["foo", "=3", ""])
def test_parse_pair_needs_a_key_and_equals(bad: str) -> None:
    with pytest.raises(InvalidInput, match="is not KEY=VALUE"):
        parse_pair(bad, "--meta")


def test_human_size() -> None:
    assert output.human_size(0) == "0 bytes"
    assert output.human_size(2_100_000) == "2.1 MB"
    assert output.human_size(None) == "-"


def test_transfer_progress_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(output, "stderr", lambda: Console(file=buf, force_terminal=True, width=100))
    with output.transfer_progress(3_000_000, "uploading") as progress:
        progress(1_000_000)
        progress(2_000_000)
    assert "uploading" in buf.getvalue()
    buf.seek(0)
    buf.truncate()
    with output.transfer_progress(10, "small") as progress:
        progress(10)
    assert buf.getvalue() == ""


def test_tables_and_messages_show_names_as_they_are(capsys: pytest.CaptureFixture[str]) -> None:
    """A name that looks like Rich markup or an emoji code is printed verbatim, not styled or replaced."""
    output.print_table(["name", "updated"], [("[red]a.txt", "2026-01-02 10:54:21"), (":smile:.csv", "-")])
    output.say("uploaded [bold]:thumbs_up:.txt")
    out, err = capsys.readouterr()
    assert "[red]a.txt" in out and ":smile:.csv" in out and "10:54:21" in out
    assert "uploaded [bold]:thumbs_up:.txt" in err
