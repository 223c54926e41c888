"""A request body sent in chunks (``Transfer-Encoding: chunked``) that HTTP's parser cannot read, that never ends, or
that ends in trailer fields: each answered (or cut off) as a head that cannot be read is, never held open."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import overrides, serving_guarded
from tests.test_security_hunt2 import _answer, guarded_server  # noqa: F401 (a fixture)

CHUNKED = b"POST / HTTP/1.1\r\nHost: baton\r\nTransfer-Encoding: chunked\r\n\r\n"
UNREADABLE = "the request is not HTTP that Baton can read: "


def _refusal(answer: bytes) -> tuple[bytes, str]:
    """An answer's head and its JSON ``detail``."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head and b"connection: close" in head, answer
    return head, json.loads(body)["detail"]


def test_a_chunked_body_that_cannot_be_read_gets_a_400_in_json_and_the_connection_is_closed(start_baton,
                                                                                             sqlite_url: str) -> None:
    """A chunk's size that is no hexadecimal number got no answer, and the connection was never closed (40 s and 90 s
    tried): the route waited for the rest of the body for ever, and the refusal for the route's answer. It is refused
    as a head that cannot be read is, and the route does nothing."""
    baton = start_baton(sqlite_url, env=overrides({"bot.server.REQUEST_READ_SECONDS": 1.0}))
    head = (b"POST /api/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    body = json.dumps({"channel": "general", "user": "alice", "text": "deploy went fine"}).encode()
    chunk = b"%x\r\n" % len(body) + body + b"\r\n"
    for broken, reason in [(b"zz\r\n", "chunk size"),  # the tester's
                           (b"1" * 20 + b"\r\n", "chunk size"),  # beyond 64 bits
                           (b"%x\r\n" % (len(body) - 2) + body + b"\r\n0\r\n\r\n", "after chunk data"),  # longer
                           (chunk + b"0\r\nBad Trailer: x\r\n\r\n", "header")]:
        with socket.create_connection(("127.0.0.1", baton.port)) as connection:
            connection.sendall(head + broken)
            status, detail = _refusal(_answer(connection))
        assert status.startswith(b"HTTP/1.1 400 "), status
        assert detail.startswith(UNREADABLE) and reason in detail.lower(), (broken, detail)
    with socket.create_connection(("127.0.0.1", baton.port)) as connection:  # a chunk cut short, then silence
        started = time.monotonic()
        connection.sendall(head + b"%x\r\n" % len(body) + body[:10])
        assert _answer(connection) == b""  # cut off once the read's deadline (1 s here, 30 s by default) passed
    assert time.monotonic() - started < 5
    with socket.create_connection(("127.0.0.1", baton.port)) as connection:  # sent whole, it is taken
        connection.sendall(head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + chunk
                           + b"0\r\nX-Checksum: 1\r\n\r\n")
        assert _answer(connection).startswith(b"HTTP/1.1 201 ")
    with httpx.Client(base_url=baton.url, timeout=15) as http:
        assert len(http.get("/api/channels/general/messages").json()["messages"]) == 1
    log = baton.log.read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


def test_a_broken_chunked_body_behind_other_requests_is_refused_after_their_answers(
        guarded_server: int) -> None:  # noqa: F811
    """Pipelined behind a request still being answered, its route not started yet, the broken body held the
    connection as well: the request before it was answered, and then nothing."""
    with socket.create_connection(("127.0.0.1", guarded_server)) as connection:
        connection.sendall(b"POST / HTTP/1.1\r\nHost: baton\r\nContent-Length: 3\r\n\r\nabc" + CHUNKED + b"zz\r\n")
        answer = _answer(connection)
    assert answer.count(b"HTTP/1.1 ") == 2, answer
    first, refusal = answer.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and first.endswith(b"\r\n\r\n3"), answer
    assert refusal.startswith(b"400 ") and "chunk size" in _refusal(refusal)[1], answer
    with socket.create_connection(("127.0.0.1", guarded_server)) as connection:  # its route started, waiting for it
        connection.sendall(CHUNKED + b"3\r\nabc\r\n")
        connection.sendall(b"zz\r\n")
        assert _answer(connection).startswith(b"HTTP/1.1 400 ")


def test_an_answer_begun_before_the_body_broke_is_cut_off_not_held() -> None:
    """A route that began its answer before reading the body cannot have a refusal follow it: the connection is
    closed (as when a body comes too slowly), not left open with the route waiting for the rest of the body."""
    gone = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"begun", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    with serving_guarded(app) as port, socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(CHUNKED + b"3\r\nabc\r\n")
        connection.settimeout(10)
        begun = b""
        while not begun.endswith(b"begun\r\n"):
            begun += connection.recv(65536) or pytest.fail(f"closed after {begun!r}")
        connection.sendall(b"zz\r\n")
        assert b"HTTP/1.1 400" not in _answer(connection)
        assert gone.wait(10), "the route did not see the client gone"


@pytest.mark.parametrize("unfinished", [
    b"5",  # a chunk's size line that never ends
    b"5;name=" + b"v" * 10_000,  # its extension, likewise
    b"5\r\nab",  # a chunk's data shorter than it said, then nothing
    b"3\r\nabc",  # no line break after its data
    b"3\r\nabc\r\n0\r\n",  # no line break after the last chunk
    b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\n",  # trailer fields that never end
], ids=["size line", "extension", "short data", "no CRLF after data", "no final CRLF", "trailers"])
def test_a_chunked_body_that_never_ends_is_cut_off_within_the_reads_deadline(guarded_server: int,  # noqa: F811
                                                                             monkeypatch, unfinished: bytes) -> None:
    monkeypatch.setattr("bot.server.REQUEST_READ_SECONDS", 0.5)
    with socket.create_connection(("127.0.0.1", guarded_server)) as connection:
        started = time.monotonic()
        connection.sendall(CHUNKED + unfinished)
        assert _answer(connection) == b""  # cut off: its route saw the client gone
    assert time.monotonic() - started < 5


@pytest.fixture
def headers_server() -> Iterator[int]:
    """A server whose route reads the body and answers with the names of the request's headers."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (message := await receive()).get("more_body"):
            pass
        if message["type"] == "http.disconnect":
            return
        answer = json.dumps([name.decode() for name, _ in scope["headers"]]).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    with serving_guarded(app) as port:
        yield port


def test_trailer_fields_are_not_taken_as_the_requests_headers(headers_server: int) -> None:
    """uvicorn added a chunked body's trailer fields to the headers of the request, whose route was running
    already: read after the body, a trailer ``Content-Type`` or ``X-Slack-Signature`` stood beside the real one
    (RFC 9110 6.5.1: a trailer field is no header unless its definition says so; Baton's routes read none)."""
    with socket.create_connection(("127.0.0.1", headers_server)) as connection:
        connection.sendall(CHUNKED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
                           + b"3\r\nabc\r\n0\r\nContent-Type: text/plain\r\nX-Slack-Signature: v0=0\r\n\r\n")
        answer = _answer(connection)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == ["host", "transfer-encoding", "connection"]


@pytest.mark.parametrize("trailers", [
    b"X-Filler: " + b"a" * 70_000 + b"\r\n",
    b"".join(b"X-Filler-%d: " % n + b"a" * 8_000 + b"\r\n" for n in range(9)),
], ids=["one field", "many fields"])
def test_trailer_fields_over_64_kib_are_refused_as_headers_are(headers_server: int, trailers: bytes) -> None:
    """Trailer fields had no limit: 2,000 of 8 kB each (16 MB) were all kept, as headers of the request."""
    with socket.create_connection(("127.0.0.1", headers_server)) as connection:
        connection.sendall(CHUNKED + b"3\r\nabc\r\n0\r\n" + trailers + b"\r\n")
        status, detail = _refusal(_answer(connection))
    assert status.startswith(b"HTTP/1.1 431 "), status
    assert detail == "the request's trailer fields, after its chunked body, are larger than 65,536 bytes", detail
    with socket.create_connection(("127.0.0.1", headers_server)) as connection:  # what comes on is not read
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            connection.sendall(CHUNKED + b"3\r\nabc\r\n0\r\n")
            for _ in range(10_000):  # 80 MB
                connection.sendall(b"X-Filler: " + b"a" * 8000 + b"\r\n")
    with socket.create_connection(("127.0.0.1", headers_server)) as connection:  # a head and trailers each under it
        filler = b"X-Filler: " + b"a" * 60_000 + b"\r\n"
        connection.sendall(CHUNKED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n" + filler + b"\r\n")
                           + b"3\r\nabc\r\n0\r\n" + filler + b"\r\n")
        assert _answer(connection).startswith(b"HTTP/1.1 200 ")
