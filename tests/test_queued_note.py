"""The "Queued: I'll handle this after the current run finishes" note, given only when work is ahead.

People talk in a Baton thread ("thanks!"); their messages are stored as the thread's events and passed
over without an answer in their turn. A request written just behind them, in a thread with no run going
on, was told it was queued after "the current run" (on PostgreSQL under load `make test` saw the third
reply). Here the thread's lease is held elsewhere, so what is stored stays pending, in a known order.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import update
from sqlmodel import select

from bot.app import Baton
from bot.messages import InboundMessage
from bot.settings import Settings
from storage.models import InboundEvent, OutboxMessage, ThreadRecord, utcnow
from tests.support import until

QUEUED = "Queued: I'll handle this"


async def test_a_request_behind_peoples_talk_alone_is_not_told_it_is_queued(database_url: str,
                                                                            config_path: Path) -> None:
    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        async def say(event_id: str, text: str, addressed: bool) -> None:
            accepted = await baton.accept_message(InboundMessage(
                platform="playground", channel="general", thread="t1", event_id=event_id, user="dave", text=text,
                addressed=addressed))
            assert accepted.status == "accepted", accepted

        async def first_done() -> bool:
            async with baton.db.read() as session:
                event = (await session.exec(select(InboundEvent).where(InboundEvent.event_id == "e1"))).one()
            return event.status == "done"

        await say("e1", "help", addressed=True)
        await until(first_done, "the thread's first request handled")
        async with baton.db.session() as session:  # another replica holds the thread: what follows stays pending
            await session.exec(update(ThreadRecord).where(ThreadRecord.thread == "t1").values(  # type: ignore[call-overload]
                lease_owner="another replica", lease_until=utcnow() + timedelta(hours=1)))

        await say("e2", "thanks!", addressed=False)
        await say("e3", "\u200b", addressed=False)
        await say("e4", "status", addressed=True)  # behind talk alone: nothing to wait for
        assert await queued_notes(baton) == []
        await say("e5", "help", addressed=True)  # behind a request: queued, and told so
        assert await queued_notes(baton) == ["e5"]


async def queued_notes(baton: Baton) -> list[str]:
    """The events of thread t1 that were told they are queued (the note carries the event's correlation id)."""
    async with baton.db.read() as session:
        notes = (await session.exec(select(OutboxMessage).where(OutboxMessage.thread == "t1"))).all()
        events = (await session.exec(select(InboundEvent).where(InboundEvent.thread == "t1"))).all()
    by_correlation = {event.correlation_id: event.event_id for event in events}
    return sorted(by_correlation[note.correlation_id] for note in notes if QUEUED in str(note.payload))
