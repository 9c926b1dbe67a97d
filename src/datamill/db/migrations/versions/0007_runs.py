"""runs: failed-earlier tasks, task notes, the publishing order check

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("skip_failed", sa.Boolean(), server_default="0", nullable=False))
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failure", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("note", sa.Text(), nullable=True))
    with op.batch_alter_table("task_outputs", schema=None) as batch_op:
        # Which runs published (or referenced) a version: the check that an older run does not
        # replace a newer run's output looks versions up by id.
        batch_op.create_index(batch_op.f("ix_task_outputs_version_id"), ["version_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("task_outputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_task_outputs_version_id"))
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("note")
        batch_op.drop_column("failure")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("skip_failed")
