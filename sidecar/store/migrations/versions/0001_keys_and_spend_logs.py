"""Virtual keys and the per-request spend log.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "keys",
        sa.Column("token", sa.String(64), primary_key=True),
        sa.Column("key_alias", sa.String(255)),
        sa.Column("key_name", sa.String(32), nullable=False),
        sa.Column("models", sa.JSON, nullable=False),
        sa.Column("max_budget", sa.Float),
        sa.Column("budget_duration", sa.String(16)),
        sa.Column("budget_reset_at", sa.Double),
        sa.Column("spend", sa.Float, nullable=False, server_default="0"),
        sa.Column("expires_at", sa.Double),
        sa.Column("rpm_limit", sa.Integer),
        sa.Column("tpm_limit", sa.Integer),
        sa.Column("max_parallel_requests", sa.Integer),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("user_id", sa.String(255)),
        sa.Column("blocked", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("deleted_at", sa.Double),
    )
    op.create_index("ix_keys_user_id", "keys", ["user_id"])
    op.create_index("ux_keys_live_alias", "keys", ["key_alias"], unique=True,
                    sqlite_where=sa.text("deleted_at IS NULL"), postgresql_where=sa.text("deleted_at IS NULL"))
    op.create_table(
        "spend_logs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Double, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("key_hash", sa.String(64)),
        sa.Column("key_alias", sa.String(255)),
        sa.Column("end_user", sa.String(256)),
        sa.Column("model", sa.String(255)),
        sa.Column("operation", sa.String(255), nullable=False),
        sa.Column("route", sa.String(512), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("total_tokens", sa.Integer),
        sa.Column("pages", sa.Integer),
        sa.Column("audio_seconds", sa.Float),
        sa.Column("characters", sa.Integer),
        sa.Column("cost", sa.Float),
        sa.Column("latency_ms", sa.Float),
        sa.Column("upstream_ms", sa.Float),
        sa.Column("streamed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("error", sa.String(255)),
    )
    for column in ("ts", "key_hash", "end_user", "model"):
        op.create_index(f"ix_spend_logs_{column}", "spend_logs", [column])


def downgrade() -> None:
    op.drop_table("spend_logs")
    op.drop_index("ux_keys_live_alias", table_name="keys")
    op.drop_index("ix_keys_user_id", table_name="keys")
    op.drop_table("keys")
