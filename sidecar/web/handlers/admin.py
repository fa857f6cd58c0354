"""The key administration routes (``/key/*``, LiteLLM's names and fields), over ``keys.KeyStore``.

Declared in openapi.yaml like every route, so bodies and queries are validated, and the master key
required (``SidecarMasterKey`` security), before a handler runs; only ``/key/info`` is open to a
virtual key, for its own key.
"""

from __future__ import annotations

from flask import jsonify

from sidecar.core.errors import BadRequest, NotFound, Unauthorized
from sidecar.web.handlers import OwnRequest


def _fields(call: OwnRequest) -> dict:
    return dict(call.body.json or {})


def handlers(keys, spend, limits) -> dict:
    """``keys``: the KeyStore; ``spend``: the SpendLog (key spend in the answers); ``limits``: Limits or None."""

    def generate(call: OwnRequest):
        return jsonify(keys.generate(_fields(call)))

    def info(call: OwnRequest):
        """Master: any key (``?key=``); a virtual key: itself only, with or without ``?key=``."""
        caller, ref = call.ex.caller, call.args.get("key")
        if caller.is_master:
            if not ref:
                raise BadRequest("Name the key to describe: /key/info?key=<key or token>.", param="key")
            token = keys.token_of(ref)
        else:
            token = caller.key_hash
            if ref and keys.token_of(ref) != token:
                raise Unauthorized("A virtual key may only read its own info.", code="master_key_required")
        spend.flush()  # spend includes this worker's queued records (spend.SpendLog)
        shown = keys.info(token)
        state = limits.state(token, shown) if limits is not None else None
        return jsonify({"key": token, "info": shown, "limits_state": state})

    def update(call: OwnRequest):
        fields = _fields(call)
        answer = keys.update(fields.pop("key"), fields)
        spend.forget(answer["token"])  # an operator may have set its spend
        if limits is not None:  # ... or its budget: every worker re-reads it at its next admission
            limits.spend_changed(answer["token"])
        return jsonify(answer)

    def delete(call: OwnRequest):
        fields = _fields(call)
        refs, aliases = fields.get("keys") or [], fields.get("key_aliases") or []
        if not refs and not aliases:
            raise BadRequest("Name the keys to delete in 'keys' or 'key_aliases'.", param="keys")
        deleted = keys.delete(refs, aliases)
        if not deleted:
            raise NotFound("None of these keys exists.", param="keys")
        return jsonify({"deleted_keys": deleted})

    def list_keys(call: OwnRequest):
        args = call.args
        return jsonify(keys.list(
            page=args.get("page", 1, type=int), size=args.get("size", 100, type=int), user_id=args.get("user_id"),
            key_alias=args.get("key_alias"), full=args.get("return_full_object", "").lower() in ("1", "true")))

    def regenerate(call: OwnRequest):
        fields = _fields(call)
        return jsonify(keys.regenerate(fields.pop("key"), fields))

    return {"admin.key_generate": generate, "admin.key_info": info, "admin.key_update": update,
            "admin.key_delete": delete, "admin.key_list": list_keys, "admin.key_regenerate": regenerate}
