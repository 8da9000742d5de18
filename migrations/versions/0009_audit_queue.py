"""The ATNA audit queue: DICOM audit messages waiting for the audit repository (issue 17).

Revision ID: 0009_audit_queue
Revises: 0008_password_must_change
Create Date: 2026-12-07 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_audit_queue"
down_revision: str | None = "0008_password_must_change"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_queue",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
    )
    op.create_index("ix_audit_queue_next_attempt", "audit_queue", ["next_attempt_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_queue_next_attempt", table_name="audit_queue")
    op.drop_table("audit_queue")
