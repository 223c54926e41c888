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

