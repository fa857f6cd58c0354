"""The pooled transport: per-origin pool cache and the direct liveness check of idle connections."""

from __future__ import annotations

import contextlib
import socket
import threading

from sidecar.settings import Settings
from sidecar.upstream.client import PooledAdapter, Upstream, _still_open

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def _server(close_after_answer: bool):
    """A raw HTTP/1.1 server on loopback that answers every request; may silently drop the connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def answer(conn):
        with conn:
            while (data := conn.recv(65536)) and b"\r\n\r\n" in data:
                conn.sendall(ANSWER)
                if close_after_answer:
                    break

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener, accepted


@contextlib.contextmanager
def _serving(close_after_answer: bool):
    """An Upstream pointed at a fresh raw server; yields it and the server's count of accepted connections."""
    listener, accepted = _server(close_after_answer)
    port = listener.getsockname()[1]
    upstream = Upstream(Settings(mistral_api_base=f"http://127.0.0.1:{port}", mistral_api_key="sk-test"))
    try:
        yield upstream, accepted
    finally:
        upstream.close()
        listener.close()


def _get(upstream: Upstream) -> bytes:
    response = upstream.send(upstream.default_target, "GET", "/v1/models", "", {}, None)
    try:
        return response.raw.read()
    finally:
        response.close()


def test_idle_connection_is_reused_and_pool_looked_up_once():
    with _serving(close_after_answer=False) as (upstream, accepted):
        assert isinstance(upstream.adapter, PooledAdapter)
        assert [_get(upstream) for _ in range(3)] == [b"{}"] * 3
        assert len(accepted) == 1  # one keep-alive connection served all three
        assert len(upstream.adapter._pools) == 1


def test_connection_dropped_while_idle_is_replaced_not_reused():
    with _serving(close_after_answer=True) as (upstream, accepted):
        for _ in range(3):
            assert _get(upstream) == b"{}"
            pool = next(iter(upstream.adapter._pools.values()))
            idle = pool.pool.queue[-1]
            for _ in range(100):  # the server's FIN arrives within moments
                if not _still_open(idle.sock):
                    break
                threading.Event().wait(0.01)
            assert not idle.is_connected
        assert len(accepted) == 3


def test_closed_adapter_serves_again_from_a_fresh_pool():
    with _serving(close_after_answer=False) as (upstream, _accepted):
        assert _get(upstream) == b"{}"
        stale = next(iter(upstream.adapter._pools.values()))
        upstream.adapter.close()  # what requests does on Session.close: the manager forgets its pools
        assert _get(upstream) == b"{}"
        assert next(iter(upstream.adapter._pools.values())) is not stale

