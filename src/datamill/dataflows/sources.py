"""The folders a ``new-items`` dataflow watches: its source, and with ``recursive`` every folder below it.

A stream dataflow keeps the producer's subdirectories as subfolders of its destination; a
recursive dataflow on that folder sees the items landed anywhere below it (the DMS's chain:
instrument → stream → derived data). A subfolder the dataflow's owner may not read is not seen,
as if it were not there. Where each output lands (the destination's subfolder mirroring the
item's) is the engine's rule, :func:`datamill.engine.planner.mirrored_name`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from sqlalchemy import Connection

from datamill.store import lookups
from datamill.store.access import Actor
from datamill.store.records import ItemInfo
from datamill.store.visibility import Visibility


def is_recursive(config: Mapping[str, Any] | None) -> bool:
    """Whether a dataflow's configuration watches the subfolders of its source too."""
    return bool((config or {}).get("recursive"))


def watched_folders(conn: Connection, source: str, source_id: int, recursive: bool, actor: Actor) -> dict[int, str]:
    """``{folder id: path}`` of the folders whose items fire a dataflow on ``source`` (id ``source_id``).

    Without ``recursive`` that is the source alone; with it, the source and every folder below
    it that ``actor`` (the dataflow's owner, or whoever asks for a run) may read.
    """
    out = {source_id: source}
    if not recursive:
        return out
    below = lookups.folders_below(conn, source)
    vis = Visibility(conn, actor)
    vis.load(below.values())
    out.update({fid: path for fid, path in below.items() if vis.readable(path)})
    return out


def current_items(conn: Connection, folders: Mapping[int, str], only: Collection[int] | None) -> list[ItemInfo]:
    """The items of ``folders`` with their current versions (only the ids in ``only`` when given).

    With ``only``, just the folders that hold one of those items are listed: a run for one new
    file in a deep tree does not list every folder of it.
    """
    wanted = dict(folders)
    if only is not None and len(folders) > 1:
        held = {folder for folder, _name in lookups.item_places(conn, only).values()}
        wanted = {fid: path for fid, path in folders.items() if path in held}
    out: list[ItemInfo] = []
    for fid, path in sorted(wanted.items(), key=lambda kv: kv[1]):
        out += lookups.items_with_current_versions(conn, fid, path, only)
    return out
