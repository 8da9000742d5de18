"""Accounts that log in through single sign-on (OpenID Connect or LDAP, issue 17).

app_user.external_source names where such an account logs in; NULL for the local
accounts, which all existing rows are.

Revision ID: 0010_external_logins
Revises: 0009_audit_queue
Create Date: 2026-12-07 15:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_external_logins"
down_revision: str | None = "0009_audit_queue"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("app_user") as batch:
        batch.add_column(sa.Column("external_source", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("app_user") as batch:
        batch.drop_column("external_source")
