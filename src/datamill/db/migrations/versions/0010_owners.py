"""watch2: who runs each directory dataflow (a lease with expiry) and its live status

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dataflow_owners",
        sa.Column("dataflow_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column(
            "status", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["dataflow_id"], ["dataflows.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("dataflow_id"),
    )


def downgrade() -> None:
    op.drop_table("dataflow_owners")
