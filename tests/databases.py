"""Real PostgreSQL and Redis for the storage and limits tests, isolated per test; skipped with the
reason printed where the server is not reachable (``scripts/services.sh`` starts them if installed)."""

from __future__ import annotations

import contextlib
import os
import uuid

import pytest

PG_HOST = os.environ.get("SIDECAR_TEST_PG_HOST", "127.0.0.1:5432")
PG_DATABASE = os.environ.get("SIDECAR_TEST_PG_DB", "test")
REDIS_URL = os.environ.get("SIDECAR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _pg_connect():
    import psycopg

    host, _, port = PG_HOST.partition(":")
    errors = []
    for user in ("postgres", "root"):
        try:
            connection = psycopg.connect(host=host, port=int(port or 5432), dbname=PG_DATABASE, user=user,
                                         connect_timeout=2, autocommit=True)
            return connection, user
        except psycopg.Error as exc:
            errors.append(f"{user}: {str(exc).strip().splitlines()[0]}")
    pytest.skip(f"PostgreSQL not reachable at {PG_HOST}/{PG_DATABASE}: {'; '.join(errors)}")


@contextlib.contextmanager
def postgres_schema():
    """A fresh schema for one test; yields a DATABASE_URL whose search_path points at it."""
    connection, user = _pg_connect()
    schema = f"sidecar_test_{uuid.uuid4().hex[:12]}"
    connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"postgresql://{user}@{PG_HOST}/{PG_DATABASE}?options=-csearch_path%3D{schema}"
    finally:
        connection.execute(f'DROP SCHEMA "{schema}" CASCADE')
        connection.close()


def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.exceptions.RedisError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    return REDIS_URL
