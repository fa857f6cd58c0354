"""Storage: one SQLAlchemy engine (embedded SQLite by default, PostgreSQL by ``DATABASE_URL``) and
its versioned Alembic migrations, shipped inside the package and run programmatically.

``mistral-sidecar migrate`` applies them, and the gunicorn master runs it before forking (sidecar/startup.py;
a file lock for SQLite, an advisory lock for PostgreSQL keep concurrent starts safe). Workers then only check
that the schema is current; an embedded SQLite file opened outside gunicorn is migrated on the spot.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import re
from pathlib import Path

import sqlalchemy as sa

from . import tables

__all__ = ["tables", "database_url", "make_engine", "migrate", "current_revision", "head_revision", "open_engine",
           "StoreError"]
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 0x6D73_6964  # pg_advisory_lock id shared by every `migrate` run
log = logging.getLogger("sidecar.store")
# Alembic narrates each step at INFO ("Context impl SQLiteImpl", "Running upgrade"); the sidecar's own INFO
# logging would print that on every start. An operator who sets the alembic logger's level keeps theirs.
if logging.getLogger("alembic").level == logging.NOTSET:
    logging.getLogger("alembic").setLevel(logging.WARNING)
CONNECT_TIMEOUT = 3  # seconds (PostgreSQL)
# A migration script's own ``revision = "0004"`` and ``down_revision = "0003"`` (or None) lines.
_REVISION_LINE = re.compile(r'^(down_)?revision\s*(?::[^=]*)?=\s*(?:"([^"]*)"|None)\s*$', re.M)


class StoreError(RuntimeError):
    """The database cannot be used as it is (unreachable, or its schema is behind)."""


def database_url(settings) -> str:
    """``DATABASE_URL`` with PostgreSQL pinned to psycopg 3; else the embedded SQLite file."""
    url = settings.database_url
    if not url:
        return f"sqlite:///{Path(settings.db_path).expanduser().resolve()}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL: readers never wait for the writer, so workers reading keys don't queue behind spend updates.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 10})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A short connect timeout: while the database is unreachable, requests that need it get their 503
    # (store/health.py) in seconds rather than after the driver's default wait.
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                            connect_args={"connect_timeout": CONNECT_TIMEOUT} if url.startswith("postgresql") else {})


def _config(connection):
    from alembic.config import Config  # only to migrate: a worker checks the schema without Alembic

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration, from the scripts' own revision lines: a worker checks its schema without
    importing Alembic and every SQL dialect it knows (~0.3 s and ~10 MB per worker). A test holds this
    to Alembic's own answer; a branched history (two heads) is refused, as ``upgrade head`` would."""
    revisions, parents = set(), set()
    for script in (MIGRATIONS / "versions").glob("*.py"):
        for down, revision in _REVISION_LINE.findall(script.read_text(encoding="utf-8")):
            (parents if down else revisions).add(revision)
    heads = revisions - parents
    if len(heads) != 1:
        raise StoreError(f"the migrations in {MIGRATIONS} have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def current_revision(engine: sa.Engine) -> str | None:
    """The schema's revision as Alembic records it (its ``alembic_version`` table), None before any."""
    with engine.connect() as connection:
        if not sa.inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: sa.Engine, revision: str = "head") -> str | None:
    """Apply the migrations up to ``revision``; safe to run from several processes at once. A schema
    already at head is left as it is without importing Alembic (every start of a deployed sidecar)."""
    if revision == "head":
        head = head_revision()
        if current_revision(engine) == head:
            return head
    from alembic import command

    with _migration_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_MIGRATION_LOCK})
        command.upgrade(_config(connection), revision)
    return current_revision(engine)


@contextlib.contextmanager
def _migration_lock(engine: sa.Engine):
    """Workers starting together on one SQLite file migrate one at a time (PostgreSQL locks in SQL)."""
    path = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.migrate-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_engine(settings) -> sa.Engine:
    """The engine for these settings, with its schema current (SQLite) or checked (PostgreSQL)."""
    url = database_url(settings)
    engine = make_engine(url)
    head = head_revision()
    try:
        current = current_revision(engine)
    except sa.exc.OperationalError as exc:
        raise StoreError(f"database {engine.url.render_as_string(hide_password=True)} is unreachable: "
                         f"{exc.orig}") from None
    if current == head:
        return engine
    if engine.dialect.name == "sqlite":
        log.info("migrating %s from %s to %s", engine.url.database, current, head)
        migrate(engine)
        return engine
    raise StoreError(f"database schema is at {current or 'nothing'}, this sidecar needs {head}: "
                     "run `mistral-sidecar migrate` (every `mistral-sidecar serve` start does)")
