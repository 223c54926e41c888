"""The playground's HTTP API under odd use: clients that go away, odd ids and odd characters."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from adapters.playground import PlaygroundAdapter, PostMessage
from bot.app import Baton
from bot.settings import Settings
from storage.db import Database, insert_returning_id
from storage.models import InboundEvent, PlaygroundMessage, utcnow
from tests.support import ON_SQLITE_ONLY, BatonProcess, overrides, runs_in, wait_for


async def _listen_until_a_change(http: httpx.AsyncClient) -> None:
    """A page's live updates: it goes away (a closed tab) as soon as the first change arrives."""
    async with http.stream("GET", "/api/events") as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                return


@pytest.mark.asyncio
@ON_SQLITE_ONLY
async def test_live_update_clients_going_away_never_stall_the_playground(baton: BatonProcess) -> None:
    """Clients leaving while messages were posted once broke the streams' shared lock (Python 3.11's
    ``wait_for`` on an ``asyncio.Condition``): from then on every post hung before reaching the bot."""
    noise = {"channel": "random", "user": "dave", "text": "noise"}
    async with httpx.AsyncClient(base_url=baton.url, timeout=30) as http:
        for _ in range(4):
            listeners = [asyncio.create_task(_listen_until_a_change(http)) for _ in range(30)]
            posts = await asyncio.gather(*(http.post("/api/messages", json=noise) for _ in range(30)))
            assert {response.status_code for response in posts} == {201}
            await asyncio.wait_for(asyncio.gather(*listeners), 30)  # every stream got a change and left

        asked = await asyncio.wait_for(http.post("/api/messages", json={
            "channel": "general", "user": "alice", "text": "@baton run uptime"}), 10)
    assert asked.status_code == 201 and asked.json()["delivery"] == "accepted"
    baton.client().wait_reply(asked.json()["thread_id"], "did uptime")


@ON_SQLITE_ONLY
def test_a_thread_id_written_with_leading_zeros_is_the_same_thread(baton: BatonProcess, counter) -> None:
    """"0538" once made a second thread beside 538, with a queue of its own: a request there ran while
    538's run was still going."""
    chat = baton.client()
    thread = chat.ask("@baton run slow seconds=2")
    queued = chat.say("@baton run uptime", thread=f"00{thread}")
    assert queued.status_code == 201 and queued.json()["thread_id"] == thread
    assert "Queued" in chat.wait_reply(thread, "Queued")["text"]
    chat.wait_reply(thread, "did uptime")
    assert [m["text"] for m in chat.replies(f"0{thread}")] == [m["text"] for m in chat.replies(thread)]


@ON_SQLITE_ONLY
def test_an_address_with_the_bots_name_is_not_a_mention(baton: BatonProcess) -> None:
    chat = baton.client()
    response = chat.say("send it to ops@baton.io please")
    assert response.status_code == 201 and response.json()["delivery"] == "ignored"
    assert chat.say("(@baton) help").json()["delivery"] == "accepted"


@pytest.mark.parametrize("field", ["text", "event_id", "channel"])
@pytest.mark.parametrize("bad", ["\x00", "\ud800"], ids=["NUL", "unpaired surrogate"])
def test_characters_no_database_stores_get_a_422_naming_the_field(baton: BatonProcess, field: str, bad: str) -> None:
    """PostgreSQL refuses NUL in text (it was a 500 with a traceback); an unpaired surrogate has no
    UTF-8 (FastAPI's own 422 failed to encode it: a 500 on every database)."""
    body = {"channel": "general", "user": "alice", "text": "@baton help", field: f"x{bad}y"}
    response = baton.client().http.post("/api/messages", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["body", field]]
    in_url = "%00" if bad == "\x00" else "%ED%A0%80"  # the surrogate's bytes, as a client could send them
    viewer = baton.client().http.get(f"/api/channels/general/messages?viewer=a{in_url}b")
    assert viewer.status_code == 422 and viewer.json()["detail"][0]["loc"] == ["query", "viewer"]


@ON_SQLITE_ONLY
def test_a_refused_body_is_not_echoed_back_and_an_oversized_one_is_a_413(baton: BatonProcess) -> None:
    http = baton.client().http
    too_long = http.post("/api/messages", json={"channel": "general", "user": "alice", "text": "x" * 100_001})
    assert too_long.status_code == 422 and len(too_long.content) < 1000, too_long.text[:300]
    assert "100000 characters" in too_long.json()["detail"][0]["msg"]
    # JSON naming the limit, as every other error: it was a plain-text "Content Too Large".
    huge = b'{"text": "' + b"x" * 2_000_000 + b'"}'
    sized = http.post("/api/messages", content=huge, headers={"content-type": "application/json"})
    streamed = http.post("/api/messages", content=iter([huge[:1000], huge[1000:]]),  # no Content-Length
                         headers={"content-type": "application/json"})
    for response in (sized, streamed):
        assert response.status_code == 413 and response.headers["content-type"] == "application/json"
        assert "1,300,000 bytes" in response.json()["detail"]


@pytest.mark.asyncio
async def test_an_event_from_a_platform_with_a_nul_is_stored_and_answered(database_url: str, config_path) -> None:
    """A platform's event cannot be refused like an HTTP body: its NUL becomes U+FFFD, or storing it
    would fail on PostgreSQL at every retry the platform made."""
    from bot.app import Baton
    from bot.messages import InboundMessage
    from bot.settings import Settings
    from storage.models import InboundEvent
    from sqlmodel import select

    async with Baton(Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                              BATON_ADAPTERS="playground")) as baton:
        accepted = await baton.accept_message(InboundMessage(
            platform="playground", channel="general", thread="t\x00", user="alice", text="run restart service=web\x00",
            event_id="e\x00"))
        assert accepted.status == "accepted"
        async with baton.db.read() as session:
            stored = (await session.exec(select(InboundEvent))).one()
        assert (stored.event_id, stored.thread, stored.text) == ("e\ufffd", "t\ufffd", "run restart service=web\ufffd")


@ON_SQLITE_ONLY
def test_uptime_checks_may_use_head(baton: BatonProcess) -> None:
    http = baton.client().http
    for path in ("/healthz", "/"):
        response = http.head(path)
        assert response.status_code == 200 and response.content == b"", path


@ON_SQLITE_ONLY
def test_a_click_redelivered_after_its_card_was_decided_is_a_duplicate(baton: BatonProcess, counter) -> None:
    """The card loses its buttons once decided; the same click arriving after that edit was a 400
    (so the answer to a redelivery depended on how fast the run went), now it is a duplicate."""
    pg = baton.client()
    thread = pg.ask("@baton run restart service=web")
    card = pg.wait_card(thread)
    assert pg.click(card, "bob", event_id="click-once").json()["delivery"] == "accepted"
    pg.wait_reply(thread, "did restart web")
    wait_for(lambda: any(m["id"] == card["id"] and "Approved by bob" in m["text"] for m in pg.bot_replies(thread)),
             20, "the card edited to its decision")

    again = pg.click(card, "bob", event_id="click-once")
    assert (again.status_code, again.json()) == (202, {"delivery": "duplicate"})
    late = pg.click(card, "carol")  # a new click on the decided card
    # a click whose id a message used is a click of its own (it was taken for a redelivery and dropped)
    other = pg.ask("@baton run restart service=api", event_id="shared-id")
    assert pg.click(pg.wait_card(other), "bob", event_id="shared-id").json()["delivery"] == "accepted"
    pg.wait_reply(other, "did restart api")
    assert late.status_code == 400 and "may have been decided" in late.json()["detail"]
    assert sorted(runs_in(counter)) == ["restart api", "restart web"]


def test_ids_are_bounded_and_not_echoed_back_and_a_thread_id_may_be_a_number(baton: BatonProcess) -> None:
    pg = baton.client()
    long_channel = pg.http.post("/api/messages", json={"channel": "x" * 900_000, "user": "alice", "text": "hi"})
    assert long_channel.status_code == 422 and len(long_channel.text) < 1000
    long_thread = pg.say("hi", thread="3" * 900_000)
    assert long_thread.status_code == 422 and len(long_thread.text) < 1000
    unknown = pg.say("hi", thread="\u202e3")
    assert unknown.status_code == 404 and "\u202e" not in unknown.json()["detail"]
    thread = pg.ask("@baton run uptime")
    pg.wait_reply(thread, "did uptime")
    numeric = pg.http.post("/api/messages", json={"channel": "general", "user": "bob", "text": "ok", "thread_id": int(thread)})
    assert numeric.status_code == 201 and numeric.json()["thread_id"] == thread


@ON_SQLITE_ONLY
def test_the_api_schema_names_each_operation_once(baton: BatonProcess) -> None:
    schema = baton.client().http.get("/openapi.json")
    assert schema.status_code == 200 and "healthz" in str(schema.json()["paths"])
    assert "Duplicate Operation ID" not in baton.log.read_text()
    assert baton.client().http.head("/healthz").status_code == 200


def test_baton_stops_promptly_with_a_page_open(sqlite_url: str, config_path, tmp_path) -> None:
    """uvicorn waits for open connections to close before it stops, and a page's live stream never
    closed by itself: with a playground tab open, SIGTERM left `baton run` waiting for ever."""
    import signal
    import threading

    baton = BatonProcess(sqlite_url, config_path, tmp_path, exec_=True).start()  # `python -m bot.cli run` itself

    streaming = threading.Event()

    def listen() -> None:
        try:
            with httpx.stream("GET", f"{baton.url}/api/events", timeout=60) as response:
                for _ in response.iter_lines():
                    streaming.set()
        except httpx.HTTPError:
            pass

    threading.Thread(target=listen, daemon=True).start()
    assert streaming.wait(20)
    assert baton.process is not None
    baton.process.send_signal(signal.SIGTERM)
    try:
        baton.process.wait(20)  # the stream ends within its half-second look, well before the grace period
    finally:
        baton.stop()
    assert "Application shutdown complete" in baton.log.read_text()  # stopped in order, not killed


async def _store_without_handing_over(database_url: str, channel: str, text: str, event_id: str,
                                      thread_id: str | None = None) -> str:
    """What a playground that died between storing a posted message and handing it to the bot left behind."""
    database = Database(database_url)
    stored_at = utcnow() - timedelta(minutes=1)  # posted a minute ago; the restart came now
    try:
        async with database.session() as session:
            message_id = await insert_returning_id(session, PlaygroundMessage, {
                "event_id": event_id, "channel": channel, "thread_id": thread_id, "user": "dave", "text": text,
                "content": {"parts": [{"kind": "text", "text": text}]}, "is_bot": False,
                "created_at": stored_at, "updated_at": stored_at, "revision": 1})
    finally:
        await database.dispose()
    return str(message_id)


async def _handed_over(database_url: str) -> list[str]:
    """The event ids of the messages the bot has received."""
    database = Database(database_url)
    try:
        async with database.read() as session:
            return list((await session.exec(select(InboundEvent.event_id).where(
                InboundEvent.platform == "playground", InboundEvent.kind == "message").order_by(InboundEvent.id))).all())
    finally:
        await database.dispose()


def test_a_message_stored_but_never_handed_to_the_bot_is_answered_after_a_restart(
        start_baton, database_url: str, counter: Path) -> None:
    """A posted message is stored, then handed to the bot in a second transaction. A process that died
    between the two left the message in the channel for ever, unanswered (only a client retrying with
    the same event_id could bring it to the bot). Chat the bot ignored when it was posted stays ignored."""
    # The second look after the restart hands them over: 0.5 s after the first, not 10 s.
    quick_looks = overrides({"adapters.playground.PlaygroundAdapter.stranded_poll_seconds": 0.5})
    first = start_baton(database_url)
    pg = first.client()
    chat = pg.ask("deploy plans, anyone?", user="bob")
    early = pg.say("run uptime", thread=chat, user="carol", event_id="chat-before-baton")
    assert early.json()["delivery"] == "ignored"  # not (yet) a Baton thread: conversation, not a request
    pg.say("@baton run uptime", thread=chat, user="alice")  # now it is one
    pg.wait_reply(chat, "did uptime")
    first.stop()

    top = asyncio.run(_store_without_handing_over(database_url, "ops", "@baton run slow seconds=0", "stranded-top"))
    # force: the same request again in its thread within minutes is answered "ran just above", not run
    asyncio.run(_store_without_handing_over(database_url, "general", "run uptime force", "stranded-follow-up", chat))
    asyncio.run(_store_without_handing_over(database_url, "random", "mail ops@baton.io", "stranded-chat"))

    second = start_baton(database_url, env=quick_looks).client()
    second.wait_reply(top, "slept")
    wait_for(lambda: len([m for m in second.bot_replies(chat) if "did uptime" in m["text"]]) == 2, 20,
             "the follow-up stored before the crash answered")
    handed = asyncio.run(_handed_over(database_url))
    assert handed.count("stranded-top") == handed.count("stranded-follow-up") == 1
    assert "chat-before-baton" not in handed and "stranded-chat" not in handed
    assert runs_in(counter) == ["uptime", "uptime"]


async def test_a_message_the_bot_could_not_take_is_handed_over_again_by_the_running_baton(
        database_url: str, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Handing the message over failed (the database went away for a moment): the API answered 500, and
    the message stayed unanswered until a restart, though the same replica went on running."""
    # raising=False: on a playground without this setting the test fails where it waits for the answer
    monkeypatch.setattr(PlaygroundAdapter, "stranded_poll_seconds", 0.05, raising=False)
    async with Baton(Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                              BATON_ADAPTERS="playground")) as baton:
        playground = baton.adapters[0]
        real_accept = baton.accept_message
        database_away = True

        async def accept(message):  # type: ignore[no-untyped-def]
            if database_away:
                raise ConnectionError("the database went away")
            return await real_accept(message)

        monkeypatch.setattr(baton, "accept_message", accept)
        with pytest.raises(ConnectionError):
            await playground.post_message(PostMessage(channel="general", user="alice", text="@baton run uptime",
                                                      event_id="posted-while-away"))
        database_away = False

        async def answered() -> None:
            while True:
                async with baton.db.read() as session:
                    texts = (await session.exec(select(PlaygroundMessage.text).where(
                        PlaygroundMessage.is_bot.is_(True)))).all()  # type: ignore[attr-defined]
                if any("did uptime" in text for text in texts):
                    return
                await baton.outbox.wait("stranded-test-never-woken", 0.05)

        await asyncio.wait_for(answered(), 20)
        async with baton.db.read() as session:
            events = (await session.exec(select(InboundEvent.event_id).where(InboundEvent.kind == "message"))).all()
        assert list(events) == ["posted-while-away"]


@ON_SQLITE_ONLY
def test_the_get_routes_answer_head_as_get_without_a_body(baton: BatonProcess) -> None:
    """HEAD (uptime checks, link checkers, curl -I) was a 405 on every API route."""
    pg = baton.client()
    thread = pg.ask("@baton help")
    for path in ["/api/channels", "/api/channels/general/messages?viewer=bob", f"/api/threads/{thread}/messages",
                 "/api/channels/nowhere/messages", "/api/threads/999999/messages", "/api/events"]:
        head = pg.http.head(path)
        assert head.content == b"", path
        if path == "/api/events":  # a stream: its headers, at once, without a stream that never ends
            assert head.status_code == 200 and head.headers["content-type"].startswith("text/event-stream")
            continue
        get = pg.http.get(path)
        assert (head.status_code, head.headers["content-type"]) == (get.status_code, get.headers["content-type"]), path
    paths = pg.http.get("/openapi.json").json()["paths"]
    assert not [path for path, operations in paths.items() if "head" in operations]  # one operation each


def test_a_threads_root_names_its_newest_reply(baton: BatonProcess) -> None:
    """The page counted a reply twice ("2 replies" for one) when the reply, already in the fetched count,
    then arrived as a live event: the root now says which reply is its newest, so the page can tell."""
    pg = baton.client()
    thread = pg.ask("a question", user="bob")
    first = pg.say("first reply", thread=thread, user="bob").json()["message"]["id"]
    second = pg.say("second reply", thread=thread, user="carol").json()["message"]["id"]
    other = pg.ask("another question, no replies", user="bob")
    roots = {str(m["id"]): m for m in pg.http.get("/api/channels/general/messages").json()["messages"]}
    assert (roots[thread]["reply_count"], roots[thread]["last_reply_id"]) == (2, second) and first < second
    assert (roots[other]["reply_count"], roots[other]["last_reply_id"]) == (0, None)
    root = pg.http.get(f"/api/threads/{thread}/messages").json()["root"]
    assert (root["reply_count"], root["last_reply_id"]) == (2, second)


def _first_poll(baton: BatonProcess, headers: dict[str, str]) -> list[dict[str, Any]]:
    """The messages the live stream sends before its first keep-alive (its first look at the table)."""
    sent = []
    with httpx.Client(base_url=baton.url, timeout=15) as client, \
            client.stream("GET", "/api/events", headers=headers) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                sent.append(json.loads(line.removeprefix("data: "))["message"])
            elif line == ": keep-alive":
                return sent
    return sent


def test_a_live_stream_resumes_where_its_client_left_off(start_baton, sqlite_url: str) -> None:
    """The stream began at 'now' at every connection: what changed while a client was away longer than
    its 5 s overlap never reached it (its reply counts and unread marks stayed wrong)."""
    baton = start_baton(sqlite_url)
    pg = baton.client()
    thread = pg.ask("posted while you were away", user="bob")
    away = utcnow() - timedelta(minutes=2)
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as connection:  # as if posted two minutes ago
        connection.execute("UPDATE playground_messages SET created_at = ?, updated_at = ? WHERE id = ?",
                           (away.replace(tzinfo=None).isoformat(" "), away.replace(tzinfo=None).isoformat(" "),
                            int(thread)))
    assert _first_poll(baton, {}) == []
    resumed = _first_poll(baton, {"Last-Event-ID": (away - timedelta(minutes=1)).isoformat()})
    assert [str(message["id"]) for message in resumed] == [thread]
    assert _first_poll(baton, {"Last-Event-ID": "not a time"}) == []  # read as "now", not an error
