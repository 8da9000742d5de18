"""Accounts an admin disabled on the users page (issue 15).

A disabled account keeps its row (its audit trail, its API tokens) but can neither
log in nor use a token until it is enabled again.

Revision ID: 0012_user_disabled
Revises: 0011_watchdog_alerts
Create Date: 2026-12-07 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_user_disabled"
down_revision: str | None = "0011_watchdog_alerts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A column with a server default is added in place on PostgreSQL and SQLite alike.
    with op.batch_alter_table("app_user") as batch:
        batch.add_column(
            sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("app_user") as batch:
        batch.drop_column("disabled")
