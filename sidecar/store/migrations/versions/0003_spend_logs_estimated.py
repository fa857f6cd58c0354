"""``spend_logs.estimated``: the record's usage was counted by the sidecar, not reported by Mistral.

A stream cut before its usage event, or an admission a dead worker never settled, is still billed by
Mistral; its record says so instead of showing a cost of null.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("spend_logs") as batch:
        batch.add_column(sa.Column("estimated", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("spend_logs") as batch:
        batch.drop_column("estimated")
