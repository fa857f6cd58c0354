"""Alembic environment for the sidecar: always called programmatically with a live connection."""

from __future__ import annotations

from alembic import context

from sidecar.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through sidecar.store.migrate() or `mistral-sidecar migrate`")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
