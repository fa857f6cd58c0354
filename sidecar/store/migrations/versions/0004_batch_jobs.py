"""``batch_jobs`` (which key created each batch job) and ``spend_logs.batch_job`` (unique).

A batch job is billed by Mistral when it runs, long after the request that created it; its cost is
recorded when its results are read through the sidecar, once per job, on the key that created it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batch_jobs",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("key_hash", sa.String(64)),
        sa.Column("key_alias", sa.String(255)),
        sa.Column("end_user", sa.String(256)),
        sa.Column("model", sa.String(255)),
        sa.Column("endpoint", sa.String(255)),
        sa.Column("output_file", sa.String(64)),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_index("ix_batch_jobs_output_file", "batch_jobs", ["output_file"])
    with op.batch_alter_table("spend_logs") as batch:
        batch.add_column(sa.Column("batch_job", sa.String(64)))
    op.create_index("ux_spend_logs_batch_job", "spend_logs", ["batch_job"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_spend_logs_batch_job", table_name="spend_logs")
    with op.batch_alter_table("spend_logs") as batch:
        batch.drop_column("batch_job")
    op.drop_index("ix_batch_jobs_output_file", table_name="batch_jobs")
    op.drop_table("batch_jobs")
