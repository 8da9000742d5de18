"""Users told to change a password that fails today's policy (issue 19).

The policy (mwl.admin.passwords) can only be checked where the clear-text password
is known, so an account made before it is marked at its next login and sent to the
change-password form until its password passes.

Revision ID: 0008_password_must_change
Revises: 0007_web_sessions
Create Date: 2026-12-07 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_password_must_change"
down_revision: str | None = "0007_web_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("app_user") as batch:
        batch.add_column(
            sa.Column(
                "must_change_password", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("app_user") as batch:
        batch.drop_column("must_change_password")
