"""How today's replies show on Slack, end to end through the fake: who is named, in the notification too."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.slack_blocks import escape
from bot import replies
from tests.fake_discord import OPS
from tests.fake_slack import FakeSlack
from tests.test_discord import Discord, chat, fake_discord  # noqa: F401 (fixtures)
from tests.test_slack import BOB, Slack, fake_slack, slack  # noqa: F401 (fixtures)
from tests.test_slack_hunt3 import adapter  # noqa: F401 (a fixture)
from tests.test_slack_hunt4 import _post


@pytest.mark.asyncio
async def test_slack_notification_of_a_reply_naming_bob_says_his_name_not_his_id(fake_slack: FakeSlack,  # noqa: F811
                                                                                   tmp_path: Path) -> None:
    """A message without a title is notified with its first line: Slack's phone and desktop banners read
    "U0BOB00002 rejected the same request just above in this thread, ...", the id where the message shows bob."""
    (posted,) = await _post(fake_slack, tmp_path, replies.rejected_above(BOB))
    assert posted.blocks[0]["text"]["text"].startswith(f"<@{BOB}> rejected the same request just above")
    assert posted.text.startswith(f"<@{BOB}> rejected the same request just above in this thread")


# A look-alike value (a Cyrillic е) with markup of both platforms in it: Slack's bold and mention, Discord's
# masked link, timestamp and @everyone; the backtick of its own would end the code span.
LOOKALIKE = "w\u0435b*x*`<t:1:R>[y](http://e.x)@everyone"
SHOWN = "`service=$'w\\u0435b*x*\u02cb<t:1:R>[y](http://e.x)@everyone'` does not match"


def test_slack_shows_a_refused_lookalike_value_as_bash_writes_it_in_one_code_span(slack: Slack) -> None:  # noqa: F811
    thread = slack.mention(f"run restart service={escape(LOOKALIKE)}")["ts"]  # as Slack sends what was typed
    reply = slack.reply("does not match", thread)
    (section,) = [block["text"]["text"] for block in reply.blocks if "does not match" in block["text"]["text"]]
    assert escape(SHOWN) in section  # no <@...>, no <t:...> markup, one span
    assert section.count("`") % 2 == 0


def test_discord_shows_a_refused_lookalike_value_as_bash_writes_it_in_one_code_span(
        chat: Discord) -> None:  # noqa: F811
    thread = chat.fake.say(f"run restart service={LOOKALIKE}", channel=OPS)["id"]
    reply = chat.reply("does not match", thread)
    assert SHOWN in reply.content and reply.content.count("`") % 2 == 0 and "**x**" not in reply.content
