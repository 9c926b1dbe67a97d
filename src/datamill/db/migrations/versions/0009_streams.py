"""streams: consumer offsets, staged partial files and chunks, consumer status of stream dataflows

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 11:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "stream_offsets",
        sa.Column("dataflow_id", sa.BigInteger(), nullable=False),
        sa.Column("topic", sa.String(length=255), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["dataflow_id"], ["dataflows.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("dataflow_id", "topic", "partition"),
    )
    op.create_table(
        "stream_files",
        sa.Column("id", BigId, nullable=False),
        sa.Column("dataflow_id", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("file_hash", sa.String(length=128), nullable=False),
        sa.Column("n_chunks", sa.Integer(), nullable=False),
        sa.Column("mtime", sa.Float(), nullable=True),
        sa.Column("chunks_staged", sa.Integer(), nullable=False),
        sa.Column("bytes_staged", sa.BigInteger(), nullable=False),
        sa.Column("messages", JSONType, nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["dataflow_id"], ["dataflows.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dataflow_id", "path", name="uq_stream_files_path"),
    )
    op.create_table(
        "stream_chunks",
        sa.Column("file_id", sa.BigInteger(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["file_id"], ["stream_files.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("file_id", "offset"),
    )
    op.create_table(
        "stream_status",
        sa.Column("dataflow_id", sa.BigInteger(), nullable=False),
        sa.Column("member", sa.String(length=255), nullable=False),
        sa.Column("status", JSONType, nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["dataflow_id"], ["dataflows.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("dataflow_id", "member"),
    )


def downgrade() -> None:
    op.drop_table("stream_status")
    op.drop_table("stream_chunks")
    op.drop_table("stream_files")
    op.drop_table("stream_offsets")
