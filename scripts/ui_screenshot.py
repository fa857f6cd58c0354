"""Take the README's screenshot of the dashboard's spend page (docs/ui-spend.png).

A throwaway sidecar (temporary SQLite, no upstream: nothing is proxied) gets three keys and two weeks
of made-up, seeded spend records; headless Chromium (Debian's package, driven by Playwright) signs in
and photographs ``/ui#/spend``. Usage: ``.venv/bin/python scripts/ui_screenshot.py [OUT.png]``.
"""

from __future__ import annotations

import random
import sys
import tempfile
import threading
from pathlib import Path

from werkzeug.serving import make_server

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sidecar import create_app  # noqa: E402
from sidecar.access.auth import Caller  # noqa: E402
from sidecar.core.exchange import Exchange  # noqa: E402
from sidecar.core.usage import Usage  # noqa: E402
from sidecar.settings import Settings  # noqa: E402

MASTER = "sk-screenshot-master-key-0000"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODELS = ["mistral-small-latest", "mistral-medium-latest", "mistral-large-latest", "codestral-latest"]
KEYS = [("billing-service", 25.0, "30d"), ("support-bot", 10.0, "30d"), ("nightly-batch", None, None)]
USERS = ["alice", "bob", "carol", "dave", "erin"]


def seed(app) -> None:
    """Keys through the admin API; spend records through the accountant, dated by the app's clock."""
    pipeline = app.extensions["sidecar"]
    accountant, admin = pipeline.accountant, app.test_client()
    rng = random.Random(17)
    now = pipeline.clock.wall()
    for alias, budget, period in KEYS:
        answer = admin.post("/key/generate", headers={"Authorization": f"Bearer {MASTER}"}, json={
            "key_alias": alias, "max_budget": budget, "budget_duration": period, "rpm_limit": 120})
        assert answer.status_code == 200, answer.get_data(as_text=True)
        caller = Caller("virtual", answer.json["token"], alias, limits={"budget_duration": period})
        for day in range(13, -1, -1):
            for _ in range(rng.randint(4, 12)):
                model = rng.choice(MODELS[:3] if alias != "nightly-batch" else MODELS[2:])
                prompt, completion = rng.randint(2_000, 60_000), rng.randint(200, 8_000)
                usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
                ex = Exchange(f"req-{rng.getrandbits(48):x}", "chat_completion_v1_chat_completions_post", "POST",
                              "/v1/chat/completions", wall_time=now - day * 86400 - rng.uniform(0, 3600),
                              caller=caller, model=model, end_user=rng.choice(USERS), status=200,
                              stream=rng.random() < 0.4, usage=usage, upstream_latency=rng.uniform(0.2, 2))
                ex.cost = accountant.prices.cost(model, usage)
                accountant.spend.record(ex)
    accountant.spend.flush()


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(master_key=MASTER, database_url=f"sqlite:///{tmp}/sidecar.db",
                            mistral_api_base="http://127.0.0.1:9", spec_path=REPO / "openapi.yaml")
        app = create_app(settings)
        seed(app)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_port}"
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
                page = browser.new_page(viewport={"width": 1200, "height": 860})
                page.goto(url + "/ui")
                page.fill("#master-key", MASTER)
                page.click("#sign-in-form button")
                page.wait_for_selector("#view[data-ready=spend]")
                page.screenshot(path=str(out), full_page=True)
                browser.close()
        finally:
            server.shutdown()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "ui-spend.png")
