"""The ``mistral-sidecar`` command: serve (gunicorn with the production settings) and friends."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _serve(args) -> int:
    env = os.environ
    if args.host:
        env["SIDECAR_HOST"] = args.host
    if args.port:
        env["PORT"] = str(args.port)
    if args.workers:
        env["WEB_CONCURRENCY"] = str(args.workers)
    if args.config:
        env["SIDECAR_CONFIG"] = args.config
    if args.replay is not None:
        env["MISTRAL_UPSTREAM"] = "replay"
        if args.replay:
            env["SIDECAR_CONTRACTS"] = args.replay
    if args.replay_speed is not None:
        env["SIDECAR_REPLAY_SPEED"] = str(args.replay_speed)
    if args.fallback:
        env["SIDECAR_CONTRACTS_FALLBACK"] = args.fallback
    if args.record is not None:
        env["MISTRAL_UPSTREAM"] = "record"
        if args.record:
            env["SIDECAR_CONTRACTS"] = args.record
    argv = [sys.executable, "-m", "gunicorn", "sidecar:create_app()", "-c", "python:sidecar.gunicorn_conf"]
    os.execv(sys.executable, argv)
    return 0  # not reached


def _contracts(args) -> int:
    """``contracts check DIR``: the checks replay runs at start-up, for an app's own directory (exit 1 on a problem)."""
    from .contracts.checking import check_directory, drift
    from .contracts.fileformat import ContractError
    from .core.spec import Spec
    from .settings import DEFAULT_SPEC

    spec = Spec.load(args.spec or DEFAULT_SPEC)
    drifted = drift(args.directory, spec) if Path(args.directory).is_dir() else []
    try:
        found = check_directory(args.directory, spec)
    except ContractError as error:
        for line in dict.fromkeys([*drifted, *error.problems]):
            print(line, file=sys.stderr)
        print(f"{len(error.problems)} problem(s) in {args.directory}", file=sys.stderr)
        return 1
    print(f"{len(found)} exchange(s) in {args.directory}: all conform to {args.spec or DEFAULT_SPEC.name}")
    return 0


def _migrate(args) -> int:
    """Apply the schema migrations to DATABASE_URL (or the SQLite file); web's start runs it too (idempotent)."""
    import sqlalchemy as sa

    from .settings import Settings
    from .store import database_url, make_engine, migrate

    engine = make_engine(database_url(Settings.from_env()))
    where = engine.url.render_as_string(hide_password=True)
    try:
        revision = migrate(engine)
    except sa.exc.OperationalError as exc:
        print(f"error: database {where} is unreachable: {str(exc.orig).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if not args.quiet:
        print(f"database {where} is at revision {revision}")
    return 0


def _key_store():
    from sidecar.access.keys import KeyStore

    from .settings import Settings
    from .store import open_engine

    return KeyStore(open_engine(Settings.from_env()))


def _keys(args) -> int:
    """``keys create|list|revoke``: the same ``KeyStore`` the /key/* routes use, without a server."""
    from sidecar.core.errors import SidecarError

    store = _key_store()
    try:
        if args.action == "create":
            fields = {name: value for name, value in (
                ("key_alias", args.alias), ("models", args.models.split(",") if args.models else None),
                ("max_budget", args.max_budget), ("budget_duration", args.budget_duration),
                ("duration", args.duration), ("rpm_limit", args.rpm), ("tpm_limit", args.tpm),
                ("max_parallel_requests", args.parallel), ("user_id", args.user_id)) if value is not None}
            print(json.dumps(store.generate(fields), indent=2))
        elif args.action == "list":
            for info in store.list(size=1000, full=True)["keys"]:
                print(json.dumps(info))
        else:
            deleted = store.delete(args.refs, args.alias or ())
            if not deleted:
                print("no such key", file=sys.stderr)
                return 1
            print(json.dumps({"deleted_keys": deleted}))
    except SidecarError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .shipped import version

    parser = argparse.ArgumentParser(prog="mistral-sidecar", description="The whole Mistral API behind one local gateway.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the sidecar under gunicorn (127.0.0.1:4000 by default)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1; SIDECAR_HOST)")
    serve.add_argument("--port", type=int, help="port (default 4000; PORT)")
    serve.add_argument("--workers", type=int, help="gunicorn workers (default: one per core; WEB_CONCURRENCY)")
    serve.add_argument("--config", help="a LiteLLM-style config.yaml (SIDECAR_CONFIG)")
    serve.add_argument("--replay", nargs="?", const="", default=None, metavar="DIR",
                       help="answer from recorded contracts, no network (default dir: contracts/)")
    serve.add_argument("--record", nargs="?", const="", default=None, metavar="DIR",
                       help="forward to Mistral and record each new exchange into DIR")
    serve.add_argument("--replay-speed", type=float, metavar="N",
                       help="replayed streams keep their recorded pace divided by N; 0: all at once (default 1)")
    serve.add_argument("--fallback", choices=("none", "shipped"),
                       help="with --replay DIR: the shipped contracts answer what DIR does not (default none)")
    serve.set_defaults(func=_serve)
    migrate = sub.add_parser("migrate", help="apply database migrations (DATABASE_URL, else the SQLite file)")
    migrate.add_argument("--quiet", action="store_true", help="print nothing unless it fails")
    migrate.set_defaults(func=_migrate)
    contracts = sub.add_parser("contracts", help="work with contract directories").add_subparsers(dest="action",
                                                                                                 required=True)
    check = contracts.add_parser("check", help="check a contracts directory as replay would load it (exit 1 on a problem)")
    check.add_argument("directory", metavar="DIR")
    check.add_argument("--spec", help="the OpenAPI document (default: the one shipped)")
    check.set_defaults(func=_contracts)
    keys = sub.add_parser("keys", help="create, list and revoke virtual keys").add_subparsers(dest="action",
                                                                                             required=True)
    create = keys.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("--alias", help="a unique name for the key")
    create.add_argument("--models", help="comma-separated allowlist (default: every model)")
    create.add_argument("--max-budget", type=float, help="USD the key may spend (per --budget-duration)")
    create.add_argument("--budget-duration", help="budget period: 30s, 1h, 30d, 1mo ...")
    create.add_argument("--duration", help="expire after: 30s, 1h, 30d ...")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute")
    create.add_argument("--parallel", type=int, help="requests in flight at once")
    create.add_argument("--user-id")
    keys.add_parser("list", help="print every live key as a JSON line (never the key itself)")
    revoke = keys.add_parser("revoke", help="delete keys, named by key or token (or --alias)")
    revoke.add_argument("refs", nargs="*", metavar="KEY")
    revoke.add_argument("--alias", action="append", help="delete the key with this alias (repeatable)")
    for parser_ in (create, keys.choices["list"], revoke):
        parser_.set_defaults(func=_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .core.config import ConfigError
    from .settings import SettingsError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (SettingsError, ConfigError) as error:  # a setting, not a bug: one line, no traceback
        print(f"mistral-sidecar: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
