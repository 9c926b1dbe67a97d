"""scale: which scheduler drives a run (one at a time, under a lease it renews)

Revision ID: 0012_scale
Revises: 0011_cluster
Create Date: 2026-12-03 17:15:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_scale"
down_revision = "0011_cluster"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_owners",
        sa.Column("run_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("wants_help", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id"),
    )


def downgrade() -> None:
    op.drop_table("run_owners")
