"""One page of a folder's items, sorted and filtered in the database: what the web app's folder table shows.

A folder may hold 100,000 items; a page reads only its rows (``ORDER BY ... LIMIT ... OFFSET``)
plus one ``COUNT``, never the whole listing. Ties in the sort key are broken by name, so pages
neither repeat nor skip rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, func, select
from sqlalchemy.orm import InstrumentedAttribute

from datamill.db.models import Item, User, Version
from datamill.errors import InvalidInput
from datamill.store.access import Actor
from datamill.store.folders import readable_folder
from datamill.store.items import current_items, item_info
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
