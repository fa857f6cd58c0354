"""The spend report routes: ``GET /spend/logs`` (the records, filtered and paged) and ``GET /spend/report``
(totals grouped by key, model, deployment, end user or day), over ``spend.SpendLog``.

The master key sees everything; a virtual key sees only its own records, whatever it asks for.
"""

from __future__ import annotations

from dataclasses import asdict

from flask import jsonify

from sidecar.accounting.spend import GROUPS, parse_time
from sidecar.core.errors import BadRequest
from sidecar.web.handlers import OwnRequest


def _filters(call: OwnRequest) -> dict:
    args = call.args
    filters = {"key_hash": args.get("key_hash"), "key_alias": args.get("key_alias"), "end_user": args.get("end_user"),
               "model": args.get("model"), "deployment": args.get("deployment"), "operation": args.get("operation"),
               "start": parse_time(args.get("start"), "start"), "end": parse_time(args.get("end"), "end"),
               "proxied": args.get("proxied", "").lower() == "true"}
    caller = call.ex.caller
    if caller is not None and not caller.is_master:
        filters["key_hash"], filters["key_alias"] = caller.key_hash, None  # a virtual key reads only itself
    return filters


def handlers(spend, prices) -> dict:
    """``spend``: the SpendLog; ``prices``: the PriceTable in effect."""

    def spend_log():
        spend.flush()  # this worker's queued records appear at once; other workers' within a flush interval
        return spend

    def logs(call: OwnRequest):
        args = call.args
        page, size = args.get("page", 1, type=int), args.get("page_size", 100, type=int)
        return jsonify(spend_log().logs(_filters(call), page=max(1, page), size=max(1, min(size, 1000))))

    def report(call: OwnRequest):
        group_by = call.args.get("group_by", "key")
        if group_by not in GROUPS:
            raise BadRequest(f"group_by must be one of {', '.join(GROUPS)}; got {group_by!r}.", param="group_by")
        return jsonify(spend_log().report(group_by, _filters(call)))

    def price_list(call: OwnRequest):
        """The price table in effect (packaged prices with the config's overrides), one row per priced model."""
        aliases: dict[str, list[str]] = {}
        for alias, model in prices.aliases.items():
            aliases.setdefault(model, []).append(alias)
        models = [{"model": name, "aliases": sorted(aliases.get(name, [])),
                   **{k: v for k, v in asdict(price).items() if v is not None}}
                  for name, price in sorted(prices.models.items())]
        return jsonify({"as_of": prices.as_of, "source": prices.source, "batch_discount": prices.batch_discount,
                        "models": models})

    return {"spend.logs": logs, "spend.report": report, "spend.prices": price_list}
