"""An input item given to a step with string paths (the engine's values path) behaves as with Paths."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from datamill.pipeline.inputs import InputFile, InputRef
from datamill.pipeline.runner import ItemInput

REF = InputRef(None, None, "raw", "a.csv", 1, "blake3:00", 6, "text/csv")


def test_string_paths_read_from_the_source_and_link_only_when_the_path_is_asked(tmp_path: Path) -> None:
    source = tmp_path / "blob"
    source.write_bytes(b"a,b\n1\n")
    link = f"{tmp_path}/task/in/a.csv"
    f = ItemInput(REF, link, str(source)).file()
    assert f.read_text() == "a,b\n1\n"
    assert not os.path.lexists(link)  # reading needs no link
    assert f.path == Path(link) and type(f.path) is type(Path())
    assert os.path.islink(link) and Path(link).read_bytes() == b"a,b\n1\n"


def test_string_and_path_forms_are_equal_and_survive_pickling(tmp_path: Path) -> None:
    as_str = InputFile(REF, f"{tmp_path}/a.csv", str(tmp_path / "blob"))
    as_path = InputFile(REF, tmp_path / "a.csv", tmp_path / "blob")
    assert as_str == as_path and hash(as_str) == hash(as_path)
    back = pickle.loads(pickle.dumps(as_str))
    assert back == as_path and back.name == "a.csv"


def test_an_item_without_a_local_copy_says_so() -> None:
    f = ItemInput(REF, None, "/somewhere/blob").file()
    assert not f.fetched
    with pytest.raises(ValueError, match="no local copy"):
        _ = f.path
