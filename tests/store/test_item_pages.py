"""Keyset pages of a folder's items in the store, on each database: as :class:`ItemInfo` (embedded
clients) and as the JSON-ready dicts the API sends (read from the driver's rows, metadata passed on as
stored where no redaction is needed), which must say the same thing."""

from __future__ import annotations

import json
from typing import Any

import orjson

from datamill.home import Home
from datamill.records import Level
from tests.helpers import add_user

META = {"big": 2**70, "f": 0.25, "s": "é", "l": [1, None, {"x": True}]}


def test_dict_pages_say_what_item_pages_say(home: Home) -> None:
    store, admin = home.store, home.admin
    store.create_folder(admin, "P")
    store.create_folder(admin, "Hidden")
    for i in range(7):
        store.put(admin, "P", f"i{i}.txt", b"x" * i, metadata=META if i % 2 else None)
    prov = {"wasDerivedFrom": [{"folder": "Hidden", "name": "h.txt"}, {"folder": "P", "name": "i0.txt"}]}
    store.put(admin, "P", "derived.txt", b"d", metadata={"provenance": prov})
    reader = add_user(home, "reader")
    store.share(admin, "P", "reader", Level.READ)
    for actor in (admin, reader):
        for sort in ("name", "size"):
            items, dicts, cursor = [], [], None
            while True:
                batch = store.items_after(actor, "P", cursor, 3, sort)
                page, following = store.item_dicts_after(actor, "P", cursor, 3, sort)
                assert following == batch.next
                items += batch.items
                dicts += page
                if following is None:
                    break
                cursor = following
            assert len(items) == 8
            # on the wire, as a client reads it: what the ItemInfo's own dict says
            assert _wire(dicts) == json.loads(json.dumps([i.to_dict() for i in items]))
            odd = next(d for d in _wire(dicts) if d["name"] == "i1.txt")
            assert odd["metadata"]["big"] == 2**70 and isinstance(odd["metadata"]["big"], int)
            derived = next(d for d in _wire(dicts) if d["name"] == "derived.txt")
            assert ("Hidden" in json.dumps(derived["metadata"])) == (actor is admin)


def _wire(dicts: list[dict[str, Any]]) -> Any:
    try:
        return json.loads(orjson.dumps(dicts))
    except TypeError:
        # metadata the driver decoded (PostgreSQL) with an integer beyond 64 bits, which orjson does not
        # write: the API answers through items_after and the json module then
        return dicts
