"""Long lines in a code box wrap, as Slack's and Discord's code blocks do: a card's command ran off the box's
right edge in the playground (it scrolled sideways), so an approver saw only its beginning before deciding.
One ``baton run`` serves the module; the browser is test_browser's. Waits are Playwright's conditions."""

from __future__ import annotations

from tests.support import BatonProcess
from tests.test_browser import browser, open_playground, page, sync_api  # noqa: F401 (fixtures)
from tests.test_browser_hunt2 import baton  # noqa: F401 (a fixture: one baton run for the module)

expect = sync_api.expect

# The card's code box, drawn: nothing of it hidden sideways, and its command on more than one line.
WRAPPED = """() => {
    const card = [...document.querySelectorAll('#thread-messages .message')]
        .find((message) => message.textContent.includes('Approval needed'));
    const box = card && card.querySelector('.part-code');
    return !!box && box.clientWidth > 0 && box.scrollWidth <= box.clientWidth &&
        box.getBoundingClientRect().height > 40;
}"""


def test_a_cards_long_command_is_shown_whole_without_scrolling_sideways(
        baton: BatonProcess, page: sync_api.Page) -> None:  # noqa: F811
    pg = baton.client()
    thread = pg.ask("@baton run restart service=web", channel="ops", user="alice")
    card = pg.wait_card(thread)
    command = card["text"].split("command: ", 1)[1].split("\n", 1)[0]
    assert len(command) > 100, command  # wider than the thread's pane holds on one line
    open_playground(page, baton.url, "bob")
    page.goto(f"{baton.url}/#/c/ops/t/{thread}")
    box = page.locator("#thread-messages .message", has_text="Approval needed").locator(".part-code")
    expect(box).to_contain_text(command)
    page.wait_for_function(WRAPPED)
