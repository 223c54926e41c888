"""A long history in the playground: a channel or thread is read a page at a time, newest first.

Reading a channel returned its whole history: a playground used for weeks (or a long-lived baton.db) opened
slower every day, into a page of tens of thousands of elements. Now the API returns the newest messages and
a ``before`` cursor for older ones, and the page loads them as the reader scrolls up.

One ``baton run`` serves the module; the long histories are written straight into its SQLite database
(thousands of posts through the API would take long), with times in the past, so no live event repeats them.
Each test keeps to a channel of its own. The browser is test_browser's.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta

import pytest

from tests.support import BatonProcess
from tests.test_browser import WAIT_MS, browser, sync_api  # noqa: F401 (fixture)
from tests.test_browser_hunt2 import baton  # noqa: F401 (fixture: one baton run for the module)

expect = sync_api.expect


@pytest.fixture
def page(browser: sync_api.Browser) -> Iterator[sync_api.Page]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    # The browser's own line for a request refused while a test has Baton stopped (EventSource retries on its
    # own, and on a loaded machine a retry can fall in the gap) is no error of the page's: #conn-status shows it.
    page.on("console", lambda message: errors.append(f"console: {message.text}")
            if message.type == "error" and "net::ERR_CONNECTION_REFUSED" not in message.text else None)
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"errors in the page: {errors}"


def write_history(baton: BatonProcess, channel: str, texts: list[str], thread: int | None = None,
                  visible_to: str | None = None) -> list[int]:
    """Store messages as if posted an hour ago, one a second; their ids."""
    when = datetime.now(UTC) - timedelta(hours=1)
    with sqlite3.connect(baton.database_url.removeprefix("sqlite:///")) as db:
        ids = []
        for number, text in enumerate(texts):
            at = (when + timedelta(seconds=number)).strftime("%Y-%m-%d %H:%M:%S.%f")
            ids.append(db.execute(
                "INSERT INTO playground_messages (event_id, channel, thread_id, user, text, content, is_bot, visible_to, "
                "created_at, updated_at, revision) VALUES (NULL, ?, ?, 'carol', ?, ?, 0, ?, ?, ?, 1)",
                (channel, None if thread is None else str(thread), text,
                 json.dumps({"parts": [{"kind": "text", "text": text}]}), visible_to, at, at)).lastrowid)
    return ids


def test_a_mention_between_words_leaves_one_space(baton: BatonProcess) -> None:
    """"hey @baton run uptime" reached the bot as "hey  run uptime", and the help answer quoted it so."""
    pg = baton.client()
    thread = pg.ask("hey @baton run uptime", channel="dm-baton")
    pg.wait_reply(thread, "I don't know how to handle")
    with closing(sqlite3.connect(baton.database_url.removeprefix("sqlite:///"))) as connection:
        asked = connection.execute("SELECT text FROM inbound_events WHERE thread = ? AND kind = 'message'",
                                   (str(thread),)).fetchall()
    assert asked == [("hey run uptime",)], asked  # as the bot got it (help quotes it on one line anyway)


def test_a_channel_is_read_newest_first_a_page_at_a_time(baton: BatonProcess) -> None:
    pg = baton.client()
    ids = write_history(baton, "ops", [f"ops {n}" for n in range(250)])
    replies = write_history(baton, "ops", ["a", "b", "c"], thread=ids[0])
    write_history(baton, "ops", ["only bob sees this"], visible_to="bob")

    first = pg.http.get("/api/channels/ops/messages").json()
    assert [m["id"] for m in first["messages"]] == ids[-100:] and first["has_more"] is True
    pages, before = [first["messages"]], first["messages"][0]["id"]
    while True:
        older = pg.http.get("/api/channels/ops/messages", params={"before": before, "limit": 120}).json()
        pages.insert(0, older["messages"])
        before = older["messages"][0]["id"]
        if not older["has_more"]:
            break
    assert [len(p) for p in pages] == [30, 120, 100]
    assert [m["id"] for p in pages for m in p] == ids  # every message once, oldest first
    assert (pages[0][0]["reply_count"], pages[0][0]["last_reply_id"]) == (3, replies[-1])  # counted on any page

    bobs = pg.http.get("/api/channels/ops/messages", params={"viewer": "bob", "limit": 2}).json()
    assert [m["text"] for m in bobs["messages"]] == ["ops 249", "only bob sees this"]
    assert pg.http.get("/api/channels/ops/messages", params={"before": ids[0]}).json() == \
        {"messages": [], "has_more": False}
    for bad in [{"limit": 0}, {"limit": -5}, {"limit": "ten"}, {"limit": 501}, {"before": 0}, {"before": "x"},
                {"before": 2**31}]:
        response = pg.http.get("/api/channels/ops/messages", params=bad)
        assert response.status_code == 422, (bad, response.text)
        assert next(iter(bad)) in json.dumps(response.json()["detail"]), response.text  # names the parameter


def test_a_long_thread_is_read_newest_first_a_page_at_a_time(baton: BatonProcess) -> None:
    pg = baton.client()
    root = pg.ask("a long incident", channel="general", user="dave")
    replies = write_history(baton, "general", [f"update {n}" for n in range(150)], thread=int(root))

    first = pg.http.get(f"/api/threads/{root}/messages").json()
    assert [m["id"] for m in first["replies"]] == replies[-100:] and first["has_more"] is True
    assert (first["root"]["reply_count"], first["root"]["last_reply_id"]) == (150, replies[-1])
    older = pg.http.get(f"/api/threads/{root}/messages", params={"before": replies[-100], "limit": 500}).json()
    assert [m["id"] for m in older["replies"]] == replies[:50] and older["has_more"] is False
    assert older["root"]["id"] == int(root)
    assert pg.http.get(f"/api/threads/{root}/messages", params={"limit": 1000}).status_code == 422



def ids_shown(page: sync_api.Page, list_id: str) -> list[int]:
    return [int(i) for i in page.eval_on_selector_all(f"#{list_id} .message", "els => els.map(e => e.dataset.messageId)")]


def scroll_to_top_and_hold(page: sync_api.Page, list_id: str, anchor: int) -> float:
    """Scroll the list to its top; where the message ``anchor`` is then (px from the list's top)."""
    return float(page.evaluate("""([listId, anchor]) => {
        const list = document.getElementById(listId);
        list.scrollTop = 0;
        const el = list.querySelector(`.message[data-message-id="${anchor}"]`);
        return el.getBoundingClientRect().top - list.getBoundingClientRect().top;
    }""", [list_id, anchor]))


def place_of(page: sync_api.Page, list_id: str, message: int) -> float:
    return float(page.evaluate("""([listId, id]) => {
        const list = document.getElementById(listId);
        return list.querySelector(`.message[data-message-id="${id}"]`).getBoundingClientRect().top -
               list.getBoundingClientRect().top;
    }""", [list_id, message]))


def test_the_page_shows_a_channels_newest_messages_and_older_ones_as_the_reader_scrolls_up(
        baton: BatonProcess, page: sync_api.Page) -> None:
    """A thread link to a message older than the first page opens; the older pages come in above what the reader
    sees, which stays put; live messages and a restart of Baton (the page reads the channel afresh) still work."""
    pg = baton.client()
    ids = write_history(baton, "random", [f"random {n}" for n in range(250)])
    write_history(baton, "random", ["first reply", "second reply"], thread=ids[0])
    messages = page.locator("#messages .message")

    page.goto(f"{baton.url}/#/c/random/t/{ids[0]}")  # the thread of the oldest message, from a link
    expect(page.locator("#thread-messages .thread-root")).to_contain_text("random 0")
    expect(page.locator("#thread-count")).to_have_text("2 replies")
    expect(page.locator("#thread-messages .message")).to_have_count(3)
    expect(messages).to_have_count(100)
    assert ids_shown(page, "messages") == ids[-100:]  # not the thread's root, out of place at the top
    expect(page.locator("#messages .history-marker")).to_have_attribute("data-state", "more")
    expect(page.locator(f'#messages .message[data-message-id="{ids[-1]}"]')).to_be_in_viewport()

    at = scroll_to_top_and_hold(page, "messages", ids[150])
    expect(messages).to_have_count(200)
    assert abs(place_of(page, "messages", ids[150]) - at) < 2  # the reader's place did not move
    scroll_to_top_and_hold(page, "messages", ids[50])
    expect(page.locator("#messages .history-marker")).to_have_text("This is the beginning of #random.")
    assert ids_shown(page, "messages") == ids
    expect(page.locator(f'#messages .message[data-message-id="{ids[0]}"] .replies-link')).to_have_text("2 replies")

    live = int(pg.say("said just now", channel="random", user="bob").json()["message"]["id"])
    expect(page.locator(f'#messages .message[data-message-id="{live}"]')).to_be_attached()

    baton.stop()
    expect(page.locator("#conn-status.offline")).to_be_attached()
    baton.start()
    expect(page.locator("#conn-status.online")).to_be_attached()
    expect(messages).to_have_count(100)  # read afresh: its newest page again
    assert ids_shown(page, "messages") == [*ids[-99:], live]
    expect(page.locator("#thread-messages .thread-root")).to_contain_text("random 0")


def test_a_long_thread_shows_its_newest_replies_and_older_ones_as_the_reader_scrolls_up(
        baton: BatonProcess, page: sync_api.Page) -> None:
    pg = baton.client()
    root = pg.ask("another long incident", channel="general", user="dave")
    replies = write_history(baton, "general", [f"step {n}" for n in range(130)], thread=int(root))
    thread = page.locator("#thread-messages .message")

    page.goto(f"{baton.url}/#/c/general/t/{root}")
    expect(page.locator("#thread-count")).to_have_text("130 replies")
    expect(thread).to_have_count(101)  # the root and the newest 100
    expect(page.locator(f'#thread-messages .message[data-message-id="{replies[-1]}"]')).to_be_in_viewport()
    expect(page.locator("#thread-messages .history-marker")).to_have_attribute("data-state", "more")

    at = scroll_to_top_and_hold(page, "thread-messages", replies[30])
    expect(thread).to_have_count(131)
    expect(page.locator("#thread-messages .history-marker")).to_have_count(0)  # all there: the root begins it
    assert abs(place_of(page, "thread-messages", replies[30]) - at) < 2
    assert ids_shown(page, "thread-messages") == [int(root), *replies]

    live = int(pg.say("one more step", channel="general", thread=root, user="bob").json()["message"]["id"])
    expect(page.locator(f'#thread-messages .message[data-message-id="{live}"]')).to_be_attached()
    expect(page.locator("#thread-count")).to_have_text("131 replies")
