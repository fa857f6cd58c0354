"""The database schema as SQLAlchemy Core tables: ``keys`` (virtual keys), ``spend_logs`` and ``batch_jobs``.

Times are seconds since the epoch (UTC) in double-precision columns: they compare numerically the same
way on SQLite and PostgreSQL, and the hot path never parses a timestamp string.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

keys = sa.Table(
    "keys",
    metadata,
    sa.Column("token", sa.String(64), primary_key=True),  # sha256 hex of the key; the key itself is never stored
    sa.Column("key_alias", sa.String(255)),
    sa.Column("key_name", sa.String(32), nullable=False),  # non-secret preview, "sk-...abcd"
    sa.Column("models", sa.JSON, nullable=False, default=list),  # allowlist; empty: every model
    sa.Column("max_budget", sa.Float),  # USD; null: no budget
    sa.Column("budget_duration", sa.String(16)),  # "30d": spend resets each period
    sa.Column("budget_reset_at", sa.Double),
    sa.Column("spend", sa.Float, nullable=False, default=0.0),  # USD spent in the current budget period
    sa.Column("expires_at", sa.Double),
    sa.Column("rpm_limit", sa.Integer),
    sa.Column("tpm_limit", sa.Integer),
    sa.Column("max_parallel_requests", sa.Integer),
    sa.Column("metadata", sa.JSON, nullable=False, default=dict),
    sa.Column("user_id", sa.String(255)),
    sa.Column("blocked", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("deleted_at", sa.Double),  # soft delete: spend logs keep a key to join on
)
sa.Index("ix_keys_user_id", keys.c.user_id)
# Unique among live keys. The migrations make the index (partial on PostgreSQL too, 0001); this model of it
# names SQLite's condition only: a postgresql_where here made every worker on SQLite load SQLAlchemy's
# PostgreSQL dialect to check the keyword (~2 MB and 60 ms of start-up each).
sa.Index("ux_keys_live_alias", keys.c.key_alias, unique=True, sqlite_where=keys.c.deleted_at.is_(None))

spend_logs = sa.Table(
    "spend_logs",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Double, nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("key_hash", sa.String(64)),
    sa.Column("key_alias", sa.String(255)),
    sa.Column("end_user", sa.String(256)),
    sa.Column("model", sa.String(255)),
    sa.Column("deployment", sa.String(255)),  # which deployment of the model answered (migration 0002)
    sa.Column("operation", sa.String(255), nullable=False),
    sa.Column("route", sa.String(512), nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("total_tokens", sa.Integer),
    sa.Column("pages", sa.Integer),
    sa.Column("audio_seconds", sa.Float),
    sa.Column("characters", sa.Integer),
    sa.Column("cost", sa.Float),  # USD; null when the model has no known price
    sa.Column("latency_ms", sa.Float),
    sa.Column("upstream_ms", sa.Float),
    sa.Column("streamed", sa.Boolean, nullable=False, default=False),
    sa.Column("error", sa.String(255)),
    # Usage counted by the sidecar (a stream cut before its usage event, a dead worker's admission).
    sa.Column("estimated", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    # The batch job this record charges (migration 0004); null for a request's own record. Unique: a
    # job's cost is recorded once, however many times or in however many workers its results are read.
    sa.Column("batch_job", sa.String(64)),
)
sa.Index("ix_spend_logs_ts", spend_logs.c.ts)
sa.Index("ix_spend_logs_key_hash", spend_logs.c.key_hash)
sa.Index("ix_spend_logs_end_user", spend_logs.c.end_user)
sa.Index("ix_spend_logs_model", spend_logs.c.model)
sa.Index("ux_spend_logs_batch_job", spend_logs.c.batch_job, unique=True)

# Batch jobs created through the sidecar: who to charge when their results are read (migration 0004).
batch_jobs = sa.Table(
    "batch_jobs",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("key_hash", sa.String(64)),  # the key that created it; null: the master key (nobody to charge)
    sa.Column("key_alias", sa.String(255)),
    sa.Column("end_user", sa.String(256)),
    sa.Column("model", sa.String(255)),
    sa.Column("endpoint", sa.String(255)),
    sa.Column("output_file", sa.String(64)),  # learnt from a read of the job that names it
    sa.Column("created_at", sa.Double, nullable=False),
)
sa.Index("ix_batch_jobs_output_file", batch_jobs.c.output_file)
