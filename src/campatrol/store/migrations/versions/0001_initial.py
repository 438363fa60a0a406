"""Initial schema: cycles, captures and snapshots.

Revision ID: 0001
Revises:
Create Date: 2026-05-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the three tables and their indexes."""
    op.create_table(
        "cycles",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("subnet", sa.String(255), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=False),
        sa.Column("duration", sa.Float(), nullable=False),
        sa.Column("visited", sa.Integer(), nullable=False),
        sa.Column("succeeded", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("timed_out", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("leaks", sa.Integer(), nullable=False),
    )
    op.create_index("ix_cycles_started_at", "cycles", ["started_at"])
    op.create_index("ix_cycles_subnet_started_at", "cycles", ["subnet", "started_at"])

    op.create_table(
        "captures",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("camera_id", sa.String(63), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=False),
        sa.Column("duration", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("bytes", sa.Integer(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("driver", sa.String(16), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column(
            "cycle_id",
            sa.Integer(),
            sa.ForeignKey("cycles.id", ondelete="SET NULL"),
            nullable=True,
        ),
    )
    op.create_index("ix_captures_started_at", "captures", ["started_at"])
    op.create_index("ix_captures_camera_id_started_at", "captures", ["camera_id", "started_at"])

    op.create_table(
        "snapshots",
        sa.Column("camera_id", sa.String(63), primary_key=True),
        sa.Column("taken_at", sa.DateTime(), nullable=False),
        sa.Column("duration", sa.Float(), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("driver", sa.String(16), nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    """Drop everything the upgrade created."""
    op.drop_table("snapshots")
    op.drop_table("captures")
    op.drop_table("cycles")
