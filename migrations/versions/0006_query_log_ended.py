"""How each C-FIND ended (issue 13): completed, cancelled, aborted, released, timed out...

The association layer now sees every end of an answer, also the ones without a
final response (an A-ABORT or a reset in the middle, a modality that stopped
reading); ``ended`` says which, and ``status`` keeps the last status sent.

Revision ID: 0006_query_log_ended
Revises: 0005_pattern_indexes
Create Date: 2026-12-07 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_query_log_ended"
down_revision: str | None = "0005_pattern_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("query_log") as batch:
        batch.add_column(
            sa.Column("ended", sa.String(length=16), nullable=False, server_default="completed")
        )


def downgrade() -> None:
    with op.batch_alter_table("query_log") as batch:
        batch.drop_column("ended")
