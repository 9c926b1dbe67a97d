"""tasks: the cache's index on the key alone, not on (key, status)

A task's status changes twice per attempt (claimed, ended) while its key does not: with the status
in the index, each change moved the task's entry in an index ordered by a random hash, which was
most of SQLite's work in recording a batch of trivial tasks (a page written per task, twice).
Look-ups by key read the few tasks of a key and check their status on the row.

Revision ID: 0014_taskkey
Revises: 0013_rerun
Create Date: 2026-12-04 07:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0014_taskkey"
down_revision = "0013_rerun"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_tasks_key_status", table_name="tasks")
    op.create_index("ix_tasks_key", "tasks", ["key"])


def downgrade() -> None:
    op.drop_index("ix_tasks_key", table_name="tasks")
    op.create_index("ix_tasks_key_status", "tasks", ["key", "status"])
