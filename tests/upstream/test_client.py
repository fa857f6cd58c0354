"""The upstream connection's wire behaviour: what one request costs in sends."""

from __future__ import annotations

from requests.structures import CaseInsensitiveDict

from sidecar.upstream.client import ONE_SEND_MAX, _Connection


class Wire:
    """Stands for the connected socket: records each ``sendall``."""

    def __init__(self):
        self.sends: list[bytes] = []

    def sendall(self, data) -> None:
        self.sends.append(bytes(data))

    def settimeout(self, _seconds) -> None:
        pass


def _send(body: bytes) -> list[bytes]:
    connection = _Connection("127.0.0.1", 9)
    connection.sock = wire = Wire()
    headers = CaseInsensitiveDict({"Content-Type": "application/json", "Content-Length": str(len(body))})
    connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
    return wire.sends


def test_a_small_body_leaves_with_its_header_block_in_one_send():
    body = b'{"model":"mistral-small-latest","messages":[]}'
    sends = _send(body)
    assert len(sends) == 1
    head, _, rest = sends[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and rest == body
    assert b"\r\nContent-Length: %d" % len(body) in head and head.count(b"Content-Length") == 1


def test_a_large_body_is_sent_after_its_headers_not_copied_into_them():
    body = b"x" * (ONE_SEND_MAX + 1)
    sends = _send(body)
    assert len(sends) == 2 and sends[0].endswith(b"\r\n\r\n") and sends[1] == body


def test_the_next_request_on_the_connection_does_not_inherit_a_body():
    connection = _Connection("127.0.0.1", 9)
    connection.sock = wire = Wire()
    connection.request("POST", "/a", body=b"{}", headers=CaseInsensitiveDict({"Content-Length": "2"}))
    connection._HTTPConnection__state = "Idle"  # what reading the response does (http.client's own state)
    connection._HTTPConnection__response = None
    connection.request("GET", "/b", body=None, headers=CaseInsensitiveDict({}))
    assert wire.sends[0].endswith(b"\r\n\r\n{}") and wire.sends[1].endswith(b"\r\n\r\n")


def test_a_file_body_is_sent_in_large_blocks_by_the_pooled_connection():
    """requests hands urllib3 a 16 KiB block size: a 10 MB upload was 615 sends (and 615 socket-buffer
    queries by gevent); the adapter's pools read and send a file-like body in ``BLOCK_SIZE`` blocks."""
    import io

    from requests.models import PreparedRequest

    from sidecar.settings import Settings
    from sidecar.upstream.client import BLOCK_SIZE, PooledAdapter

    prepared = PreparedRequest()
    prepared.prepare(method="POST", url="http://127.0.0.1:9/v1/files")
    connection = PooledAdapter.for_settings(Settings()).get_connection_with_tls_context(prepared, True)._new_conn()
    connection.sock = wire = Wire()
    body = io.BytesIO(b"x" * (BLOCK_SIZE * 3 + 1))
    connection.request("POST", "/v1/files", body=body, headers=CaseInsensitiveDict({"Content-Length": str(BLOCK_SIZE * 3 + 1)}))
    assert [len(send) for send in wire.sends[1:]] == [BLOCK_SIZE] * 3 + [1]
