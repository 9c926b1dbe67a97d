"""Multi-row INSERTs run by the database driver, for the batches a writer holds the GIL to build.

SQLAlchemy's per-row work (a parameter dict per row, its bind processors, and on SQLite one
statement per row when a batch must return ids in order, as there is no sentinel to sort them by)
cost more than the database itself for a stream batch of small files: its rows go to the driver
here as plain tuples, many rows a statement, in the same SQL on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

#: Rows per statement (a dozen values a row at most: far below SQLite's 32,766 variables and
#: PostgreSQL's 65,535).
ROWS_PER_STATEMENT = 500


def insert_rows(
    conn: Connection,
    head: str,
    rows: list[tuple[Any, ...]],
    tail: str = "",
    json_at: tuple[int, ...] = (),
) -> list[tuple[Any, ...]]:
    """``head VALUES (...), (...) tail`` for ``rows`` (all of one length), :data:`ROWS_PER_STATEMENT` a
    statement; the rows a ``RETURNING`` in ``tail`` gives, in no promised order (callers match them by
    a key). ``json_at``: indexes of JSON columns, given as :func:`~datamill.db.models.json_text`."""
    if not rows:
        return []
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    marks = [mark] * len(rows[0])
    if conn.dialect.name == "postgresql":
        for i in json_at:
            marks[i] = f"CAST({mark} AS jsonb)"
    one = "(" + ", ".join(marks) + ")"
    returning = " RETURNING " in f" {tail} "
    out: list[tuple[Any, ...]] = []
    for i in range(0, len(rows), ROWS_PER_STATEMENT):
        some = rows[i : i + ROWS_PER_STATEMENT]
        result = conn.exec_driver_sql(
            f"{head} VALUES {', '.join([one] * len(some))}{tail}", tuple(v for r in some for v in r)
        )
        if returning:
            out += [tuple(r) for r in result]
    return out
