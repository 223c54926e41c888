"""The outbox under failure: backlogs, paced channels, edits of posts that never made it, platforms nobody serves."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from bot.messages import Location, Message
from bot.outbox import Outbox
from storage.db import Database
from storage.models import OutboxMessage, utcnow


def _at(channel: str, thread: str, platform: str = "slack") -> Location:
    return Location(platform=platform, workspace="T1", channel=channel, thread=thread)


@pytest.mark.asyncio
async def test_a_paced_channels_backlog_does_not_starve_the_other_channels(database: Database) -> None:
    """Slack is paced (one message a second per channel). The claim read the first 20 due rows and took
    one of each channel's: with 20 threads of #busy waiting (a catch-up after an outage), every row it
    read was #busy's, so #quiet's message waited behind #busy's whole backlog, one second per row."""
    outbox = Outbox(database, worker="me")
    async with database.session() as session:
        for thread in range(25):
            await outbox.enqueue(session, _at("busy", f"t{thread}"), Message.text(f"busy {thread}"))
        await outbox.enqueue(session, _at("quiet", "q1"), Message.text("quiet"))

    claimed = await outbox.claim("slack", "me", pace_seconds=60.0)
    assert sorted(d.message.plain_text() for d in claimed) == ["busy 0", "quiet"]  # one per channel, each its first
    assert await outbox.claim("slack", "me", pace_seconds=60.0) == []  # both channels wait for their next slot
