"""params: each distinct parameter set stored once, tasks naming it by digest

``tasks.params`` held a task's resolved parameters on every row: a step with a 1 MiB lookup table
wrote 1 MiB per task. The sets move to a new table ``params`` (``digest`` -> ``data``, the canonical
JSON of the set, ``digest`` the BLAKE3 hash of that text) and ``tasks.params_digest`` names the row;
a task without parameters names none. See :mod:`datamill.engine.paramsets`.

Self-contained (no datamill imports): the canonical JSON is the ``json`` module's with sorted keys
and no whitespace, as :mod:`datamill.canonical` writes it; a set it refuses (NaN) is written with
NaN allowed, as ``paramsets.encode`` does.

Revision ID: 0015_params
Revises: 0014_taskkey
Create Date: 2026-12-04 14:00:00.000000
"""

from __future__ import annotations

import json
from typing import Any

import blake3
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0015_params"
down_revision = "0014_taskkey"
branch_labels = None
depends_on = None

#: tasks read per statement while their parameters move (a set may be big: a few at a time)
BATCH = 100


def _encode(params: dict[str, Any]) -> tuple[str, str]:
    """``(digest, text)`` as ``datamill.engine.paramsets.encode`` makes them for plain JSON data."""
    try:
        text = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN or infinity: no canonical form, kept as the json module writes it
        text = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "blake3:" + blake3.blake3(text.encode("utf-8")).hexdigest(), text


def upgrade() -> None:
    op.create_table(
        "params",
        sa.Column("digest", sa.String(length=80), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    # In place (ALTER TABLE), never by copying tasks into a new table: on SQLite, with foreign keys on,
    # dropping the old table would delete every task's outputs and inputs (ON DELETE CASCADE).
    op.add_column("tasks", sa.Column("params_digest", sa.String(length=80), nullable=True))
    conn = op.get_bind()
    stored: set[str] = set()
    after = -1
    while True:
        rows = conn.execute(
            sa.text("SELECT id, params FROM tasks WHERE id > :after ORDER BY id LIMIT :n"), {"after": after, "n": BATCH}
        ).all()
        if not rows:
            break
        after = rows[-1][0]
        named: list[dict[str, Any]] = []
        new: list[dict[str, str]] = []
        for tid, raw in rows:
            params = json.loads(raw) if isinstance(raw, (str, bytes)) else raw  # text on SQLite, decoded on PostgreSQL
            if not params:
                continue
            digest, text = _encode(params)
            if digest not in stored:
                stored.add(digest)
                new.append({"digest": digest, "data": text})
            named.append({"d": digest, "id": tid})
        if new:
            conn.execute(sa.text("INSERT INTO params (digest, data) VALUES (:digest, :data)"), new)
        if named:
            conn.execute(sa.text("UPDATE tasks SET params_digest = :d WHERE id = :id"), named)
    op.drop_column("tasks", "params")


def downgrade() -> None:
    json_type = sa.JSON().with_variant(JSONB(astext_type=sa.Text()), "postgresql")
    op.add_column("tasks", sa.Column("params", json_type, nullable=False, server_default=sa.text("'{}'")))
    conn = op.get_bind()
    data = "p.data::jsonb" if conn.dialect.name == "postgresql" else "p.data"
    empty = "'{}'::jsonb" if conn.dialect.name == "postgresql" else "'{}'"
    conn.execute(
        sa.text(
            f"UPDATE tasks SET params = COALESCE((SELECT {data} FROM params p WHERE p.digest = tasks.params_digest), "
            f"{empty})"
        )
    )
    op.drop_column("tasks", "params_digest")
    op.drop_table("params")
