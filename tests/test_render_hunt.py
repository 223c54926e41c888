"""How today's replies show on Slack, end to end through the fake: who is named, in the notification too."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import replies
from tests.fake_slack import FakeSlack
from tests.test_slack import BOB, fake_slack  # noqa: F401 (a fixture)
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
