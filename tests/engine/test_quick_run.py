"""``Pipeline.run(...)`` leaves nothing in ``$TMPDIR``: no throw-away home, no output folder."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from datamill import Context, InputFile, Pipeline, step
from datamill.errors import StepFailed


@step
def words(item: InputFile) -> int:
    return len(item.read_text().split())


@step
def shout(item: InputFile) -> str:
    return item.read_text().upper()


@step
def copy(item: InputFile, ctx: Context) -> Path:
    out = ctx.scratch / "copy.txt"
    out.write_bytes(item.read_bytes())
    return out


@step
def boom(item: InputFile) -> int:
    raise RuntimeError(f"cannot count {item.name}")


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh, empty TMPDIR for this test (tempfile caches its choice, so reset that too)."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", None)
    yield d


def test_runs_leave_nothing_in_tmpdir(private_tmp: Path) -> None:
    counting = Pipeline("count", [words, shout])
    for i in range(3):
        result = counting.run([("a.txt", b"one two" + b" x" * i), ("b.txt", b"three")])
        assert result.outputs["words[inputs/a.txt]"] == 2 + i
        assert result.outputs["shout[inputs/b.txt]"] == "THREE"
        assert result.files_dir is None
    with pytest.raises(StepFailed, match="cannot count"):
        Pipeline("failing", [boom]).run([("a.txt", b"x")])
    failed = Pipeline("failing", [boom]).run([("a.txt", b"x")], raise_on_failure=False)
    assert failed.status == "failed"
    assert sorted(private_tmp.iterdir()) == []


def test_path_outputs_live_until_the_result_is_closed(private_tmp: Path) -> None:
    with Pipeline("copying", [copy]).run([("a.txt", b"kept")]) as result:
        path = result["copy[inputs/a.txt]"]
        assert isinstance(path, Path)
        assert path.read_bytes() == b"kept"
        assert result.files_dir is not None and path.is_relative_to(result.files_dir)
        assert [p.name for p in private_tmp.iterdir()] == [result.files_dir.name]
    assert not path.exists()
    assert sorted(private_tmp.iterdir()) == []

    result = Pipeline("copying", [copy]).run([("b.txt", b"gone with the result")])
    path = result["copy[inputs/b.txt]"]
    assert path.exists()
    del result  # garbage collection removes the files too
    assert not path.exists()
    assert sorted(private_tmp.iterdir()) == []


def test_a_given_home_is_kept(private_tmp: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    Pipeline("count", [words]).run([("a.txt", b"one")], home=home)
    assert (home / "admin.token").exists()
    assert sorted(private_tmp.iterdir()) == []
