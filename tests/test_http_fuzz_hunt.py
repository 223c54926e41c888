"""The playground's JSON API fuzzed (schemathesis against its OpenAPI schema, then by hand): what a client made from
the schema, a fuzzer or a careless script tripped over."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import runs_in
from tests.test_http_hunt2 import _playground
from tests.test_security_hunt2 import _answer, guarded_server  # noqa: F401 (a fixture)

CHAT = {"channel": "general", "user": "alice", "text": "deploy went fine"}


async def _stored(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    return (await http.get("/api/channels/general/messages")).json()["messages"]


async def test_the_schema_names_every_refusal_a_route_gives_and_the_stream_as_events(tmp_path: Path,
                                                                                        config_path: Path) -> None:
    """The schema named only a 422 beside each route's success: an unknown channel, thread or message (404), empty
    text or a decided card (400), another site (403) were answers a client generated from it did not expect, and the
    live stream was said to be JSON. Each refusal is in the schema, with the body it has: ``{"detail": <why>}``."""
    async with _playground(tmp_path, config_path) as (http, _):
        schema = (await http.get("/openapi.json")).json()
        refusals = [
            ("get", "/api/channels/{channel}/messages", await http.get("/api/channels/nowhere/messages")),
            ("get", "/api/threads/{thread_id}/messages", await http.get("/api/threads/7/messages")),
            ("post", "/api/messages", await http.post("/api/messages", json={**CHAT, "channel": "nowhere"})),
            ("post", "/api/messages", await http.post("/api/messages", json={**CHAT, "text": " "})),
            ("post", "/api/messages", await http.post("/api/messages", json=CHAT,
                                                      headers={"Origin": "http://a.example"})),
            ("post", "/api/clicks", await http.post("/api/clicks", json={
                "message_id": 7, "approval_id": "a", "action": "approve", "user": "bob"})),
            ("get", "/api/channels", await http.get("/api/channels", headers={"Host": "attacker.example"})),
            ("get", "/api/events", await http.get("/api/events", headers={"Host": "attacker.example"})),
        ]
        posted = (await http.post("/api/messages", json=CHAT)).json()
        clicked = await http.post("/api/clicks", json={"message_id": posted["message"]["id"], "approval_id": "a",
                                                       "action": "approve", "user": "bob"})
        refusals.append(("post", "/api/clicks", clicked))
    for method, path, answer in refusals:
        documented = schema["paths"][path][method]["responses"]
        assert str(answer.status_code) in documented, (method, path, answer.status_code, sorted(documented))
        body = documented[str(answer.status_code)]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/Refusal"}, (method, path, body)
        assert isinstance(answer.json()["detail"], str), (method, path, answer.text)
    assert schema["components"]["schemas"]["Refusal"]["required"] == ["detail"]
    stream = schema["paths"]["/api/events"]["get"]["responses"]["200"]["content"]
    assert list(stream) == ["text/event-stream"], stream
    # and the ops routes' other answers: a health check's 503, /metrics' text and its 401 (when a token is set)
    for path in ("/healthz", "/readyz"):
        assert "503" in schema["paths"][path]["get"]["responses"], path
    metrics = schema["paths"]["/metrics"]["get"]["responses"]
    assert list(metrics["200"]["content"]) == ["text/plain"] and "401" in metrics, metrics


# What \s is in JSON Schema's patterns (ECMA-262's white space and line terminators), not Python's
_ECMA_SPACES = "\\t\\n\\v\\f\\r \\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"


async def test_the_schema_says_which_text_a_post_takes_as_the_api_does(tmp_path: Path, config_path: Path) -> None:
    """A post's text needs a character that is no space, as Python's ``str.strip`` counts spaces (a 400 otherwise),
    and no NUL (a 422): the schema said any text, so "\\u0085" (a space to Python, not to JSON Schema's ``\\s``) was
    refused where the schema said it was fine. Its pattern now draws the line where the API does."""
    async with _playground(tmp_path, config_path) as (http, _):
        pattern = (await http.get("/openapi.json")).json()["components"]["schemas"]["PostMessage"]["properties"][
            "text"]["pattern"]
        as_json_schema = pattern.replace("\\s", _ECMA_SPACES)  # its \s (in a class) as ECMA-262 reads it
        for text in ("\u0085", " \t\u3000", "\x1c", "", "a\x00", "\ufeff", "x", " hi ", "\u200b"):
            posted = await http.post("/api/messages", json={**CHAT, "text": text})
            assert bool(re.search(as_json_schema, text)) == (posted.status_code == 201), (text, posted.status_code,
                                                                                         pattern)


async def test_empty_limit_and_before_are_left_out_as_an_empty_viewer_is(tmp_path: Path, config_path: Path) -> None:
    """The README writes the reads as ``?viewer=&limit=&before=`` (and a web form sends its empty fields so): an
    empty ``viewer`` was no viewer, but an empty ``limit`` or ``before`` was a 422, 'unable to parse string as an
    integer'. Empty, each is left out: 100 messages, the newest."""
    async with _playground(tmp_path, config_path) as (http, _):
        posted = [(await http.post("/api/messages", json={**CHAT, "text": f"note {n}"})).json() for n in range(3)]
        thread = posted[0]["thread_id"]
        await http.post("/api/messages", json={**CHAT, "text": "a reply", "thread_id": thread})
        for path in ("/api/channels/general/messages", f"/api/threads/{thread}/messages"):
            plain = await http.get(path)
            empty = await http.get(f"{path}?viewer=&limit=&before=")
            assert empty.status_code == 200, (path, empty.text)
            assert empty.json() == plain.json()
            refused = await http.get(f"{path}?limit=0&before=x")  # what is given is read as before
            assert [error["loc"] for error in refused.json()["detail"]] == [["query", "limit"], ["query", "before"]]
        assert [m["text"] for m in (await http.get("/api/channels/general/messages?limit=&before=")).json()[
            "messages"]] == ["note 0", "note 1", "note 2"]


async def test_a_field_given_twice_is_refused_naming_it_and_nothing_is_stored(tmp_path: Path, config_path: Path,
                                                                               counter: Path) -> None:
    """JSON's decoder kept the last of a field given twice without a word: ``"event_id": "retry-1"`` followed by
    ``"event_id": null`` lost the redelivery guard (a retry ran the runbook again), as a misspelled field did before
    it was refused. A field given twice is a 422 naming it, and nothing of the request is stored or run."""
    request = '{"channel": "general", "user": "alice", "text": "@baton run uptime", "event_id": "retry-1"'
    async with _playground(tmp_path, config_path) as (http, _):
        for body in (request + ', "event_id": null}', request + ', "text": "@baton run disk", "event_id": "x"}'):
            refused = await http.post("/api/messages", content=body, headers={"Content-Type": "application/json"})
            assert refused.status_code == 422, refused.text
            detail = refused.json()["detail"]
            assert [error["loc"] for error in detail][-1] == ["body", "event_id"], detail
            assert "more than once" in detail[0]["msg"] and "retry-1" not in refused.text
        click = '{"message_id": 1, "approval_id": "a", "action": "reject", "action": "approve", "user": "bob"}'
        refused = await http.post("/api/clicks", content=click, headers={"Content-Type": "application/json"})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "action"], refused.text
        nested = request + ', "thread_id": {"a": 1, "a": 2}}'  # a key twice in a value is no field given twice
        refused = await http.post("/api/messages", content=nested, headers={"Content-Type": "application/json"})
        assert [error["loc"] for error in refused.json()["detail"]] == [["body", "thread_id"]], refused.text
        assert await _stored(http) == []
        # a field in another request is no field given twice
        taken = await http.post("/api/messages", content=request + "}", headers={"Content-Type": "application/json"})
        assert taken.status_code == 201 and taken.json()["delivery"] == "accepted", taken.text
    assert runs_in(counter) in ([], ["uptime"])  # the accepted one may or may not have run by now; nothing else


async def test_a_message_id_written_as_a_whole_float_is_that_message(tmp_path: Path, config_path: Path) -> None:
    """JSON Schema's integers include 7.0, and Python's ``json.dumps`` writes an id held as a float so: a click on
    message 7.0 was a 422 ('Input should be a valid integer'), as was a reply to thread 7.0. A whole number is the id
    it names; ``true``, ``"7"``, 7.5 and infinity are still refused."""
    async with _playground(tmp_path, config_path) as (http, _):
        root = (await http.post("/api/messages", json=CHAT)).json()["message"]["id"]
        reply = await http.post("/api/messages", json={**CHAT, "text": "a reply", "thread_id": float(root)})
        assert reply.status_code == 201 and reply.json()["thread_id"] == str(root), reply.text
        click = {"approval_id": "a", "action": "approve", "user": "bob"}
        answered = await http.post("/api/clicks", json={**click, "message_id": float(root)})
        assert answered.status_code == 400 and "no buttons" in answered.json()["detail"], answered.text
        for wrong in ("true", '"7"', "7.5", "1e999"):
            body = json.dumps(click)[:-1] + f', "message_id": {wrong}}}'
            refused = await http.post("/api/clicks", content=body, headers={"Content-Type": "application/json"})
            assert refused.status_code == 422, (wrong, refused.text)
            assert refused.json()["detail"][0]["loc"] == ["body", "message_id"], (wrong, refused.text)


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)
_COMMON = st.sampled_from(["general", "dm-baton", "alice", "bob", "1", "2", "approve", "@baton help"])
_VALUE = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT | _COMMON,
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
                      max_leaves=8)
_FIELDS = st.sampled_from(["channel", "user", "text", "thread_id", "event_id", "message_id", "approval_id", "action"])


def test_any_json_body_is_answered_with_a_success_or_a_refusal_that_says_why(tmp_path: Path, config_path: Path) -> None:
    """What schemathesis checked widely (a few thousand cases a route): whatever JSON a post or a click carries, the
    answer is its success or a 4xx whose ``detail`` says why, never a server error."""
    from fastapi.testclient import TestClient

    from bot.server import create_app
    from bot.settings import Settings

    settings_ = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'baton.db'}",  # type: ignore[call-arg]
                         BATON_CONFIG=config_path, BATON_ADAPTERS="playground")
    with TestClient(create_app(settings_), base_url="http://127.0.0.1") as http:

        @settings(max_examples=150)
        @given(route=st.sampled_from(["/api/messages", "/api/clicks"]),
               body=st.dictionaries(_FIELDS, _VALUE, max_size=6) | _VALUE)
        def answered(route: str, body: Any) -> None:
            answer = http.post(route, json=body)
            assert answer.status_code in (201, 202) or 400 <= answer.status_code < 500, (body, answer.text)
            assert answer.headers["content-type"] == "application/json"
            if answer.status_code >= 400:
                assert answer.json()["detail"], (body, answer.text)
                assert "Traceback" not in answer.text

        answered()


def test_a_request_http_cannot_read_behind_others_is_refused_after_their_answers(
        guarded_server: int) -> None:  # noqa: F811
    """A request pipelined behind others (sent in one read with them, before their answers came) that HTTP's parser
    could not read closed the connection at once: the requests before it, read and handled, were never answered,
    and neither was it (a well-formed GET followed by a stray line got nothing at all). They are answered in order,
    then it is refused, and the connection closed."""
    with socket.create_connection(("127.0.0.1", guarded_server)) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: baton\r\n\r\n"
                           b"POST / HTTP/1.1\r\nHost: baton\r\nContent-Length: 3\r\n\r\nabc"
                           b"NOT HTTP\r\n\r\n")
        answer = _answer(connection)
    assert answer.count(b"HTTP/1.1 ") == 3, answer
    first, second, refusal = answer.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and first.endswith(b"\r\n\r\n0"), answer
    assert second.startswith(b"200 ") and second.endswith(b"\r\n\r\n3"), answer
    assert refusal.startswith(b"400 ") and b"connection: close" in refusal, answer
    assert "not HTTP that Baton can read" in json.loads(refusal.partition(b"\r\n\r\n")[2])["detail"]


def test_a_websocket_handshake_is_refused_saying_baton_serves_none(tmp_path: Path, config_path: Path) -> None:
    """A WebSocket client (pointed at /api/events, which is server-sent events, or anywhere) got a bare 403 with no
    body: Starlette closes a handshake no route takes, which uvicorn answers so, as if the client had no right to
    it. It gets a 400 in JSON saying that Baton serves no WebSocket, and where its live updates are."""
    from fastapi.testclient import TestClient
    from starlette.testclient import WebSocketDenialResponse

    from bot.server import create_app
    from bot.settings import Settings

    settings_ = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'baton.db'}",  # type: ignore[call-arg]
                         BATON_CONFIG=config_path, BATON_ADAPTERS="playground")
    with TestClient(create_app(settings_), base_url="http://127.0.0.1") as http:
        for path in ("/api/events", "/api/events?viewer=%00", "/nowhere"):
            try:
                with http.websocket_connect(path):
                    raise AssertionError(f"{path}: a WebSocket was accepted")
            except WebSocketDenialResponse as refused:
                assert refused.status_code == 400, (path, refused.status_code)
                assert "server-sent events, GET /api/events" in refused.json()["detail"], refused.text
        assert http.get("/api/channels").status_code == 200  # HTTP is served as before
