"""Baton's HTTP server and the playground's API, second hunt: what a curl script, a careless client or another
site's page could do to them."""

from __future__ import annotations

import socket

import pytest

from tests.test_security_hunt2 import _answer, guarded_server  # noqa: F401 (a fixture)


def test_a_line_break_after_a_request_does_not_hold_the_connection_for_ever(guarded_server: int,  # noqa: F811
                                                                              monkeypatch) -> None:
    """HTTP's parser skips line breaks before a request line without a word, and uvicorn drops its keep-alive
    timeout at any byte it gets: a connection that sent "\\r\\n" after a request was held for ever, so a few
    thousand of them took every file descriptor Baton has. Any byte now starts the next request's 30 s."""
    monkeypatch.setattr("bot.server.REQUEST_READ_SECONDS", 0.5)
    with socket.create_connection(("127.0.0.1", guarded_server)) as connection:
        connection.sendall(b"POST / HTTP/1.1\r\nHost: baton\r\nContent-Length: 3\r\n\r\nabc")
        connection.settimeout(5)
        answer = b""
        while not answer.endswith(b"\r\n\r\n3"):
            answer += connection.recv(65536) or pytest.fail(f"closed after {answer!r}")
        connection.sendall(b"\r\n")
        assert _answer(connection).startswith(b"HTTP/1.1 408 ")
