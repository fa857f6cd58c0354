"""What the sidecar reads from a request body's own fields, read one way everywhere: the model it names
and whether it asks for a stream (a JSON ``true``, or a form field ``"true"``)."""

from __future__ import annotations


def model_of(json: object = None, form: dict | None = None) -> str | None:
    """The JSON body's ``model``, else the form's; None unless it is a string."""
    model = json.get("model") if isinstance(json, dict) else (form or {}).get("model")
    return model if isinstance(model, str) else None


def wants_stream(json: object = None, form: dict | None = None) -> bool:
    if isinstance(json, dict):
        return json.get("stream") is True
    return str((form or {}).get("stream", "")).strip().lower() == "true"
