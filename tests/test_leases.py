"""The one-writer-per-thread lease, as ``bot.threads`` keeps it (SQLite, and PostgreSQL when reachable)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from bot import threads
from bot.messages import Location
from storage.db import Database, insert_new_id
from storage.models import InboundEvent, ThreadRecord, utcnow

HERE = Location(platform="playground", workspace="", channel="general", thread="1")


async def _queue_event(database: Database, record_id: int, event_id: str) -> int:
    async with database.session() as session:
        new_id = await insert_new_id(session, InboundEvent, {
            "platform": "playground", "event_id": event_id, "kind": "message", "workspace": "", "channel": "general",
            "thread": "1", "user": "alice", "text": "run uptime", "payload": {}, "status": "pending",
            "thread_record_id": record_id, "correlation_id": event_id, "received_at": utcnow()}, ["platform", "event_id"])
    assert new_id is not None
    return new_id


@pytest.mark.asyncio
async def test_a_thread_made_with_its_lease_is_taken_by_its_maker_and_by_nobody_else_until_it_expires(
        database: Database) -> None:
    maker, other = threads.Leases(database, "maker", 30), threads.Leases(database, "other", 30)
    async with database.session() as session:
        record, new = await threads.create(session, HERE, maker.lease_for_new_thread())
    assert new and record.lease_owner == "maker" and maker.still_fresh(record) and not other.still_fresh(record)
    async with database.session() as session:  # a second create finds it, lease and all, and makes nothing
        again, new_again = await threads.create(session, HERE, other.lease_for_new_thread())
    assert not new_again and (again.id, again.lease_owner) == (record.id, "maker")

    event_id = await _queue_event(database, record.id, "e1")  # type: ignore[arg-type]
    assert await other.take(record.id) is None  # type: ignore[arg-type]
    work = await maker.take(record.id)  # type: ignore[arg-type]
    assert work is not None and work[0].id == event_id

    async with database.session() as session:  # the maker stalls past its lease
        await session.exec(update(ThreadRecord).where(ThreadRecord.id == record.id)  # type: ignore[call-overload]
                           .values(lease_until=utcnow() - timedelta(seconds=1)))
    taken = await other.take(record.id)  # type: ignore[arg-type]
    assert taken is not None and taken[1].lease_owner == "other"
    assert await maker.take(record.id) is None  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_the_queue_gives_clicks_first_then_messages_in_order_and_only_clicks_while_waiting(
        database: Database) -> None:
    async with database.session() as session:
        record, _ = await threads.create(session, HERE)
    first = await _queue_event(database, record.id, "m1")  # type: ignore[arg-type]
    await _queue_event(database, record.id, "m2")  # type: ignore[arg-type]
    async with database.read() as session:
        assert (await threads.next_event_of(session, record.id, "running")).id == first  # type: ignore[arg-type,union-attr]
        assert await threads.next_event_of(session, record.id, "waiting") is None  # type: ignore[arg-type]
    async with database.session() as session:
        click = await insert_new_id(session, InboundEvent, {
            "platform": "playground", "event_id": "c1", "kind": "click", "workspace": "", "channel": "general",
            "thread": "1", "user": "bob", "text": "approve", "payload": {}, "status": "pending",
            "thread_record_id": record.id, "correlation_id": "c1", "received_at": utcnow()}, ["platform", "event_id"])
    async with database.read() as session:
        for status in ("running", "waiting"):
            assert (await threads.next_event_of(session, record.id, status)).id == click  # type: ignore[arg-type,union-attr]
