"""The outbox's own bookkeeping: attempts counted once per claim, order kept per thread."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from bot.messages import Location, Message
from bot.outbox import Outbox
from storage.db import Database
from storage.migrate import upgrade
from storage.models import OutboxMessage, utcnow

HERE = Location(platform="playground", workspace="", channel="general", thread="1")


@pytest.mark.asyncio
async def test_each_claim_counts_one_attempt_and_the_thread_order_holds(database_url: str) -> None:
    upgrade(database_url)
    database = Database(database_url)
    outbox = Outbox(database)
    try:
        async with database.session() as session:
            outbox.enqueue(session, HERE, Message.text("first"))
            outbox.enqueue(session, HERE, Message.text("second"))

        first = await outbox.claim("playground", "me")
        assert [(d.message.plain_text(), d.attempts) for d in first] == [("first", 1)]  # "second" waits its turn
        await outbox.retry(first[0].id, 60, "the platform was down")
        assert await outbox.claim("playground", "me") == []  # not due yet, and "second" still waits behind it

        async with database.session() as session:
            await session.exec(update(OutboxMessage).where(OutboxMessage.id == first[0].id)  # type: ignore[call-overload]
                               .values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        again = await outbox.claim("playground", "me")
        assert [(d.message.plain_text(), d.attempts) for d in again] == [("first", 2)]
        await outbox.delivered(again[0].id, "m1")
        after = await outbox.claim("playground", "me")
        assert [(d.message.plain_text(), d.attempts) for d in after] == [("second", 1)]
    finally:
        await database.dispose()
