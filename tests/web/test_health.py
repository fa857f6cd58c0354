"""Health routes: liveliness always answers; readiness answers 503 naming each probe that fails."""

from __future__ import annotations


def test_readiness_is_ready_when_every_probe_passes(app, client):
    app.extensions["sidecar.readiness"].add("always", lambda: None)
    response = client.get("/health/readiness")
    assert response.status_code == 200 and response.json["status"] == "ready"
    assert response.json["spec_operations"] > 100 and "failing" not in response.json


def test_readiness_names_the_probes_that_fail(app, client):
    readiness = app.extensions["sidecar.readiness"]
    readiness.add("store", lambda: "the database does not answer")

    def broken():
        raise ConnectionRefusedError("secret-host:5432")
    readiness.add("limiter", broken)
    response = client.get("/health/readiness")
    assert response.status_code == 503 and response.json["status"] == "not_ready"
    assert response.json["failing"] == {"store": "the database does not answer", "limiter": "ConnectionRefusedError"}
    assert client.get("/health/liveliness").status_code == 200  # alive, only not ready
