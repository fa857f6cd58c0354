"""The app factory: ``create_app(settings)`` wires settings, the spec table, validators, the upstream,
auth and accounting into one Flask app; it does nothing else.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from flask import Flask

from sidecar.access.auth import Authenticator
from sidecar.access.journal import Journal
from sidecar.access.keys import KeyStore
from sidecar.access.limits import Limits, RedisCounters, counters_for, journal_path, moved_paths, store_tag
from sidecar.accounting import metrics
from sidecar.accounting import telemetry as observability
from sidecar.accounting.accountant import Accountant
from sidecar.accounting.batches import BatchLedger
from sidecar.accounting.spend import SpendLog
from sidecar.clock import SYSTEM, Clock
from sidecar.core.pricing import PriceTable
from sidecar.core.redact import Redactor
from sidecar.core.validation import load_compiled
from sidecar.settings import Settings
from sidecar.store import open_engine
from sidecar.store.health import StoreWatch
from sidecar.upstream import transports
from sidecar.upstream.client import Upstream
from sidecar.web import routes
from sidecar.web.handlers import admin, health, reports, ui
from sidecar.web.pipeline import Pipeline

_SHUTDOWN: list = []


def shutdown_hooks() -> tuple:
    """Callables that flush and close what the apps of this process hold (run at worker exit)."""
    return tuple(_SHUTDOWN)


@lru_cache(maxsize=1)
def _prices() -> PriceTable:
    return PriceTable.load()


def _price_table(settings: Settings) -> PriceTable:
    """The packaged prices, config aliases billed as the model they route to, then the config's own
    ``model_info`` prices laid over them: the one place overrides apply."""
    config = settings.config
    if config is None:
        return _prices()
    routes = {entry.alias: entry.model for entry in config.models}
    return _prices().with_routes(routes).with_overrides(config.model_prices)


def create_app(settings: Settings | None = None, *, adapter=None, clock: Clock | None = None,
               telemetry=None) -> Flask:
    """Build the WSGI app; ``adapter`` replaces the upstream transport (tests, replay, record), ``clock``
    the system clock (tests move time with a ``FakeClock``): every part of the app reads time from it.
    ``telemetry`` replaces the OpenTelemetry set up from the settings (tests give in-memory exporters)."""
    settings = settings or Settings.from_env()
    clock = clock or SYSTEM
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec, validators = load_compiled(settings.spec_path)
    engine = open_engine(settings)
    keys = KeyStore(engine, clock=clock)
    store = StoreWatch(engine, clock)
    spend_log = SpendLog(engine, clock=clock, watch=store)
    prices = _price_table(settings)
    limits = Limits(counters_for(settings, clock), clock=clock, journal=Journal(journal_path(settings)),
                    exempt=frozenset(op.id for op in spec.operations if op.handler), spend=spend_log.committed_spend,
                    store=store_tag(settings))
    spend_log.on_committed, limits.on_orphans = limits.recorded, spend_log.recover
    limits.sweep_at_start()  # what workers that died before this one started left unrecorded
    if (moved := moved_paths(settings)) is not None:
        limits.sweep_moved(*moved)
    redactor = Redactor(settings.secrets())
    readiness = health.Readiness({"store": store.check})
    if isinstance(limits.counters, RedisCounters):
        readiness.add("limiter", limits.counters.probe)
    meter = metrics.Metrics(settings.metrics_dir, known_models=prices.names())
    handlers = {**health.handlers(readiness, len(spec.operations), settings),
                **admin.handlers(keys, spend_log, limits), **metrics.handlers(meter),
                **reports.handlers(spend_log, prices), **ui.handlers()}
    pipeline = Pipeline(
        settings=settings,
        spec=spec,
        validators=validators,
        upstream=Upstream(settings, adapter=adapter or transports.adapter_for(settings, spec, clock), clock=clock),
        authenticator=Authenticator(settings.master_key, keys=keys),
        accountant=Accountant(prices=prices, limits=limits, sinks=[limits.record, spend_log.record],
                              metrics=meter,
                              spend=spend_log, log_bodies=settings.log_bodies, clock=clock,
                              telemetry=telemetry or observability.for_settings(settings), redactor=redactor,
                              output_reserve=settings.output_reserve,
                              batches=BatchLedger(engine, prices, spend=spend_log, clock=clock)),
        handlers=handlers,
        clock=clock,
        redactor=redactor,
        store=store,
        auth_overrides={"sidecar_metrics": "master"} if settings.metrics_auth else None,
    )
    closers = (
        pipeline.upstream.close,
        spend_log.close,  # before the engine goes: it writes the last spend records
        limits.close,  # after them: what is still admitted is swept by the other workers
        engine.dispose,
        observability.flush,  # the last spans, once the last requests have finished
    )
    _SHUTDOWN.extend(closers)
    app = Flask("sidecar")
    app.config["MAX_CONTENT_LENGTH"] = None
    app.extensions["sidecar"] = pipeline
    app.extensions["sidecar.close"] = closers  # this app's own, in order (an embedding process, tests)
    app.extensions["sidecar.readiness"] = readiness
    routes.register(app, pipeline)
    return app
