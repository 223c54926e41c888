"""The playground page in a real headless Chromium: a request, an approval by someone else, the result.

These tests drive ``/`` the way a person would (picker, composer, Enter, thread link, buttons) against a
real ``baton run`` process. They use Debian's ``/usr/bin/chromium`` (Playwright cannot download its own
browsers here; CI installs the package in ``.ci/run``) and are skipped, with the reason, without it.
Everything waits with Playwright's auto-waiting assertions, never with sleeps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import runs_in

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install -e '.[test]')")
expect = sync_api.expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 20_000  # generous: the run goes through the real queue, graph and outbox
# Every expect waits as long: what the page shows comes through Baton's queue and outbox, and Playwright's
# default of 5 s was close on a busy machine. A passing expect returns at once; only a failure waits longer.
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), "
                    "as .ci/run does; Playwright cannot download its own browsers here")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: sync_api.Browser) -> Iterator[sync_api.Page]:
    """A fresh profile (empty localStorage) wide enough to show the channel and the thread side by side.
    Uncaught errors in the page's JavaScript, and errors it logs (such as failed loads), fail the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    page.on("console", lambda message: errors.append(f"console: {message.text} at {message.location}")
            if message.type == "error" else None)
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"errors in the page: {errors}"


def open_playground(page: sync_api.Page, url: str, user: str) -> None:
    """Load the page, pick ``user``, and wait until #general is loaded and the live stream is connected."""
    page.goto(url + "/")
    picker = page.locator("#user-picker")
    expect(picker.locator("option")).to_have_count(4)
    picker.select_option(user)
    expect(picker).to_have_value(user)
    expect(page.locator("#channel-title")).to_have_text("#general")
    expect(page.locator("#messages .empty")).to_contain_text("No messages yet")
    expect(page.locator("#conn-status.online")).to_be_attached()
    assert page.evaluate("localStorage.getItem('batonPlayground.user')") == user


def test_request_approved_by_someone_else_runs_once(start_baton, sqlite_url: str, counter: Path,
                                                    tmp_path: Path, page: sync_api.Page) -> None:
    baton = start_baton(sqlite_url)
    open_playground(page, baton.url, "alice")

    request_text = "@baton run restart service=web"
    page.locator("#composer").fill(request_text)
    page.locator("#composer").press("Enter")
    expect(page.locator("#composer")).to_have_value("")  # sent and cleared, no error
    expect(page.locator("#composer-error")).to_be_hidden()

    request = page.locator("#messages .message[data-message-id]", has_text=request_text)
    expect(request).to_have_count(1)
    expect(request.locator(".author")).to_have_text("alice")
    # the bot answers in the thread: the root's link turns from "Reply in thread" into a count
    replies_link = request.locator(".replies-link")
    expect(replies_link).to_have_text(re.compile(r"^\d+ repl(y|ies)$"), timeout=WAIT_MS)
    replies_link.click()

    thread = page.locator("#thread-pane")
    expect(thread).to_be_visible()
    request_id = request.get_attribute("data-message-id")
    assert request_id
    expect(page).to_have_url(re.compile(rf"#/c/general/t/{request_id}$"))
    expect(thread.locator(".message.thread-root")).to_contain_text(request_text)

    approve = thread.locator("button.approve[data-approval-id]")
    card = thread.locator(".message.bot[data-message-id]", has=page.locator("button.approve"))
    expect(approve).to_be_visible(timeout=WAIT_MS)
    expect(card).to_contain_text("Approval needed")
    expect(card).to_contain_text("Requested by alice")
    card_id = card.get_attribute("data-message-id")
    assert card_id
    assert runs_in(counter) == [], "the high-risk runbook ran before anyone approved it"

    # someone else approves: switch the user, the page reloads what it shows for bob
    page.locator("#user-picker").select_option("bob")
    expect(page.locator("#user-picker")).to_have_value("bob")
    assert page.evaluate("localStorage.getItem('batonPlayground.user')") == "bob"
    expect(thread.locator(".message.thread-root")).to_contain_text(request_text)
    expect(approve).to_be_visible()
    approve.click()

    decided = thread.locator(f'.message[data-message-id="{card_id}"]')
    expect(decided).to_contain_text("Approved by bob", timeout=WAIT_MS)
    expect(decided.locator("button")).to_have_count(0)  # the same card was edited: buttons gone
    expect(decided).to_have_class(re.compile(r"\btone-success\b"))
    expect(thread.locator("button.approve")).to_have_count(0)
    output = thread.locator("pre.part-code", has_text="did restart web")
    expect(output).to_be_visible(timeout=WAIT_MS)
    expect(output).to_contain_text("did restart web")
    expect(thread.locator(".buttons-error")).to_have_count(0)

    # the channel's root shows the thread's replies too
    expect(replies_link).to_have_text(re.compile(r"^\d+ replies$"))
    assert runs_in(counter) == ["restart web"]

    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)


def test_blank_message_is_not_sent(start_baton, sqlite_url: str, tmp_path: Path, page: sync_api.Page) -> None:
    """The page does not post a blank message at all (the API would answer 400 "text must not be empty"):
    nothing is posted, no error is shown, and the next real message goes through normally."""
    baton = start_baton(sqlite_url)
    open_playground(page, baton.url, "alice")
    posted: list[dict] = []
    page.on("request", lambda r: posted.append(json.loads(r.post_data or "{}"))
            if r.method == "POST" and r.url.endswith("/api/messages") else None)

    composer = page.locator("#composer")
    composer.fill("   \n\t  ")
    composer.press("Enter")
    page.locator("#composer-form button.send-button").click()
    expect(page.locator("#composer-error")).to_be_hidden()
    expect(composer).to_have_value("   \n\t  ")  # left as typed; nothing happened

    # a real message afterwards: once it shows, any POST from the blank attempts would have been seen
    composer.fill("hello after the blank one")
    composer.press("Enter")
    expect(page.locator("#messages .message[data-message-id]", has_text="hello after the blank one")).to_be_visible()
    expect(composer).to_have_value("")
    expect(page.locator("#composer-error")).to_be_hidden()
    assert [body["text"] for body in posted] == ["hello after the blank one"]
    expect(page.locator("#messages .message[data-message-id]")).to_have_count(1)
    stored = baton.client().http.get("/api/channels/general/messages").json()["messages"]
    assert [m["text"] for m in stored] == ["hello after the blank one"]

    page.screenshot(path=str(tmp_path / "blank.png"), full_page=True)


def test_every_message_keeps_its_reply_link(start_baton, sqlite_url: str, page: sync_api.Page) -> None:
    """A new message must not take away an earlier one's "Reply in thread" link, and the link sits
    under the message's text (it once shared its class with the list's "No messages yet" placeholder)."""
    baton = start_baton(sqlite_url)
    open_playground(page, baton.url, "alice")
    composer = page.locator("#composer")
    for text in ["first message", "second message"]:
        composer.fill(text)
        composer.press("Enter")
        expect(page.locator("#messages .message[data-message-id]", has_text=text)).to_be_visible()
    messages = page.locator("#messages .message[data-message-id]")
    expect(messages).to_have_count(2)
    for i in range(2):
        link = messages.nth(i).locator(".replies-link")
        expect(link).to_have_text("Reply in thread")
        text_box = messages.nth(i).locator(".part-text").bounding_box()
        link_box = link.bounding_box()
        assert text_box and link_box
        assert abs(link_box["x"] - text_box["x"]) < 2, (text_box, link_box)
        assert 0 <= link_box["y"] - (text_box["y"] + text_box["height"]) < 12, (text_box, link_box)
    expect(page.locator("#messages > .empty")).to_have_count(0)


def test_a_message_sent_while_the_previous_one_is_in_flight_is_not_dropped(start_baton, sqlite_url: str,
                                                                           page: sync_api.Page) -> None:
    """Enter pressed while the previous message was still being posted was ignored: the text stayed in
    the box, unsent (the reply-link test above failed on it now and then)."""
    baton = start_baton(sqlite_url)
    open_playground(page, baton.url, "alice")
    composer = page.locator("#composer")
    for text in ["one in flight", "right behind it"]:
        composer.fill(text)
        composer.press("Enter")
    for text in ["one in flight", "right behind it"]:
        expect(page.locator("#messages .message[data-message-id]", has_text=text)).to_be_visible()
    expect(composer).to_have_value("")


def test_fenced_code_thread_links_with_zeros_and_live_reply_counts(start_baton, sqlite_url: str,
                                                                    page: sync_api.Page) -> None:
    """Fenced code typed in a message showed as empty inline boxes; `#/c/general/t/01` stayed at
    "Loading…"; a thread's reply count in the channel list stayed as first fetched."""
    baton = start_baton(sqlite_url)
    pg = baton.client()
    open_playground(page, baton.url, "alice")
    thread = pg.ask("```python\ndef f(x):\n    return x * 2\n```", user="bob")
    pg.say("first reply", thread=thread, user="bob")
    page.reload()  # the channel as fetched: the root with its count, the thread not loaded
    expect(page.locator("#conn-status.online")).to_be_attached()
    root = page.locator(f'#messages .message[data-message-id="{thread}"]')
    expect(root.locator("pre.part-code")).to_have_text("def f(x):\n    return x * 2")
    expect(root.locator(".replies-link")).to_have_text("1 reply")
    pg.say("second reply", thread=thread, user="carol")  # arrives live; the thread was never opened here
    expect(root.locator(".replies-link")).to_have_text("2 replies")
    page.goto(f"{baton.url}/#/c/general/t/0{thread}")
    expect(page.locator("#thread-messages")).to_contain_text("second reply")
    assert page.url.endswith(f"#/c/general/t/{thread}")


def test_on_a_phone_the_chat_takes_the_width(start_baton, sqlite_url: str, browser: sync_api.Browser) -> None:
    """At 375 px the sidebar kept 190 px and messages wrapped every word or two."""
    baton = start_baton(sqlite_url)
    phone = browser.new_context(viewport={"width": 375, "height": 740})
    try:
        page = phone.new_page()
        page.set_default_timeout(WAIT_MS)
        open_playground(page, baton.url, "alice")
        composer = page.locator("#composer")
        composer.fill("@baton run restart service=web")
        composer.press("Enter")
        card = page.locator("#messages .message", has_text="Approval needed")
        page.locator("#messages .replies-link").first.click()
        expect(page.locator("#thread-messages .part-buttons button.approve")).to_be_visible()
        assert page.locator("#thread-pane").bounding_box()["width"] >= 360  # type: ignore[index]
        page.locator("#thread-close").click()
        expect(page.locator("#messages")).to_be_visible()
        assert page.locator("#messages").bounding_box()["width"] >= 360  # type: ignore[index]
        expect(page.locator("#channel-list .channel-link", has_text="ops")).to_be_visible()  # every channel in reach
        assert card.count() == 0  # the card is in the thread, not the channel
    finally:
        phone.close()


def test_keyboard_focus_survives_a_decision_and_closing_the_thread(start_baton, sqlite_url: str,
                                                                   page: sync_api.Page) -> None:
    """The card's buttons go once decided, and focus fell back to the page; so it did on Escape."""
    baton = start_baton(sqlite_url)
    open_playground(page, baton.url, "bob")
    thread = baton.client().ask("@baton run restart service=web", user="alice")
    page.goto(f"{baton.url}/#/c/general/t/{thread}")
    approve = page.locator("#thread-messages .part-buttons button.approve")
    approve.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#thread-messages")).to_contain_text("Approved by bob")
    assert page.evaluate("document.activeElement.classList.contains('message')")  # the decided card
    page.locator("#thread-composer").focus()
    page.keyboard.press("Escape")
    expect(page.locator("#thread-pane")).to_be_hidden()
    assert page.evaluate("document.activeElement.id") == "composer"


def test_a_draft_stays_where_it_was_typed(start_baton, sqlite_url: str, page: sync_api.Page) -> None:
    """Text typed in one thread's reply box was still there in the next thread (Enter posted it there)."""
    baton = start_baton(sqlite_url)
    open_playground(page, baton.url, "alice")
    pg = baton.client()
    first, second = pg.ask("first topic", user="bob"), pg.ask("second topic", user="bob")
    page.goto(f"{baton.url}/#/c/general/t/{first}")
    page.locator("#thread-composer").fill("about the first topic")
    page.goto(f"{baton.url}/#/c/general/t/{second}")
    expect(page.locator("#thread-composer")).to_have_value("")
    page.goto(f"{baton.url}/#/c/general/t/{first}")
    expect(page.locator("#thread-composer")).to_have_value("about the first topic")
    # Opened from the channel, the pane's reply box is full height (it was sized while hidden: 10 px).
    page.goto(f"{baton.url}/#/c/general")
    page.locator("#messages .message", has_text="second topic").get_by_role("link", name="Reply in thread").click()
    expect(page.locator("#thread-composer")).to_be_visible()
    assert page.locator("#thread-composer").bounding_box()["height"] >= 30  # type: ignore[index]
    page.goto(f"{baton.url}/#/c/general")
    page.locator("#composer").fill("for #general")
    page.goto(f"{baton.url}/#/c/ops")
    expect(page.locator("#composer")).to_have_value("")
    page.goto(f"{baton.url}/#/c/general")
    expect(page.locator("#composer")).to_have_value("for #general")


def test_screen_readers_get_labelled_message_boxes_and_hear_replies_arrive_in_the_thread(
        start_baton, sqlite_url: str, page: sync_api.Page) -> None:
    """The message boxes had placeholders and no labels; the thread pane was no live region, so a screen
    reader said nothing of the bot's replies arriving there (the channel's list was one already)."""
    baton = start_baton(sqlite_url)
    open_playground(page, baton.url, "alice")
    page.get_by_role("link", name="#ops", exact=True).click()
    expect(page.get_by_label("Message #ops", exact=True)).to_be_focused()  # the label follows the channel
    page.get_by_role("link", name="#general", exact=True).click()
    box = page.get_by_label("Message #general", exact=True)
    expect(box).to_be_focused()
    box.fill("@baton help")
    box.press("Enter")

    channel = page.get_by_role("log", name="#general", exact=True)
    expect(channel).to_have_attribute("aria-live", "polite")
    request = channel.locator(".message[data-message-id]", has_text="@baton help")
    expect(request.get_by_role("link", name=re.compile(r"^\d+ repl(y|ies)$"))).to_be_visible()
    request.get_by_role("link", name=re.compile(r"^\d+ repl(y|ies)$")).click()

    thread = page.get_by_role("log", name="Thread", exact=True)
    expect(thread).to_have_attribute("aria-live", "polite")
    reply = page.get_by_label("Reply in thread", exact=True)
    expect(reply).to_be_focused()
    reply.fill("run uptime")  # a Baton thread: no mention needed
    reply.press("Enter")
    expect(thread.get_by_text("did uptime")).to_be_visible()  # arrived in the live region while it was open


def test_a_send_error_goes_with_the_text_it_was_about(start_baton, sqlite_url: str,
                                                      browser: sync_api.Browser) -> None:
    """100,001 characters sent in #random: the error under the box stayed after the box was emptied, and after
    switching to #general (or to a channel there is not), about a message that was not there."""
    baton = start_baton(sqlite_url)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()  # not the page fixture: the refused post (a 422) is logged as a failed load
    page.set_default_timeout(WAIT_MS)
    uncaught: list[str] = []
    page.on("pageerror", lambda error: uncaught.append(str(error)))
    open_playground(page, baton.url, "alice")
    page.locator("#channel-list .channel-link", has_text="random").click()
    expect(page.locator("#channel-title")).to_have_text("#random")
    composer, error = page.locator("#composer"), page.locator("#composer-error")
    for leave in ("empty the box", "switch channel"):
        composer.fill("x" * 100_001)
        composer.press("Enter")
        expect(error).to_contain_text("100000 characters")
        expect(composer).to_have_value("x" * 100_001)  # put back, as it was not sent
        if leave == "empty the box":
            composer.fill("")
        else:
            page.locator("#channel-list .channel-link", has_text="general").click()
            expect(page.locator("#channel-title")).to_have_text("#general")
        expect(error).to_be_hidden()
        if leave == "switch channel":  # its draft stays in #random, where it was typed
            page.locator("#channel-list .channel-link", has_text="random").click()
            expect(composer).to_have_value("x" * 100_001)
    context.close()
    assert not uncaught
