"""runparams: a run names its parameter sets by digest instead of holding them

``runs.params`` held a run's parameters as the user gave them (``user``), each step's share of them
(``steps``) and the image digests resolved for it, on every run row: a 4 MiB table cost 8 MiB per
run, and a trigger makes one run per landed item. The user's set and each step's set move to the
``params`` table of 0015 (stored once per distinct set, by the BLAKE3 digest of its canonical JSON):
``runs.params_digest`` names the user's set (None: none given) and ``runs.params_meta`` keeps the
rest, ``steps`` as ``step -> digest`` (None: an empty set) beside ``images`` and ``step_images``
unchanged. See :func:`datamill.engine.paramsets.run_params`.

Self-contained (no datamill imports): the canonical JSON and digests are 0015's. The columns are
added and dropped in place (``ALTER TABLE``), never by copying ``runs`` into a new table: on SQLite,
with foreign keys on, dropping the old ``runs`` would delete every task of every run (``ON DELETE
CASCADE``).

Revision ID: 0016_runparams
Revises: 0015_params
Create Date: 2026-12-04 17:00:00.000000
"""

from __future__ import annotations

import json
from typing import Any

import blake3
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0016_runparams"
down_revision = "0015_params"
branch_labels = None
depends_on = None

#: runs read per statement while their parameters move (a run's may be big: a few at a time)
BATCH = 100

_JSON = sa.JSON().with_variant(JSONB(astext_type=sa.Text()), "postgresql")


def _encode(params: dict[str, Any]) -> tuple[str, str]:
    """``(digest, text)`` as ``datamill.engine.paramsets.encode`` makes them for plain JSON data."""
    try:
        text = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN or infinity: no canonical form, kept as the json module writes it
        text = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "blake3:" + blake3.blake3(text.encode("utf-8")).hexdigest(), text


def _decoded(raw: Any) -> Any:
    """A JSON column's value: text on SQLite, decoded already on PostgreSQL."""
    return json.loads(raw) if isinstance(raw, (str, bytes)) else raw


def _digest_of(params: dict[str, Any] | None, have: set[str], new: list[dict[str, str]]) -> str | None:
    """The digest of a set (None: empty), put in ``new`` unless ``have`` has it."""
    if not params:
        return None
    digest, text = _encode(params)
    if digest not in have:
        have.add(digest)
        new.append({"digest": digest, "data": text})
    return digest


def upgrade() -> None:
    op.add_column("runs", sa.Column("params_digest", sa.String(length=80), nullable=True))
    op.add_column("runs", sa.Column("params_meta", _JSON, nullable=False, server_default=sa.text("'{}'")))
    conn = op.get_bind()
    have = set(conn.execute(sa.text("SELECT digest FROM params")).scalars())
    after = -1
    while True:
        rows = conn.execute(
            sa.text("SELECT id, params FROM runs WHERE id > :after ORDER BY id LIMIT :n"), {"after": after, "n": BATCH}
        ).all()
        if not rows:
            break
        after = rows[-1][0]
        named: list[dict[str, Any]] = []
        new: list[dict[str, str]] = []
        for rid, raw in rows:
            params = dict(_decoded(raw) or {})
            user = _digest_of(params.pop("user", None), have, new)
            steps = {step: _digest_of(p, have, new) for step, p in (params.pop("steps", None) or {}).items()}
            named.append({"id": rid, "d": user, "m": json.dumps({**params, "steps": steps})})
        if new:
            conn.execute(sa.text("INSERT INTO params (digest, data) VALUES (:digest, :data)"), new)
        meta = "CAST(:m AS JSONB)" if conn.dialect.name == "postgresql" else ":m"
        conn.execute(sa.text(f"UPDATE runs SET params_digest = :d, params_meta = {meta} WHERE id = :id"), named)
    op.drop_column("runs", "params")


def downgrade() -> None:
    op.add_column("runs", sa.Column("params", _JSON, nullable=False, server_default=sa.text("'{}'")))
    conn = op.get_bind()
    after = -1
    while True:
        rows = conn.execute(
            sa.text("SELECT id, params_digest, params_meta FROM runs WHERE id > :after ORDER BY id LIMIT :n"),
            {"after": after, "n": BATCH},
        ).all()
        if not rows:
            break
        after = rows[-1][0]
        metas = {rid: dict(_decoded(raw) or {}) for rid, _d, raw in rows}
        wanted = {d for _r, d, _m in rows if d} | {
            d for m in metas.values() for d in (m.get("steps") or {}).values() if d
        }
        found: dict[str, Any] = {}
        if wanted:
            q = sa.text("SELECT digest, data FROM params WHERE digest IN :ds").bindparams(
                sa.bindparam("ds", expanding=True)
            )
            found = {d: json.loads(t) for d, t in conn.execute(q, {"ds": sorted(wanted)})}
        restored = []
        for rid, digest, _raw in rows:
            meta = metas[rid]
            steps = {step: found.get(d, {}) if d else {} for step, d in (meta.pop("steps", None) or {}).items()}
            params = {"user": found.get(digest, {}) if digest else {}, "steps": steps, **meta}
            restored.append({"id": rid, "p": json.dumps(params)})
        cast = "CAST(:p AS JSONB)" if conn.dialect.name == "postgresql" else ":p"
        conn.execute(sa.text(f"UPDATE runs SET params = {cast} WHERE id = :id"), restored)
    op.drop_column("runs", "params_meta")
    op.drop_column("runs", "params_digest")
