"""Pages of a folder's items, sorted and filtered in the database.

Two kinds: :func:`page_items`, what the web app's folder table shows (``ORDER BY ... LIMIT ...
OFFSET`` plus one ``COUNT``, for jumping to page N), and :func:`items_after`, what the API's paged
listing and ``datamill ls`` read: keyset pages that continue after a *cursor* (the sort key and name
of the last row sent), so that page 100 of a 100,000-item folder costs what page 1 costs. Ties in the
sort key are broken by name (unique in a folder), so pages neither repeat nor skip rows.

A cursor is opaque to clients (base64 of the position, with a checksum so that an edited or cut
cursor is refused with a clear error) and grants nothing: it only says where to continue, in the
folder the request names, whose read access is checked on every page.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, and_, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute

from datamill.db.models import Item, User, Version
from datamill.errors import InvalidInput
from datamill.store.access import Actor
from datamill.store.folders import readable_folder
from datamill.store.items import current_items, item_info
from datamill.store.metadata import decode
from datamill.store.records import ItemInfo
from datamill.store.visibility import Visibility

#: Sort keys a page may be ordered by.
SORTS: dict[str, InstrumentedAttribute[Any]] = {
    "name": Item.name,
    "size": Version.size,
    "version": Version.number,
    "updated": Item.updated_at,
}
#: The most rows one page holds.
MAX_PAGE = 1000
#: The most rows one keyset page (:func:`items_after`) holds, and how many it holds by default.
MAX_BATCH = 10_000
DEFAULT_BATCH = 1000
#: The version of the cursor's layout (a cursor of another layout is refused, not misread).
CURSOR_VERSION = 1


@dataclass
class ItemPage:
    """Rows ``offset..offset+len(items)`` of a folder's items in the asked order, of ``total`` matching."""

    items: list[ItemInfo]
    total: int
    #: Who made each item's current version (None: unknown), aligned with ``items``.
    made_by: list[str | None] = field(default_factory=list)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def page_items(
    conn: Connection,
    actor: Actor,
    folder: str,
    sort: str = "name",
    descending: bool = False,
    offset: int = 0,
    limit: int = 100,
    contains: str = "",
) -> ItemPage:
    """One page of the items of ``folder`` whose name contains ``contains`` (case-insensitive)."""
    if sort not in SORTS:
        raise InvalidInput(f"cannot sort by {sort!r}; sort by one of {', '.join(SORTS)}", sort=sort)
    if not 1 <= limit <= MAX_PAGE or offset < 0:
        raise InvalidInput(f"a page holds 1 to {MAX_PAGE} items from an offset of 0 or more")
    frow = readable_folder(conn, actor, folder)
    where = [Item.folder_id == frow.id]
    if contains:
        # SQLite's LIKE ignores ASCII case already; PostgreSQL's ILIKE does the same.
        where.append(Item.name.ilike(f"%{_like_escape(contains)}%", escape="\\"))
    key = SORTS[sort]
    order = [key.desc(), Item.name.desc()] if descending else [key.asc(), Item.name.asc()]
    if sort == "name":
        order = order[:1]
    # Two steps: pick the page's ids with the narrowest query that can sort (the version joined
    # only when sorting by one of its columns), then read the full rows of those ids alone.
    ids_q = select(Item.id).where(*where)
    if sort in ("size", "version"):
        ids_q = ids_q.join(Version, and_(Version.item_id == Item.id, Version.number == Item.current_version))
    ids = list(conn.execute(ids_q.order_by(*order).limit(limit).offset(offset)).scalars())
    q = (
        current_items()
        .add_columns(User.name.label("made_by"))
        .outerjoin(User, User.id == Version.created_by)
        .where(Item.id.in_(ids))
    )
    by_id = {r[0]: r for r in conn.execute(q).tuples().all()} if ids else {}
    rows = [by_id[i] for i in ids if i in by_id]
    items = [item_info(r[:-1], frow.path) for r in rows]
    Visibility(conn, actor).items(items)
    total = conn.execute(select(func.count()).select_from(Item).where(*where)).scalar_one()
    return ItemPage(items, int(total), [r[-1] for r in rows])


@dataclass
class ItemBatch:
    """One keyset page of a folder's items, and the cursor of the next page (None: this was the last)."""

    items: list[ItemInfo]
    next: str | None


def _checksum(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=8, person=b"datamill-cursor").hexdigest()


def encode_cursor(folder_id: int, sort: str, descending: bool, key: Any, name: str) -> str:
    """The cursor of the page after the row ``(key, name)`` of folder ``folder_id``."""
    body = json.dumps([CURSOR_VERSION, folder_id, sort, descending, key, name], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=") + "." + _checksum(body)


def decode_cursor(cursor: str, folder_id: int, sort: str, descending: bool) -> tuple[Any, str]:
    """The position ``(key, name)`` a cursor continues after; :class:`InvalidInput` if it is not one of ours.

    A cursor is bound to its folder and its order: continuing it in another folder or in another
    order would skip or repeat rows, so that is refused too.
    """
    bad = InvalidInput(
        "the cursor is not one this server gave out (cut short or edited); list again without a cursor",
        cursor=cursor[:100],
    )
    text, _, check = cursor.partition(".")
    try:
        body = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        version, fid, csort, cdesc, key, name = json.loads(body)
    except (ValueError, TypeError):
        raise bad from None
    if check != _checksum(body) or version != CURSOR_VERSION or not isinstance(name, str) or fid != folder_id:
        raise bad
    if (csort, cdesc) != (sort, descending):
        order = f"{csort}{' descending' if cdesc else ''}"
        raise InvalidInput(
            f"this cursor continues a listing sorted by {order}; ask for the next page in that order "
            "(or list again without a cursor)",
            sort=sort,
        )
    if sort == "name":
        key = name
    elif (sort == "updated" and not isinstance(key, int | float)) or (sort != "updated" and not isinstance(key, int)):
        raise bad
    return key, name


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: a page makes up to 10,000 rows and dicts at once, and the
    collector would walk them (and everything else) several times over while they are made."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _rows_after(
    conn: Connection,
    actor: Actor,
    folder: str,
    cursor: str | None,
    limit: int,
    sort: str,
    descending: bool,
) -> tuple[str, list[Any], str | None]:
    """The folder's path, the rows of :func:`current_items` of the page (plain tuples), the next cursor."""
    if sort not in SORTS:
        raise InvalidInput(f"cannot sort by {sort!r}; sort by one of {', '.join(SORTS)}", sort=sort)
    if not 1 <= limit <= MAX_BATCH:
        raise InvalidInput(f"a page holds 1 to {MAX_BATCH} items; ask for fewer", limit=limit)
    frow = readable_folder(conn, actor, folder)  # access checked on every page, whatever the cursor
    key = SORTS[sort]
    q = current_items().where(Item.folder_id == frow.id)
    if cursor:
        last_key, last_name = decode_cursor(cursor, frow.id, sort, descending)
        if sort == "name":
            q = q.where(Item.name < last_name if descending else Item.name > last_name)
        elif descending:
            q = q.where(or_(key < last_key, and_(key == last_key, Item.name < last_name)))
        else:
            q = q.where(or_(key > last_key, and_(key == last_key, Item.name > last_name)))
    order = [key.desc(), Item.name.desc()] if descending else [key.asc(), Item.name.asc()]
    if sort == "name":
        order = order[:1]
    # One row more than asked: whether there is a next page, without a COUNT. The driver's own rows
    # (plain tuples): the columns need no conversion (numbers, text, and the metadata as text on
    # SQLite or decoded by the driver on PostgreSQL), and SQLAlchemy's Row objects were a third of a
    # page's time.
    result = conn.execute(q.order_by(*order).limit(limit + 1))
    try:
        with _collector_paused():
            rows = list(result.cursor.fetchall()) if result.cursor is not None else []
    finally:
        result.close()
    following = None
    if len(rows) > limit:
        del rows[limit:]
        last = rows[-1]
        value = {"name": last[2], "size": last[8], "version": last[6], "updated": last[5]}[sort]
        following = encode_cursor(frow.id, sort, descending, value, last[2])
    return frow.path, rows, following


def items_after(
    conn: Connection,
    actor: Actor,
    folder: str,
    cursor: str | None = None,
    limit: int = DEFAULT_BATCH,
    sort: str = "name",
    descending: bool = False,
) -> ItemBatch:
    """The next ``limit`` items of ``folder`` in the asked order, after ``cursor`` (from the first without)."""
    path, rows, following = _rows_after(conn, actor, folder, cursor, limit, sort, descending)
    with _collector_paused():
        items = [item_info(r, path) for r in rows]
    Visibility(conn, actor).items(items)
    return ItemBatch(items, following)


def item_dicts_after(
    conn: Connection,
    actor: Actor,
    folder: str,
    cursor: str | None = None,
    limit: int = DEFAULT_BATCH,
    sort: str = "name",
    descending: bool = False,
) -> tuple[list[dict[str, Any]], str | None]:
    """As :func:`items_after`, as the JSON-ready dicts the API sends (``ItemInfo.to_dict``'s keys and order).

    Metadata stored as JSON text (SQLite) goes out as that text (an :class:`orjson.Fragment`) without
    being parsed, except where it holds a provenance summary the actor may need redacted.
    """
    path, rows, following = _rows_after(conn, actor, folder, cursor, limit, sort, descending)
    visibility = None if actor.is_admin else Visibility(conn, actor)
    with _collector_paused():
        return _dicts(rows, path, visibility), following


def _dicts(rows: list[Any], path: str, visibility: Visibility | None) -> list[dict[str, Any]]:
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    fragment = orjson.Fragment
    out = []
    for iid, _fid, name, meta, created, updated, number, digest, size, ctype, vid in rows:
        if meta is None or meta == "{}":
            shown: Any = {}
        elif isinstance(meta, str) and (visibility is None or '"provenance"' not in meta):
            shown = fragment(meta)
        else:
            shown = decode(meta)
            if visibility is not None:
                visibility.load(visibility.metadata_paths(shown))
                shown = visibility.metadata(shown)
        out.append(
            {
                "id": iid,
                "folder": path,
                "name": name,
                "metadata": shown,
                "version": number,
                "digest": digest,
                "size": size,
                "content_type": ctype,
                "created_at": created,
                "updated_at": updated,
                "version_id": vid,
                "path": prefix + name,
            }
        )
    return out
