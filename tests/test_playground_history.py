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
from datetime import UTC, datetime, timedelta

import pytest

from tests.support import BatonProcess, write_config
from tests.test_browser import WAIT_MS, browser, sync_api  # noqa: F401 (fixture)

expect = sync_api.expect


@pytest.fixture(scope="module")
def baton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatonProcess]:
    directory = tmp_path_factory.mktemp("baton")
    process = BatonProcess(f"sqlite:///{directory / 'baton.db'}", write_config(directory, directory / "runs.txt"),
                           directory).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def page(browser: sync_api.Browser) -> Iterator[sync_api.Page]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    page.on("console", lambda message: errors.append(f"console: {message.text}") if message.type == "error" else None)
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
    assert "“hey run uptime”" in pg.wait_reply(thread, "I don't know how to handle")["text"]


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
    root = pg.ask("a long incident", channel="ops", user="dave")
    replies = write_history(baton, "ops", [f"update {n}" for n in range(150)], thread=int(root))

    first = pg.http.get(f"/api/threads/{root}/messages").json()
    assert [m["id"] for m in first["replies"]] == replies[-100:] and first["has_more"] is True
    assert (first["root"]["reply_count"], first["root"]["last_reply_id"]) == (150, replies[-1])
    older = pg.http.get(f"/api/threads/{root}/messages", params={"before": replies[-100], "limit": 500}).json()
    assert [m["id"] for m in older["replies"]] == replies[:50] and older["has_more"] is False
    assert older["root"]["id"] == int(root)
    assert pg.http.get(f"/api/threads/{root}/messages", params={"limit": 1000}).status_code == 422

