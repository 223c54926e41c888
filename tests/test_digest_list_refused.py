"""`digest list` says which of a schedule's digests the platform refused, and what the next one covers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import select

from bot.app import Baton
from bot.messages import InboundMessage
from bot.settings import Settings
from storage.models import DigestRun, DigestSchedule, OutboxMessage, PlaygroundMessage
from tests.support import until


async def _replies(baton: Baton, thread: str) -> list[str]:
    async with baton.db.read() as session:
        return list((await session.exec(select(PlaygroundMessage.text).where(
            PlaygroundMessage.is_bot, PlaygroundMessage.thread_id == thread))).all())


async def test_digest_list_names_the_digests_whose_cards_were_refused(database_url: str, config_path: Path) -> None:
    """Baton removed from #ops for a day: Slack refused that day's card (not_in_channel). Invited back, `digest
    list` said only when the next digest comes; now it says the last one was not posted, why, and from when the
    next one covers the time."""
    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        await baton.accept_message(InboundMessage(platform="playground", channel="ops", thread="1", event_id="e1",
                                                  user="alice", text="digest daily 09:00 Europe/Paris", addressed=True))
        await until(lambda: _replies(baton, "1"), "the schedule's confirmation")
        async with baton.db.session() as session:
            schedule = (await session.exec(select(DigestSchedule))).one()
            card = OutboxMessage(platform="playground", channel="ops", thread="", status="failed",
                                 error="chat.postMessage: not_in_channel")
            session.add(card)
            await session.flush()
            session.add(DigestRun(
                schedule_key=schedule.key, fire_time=datetime(2026, 6, 2, 7, tzinfo=UTC), platform="playground",
                channel="ops", window_start=datetime(2026, 6, 1, 7, tzinfo=UTC),
                window_end=datetime(2026, 6, 2, 7, tzinfo=UTC), status="posted",
                posted_at=datetime(2026, 6, 2, 7, tzinfo=UTC), summary={"outbox_id": card.id}))
        await baton.accept_message(InboundMessage(platform="playground", channel="ops", thread="2", event_id="e2",
                                                  user="alice", text="digest list", addressed=True))
        [listed] = await until(lambda: _replies(baton, "2"), "the list")
    assert "next:" in listed
    assert ("its last digest was not posted: the platform refused its card (`chat.postMessage: not_in_channel`); "
            "the next one covers the time since 2026-06-01 07:00:00 UTC") in listed, listed
