"""`status` in a busy channel: one message, the longest-waiting threads first, and how many more there are."""

from __future__ import annotations

from datetime import timedelta

from bot.app import Baton
from bot.messages import InboundMessage
from bot.settings import Settings
from graphs.status import MAX_SHOWN
from storage.models import ThreadRecord, utcnow
from tests.test_graph_modules import _reply


async def test_status_of_a_busy_channel_lists_the_longest_waiting_and_counts_the_rest(tmp_path, config_path) -> None:
    """With 300 threads running or waiting, status listed every one: seven Slack messages paced a second apart."""
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 's.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        now = utcnow()
        async with baton.db.session() as session:
            for n in range(MAX_SHOWN + 5):
                session.add(ThreadRecord(platform="playground", channel="general", thread=f"busy-{n}",
                                         status="waiting" if n % 2 else "running", title=f"request {n}",
                                         requested_by="bob", updated_at=now - timedelta(minutes=100 - n)))
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="status", addressed=True))
        reply = await _reply(baton, "1")
    assert reply.startswith(f"*Status: {MAX_SHOWN + 5} active threads*"), reply[:200]
    assert "request 0 —" in reply and f"request {MAX_SHOWN - 1} —" in reply
    assert f"request {MAX_SHOWN} —" not in reply
    assert "…and 5 more (the 20 that have waited longest are listed)." in reply
