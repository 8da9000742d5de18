"""The watchdog's alerts: feed silent, scanner silent or failing, outbox, steps (issue 18).

Revision ID: 0011_watchdog_alerts
Revises: 0010_external_logins
Create Date: 2026-12-07 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_watchdog_alerts"
down_revision: str | None = "0010_external_logins"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "watchdog_alert",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("fired_at", sa.DateTime(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(), nullable=True),
        sa.Column("notified", sa.String(16), nullable=False),
    )
    op.create_index("ix_watchdog_alert_state", "watchdog_alert", ["state", "key"])
    op.create_index("ix_watchdog_alert_fired_at", "watchdog_alert", ["fired_at"])


def downgrade() -> None:
    op.drop_index("ix_watchdog_alert_fired_at", table_name="watchdog_alert")
    op.drop_index("ix_watchdog_alert_state", table_name="watchdog_alert")
    op.drop_table("watchdog_alert")
