"""The playground page in a real Chromium, as a demanding team lead uses it (second hunt).

One ``baton run`` serves the whole module (each test keeps to messages of its own, none in #general, which
open_playground expects empty); the browser is test_browser's. Waits are Playwright's conditions, never sleeps.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import BatonProcess, Playground, write_config
from tests.test_browser import WAIT_MS, browser, open_playground, page, sync_api  # noqa: F401 (fixtures)
from tests.test_browser_hunt import wait_until_held
from tests.test_browser_journey import lenient_page  # noqa: F401 (fixture)

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
        last = message_id(pg, pg.say(f"chatter {number}", channel="random", user="carol"))
    phone.goto(f"{baton.url}/#/c/random/t/{thread}")
    expect(phone.locator("#thread-messages .thread-root")).to_be_visible()
    expect(phone.locator(f'#messages .message[data-message-id="{last}"]')).to_be_attached()
    newest = message_id(pg, pg.say("posted while the thread was open", channel="random", user="dave"))
    expect(phone.locator(f'#messages .message[data-message-id="{newest}"]')).to_be_attached()
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


def hold_first(page: sync_api.Page, url: re.Pattern[str]) -> list[sync_api.Route]:
    """Hold the next request to ``url`` (the test answers it); those after it go through."""
    held: list[sync_api.Route] = []
    page.evaluate("delete document.body.dataset.held")

    def hold(route: sync_api.Route) -> None:
        if held:
            route.fallback()
            return
        held.append(route)
        page.evaluate("document.body.dataset.held = '1'")

    page.route(url, hold)
    return held


def test_the_box_empties_as_a_message_is_sent_and_gets_it_back_if_it_fails(baton: BatonProcess,
                                                                          lenient_page: sync_api.Page) -> None:
    """The text sent stayed in the box until Baton had stored it: typing on meanwhile (and Enter) sent it a
    second time with the new text after it, and a channel left meanwhile kept it as its draft, sent already."""
    page = lenient_page  # the refused post is logged as a failed load
    open_playground(page, baton.url, "alice")
    page.goto(f"{baton.url}/#/c/ops")
    expect(page.locator("#channel-title")).to_have_text("#ops")
    composer, posts = page.locator("#composer"), re.compile(r"/api/messages$")

    held = hold_first(page, posts)
    composer.press_sequentially("first thought")
    composer.press("Enter")
    wait_until_held(page)
    expect(composer).to_have_value("")
    composer.press_sequentially("second thought")
    composer.press("Enter")  # sent once the first one's answer is in
    held[0].fulfill(response=held[0].fetch())
    expect(page.locator("#messages .message", has_text="second thought")).to_be_visible()
    expect(composer).to_have_value("")
    stored = [m["text"] for m in baton.client().http.get("/api/channels/ops/messages").json()["messages"]]
    assert stored[-2:] == ["first thought", "second thought"]
    page.unroute(posts)

    held = hold_first(page, posts)
    composer.fill("sent as I left")
    composer.press("Enter")
    wait_until_held(page)
    page.get_by_role("link", name="#random", exact=True).click()
    expect(page.locator("#channel-title")).to_have_text("#random")
    held[0].fulfill(response=held[0].fetch())
    page.get_by_role("link", name="#ops", exact=True).click()
    expect(page.locator("#messages .message", has_text="sent as I left")).to_be_visible()
    expect(composer).to_have_value("")  # not its draft: it was sent
    page.unroute(posts)

    held = hold_first(page, posts)
    composer.fill("this one fails")
    composer.press("Enter")
    wait_until_held(page)
    page.get_by_role("link", name="#random", exact=True).click()
    expect(page.locator("#channel-title")).to_have_text("#random")
    held[0].fulfill(status=400, json={"detail": "refused for the test"})
    expect(page.locator("#composer-error")).to_have_text("refused for the test")
    page.get_by_role("link", name="#ops", exact=True).click()
    expect(composer).to_have_value("this one fails")  # back where it was typed, unsent


def test_a_server_error_is_told_politely_and_the_message_kept(baton: BatonProcess, lenient_page: sync_api.Page) -> None:
    """A 500 with no reason of its own (or a proxy's 502) was shown as "Request failed (500 Internal Server
    Error)": what happened, and what to do, went unsaid."""
    page = lenient_page
    open_playground(page, baton.url, "alice")
    page.goto(f"{baton.url}/#/c/random")
    expect(page.locator("#channel-title")).to_have_text("#random")
    page.route(re.compile(r"/api/messages$"), lambda route: route.fulfill(status=500, body="Internal Server Error",
                                                                          content_type="text/plain"))
    composer = page.locator("#composer")
    composer.fill("@baton run uptime")
    composer.press("Enter")
    expect(page.locator("#composer-error")).to_have_text(
        "Something went wrong in Baton (500 Internal Server Error). Try again; if it keeps failing, Baton's log says why.")
    expect(composer).to_have_value("@baton run uptime")


def test_a_reply_sent_while_another_is_on_its_way_goes_to_its_own_thread(baton: BatonProcess, page: sync_api.Page) -> None:  # noqa: F811
    """A reply sent in thread B while one sent in thread A was still on its way went out after it with A's
    thread: "cancel" typed in one run's thread could stop another."""
    pg = baton.client()
    first, second = pg.ask("thread A", channel="random"), pg.ask("thread B", channel="random")
    open_playground(page, baton.url, "alice")
    page.goto(f"{baton.url}/#/c/random/t/{first}")
    expect(page.locator("#thread-messages .thread-root")).to_contain_text("thread A")
    box, posts = page.locator("#thread-composer"), re.compile(r"/api/messages$")
    held = hold_first(page, posts)
    box.fill("a reply in A")
    box.press("Enter")
    wait_until_held(page)
    page.locator(f'#messages .message[data-message-id="{second}"] .replies-link').click()
    expect(page.locator("#thread-messages .thread-root")).to_contain_text("thread B")
    box.fill("a reply in B")
    box.press("Enter")  # waits for the first
    held[0].fulfill(response=held[0].fetch())
    expect(page.locator("#thread-messages .message", has_text="a reply in B")).to_be_visible()
    expect(box).to_have_value("")
    assert [m["text"] for m in pg.replies(first)] == ["a reply in A"]
    assert [m["text"] for m in pg.replies(second)] == ["a reply in B"]


XSS = ['<img src=x onerror="window.__xss=1">', '"><svg onload="window.__xss=1">', "<script>window.__xss=1</script>",
       '<iframe src="javascript:window.__xss=1">']


def test_markup_in_messages_and_runbook_arguments_stays_text(baton: BatonProcess, page: sync_api.Page) -> None:  # noqa: F811
    """Markup sent as text, in `code`, in a ```fence```, in *bold*, after a mention, and as a runbook's argument
    (which the bot's answer quotes) is shown as typed, never made into elements."""
    pg = baton.client()
    threads = [pg.ask(f"{x} `{x}` *{x}* @bob{x}\n```\n{x}\n```", channel="random") for x in XSS]
    asked = pg.ask("@baton run restart service=<img/src=x/onerror=window.__xss=1> '<svg onload=alert(1)>'", channel="random")
    pg.wait_reply(asked, "does not match")
    open_playground(page, baton.url, "alice")
    for thread in [*threads, asked]:
        page.goto(f"{baton.url}/#/c/random/t/{thread}")
        expect(page.locator("#thread-messages .thread-root")).to_contain_text("<")
    expect(page.locator("#thread-messages .message").last).to_contain_text("service=<img/src=x/onerror")
    for x in XSS:
        expect(page.locator("#messages .message", has_text=x).first).to_be_visible()
    injected = "#app img, #app svg, #app script, #app iframe"
    assert page.locator(injected).count() == 0
    assert page.evaluate("window.__xss") is None


def test_the_key_that_ends_an_input_methods_composition_neither_sends_nor_closes(
        baton: BatonProcess, page: sync_api.Page) -> None:  # noqa: F811
    """Safari reports the Enter that confirms a Japanese or Chinese conversion with keyCode 229 and isComposing
    false: the half-typed message was sent; the Escape that cancels one closed the open thread."""
    open_playground(page, baton.url, "alice")
    thread = baton.client().ask("ime check", channel="random", user="alice")
    page.goto(f"{baton.url}/#/c/random/t/{thread}")
    reply_box = page.locator("#thread-composer")
    expect(page.locator("#thread-messages .thread-root")).to_be_visible()
    reply_box.fill("にほんご")
    for key in ("Enter", "Escape"):  # as Safari sends them while a conversion is under way
        reply_box.evaluate("(box, key) => box.dispatchEvent(new KeyboardEvent('keydown', {key, keyCode: 229, "
                           "bubbles: true, cancelable: true}))", key)
    reply_box.press("End")
    reply_box.press_sequentially("です")
    reply_box.press("Enter")  # a real Enter sends it: once, whole
    expect(page.locator("#thread-messages .message", has_text="にほんごです")).to_be_visible()
    expect(page.locator("#thread-messages .message", has_text="にほんご")).to_have_count(1)
    expect(page.locator("#thread-pane")).to_be_visible()
