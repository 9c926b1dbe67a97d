"""runs.plan_digest: an unchanged re-run is recorded as a copy of the earlier run with the same plan

Revision ID: 0013_rerun
Revises: 0012_scale
Create Date: 2026-12-03 17:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_rerun"
down_revision = "0012_scale"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("plan_digest", sa.String(length=80), nullable=True))
    op.create_index("ix_runs_plan_digest", "runs", ["plan_digest"])


def downgrade() -> None:
    op.drop_index("ix_runs_plan_digest", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("plan_digest")
