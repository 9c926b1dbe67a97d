"""task_outputs: the digest index only for outputs kept as blobs

The index on ``task_outputs.digest`` is read only to know whether a blob is still referred to
(``store/garbage.py``); an output kept inline holds its bytes in its row and refers to no blob. Small
outputs (most of a trivial task's) have random digests that repeat across runs: each recorded task
wrote an entry at a random place of that index, a page dirtied per task, and more as the table grew.
The partial index keeps only the outputs stored as blobs.

Revision ID: 0017_outputblobs
Revises: 0016_runparams
Create Date: 2026-12-04 22:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_outputblobs"
down_revision = "0016_runparams"
branch_labels = None
depends_on = None

_BLOBS_ONLY = sa.text("inline IS NULL")


def upgrade() -> None:
    op.drop_index("ix_task_outputs_digest", table_name="task_outputs")
    op.create_index(
        "ix_task_outputs_blob",
        "task_outputs",
        ["digest"],
        sqlite_where=_BLOBS_ONLY,
        postgresql_where=_BLOBS_ONLY,
    )


def downgrade() -> None:
    op.drop_index("ix_task_outputs_blob", table_name="task_outputs")
    op.create_index("ix_task_outputs_digest", "task_outputs", ["digest"])
