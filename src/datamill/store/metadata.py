"""Metadata on folders and items: what it may hold, how it is read back, how filters match it.

Metadata is a JSON object with string keys. Setting keys on a folder or item is
:func:`datamill.store.folders.set_folder_metadata` / :func:`datamill.store.items.set_item_metadata`;
uploads merge their metadata into the item's (:mod:`datamill.store.versions`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import orjson

from datamill.records import check_metadata

__all__ = ["MISSING", "changed", "check_metadata", "decode", "matches"]

#: Digits enough for an integer orjson would not read exactly.
_LONG_NUMBER = re.compile(r"\d{19}")
#: A key the filtered metadata does not have (``None`` is a value).
MISSING = object()


def decode(raw: Any) -> dict[str, Any]:
    """Metadata as read from a column: raw JSON text (SQLite, see ``items.current_items``) or a dict."""
    if raw is None or raw == "{}":
        return {}
    if isinstance(raw, str):
        # orjson is a few times faster (a 100,000-item listing decodes 100,000 of these), but reads an
        # integer beyond 64 bits as a float: text with a run of 19+ digits goes to the json module.
        if not _LONG_NUMBER.search(raw):
            try:
                fast: dict[str, Any] = orjson.loads(raw)
                return fast
            except orjson.JSONDecodeError:  # e.g. a lone surrogate escape, which the json module reads
                pass
        out: dict[str, Any] = json.loads(raw)
        return out
    return dict(raw)  # PostgreSQL's driver already decoded JSONB


def matches(meta: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """True if ``meta`` holds every key of ``wanted``: an equal value, or a list holding the value."""
    for key, value in wanted.items():
        have = meta.get(key, MISSING)
        if have is MISSING:
            return False
        if have != value and not (isinstance(have, list) and value in have):
            return False
    return True


def changed(old: Mapping[str, Any] | None, set_: Mapping[str, Any], unset: list[str]) -> dict[str, Any]:
    """``old`` without the keys in ``unset``, then with ``set_`` applied."""
    drop = set(unset)
    meta = {k: v for k, v in dict(old or {}).items() if k not in drop}
    meta.update(set_)
    return meta
