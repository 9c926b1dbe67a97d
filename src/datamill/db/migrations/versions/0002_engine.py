"""engine: runs, tasks, task inputs and outputs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 12:01:09.364745
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("pipeline_ref", sa.String(length=1024), nullable=False),
        sa.Column("pipeline_name", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("requested_at", sa.Float(), nullable=False),
        sa.Column("requested_by", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.String(length=255), nullable=False),
        sa.Column("force", sa.Boolean(), nullable=False),
        sa.Column(
            "params", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("source_folder", sa.String(length=1024), nullable=True),
        sa.Column("dest_folder", sa.String(length=1024), nullable=True),
        sa.Column("dest_folder_id", sa.BigInteger(), nullable=True),
        sa.Column("dataflow_id", sa.BigInteger(), nullable=True),
        sa.Column("dataflow_version", sa.Integer(), nullable=True),
        sa.Column("executor", sa.String(length=32), nullable=False),
        sa.Column("parent_run_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "inputs", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_runs_dataflow_id"), ["dataflow_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_runs_status"), ["status"], unique=False)

    op.create_table(
        "tasks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("planned_id", sa.String(length=2048), nullable=False),
        sa.Column("step", sa.String(length=255), nullable=False),
        sa.Column("step_code", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=80), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("item_version_id", sa.BigInteger(), nullable=True),
        sa.Column("item_name", sa.String(length=2048), nullable=True),
        sa.Column(
            "deps", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "params", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("queued_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("not_before", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("log_digest", sa.String(length=80), nullable=True),
        sa.Column("cached_from", sa.BigInteger(), nullable=True),
        sa.Column("executor", sa.String(length=32), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "planned_id", name="uq_tasks_run_planned"),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index("ix_tasks_key_status", ["key", "status"], unique=False)
        batch_op.create_index("ix_tasks_run_status", ["run_id", "status"], unique=False)
        batch_op.create_index("ix_tasks_step_code", ["step", "step_code"], unique=False)

    op.create_table(
        "task_inputs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("param", sa.String(length=255), nullable=False),
        sa.Column("digest", sa.String(length=80), nullable=False),
        sa.Column("version_id", sa.BigInteger(), nullable=True),
        sa.Column("upstream_task_id", sa.BigInteger(), nullable=True),
        sa.Column("output_name", sa.String(length=1024), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("task_inputs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_task_inputs_task_id"), ["task_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_task_inputs_version_id"), ["version_id"], unique=False)

    op.create_table(
        "task_outputs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=1024), nullable=False),
        sa.Column("digest", sa.String(length=80), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("codec", sa.String(length=32), nullable=False),
        sa.Column("inline", sa.LargeBinary(), nullable=True),
        sa.Column("version_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("task_outputs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_task_outputs_digest"), ["digest"], unique=False)
        batch_op.create_index(batch_op.f("ix_task_outputs_task_id"), ["task_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("task_outputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_task_outputs_task_id"))
        batch_op.drop_index(batch_op.f("ix_task_outputs_digest"))

    op.drop_table("task_outputs")
    with op.batch_alter_table("task_inputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_task_inputs_version_id"))
        batch_op.drop_index(batch_op.f("ix_task_inputs_task_id"))

    op.drop_table("task_inputs")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_step_code")
        batch_op.drop_index("ix_tasks_run_status")
        batch_op.drop_index("ix_tasks_key_status")

    op.drop_table("tasks")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_status"))
        batch_op.drop_index(batch_op.f("ix_runs_dataflow_id"))

    op.drop_table("runs")
