"""Batch jobs metered: who created each job (``batch_jobs``), and one spend record per job, at the
batch price, when its results are read through the sidecar.

Mistral bills a batch job when it runs, hours after the request that created it, and no answer of
the batch API carries usage; only the results do: each line of the job's output file (or each item
of ``outputs`` when a finished job is read with ``inline=true``) holds one request's answer and its
usage. So the key is remembered when the job is created, the output file's id when a read of the job
names it, and the cost is recorded when the file is downloaded, read line by line as it is relayed.
``spend_logs.batch_job`` is unique: a second download, in this worker or another, records nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import sqlalchemy as sa

from sidecar.access.keys import CHARGE, charge_params
from sidecar.accounting.spend import ROW_COLUMNS
from sidecar.clock import SYSTEM, Clock
from sidecar.core.batch import FINISHED, OutputTally
from sidecar.core.exchange import Exchange
from sidecar.core.fields import model_of
from sidecar.store.health import STORE_ERRORS
from sidecar.store.tables import batch_jobs, keys, spend_logs

log = logging.getLogger("sidecar.accounting.batches")
CREATE = "jobs_api_routes_batch_create_batch_job"
READS = frozenset({"jobs_api_routes_batch_get_batch_job", "jobs_api_routes_batch_get_batch_jobs",
                   "jobs_api_routes_batch_cancel_batch_job"})
DOWNLOAD = "files_api_routes_download_file"
OPERATIONS = frozenset({CREATE, DOWNLOAD, *READS})
RECORD_ROUTE = "/v1/batch/jobs/{job_id}"  # a job's record: operation CREATE, this route, batch_job set
_ID_MAX = 64


def _id(value: object) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= _ID_MAX else None


def _short(value: object, size: int = 255):
    return value[:size] if isinstance(value, str) else None


class BatchLedger:
    """Remembers batch jobs created through the sidecar and records each one's cost once."""

    def __init__(self, engine: sa.Engine, prices, *, spend=None, clock: Clock = SYSTEM):
        self.engine = engine
        self.prices = prices
        self.spend = spend  # spend.SpendLog: its cached spend of the charged key is dropped
        self.clock = clock
        self._unpriced_warned: set[str] = set()

    # -- what the pipeline shows it ----------------------------------------------------------------
    def answered(self, ex: Exchange, content: bytes) -> None:
        """A JSON answer of a batch operation (or an output file served as JSON, read whole)."""
        if ex.status != 200 or ex.operation_id not in OPERATIONS:
            return
        if ex.operation_id == DOWNLOAD:
            meter = self.output_meter(ex)
            if meter is not None:
                meter.feed(content)
                meter.close(complete=True)
            return
        try:
            data = json.loads(content)
        except (ValueError, RecursionError):
            return
        if not isinstance(data, dict):
            return
        try:
            if ex.operation_id == CREATE:
                self._remember(ex, data)
            else:
                self._learn(data["data"] if isinstance(data.get("data"), list) else [data])
        except STORE_ERRORS as exc:  # the answer is in hand: it goes out; the job may go unmetered
            log.warning("batch job answer of request %s not read into the store (%s): the job is metered "
                        "only if a later read of it succeeds", ex.request_id, type(exc).__name__)

    def output_meter(self, ex: Exchange) -> OutputMeter | None:
        """A meter for a download of an unmetered job's output file, or None (any other file)."""
        file_id = _id(ex.path_params.get("file_id"))
        if ex.status != 200 or ex.operation_id != DOWNLOAD or file_id is None:
            return None
        try:
            with self.engine.connect() as connection:
                row = connection.execute(_unmetered().where(batch_jobs.c.output_file == file_id)).mappings().first()
        except STORE_ERRORS as exc:
            log.warning("output file of request %s not checked against batch jobs (%s): not metered now",
                        ex.request_id, type(exc).__name__)
            return None
        return None if row is None else OutputMeter(self, dict(row))

    # -- the store ------------------------------------------------------------------------------------
    def _remember(self, ex: Exchange, job: dict) -> None:
        job_id = _id(job.get("id"))
        if job_id is None:
            return
        row = {"job_id": job_id, "key_hash": ex.key_hash, "key_alias": ex.key_alias, "end_user": ex.end_user,
               "model": _short(job.get("model") or model_of(ex.request_json) or None),
               "endpoint": _short(job.get("endpoint")), "output_file": _id(job.get("output_file")),
               "created_at": self.clock.wall()}
        try:
            with self.engine.begin() as connection:
                connection.execute(batch_jobs.insert().values(**row))
        except sa.exc.IntegrityError:  # the same answer seen twice (a replayed contract): one creator
            pass

    def _learn(self, jobs: list) -> None:
        """Output file ids of jobs not yet metered; a finished job read inline is metered at once."""
        named = {job["id"]: job for job in jobs if isinstance(job, dict) and _id(job.get("id"))
                 and (_id(job.get("output_file")) or _inline_results(job))}
        if not named:
            return
        with self.engine.begin() as connection:
            rows = connection.execute(_unmetered().where(batch_jobs.c.job_id.in_(list(named)))).mappings().all()
            for row in rows:
                output_file = _id(named[row["job_id"]].get("output_file"))
                if output_file and output_file != row["output_file"]:
                    connection.execute(batch_jobs.update().where(batch_jobs.c.job_id == row["job_id"])
                                       .values(output_file=output_file))
        for row in rows:
            job = named[row["job_id"]]
            if _inline_results(job):
                tally = OutputTally(row["endpoint"], row["model"])
                for output in job["outputs"]:
                    tally.add(output)
                self.settle(dict(row), tally, "inline outputs")

    def settle(self, job: dict, tally: OutputTally, source: str) -> bool:
        """Record the job's cost at the batch price and charge its creator, once; True if this did."""
        if tally.unreadable:
            log.warning("batch job %s: %d of the %d lines of its %s are not JSON objects and are not charged",
                        job["job_id"], tally.unreadable, tally.lines, source)
        if not tally.charged:
            return False  # nothing Mistral bills (every request failed) or nothing readable: nothing to record
        cost = self._cost(tally)
        total = tally.total()
        row = dict.fromkeys(ROW_COLUMNS)
        row.update(ts=self.clock.wall(), request_id=job["job_id"], key_hash=job["key_hash"],
                   key_alias=job["key_alias"], end_user=job["end_user"], model=_short(total.model),
                   operation=CREATE, route=RECORD_ROUTE, status=200, prompt_tokens=total.prompt_tokens,
                   completion_tokens=total.completion_tokens, total_tokens=total.total_tokens, pages=total.pages,
                   audio_seconds=total.audio_seconds, characters=total.characters, cost=cost, streamed=False,
                   estimated=False, batch_job=job["job_id"])
        try:
            with self.engine.begin() as connection:
                connection.execute(spend_logs.insert().values(**row))
                if cost and job["key_hash"]:
                    duration = connection.execute(sa.select(keys.c.budget_duration)
                                                  .where(keys.c.token == job["key_hash"])).scalar()
                    connection.execute(CHARGE, charge_params(job["key_hash"], cost, duration, self.clock.wall()))
        except sa.exc.IntegrityError:  # recorded already (another download, another worker): once per job
            return False
        except STORE_ERRORS as exc:
            log.warning("batch job %s: its cost could not be recorded now (%s); the next read of its results "
                        "through the sidecar records it", job["job_id"], type(exc).__name__)
            return False
        if self.spend is not None and job["key_hash"]:
            self.spend.forget(job["key_hash"])
        log.info("batch job %s recorded from its %s: %d requests charged, cost %s", job["job_id"], source,
                 tally.charged, cost)
        return True

    def _cost(self, tally: OutputTally) -> float | None:
        """The sum over the lines' models at the batch price; None when no line's model is priced."""
        cost = None
        for (model, annotated), usage in tally.usages.items():
            part = self.prices.cost(model, replace(usage, annotated=annotated), batch=True) if self.prices else None
            if part is None:
                if model not in self._unpriced_warned:
                    self._unpriced_warned.add(model)
                    log.warning("no price for model %r of a batch job; its lines are not charged (give it one "
                                "with model_info in its model_list entry of config.yaml)", model)
                continue
            cost = (cost or 0.0) + part
        return None if cost is None else round(cost, 10)


def _inline_results(job: dict) -> bool:
    """A finished job read with ``inline=true``: its ``outputs`` are its results."""
    return job.get("status") in FINISHED and isinstance(job.get("outputs"), list)


def _unmetered():
    """Batch jobs whose cost is not recorded yet."""
    recorded = sa.select(spend_logs.c.id).where(spend_logs.c.batch_job == batch_jobs.c.job_id).exists()
    return sa.select(batch_jobs).where(~recorded)


class OutputMeter:
    """Reads a job's output file as the relay passes it on; records the job when the file ended whole.

    Nothing here may break the relay: the client gets the file unchanged whatever this makes of it.
    """

    __slots__ = ("ledger", "job", "tally", "failed")

    def __init__(self, ledger: BatchLedger, job: dict):
        self.ledger = ledger
        self.job = job
        self.tally = OutputTally(job["endpoint"], job["model"])
        self.failed = False

    def feed(self, chunk: bytes) -> None:
        if self.failed:
            return
        try:
            self.tally.feed(chunk)
        except Exception:  # a bug in the tally: the download goes on, the job is not metered, loudly
            self.failed = True
            log.exception("batch job %s: its output file could not be read; not metered", self.job["job_id"])

    def close(self, complete: bool) -> None:
        """``complete``: the whole file was relayed (not cut by the client or the upstream)."""
        if not complete or self.failed:
            return
        try:
            self.tally.finish()
            self.ledger.settle(self.job, self.tally, "output file")
        except Exception:
            log.exception("batch job %s: its cost could not be recorded", self.job["job_id"])
