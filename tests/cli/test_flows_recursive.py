"""``datamill flow create|edit --recursive`` and the row ``flow show`` gives it, on a local home."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REF = f"{Path(__file__).resolve().parents[1] / 'client' / 'counting_pipeline.py'}:pipeline"


def test_recursive_flag_is_saved_shown_and_edited(dm: Any) -> None:
    dm.ok("folder", "create", "Raw/run-1")
    dm.ok("folder", "create", "Out")
    dm.ok("flow", "create", "tree", "--source", "Raw", "--to", "Out", "--pipeline", REF, "--recursive")
    assert dm.json("flow", "show", "tree")["recursive"] is True
    assert "recursive    yes" in dm.ok("flow", "show", "tree").stdout
    assert "version 2" in dm.ok("flow", "edit", "tree", "--no-recursive").stderr
    assert dm.json("flow", "show", "tree")["recursive"] is False
    assert "recursive    no" in dm.ok("flow", "show", "tree").stdout
    refused = dm("flow", "create", "d", "--directory", "/srv", "--to", "Out", "--recursive")
    assert refused.exit_code == 1 and "--recursive applies to workflow dataflows" in refused.stderr
