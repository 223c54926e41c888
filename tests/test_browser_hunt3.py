"""The playground page in a real Chromium, compared with what Slack or Discord show (third hunt).

A digest's chart arriving in an open thread, and web addresses in messages. One ``baton run`` serves the
module; the browser is test_browser's. Waits are Playwright's conditions, never sleeps.
"""

from __future__ import annotations

from tests.support import BatonProcess
from tests.test_browser import browser, open_playground, page, sync_api  # noqa: F401 (fixtures)
from tests.test_browser_hunt2 import baton  # noqa: F401 (a fixture: one baton run for the module)

expect = sync_api.expect

AT_THE_END = """() => {
    const list = document.querySelector('#thread-messages'), img = list.querySelector('.part-image img');
    return !!img && img.complete && img.naturalHeight > 0 && list.clientHeight > 0 &&
        list.scrollHeight - list.scrollTop - list.clientHeight <= 1;
}"""


def test_a_digest_chart_arriving_in_an_open_thread_is_shown_whole(baton: BatonProcess, page: sync_api.Page) -> None:  # noqa: F811
    """The chart has its height only once decoded, after the thread was taken to its end: the thread stayed
    short of its end by the chart's height, its lower part below the fold. (Opened by a reload, it was whole.)"""
    pg = baton.client()
    thread = pg.ask("@baton run uptime", channel="ops", user="carol")
    pg.wait_reply(thread, "finished")
    for number in range(12):  # a thread taller than its pane
        assert pg.say(f"looks fine {number}", channel="ops", thread=thread, user="carol").status_code == 201
    open_playground(page, baton.url, "alice")
    page.goto(f"{baton.url}/#/c/ops/t/{thread}")
    expect(page.locator("#thread-messages .message", has_text="looks fine 11")).to_be_visible()
    page.locator("#thread-composer").fill("digest now")
    page.locator("#thread-composer").press("Enter")
    expect(page.locator("#thread-messages .part-image img")).to_have_count(1)
    page.wait_for_function(AT_THE_END)
    page.reload()
    expect(page.locator("#thread-messages .thread-root")).to_be_visible()
    page.wait_for_function(AT_THE_END)


def test_a_web_address_in_a_message_is_a_link(baton: BatonProcess, page: sync_api.Page) -> None:  # noqa: F811
    """Slack and Discord make a web address in a message a link; the playground showed it as plain text (the
    text of people's messages and of the bot's replies is drawn alike), so a dashboard's address could not be
    opened from it."""
    open_playground(page, baton.url, "bob")
    page.goto(f"{baton.url}/#/c/random")
    expect(page.locator("#channel-title")).to_have_text("#random")
    page.locator("#composer").fill("*see* https://grafana.example.com/d/web?from=now-1h&to=now. (or https://example.org/a_(b)) @carol")
    page.locator("#composer").press("Enter")
    message = page.locator("#messages .message", has_text="see")
    links = message.locator(".part-text a")
    expect(links).to_have_count(2)
    expect(links.first).to_have_attribute("href", "https://grafana.example.com/d/web?from=now-1h&to=now")
    expect(links.first).to_have_text("https://grafana.example.com/d/web?from=now-1h&to=now")
    expect(links.first).to_have_attribute("target", "_blank")
    expect(links.first).to_have_attribute("rel", "noopener noreferrer")
    expect(links.nth(1)).to_have_attribute("href", "https://example.org/a_(b)")
    expect(message.locator(".part-text")).to_have_text(
        "see https://grafana.example.com/d/web?from=now-1h&to=now. (or https://example.org/a_(b)) @carol")
    expect(message.locator(".part-text strong")).to_have_text("see")
    expect(message.locator(".part-text .mention")).to_have_text("@carol")
    # Only http(s): anything else stays text.
    page.locator("#composer").fill("javascript:alert(1) and ftp://example.org/file")
    page.locator("#composer").press("Enter")
    expect(page.locator("#messages .message", has_text="javascript:alert(1)")).to_be_visible()
    expect(page.locator("#messages .message", has_text="javascript:alert(1)").locator("a:not(.replies-link)")).to_have_count(0)


def test_show_older_replies_pressed_from_the_keyboard_keeps_the_focus(baton: BatonProcess, page: sync_api.Page) -> None:  # noqa: F811
    """The button was drawn again as it loaded ("Loading older replies…", then the button again): the focus fell
    to the page, and a keyboard user's next Tab began again at its top, far from the thread."""
    pg = baton.client()
    thread = pg.ask("a busy incident", channel="ops", user="dave")
    for number in range(230):
        assert pg.say(f"update {number:03d}", channel="ops", thread=thread, user="dave").status_code == 201
    open_playground(page, baton.url, "carol")
    page.goto(f"{baton.url}/#/c/ops/t/{thread}")
    expect(page.locator("#thread-messages .message", has_text="update 229")).to_be_visible()
    older = page.locator("#thread-messages .history-marker button")
    # Focused without scrolling to it: scrolled near the top, the thread loads the older page by itself, and under
    # load that page could be in before the Enter below, which then loaded the last one (the button gone).
    older.evaluate("button => button.focus({preventScroll: true})")
    page.keyboard.press("Enter")
    expect(page.locator("#thread-messages .message", has_text="update 030")).to_be_attached()
    expect(older).to_be_focused()
    page.keyboard.press("Enter")  # the last page: the button goes, the focus to the thread's first reply
    first = page.locator("#thread-messages .message", has_text="update 000")
    expect(first).to_be_attached()
    expect(page.locator("#thread-messages .history-marker")).to_have_count(0)
    expect(first).to_be_focused()
