"""Baton's HTTP server and the playground's API, second hunt: what a curl script, a careless client or another
site's page could do to them."""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from bot.app import Baton
from tests.support import runs_in
from tests.test_security_hunt2 import _answer, guarded_server  # noqa: F401 (a fixture)

REQUEST = {"channel": "general", "user": "alice", "text": "@baton run uptime"}
CHAT = {"channel": "general", "user": "alice", "text": "deploy went fine"}


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


@asynccontextmanager
async def _playground(tmp_path: Path, config_path: Path,
                      **env: str) -> AsyncIterator[tuple[httpx.AsyncClient, Baton]]:
    """Baton's app with the playground, started in this process: a client of its HTTP API (at 127.0.0.1), and Baton."""
    from bot.server import create_app
    from bot.settings import Settings

    database = f"sqlite:///{tmp_path / 'baton.db'}"
    settings = Settings(BATON_DATABASE_URL=database, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground", **env)
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1", timeout=15) as http:
        yield http, app.state.baton


async def test_a_playground_listening_beyond_loopback_still_refuses_dns_rebinding(tmp_path: Path, config_path: Path,
                                                                                   counter: Path) -> None:
    """In a container Baton listens on 0.0.0.0 (BATON_HOST), its port published to 127.0.0.1 only: then any web
    page its user visited could rebind its name to 127.0.0.1 and post and approve as anyone, running baton.yaml's
    runbooks, since only a playground listening on loopback looked at the Host header. Wherever it listens, the
    playground answers only as localhost, an IP address or BATON_PUBLIC_URL's host."""
    rebound = {"Host": "attacker.example:8000", "Origin": "http://attacker.example:8000"}
    async with _playground(tmp_path, config_path, BATON_HOST="0.0.0.0") as (http, _):
        refused = await http.post("/api/messages", json=REQUEST, headers=rebound)
        assert refused.status_code == 403 and "BATON_PUBLIC_URL" in refused.json()["detail"], refused.text
        assert (await http.get("/api/channels/general/messages", headers=rebound)).status_code == 403
        for host in ("localhost:8000", "192.168.1.20:8000", "[::1]:8000"):  # as people reach it
            answered = await http.post("/api/messages", json=CHAT, headers={"Host": host, "Origin": f"http://{host}"})
            assert answered.status_code == 201, (host, answered.text)
    async with _playground(tmp_path, config_path, BATON_HOST="0.0.0.0",
                           BATON_PUBLIC_URL="http://baton.lan:8000") as (http, _):  # a name of its own: when told
        named = {"Host": "baton.lan:8000", "Origin": "http://baton.lan:8000"}
        assert (await http.post("/api/messages", json=CHAT, headers=named)).status_code == 201
    assert runs_in(counter) == []


async def test_a_method_a_route_does_not_take_is_answered_with_every_method_it_does(tmp_path: Path,
                                                                                    config_path: Path) -> None:
    """A 405 names the methods the path takes (``Allow``), and HEAD has routes of its own (kept out of the API's
    schema): Starlette named the first route's only, so every GET route that answers HEAD said ``Allow: GET``."""
    async with _playground(tmp_path, config_path) as (http, _):
        for path in ("/api/channels", "/api/channels/general/messages", "/api/events", "/healthz", "/readyz",
                     "/metrics", "/"):
            refused = await http.request("PUT", path)
            assert refused.status_code == 405, path
            assert refused.headers["allow"] == "GET, HEAD", (path, refused.headers.get("allow"))
            assert (await http.head(path)).status_code == 200, path  # as it says
        refused = await http.get("/api/messages")
        assert refused.status_code == 405 and refused.headers["allow"] == "POST"
        assert refused.json() == {"detail": "Method Not Allowed"}


async def test_no_page_of_baton_loads_a_script_from_another_site(tmp_path: Path, config_path: Path) -> None:
    """FastAPI's /docs and /redoc load Swagger UI and ReDoc from cdn.jsdelivr.net into Baton's origin, where a script
    can post and approve as anyone through the playground's API (and, offline, they were blank pages). They are not
    served; the API's schema is."""
    async with _playground(tmp_path, config_path) as (http, _):
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            assert (await http.get(path)).status_code == 404, path
        assert "/api/messages" in (await http.get("/openapi.json")).json()["paths"]
        page = (await http.get("/")).text
        assert "<script" in page and not any(f'src="{scheme}' in page for scheme in ("http:", "https:", "//"))


async def test_a_click_on_a_button_whose_value_is_beyond_ascii_is_taken(tmp_path: Path, config_path: Path) -> None:
    """A "Which one?" card's buttons are graph names, and a graph may be any lower-case Python module name
    (``graphs/déploiement.py``): a click on that button was a 422 ('String should match pattern'), so the
    requester could pick every graph but that one. A click's action is any of the card's own buttons."""
    from storage.db import insert_returning_id
    from storage.models import PlaygroundMessage, utcnow

    options = [{"value": "déploiement", "label": "déploiement"}, {"value": "rollback", "label": "rollback"}]
    async with _playground(tmp_path, config_path) as (http, baton):
        async with baton.db.session() as session:
            card = await insert_returning_id(session, PlaygroundMessage, {
                "event_id": None, "channel": "general", "thread_id": None, "user": "baton", "text": "Which one?",
                "content": {"title": "Which one?", "parts": [
                    {"kind": "buttons", "approval_id": "choice-1", "options": options}]},
                "is_bot": True, "visible_to": None, "created_at": utcnow(), "updated_at": utcnow(), "revision": 1})
        click = {"message_id": card, "approval_id": "choice-1", "user": "alice"}
        picked = await http.post("/api/clicks", json={**click, "action": "déploiement"})
        assert picked.status_code == 202, picked.text
        other = await http.post("/api/clicks", json={**click, "action": "dé"})  # still only the card's own
        assert other.status_code == 400 and "not one of this message's buttons" in other.json()["detail"]


@pytest.mark.parametrize("request_", [
    b"GET /api/channels/general messages HTTP/1.1\r\nHost: baton\r\n\r\n",  # a space left in the path
    b"GET / HTTP/1.1\r\nHost: baton\r\nBad Header: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: baton\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
], ids=["space in the path", "space in a header's name", "two lengths"])
def test_a_request_http_cannot_read_gets_a_400_in_json_saying_why(guarded_server: int,  # noqa: F811
                                                                   request_: bytes) -> None:
    """Every other refusal is JSON with its reason in ``detail``; what uvicorn's parser could not read got a plain
    text "Invalid HTTP request received." that named nothing."""
    with socket.create_connection(("127.0.0.1", guarded_server)) as connection:
        connection.sendall(request_)
        head, _, body = _answer(connection).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head, head
    detail = json.loads(body)["detail"]
    assert detail.startswith("the request is not HTTP that Baton can read: ") and detail[-1] != " ", detail


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate"])
async def test_a_compressed_body_is_refused_saying_to_send_it_uncompressed(tmp_path: Path, config_path: Path,
                                                                           encoding: str) -> None:
    """A client that compresses its request bodies (Content-Encoding: gzip) was told 'byte 2 is not UTF-8', or
    'JSON decode error', of the JSON it had sent: Baton does not uncompress bodies. It is a 415 saying so."""
    body = gzip.compress(json.dumps(CHAT).encode()) if encoding == "gzip" else b"\x0b\x08\x80{}\x03"
    async with _playground(tmp_path, config_path) as (http, _):
        refused = await http.post("/api/messages", content=body, headers={
            "content-type": "application/json", "content-encoding": encoding})
        assert refused.status_code == 415, refused.text
        assert f"Content-Encoding: {encoding}" in refused.json()["detail"]
        assert refused.headers["accept-encoding"] == "identity"
        plain = await http.post("/api/messages", json=CHAT, headers={"content-encoding": "identity"})
        assert plain.status_code == 201, plain.text


async def test_a_replys_id_given_as_a_thread_is_answered_naming_its_thread(tmp_path: Path, config_path: Path) -> None:
    """A thread's id is its first message's id; a script that took a reply's id for it (the last message it saw)
    was told 'there is no thread' of a message it had just read. The 404 now names the reply's thread."""
    async with _playground(tmp_path, config_path) as (http, _):
        root = (await http.post("/api/messages", json=CHAT)).json()["thread_id"]
        reply = (await http.post("/api/messages", json={**CHAT, "thread_id": root})).json()["message"]["id"]
        for asked in (http.get(f"/api/threads/{reply}/messages"),
                      http.post("/api/messages", json={**CHAT, "thread_id": str(reply)})):
            refused = await asked
            assert refused.status_code == 404, refused.text
            assert refused.json()["detail"] == f"message {reply} is a reply in thread {root}: use thread {root}"
        assert (await http.get("/api/threads/999/messages")).json()["detail"] == "there is no thread '999'"


@pytest.mark.parametrize("route", ["/api/messages", "/api/clicks"])
@pytest.mark.parametrize("headers", [{"content-type": "application/json"}, {}], ids=["json", "no content type"])
async def test_a_post_without_a_body_is_refused_saying_it_has_none(tmp_path: Path, config_path: Path, route: str,
                                                                   headers: dict[str, str]) -> None:
    """``curl -X POST`` without ``-d`` (or a script that forgot its body) was told only "Field required" of the
    body: the page showed those two words, naming no field, and nothing said that the body was missing."""
    async with _playground(tmp_path, config_path) as (http, _):
        refused = await http.post(route, headers=headers)
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body"] and error["msg"].startswith("the request has no body: send a JSON object"), error
