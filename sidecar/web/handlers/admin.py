"""The key administration routes (``/key/*``, LiteLLM's names and fields), over ``keys.KeyStore``.

Declared in openapi.yaml like every route, so bodies and queries are validated before a handler runs.
Every route needs the master key, except that a virtual key may read its own ``/key/info``.
"""

from __future__ import annotations

from flask import jsonify, request

from sidecar.core.errors import BadRequest, NotFound, Unauthorized


def _store(pipeline):
    return pipeline.auth.keys


def _master(pipeline, ex) -> None:
    pipeline.auth.require_master(ex.caller)


def _fields(body) -> dict:
    return dict(body.json or {})


def generate(pipeline, ex, body, path_params):
    _master(pipeline, ex)
    return jsonify(_store(pipeline).generate(_fields(body)))


def info(pipeline, ex, body, path_params):
    """Master: any key (``?key=``); a virtual key: itself only, with or without ``?key=``."""
    store, caller, ref = _store(pipeline), ex.caller, request.args.get("key")
    if caller.is_master:
        if not ref:
            raise BadRequest("Name the key to describe: /key/info?key=<key or token>.", param="key")
        token = store.token_of(ref)
    else:
        token = caller.key_hash
        if ref and store.token_of(ref) != token:
            raise Unauthorized("A virtual key may only read its own info.", code="master_key_required")
    pipeline.accountant.spend.flush()  # spend includes this worker's queued records (spend.SpendLog)
    shown = store.info(token)
    limits = pipeline.accountant.limits
    state = limits.state(token, shown) if limits is not None else None
    return jsonify({"key": token, "info": shown, "limits_state": state})


def update(pipeline, ex, body, path_params):
    _master(pipeline, ex)
    fields = _fields(body)
    answer = _store(pipeline).update(fields.pop("key"), fields)
    pipeline.accountant.spend.forget(answer["token"])  # an operator may have set its spend
    return jsonify(answer)


def delete(pipeline, ex, body, path_params):
    _master(pipeline, ex)
    fields = _fields(body)
    refs, aliases = fields.get("keys") or [], fields.get("key_aliases") or []
    if not refs and not aliases:
        raise BadRequest("Name the keys to delete in 'keys' or 'key_aliases'.", param="keys")
    deleted = _store(pipeline).delete(refs, aliases)
    if not deleted:
        raise NotFound("None of these keys exists.", param="keys")
    return jsonify({"deleted_keys": deleted})


def list_keys(pipeline, ex, body, path_params):
    _master(pipeline, ex)
    args = request.args
    return jsonify(_store(pipeline).list(
        page=args.get("page", 1, type=int), size=args.get("size", 100, type=int), user_id=args.get("user_id"),
        key_alias=args.get("key_alias"), full=args.get("return_full_object", "").lower() in ("1", "true")))


def regenerate(pipeline, ex, body, path_params):
    _master(pipeline, ex)
    fields = _fields(body)
    return jsonify(_store(pipeline).regenerate(fields.pop("key"), fields))


HANDLERS = {"admin.key_generate": generate, "admin.key_info": info, "admin.key_update": update,
            "admin.key_delete": delete, "admin.key_list": list_keys, "admin.key_regenerate": regenerate}
