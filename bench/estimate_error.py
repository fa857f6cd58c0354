"""How far the sidecar's own token counts (core/estimate.py, used for cut streams and reservations) fall
from the usage Mistral reported, on every recorded stream in contracts/ that carries usage.

Each stream is fed to the relay's meter without its usage event, as if cut just before it, and the
estimate is compared with the usage the contract records. Prints one line per stream and the totals.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar.core import usage as usage_mod  # noqa: E402
from sidecar.core.sse import UsageWatcher  # noqa: E402


def _events(response: dict) -> list[bytes]:
    out = []
    for event in response.get("events") or []:
        data = event.get("data")
        text = data if isinstance(data, str) else json.dumps(data)
        name = event.get("event")
        out.append((f"event: {name}\n" if name else "").encode() + b"data: " + text.encode() + b"\n\n")
    return out


def main() -> None:
    rows = []
    for path in sorted((ROOT / "contracts").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text()) or {}
        kind = usage_mod.kind_for(doc.get("operation", ""))
        if kind not in ("chat", "fim", "agents", "conversation"):
            continue
        for exchange in doc.get("exchanges") or []:
            request, response = exchange.get("request") or {}, exchange.get("response") or {}
            events = _events(response)
            real = UsageWatcher(kind, request.get("json"))
            for event in events:
                real.feed(event)
            truth = real.usage
            if not events or truth is None or not truth.completion_tokens:
                continue
            cut = UsageWatcher(kind, request.get("json"))
            for event in events:
                if b"usage" not in event:
                    cut.feed(event)
            guess = cut.estimate()
            rows.append((f"{path.stem}: {exchange.get('name')}", truth, guess))
    for name, truth, guess in rows:
        print(f"{name}: prompt {truth.prompt_tokens} ~ {guess.prompt_tokens}, "
              f"completion {truth.completion_tokens} ~ {guess.completion_tokens}")
    for field in ("prompt_tokens", "completion_tokens"):
        real = sum(getattr(t, field) for _n, t, _g in rows)
        est = sum(getattr(g, field) for _n, _t, g in rows)
        print(f"{field}: {len(rows)} streams, reported {real}, estimated {est}, error {100 * (est - real) / real:+.0f} %")


if __name__ == "__main__":
    main()
