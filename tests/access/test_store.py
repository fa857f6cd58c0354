"""Storage and its commands: URLs, migrations on SQLite and PostgreSQL, ``mistral-sidecar migrate`` and
``keys create|list|revoke``, and the start-up refusal to serve beyond loopback without a master key."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from sidecar import cli, store
from sidecar.settings import Settings

from ..databases import postgres_schema

ROOT = Path(__file__).resolve().parents[2]


def test_database_urls():
    assert store.database_url(Settings(database_url="postgres://u@h/db")) == "postgresql+psycopg://u@h/db"
    assert store.database_url(Settings(database_url="postgresql://u@h/db")) == "postgresql+psycopg://u@h/db"
    assert store.database_url(Settings(db_path=Path("/srv/side.sqlite3"))) == "sqlite:////srv/side.sqlite3"
    assert Settings.from_env({}).db_path == Path("mistral-sidecar.sqlite3")
    assert Settings.from_env({"SIDECAR_DB_PATH": "/data/s.db"}).db_path == Path("/data/s.db")


def _open(path: str, results) -> None:
    results.put(store.current_revision(store.open_engine(Settings(db_path=Path(path)))))


def test_a_new_sqlite_file_is_migrated_at_start_up_once_even_by_racing_workers(tmp_path):
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [context.Process(target=_open, args=(str(tmp_path / "new.sqlite3"), results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    revisions = {results.get(timeout=60) for _ in workers}
    assert revisions == {store.head_revision()}
    engine = store.make_engine(f"sqlite:///{tmp_path / 'new.sqlite3'}")
    assert {"keys", "spend_logs", "alembic_version"} <= set(sa.inspect(engine).get_table_names())
    indexes = {ix["name"] for ix in sa.inspect(engine).get_indexes("spend_logs")}
    assert {"ix_spend_logs_ts", "ix_spend_logs_key_hash", "ix_spend_logs_end_user", "ix_spend_logs_model"} <= indexes
    with engine.connect() as connection:
        assert connection.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"


def test_a_worker_checks_a_current_schema_without_importing_alembic_or_other_dialects(tmp_path):
    """The head is read from the migration scripts, as Alembic reads it; Alembic is imported only to migrate
    (``migrate`` on a current schema, every start of a deployed sidecar, does not import it either)."""
    from alembic.script import ScriptDirectory

    assert store.head_revision() == ScriptDirectory.from_config(store._config(None)).get_current_head()
    path = tmp_path / "current.sqlite3"
    assert store.migrate(store.make_engine(f"sqlite:///{path}")) == store.head_revision()
    probe = ("import sys; from pathlib import Path; from sidecar import store; from sidecar.settings import Settings; "
             f"engine = store.open_engine(Settings(db_path=Path({str(path)!r}))); store.migrate(engine); "
             "print(sorted({'alembic', 'sqlalchemy.dialects.postgresql'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]  # nor PostgreSQL's dialect, on SQLite


@pytest.mark.postgres
def test_postgres_is_migrated_by_the_release_command_not_at_start_up(tmp_path):
    with postgres_schema() as url:
        settings = Settings(database_url=url, db_path=tmp_path / "local.sqlite3")
        with pytest.raises(store.StoreError, match="run `mistral-sidecar migrate`"):
            store.open_engine(settings)
        migrated = subprocess.run([sys.executable, "-m", "sidecar.cli", "migrate"], cwd=ROOT, capture_output=True,
                                  text=True, env={"PATH": "/usr/bin:/bin", "DATABASE_URL": url}, timeout=60)
        assert migrated.returncode == 0, migrated.stderr
        assert f"is at revision {store.head_revision()}" in migrated.stdout
        engine = store.open_engine(settings)
        assert {"keys", "spend_logs"} <= set(sa.inspect(engine).get_table_names())
        assert store.migrate(engine) == store.head_revision()  # idempotent
        engine.dispose()


def test_an_unreachable_database_fails_start_up_with_a_clear_message(tmp_path):
    settings = Settings(database_url="postgresql://nobody:secret-pw@127.0.0.1:9/x", db_path=tmp_path / "l")
    with pytest.raises(store.StoreError) as failed:
        store.open_engine(settings)
    assert "unreachable" in str(failed.value) and "secret-pw" not in str(failed.value)


def test_keys_cli_uses_the_same_store_as_the_api(tmp_path, monkeypatch, capsys, make_app):
    db = tmp_path / "cli.sqlite3"
    monkeypatch.setenv("SIDECAR_DB_PATH", str(db))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert cli.main(["keys", "create", "--alias", "batch-job", "--models", "mistral-small-latest,codestral-latest",
                     "--rpm", "10", "--max-budget", "2.5", "--budget-duration", "30d"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["key"].startswith("sk-") and created["models"] == ["mistral-small-latest", "codestral-latest"]

    client = make_app(master_key="sk-m", database_url=f"sqlite:///{db}").test_client()
    info = client.get("/key/info", headers={"Authorization": f"Bearer {created['key']}"}).get_json()["info"]
    assert info["key_alias"] == "batch-job" and info["rpm_limit"] == 10 and info["max_budget"] == 2.5

    assert cli.main(["keys", "list"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [k["key_alias"] for k in listed] == ["batch-job"] and created["key"] not in json.dumps(listed)

    assert cli.main(["keys", "revoke", "--alias", "batch-job"]) == 0
    assert json.loads(capsys.readouterr().out)["deleted_keys"] == [created["token"]]
    assert cli.main(["keys", "revoke", created["key"]]) == 1
    assert cli.main(["keys", "create", "--duration", "forever"]) == 2
    assert "duration must look like" in capsys.readouterr().err
