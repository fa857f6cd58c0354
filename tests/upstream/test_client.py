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
