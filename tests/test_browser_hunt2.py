"""The playground page in a real Chromium, as a demanding team lead uses it (second hunt).

One ``baton run`` serves the whole module (each test keeps to messages of its own, none in #general, which
open_playground expects empty); the browser is test_browser's. Waits are Playwright's conditions, never sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import BatonProcess, Playground, write_config
from tests.test_browser import WAIT_MS, browser, open_playground, page, sync_api  # noqa: F401 (fixtures)

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
def phone(browser: sync_api.Browser) -> Iterator[sync_api.Page]:  # noqa: F811
    """A phone's width: an open thread takes the screen, the channel behind it is not shown."""
    context = browser.new_context(viewport={"width": 390, "height": 740})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def in_view(page: sync_api.Page, selector: str) -> None:
    """Wait until the element is inside its scrolled list's visible part."""
    page.wait_for_function("""(selector) => {
        const el = document.querySelector(selector), list = el && el.closest('.message-list');
        if (!list || !list.clientHeight) return false;
        const r = el.getBoundingClientRect(), l = list.getBoundingClientRect();
        return r.bottom <= l.bottom + 1 && r.top >= l.top - 1;
    }""", arg=selector)


def test_on_a_phone_the_channel_behind_a_thread_comes_back_at_its_newest_message(
        baton: BatonProcess, phone: sync_api.Page) -> None:
    """A thread opened from a link on a phone (or the page reloaded with it open) drew its channel while
    the thread hid it: closing the thread showed the channel's oldest messages, not its newest. And a
    message that arrived while the thread was open was left below the fold."""
    pg = baton.client()
    thread = pg.ask("a long day in #random", channel="random", user="carol")
    for number in range(25):
        pg.say(f"chatter {number}", channel="random", user="carol")
    phone.goto(f"{baton.url}/#/c/random/t/{thread}")
    expect(phone.locator("#thread-messages .thread-root")).to_be_visible()
    expect(phone.locator("#messages .message")).to_have_count(26)
    newest = message_id(pg, pg.say("posted while the thread was open", channel="random", user="dave"))
    expect(phone.locator("#messages .message")).to_have_count(27)
    phone.keyboard.press("Escape")
    expect(phone.locator("#channel-pane")).to_be_visible()
    in_view(phone, f'#messages .message[data-message-id="{newest}"]')


def message_id(pg: Playground, response: object) -> str:
    assert response.status_code == 201, response.text  # type: ignore[attr-defined]
    return str(response.json()["message"]["id"])  # type: ignore[attr-defined]


def test_two_tabs_as_two_users_stay_who_they_are_after_a_reload(baton: BatonProcess, page: sync_api.Page) -> None:  # noqa: F811
    """The user picked was kept in localStorage only, which every tab shares: with alice in one tab and bob in
    another (one asks, the other approves), reloading alice's tab made it bob's, the last pick in any tab."""
    open_playground(page, baton.url, "alice")
    other = page.context.new_page()
    open_playground(other, baton.url, "bob")
    page.reload()
    expect(page.locator("#conn-status.online")).to_be_attached()
    expect(page.locator("#user-picker")).to_have_value("alice")
    third = page.context.new_page()  # a new tab starts as the last pick
    third.goto(baton.url + "/")
    expect(third.locator("#user-picker")).to_have_value("bob")
