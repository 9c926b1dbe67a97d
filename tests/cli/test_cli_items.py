"""``datamill put/get/ls/versions/meta/find/rm``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from datamill.cli import output


def test_put_files_and_directory_tree(dm: Any, files: Path) -> None:
    r = dm.ok("put", "-p", str(files / "a.csv"), str(files / "run-7"), "Raw Data/2026", "--meta", "instrument=xrd-1")
    assert r.stdout == ""
    assert "uploaded 3 files" in r.stderr and "'Raw Data/2026'" in r.stderr
    assert [i["name"] for i in dm.json("ls", "Raw Data/2026")] == ["a.csv"]
    assert [f["path"] for f in dm.json("folder", "ls", "Raw Data/2026")] == ["Raw Data/2026/run-7"]
    assert [i["name"] for i in dm.json("ls", "Raw Data/2026/run-7")] == ["x.txt"]
    (y,) = dm.json("ls", "Raw Data/2026/run-7/sub")
    assert y["path"] == "Raw Data/2026/run-7/sub/y.txt"
    assert y["metadata"] == {"instrument": "xrd-1"}
    human = dm.ok("ls", "Raw Data/2026").stdout
    assert "run-7/" in human and "a.csv" in human and "8 bytes" in human and "text/csv" in human


def test_put_json_lists_new_versions(dm: Any, files: Path) -> None:
    (v,) = dm.json("put", "-p", str(files / "a.csv"), "A")
    assert (v["path"], v["version"], v["size"]) == ("A/a.csv", 1, 8)
    (v,) = dm.json("put", "-p", str(files / "a.csv"), "A")
    assert v["version"] == 2


def test_put_missing_source_uploads_nothing(dm: Any, files: Path) -> None:
    r = dm("put", "-p", str(files / "a.csv"), str(files / "nope.csv"), "A")
    assert r.exit_code == 1
    assert "nope.csv" in r.stderr and "nothing was uploaded" in r.stderr
    assert dm("ls", "A").exit_code == 1  # not even the folder was made


def test_put_large_file_with_progress(dm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 8192)  # 2 MB
    seen: list[int] = []
    real = output.transfer_progress

    def spy(total: int, description: str) -> Any:
        seen.append(total)
        return real(total, description)

    monkeypatch.setattr("datamill.cli.items.transfer_progress", spy)
    r = dm.ok("put", "-p", str(big), "Big")
    assert seen == [big.stat().st_size]
    assert "uploaded 1 file (2.1 MB)" in r.stderr
    out = tmp_path / "copy.bin"
    dm.ok("get", "Big/big.bin", "-o", str(out))
    assert out.read_bytes() == big.read_bytes()


def test_get_to_file_and_version(dm: Any, tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_text("one")
    dm.ok("put", "-p", str(src), "A")
    src.write_text("two!")
    dm.ok("put", "-p", str(src), "A")
    dest = tmp_path / "out.txt"
    r = dm.ok("get", "A/a.txt", "-o", str(dest))
    assert dest.read_text() == "two!"
    assert r.stdout == "" and "v2" in r.stderr
    dm.ok("get", "A/a.txt", "-o", str(dest), "--version", "1")
    assert dest.read_text() == "one"
    outdir = tmp_path / "dir"
    outdir.mkdir()
    dm.ok("get", "A/a.txt", "-o", str(outdir))
    assert (outdir / "a.txt").read_text() == "two!"


def test_get_default_destination_is_cwd(dm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dm.ok("put", "-p", str(_write(tmp_path / "a.txt", b"abc")), "A")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    dm.ok("get", "A/a.txt")
    assert (work / "a.txt").read_bytes() == b"abc"


def test_get_to_stdout(dm: Any, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4
    dm.ok("put", "-p", str(_write(tmp_path / "b.bin", data)), "A")
    r = dm.ok("get", "A/b.bin", "-o", "-")
    assert r.stdout_bytes == data
    assert r.stderr == ""


def test_get_unwritable_destination_is_one_line(dm: Any, tmp_path: Path) -> None:
    dm.ok("put", "-p", str(_write(tmp_path / "a.txt", b"abc")), "A")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = dm("get", "A/a.txt", "-o", str(blocker / "x" / "a.txt"))
    assert r.exit_code == 1
    assert r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_versions(dm: Any, tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    for text in ("1", "22", "333"):
        src.write_text(text)
        dm.ok("put", "-p", str(src), "A")
    found = dm.json("versions", "A/a.txt")
    assert [(v["version"], v["size"]) for v in found] == [(1, 1), (2, 2), (3, 3)]
    assert all(v["digest"].startswith("blake3:") and v["created_by"] == "admin" for v in found)
    human = dm.ok("versions", "A/a.txt").stdout
    assert "upload" in human and "blake3:" in human


def test_meta_show_set_unset(dm: Any, tmp_path: Path) -> None:
    dm.ok("put", "-p", str(_write(tmp_path / "a.csv", b"x")), "A", "--meta", "draft=true")
    assert dm.json("meta", "A/a.csv") == {"draft": True}
    r = dm.ok("meta", "A/a.csv", "n=3", 'tags=["a"]', "who=ana", "ratio=0.5", "--unset", "draft")
    assert r.stdout == "" and "updated metadata of 'A/a.csv'" in r.stderr
    assert dm.json("meta", "A/a.csv") == {"n": 3, "tags": ["a"], "who": "ana", "ratio": 0.5}
    assert dm.json("meta", "A/a.csv", "who=bo") == {"n": 3, "tags": ["a"], "who": "bo", "ratio": 0.5}
    assert [v["version"] for v in dm.json("versions", "A/a.csv")] == [1]  # no new version
    human = dm.ok("meta", "A/a.csv").stdout
    assert '["a"]' in human and "bo" in human


def test_bad_meta_is_a_clear_error(dm: Any, tmp_path: Path) -> None:
    r = dm("put", "-p", str(_write(tmp_path / "a.csv", b"x")), "A", "--meta", "foo")
    assert r.exit_code == 1
    assert "--meta 'foo' is not KEY=VALUE" in r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
    r = dm("meta", "A/a.csv", "foo")
    assert r.exit_code == 1 and "'foo' is not KEY=VALUE" in r.stderr


def test_find(dm: Any, files: Path) -> None:
    dm.ok("put", "-p", str(files / "a.csv"), "Raw", "--meta", "instrument=xrd-1")
    dm.ok("put", "-p", str(files / "run-7"), "Raw", "--meta", "instrument=xrd-2", "--meta", "n=3")
    found = dm.json("find", "Raw", "--name", "*.csv")
    assert [i["path"] for i in found] == ["Raw/a.csv"]
    found = dm.json("find", "Raw", "--meta", "n=3")
    assert sorted(i["path"] for i in found) == ["Raw/run-7/sub/y.txt", "Raw/run-7/x.txt"]
    assert dm.json("find", "Raw", "--meta", "n=3", "--no-recursive") == []
    assert dm.json("find", "Raw", "--meta", "instrument=xrd-9") == []
    assert "Raw/run-7/sub/y.txt" in dm.ok("find", "Raw").stdout
    r = dm.ok("find", "Raw", "--name", "*.xlsx")
    assert r.stdout == "" and "no items found" in r.stderr


def test_rm_item(dm: Any, files: Path) -> None:
    dm.ok("put", "-p", str(files / "a.csv"), "A")
    r = dm.ok("rm", "A/a.csv")
    assert "deleted 'A/a.csv'" in r.stderr
    assert dm.json("ls", "A") == []


def test_unknown_item_is_one_line_without_traceback(dm: Any) -> None:
    dm.ok("folder", "create", "A")
    for args in (["get", "A/nope.csv"], ["versions", "A/nope.csv"], ["meta", "A/nope.csv"], ["rm", "A/nope.csv"]):
        r = dm(*args)
        assert r.exit_code == 1, args
        assert r.stderr == "error: no item 'nope.csv' in 'A'\n", args
        assert r.stdout == ""


def test_item_path_without_folder(dm: Any) -> None:
    r = dm("get", "a.csv")
    assert r.exit_code == 1
    assert "names no folder" in r.stderr


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
