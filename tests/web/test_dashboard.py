"""The dashboard at ``/ui`` in a real browser: Debian's Chromium driven by Playwright for Python.

Sign in with the master key, create a key, make calls with it against the fake Mistral, see them in
the spend chart and the requests table, revoke the key. Skips, saying why, where Chromium or
Playwright is absent (``apt-get install chromium``; ``pip install playwright``, never ``playwright install``).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from ..fakes import chat_body, chat_events

MASTER = "sk-sidecar-master-dashboard-0123"
CHROMIUM = os.environ.get("SIDECAR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _browser_or_skip():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set SIDECAR_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed: pip install playwright (its browsers are not needed)")
    return sync_playwright


@pytest.fixture
def sidecar(make_app, fake):
    """The app with a master key on a real loopback socket; the fake Mistral answers chat, plain and streamed."""
    def chat(request):
        import json

        from werkzeug.wrappers import Response
        data = json.loads(request.get_data())
        if data.get("stream"):
            return Response(iter(chat_events(3, model=data["model"])), 200, {"Content-Type": "text/event-stream"})
        return Response(json.dumps(chat_body(model=data["model"], prompt=1200, completion=800)), 200,
                        {"Content-Type": "application/json"})
    fake.on("POST", "/v1/chat/completions", chat)
    app = make_app(master_key=MASTER)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def page():
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("dialog", lambda d: d.accept())
        page.console_errors = errors
        yield page
        context.close()
        browser.close()


def chat(url: str, key: str, model: str, stream=False, user=None) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    headers = {"Authorization": f"Bearer {key}", **({"x-end-user": user} if user else {})}
    with requests.post(url + "/v1/chat/completions", json=body, headers=headers, stream=stream, timeout=10) as r:
        r.content  # noqa: B018 - read to the end: a stream is accounted when it closes
        return r.status_code


def sign_in(page, url: str) -> None:
    page.goto(url + "/ui")
    page.fill("#master-key", MASTER)
    page.click("#sign-in-form button")
    page.wait_for_selector("#view[data-ready=spend]")


def test_sign_in_create_a_key_use_it_see_it_and_revoke_it(page, sidecar):
    from playwright.sync_api import expect

    page.goto(sidecar + "/ui")
    page.fill("#master-key", "sk-wrong-key-000000000000")
    page.click("#sign-in-form button")
    page.wait_for_selector("#sign-in-error:has-text('refused')")
    page.console_errors.clear()  # the refused sign-in's 401 was expected; nothing else may fail
    sign_in(page, sidecar)
    assert page.evaluate("sessionStorage.length") == 1 and page.context.cookies() == []
    assert MASTER not in page.url

    page.click("nav a[data-view=keys]")
    page.wait_for_selector("#view[data-ready=keys]")
    page.fill("#create-key [name=key_alias]", "billing-service")
    page.fill("#create-key [name=max_budget]", "5")
    page.fill("#create-key [name=rpm_limit]", "60")
    page.click("#create-key button[type=submit]")
    key = page.wait_for_selector("#new-key").inner_text().strip()
    assert key.startswith("sk-") and len(key) > 40
    page.click("#secret button")  # shown once: gone after Done, and never in the list
    assert key not in page.content()

    for model, stream, user in [("mistral-small-latest", False, "alice"), ("mistral-large-latest", False, "bob"),
                                ("mistral-small-latest", True, "alice")]:
        assert chat(sidecar, key, model, stream, user) == 200
    # A stream is recorded when the server closes it, just after the client has read it all: wait for
    # the three records, then read the report the chart must match.
    as_master = {"Authorization": f"Bearer {MASTER}"}
    deadline = time.monotonic() + 15
    while len(requests.get(sidecar + "/spend/logs?proxied=true", headers=as_master, timeout=10).json()["logs"]) < 3:
        assert time.monotonic() < deadline, "the three calls were not all recorded within 15 s"
        time.sleep(0.05)
    sidecar_spend = requests.get(sidecar + "/spend/report?group_by=model", headers=as_master, timeout=10).json()
    assert sidecar_spend["total_requests"] >= 3

    page.click("nav a[data-view=spend]")
    page.wait_for_selector("#view[data-ready=spend]")
    bars = page.locator("#spend-chart rect[data-model]")
    assert sorted(set(bars.evaluate_all("els => els.map(e => e.dataset.model)"))) == [
        "mistral-large-latest", "mistral-small-latest"]
    charted = sum(bars.evaluate_all("els => els.map(e => parseFloat(e.dataset.cost))"))
    assert charted == pytest.approx(sidecar_spend["total_cost"])
    assert "billing-service" in page.inner_text("#top-keys") and "alice" in page.inner_text("#top-users")

    page.click("nav a[data-view=requests]")
    page.wait_for_selector("#view[data-ready=requests]")
    rows = page.locator("#request-list tbody tr")  # the calls to Mistral, not the dashboard's own reads
    assert rows.count() == 3 and rows.filter(has_text="billing-service").count() == 3
    assert page.locator("#request-list .tag:has-text('stream')").count() == 1
    page.fill("#filters [name=key_alias]", "billing-service")
    page.fill("#filters [name=end_user]", "bob")
    page.click("#filters button")
    expect(page.locator("#request-list tbody tr")).to_have_count(1)  # a strict CSP: no string predicates
    assert "mistral-large-latest" in page.inner_text("#request-list")
    assert "key_alias=billing-service" in page.url  # filters live in the URL; the key never does

    page.click("nav a[data-view=keys]")
    page.wait_for_selector("#view[data-ready=keys]")
    page.click("#key-list a:has-text('billing-service')")
    page.wait_for_selector("#view[data-ready=key]")
    state = page.inner_text("#key-state")
    assert "of $5.00" in state and "3 of 60" in state  # budget use and this minute's requests

    page.click("nav a[data-view=keys]")
    page.wait_for_selector("#view[data-ready=keys]")
    page.click("#key-list button:has-text('Revoke')")
    expect(page.locator("#key-list")).to_contain_text("No keys yet")
    assert chat(sidecar, key, "mistral-small-latest") == 401
    assert page.console_errors == []


def test_the_dashboard_is_served_with_a_strict_csp_and_holds_no_secret(client):
    response = client.get("/ui")
    assert response.status_code == 200 and response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
    assert "frame-ancestors 'none'" in csp and response.headers["X-Content-Type-Options"] == "nosniff"
    script = client.get("/ui/app.js")
    assert script.status_code == 200 and script.mimetype == "text/javascript"
    assert "sessionStorage" in script.get_data(as_text=True) and "document.cookie" not in script.get_data(as_text=True)
    assert client.get("/ui/missing.js").status_code == 404
    assert client.get("/ui/..%2fapp.py").status_code in (404, 422)


def test_the_price_table_in_effect_is_served(make_app):
    app = make_app(master_key=MASTER)
    table = app.extensions["sidecar"].accountant.prices
    answer = app.test_client().get("/spend/prices", headers={"Authorization": f"Bearer {MASTER}"}).get_json()
    assert answer["as_of"] == table.as_of and len(answer["models"]) == len(table.models)
    small = table.price_for("mistral-small-latest")
    row = next(r for r in answer["models"] if "mistral-small-latest" in r["aliases"])
    assert row["input_per_mtok"] == small.input_per_mtok and row["output_per_mtok"] == small.output_per_mtok
    assert app.test_client().get("/spend/prices").status_code == 401
