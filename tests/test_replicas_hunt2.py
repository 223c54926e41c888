"""Several replicas on one database, second hunt: a replica whose clock is off by minutes, a replica paused
past its lease."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

import bot.threads
import storage.db
from bot import threads
from bot.messages import Location
from storage.db import Database, insert_new_id
from storage.migrate import upgrade
from storage.models import InboundEvent, ThreadRecord

HERE = Location(platform="slack", workspace="T1", channel="C1", thread="1.0")
SKEW = timedelta(minutes=5)


async def _queue_event(database: Database, record_id: int, event_id: str) -> None:
    async with database.session() as session:
        await insert_new_id(session, InboundEvent, {
            "platform": "slack", "event_id": event_id, "kind": "message", "workspace": "T1", "channel": "C1",
            "thread": "1.0", "user": "alice", "text": "run uptime", "payload": {}, "status": "pending",
            "thread_record_id": record_id, "correlation_id": event_id,
            "received_at": datetime.now(UTC)}, ["platform", "event_id"])


class _Clock:
    """This process's clock, which a test sets off by minutes (a replica whose NTP is broken)."""

    def __init__(self) -> None:
        self.off = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.off


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Clock]:
    local = _Clock()
    for module in (bot.threads, storage.db):
        monkeypatch.setattr(module, "utcnow", local, raising=False)
    yield local


@pytest.mark.postgres
@pytest.mark.parametrize("off", [SKEW, -SKEW], ids=["minutes ahead", "minutes behind"])
async def test_a_replica_whose_clock_is_off_by_minutes_neither_takes_nor_loses_a_live_lease(
        postgres_url: str, clock: _Clock, off: timedelta) -> None:
    """Leases were written and compared on each replica's own clock: a replica 5 minutes ahead took every
    thread another replica held (its lease 'ran out' 4.5 minutes ago by that clock), so two replicas ran one
    request; one 5 minutes behind wrote leases that every other replica found long run out. Leases are now
    written and compared on the database server's clock, which every replica reads."""
    upgrade(postgres_url)
    accurate, skewed = Database(postgres_url), None
    try:
        holder = threads.Leases(accurate, "accurate", 30)
        async with accurate.session() as session:
            record, _new = await threads.create(session, HERE)
        await _queue_event(accurate, record.id, "e1")  # type: ignore[arg-type]

        clock.off = off  # the other replica's machine: its clock is off, and it starts so
        skewed = Database(postgres_url)
        other = threads.Leases(skewed, "skewed", 30)
        if off > timedelta(0):  # the accurate replica holds the thread; the one ahead must not take it
            clock.off = timedelta(0)
            assert await holder.take(record.id) is not None  # type: ignore[arg-type]
            clock.off = off
            assert await other.take(record.id) is None, "a live lease was taken"  # type: ignore[arg-type]
        else:  # the replica behind holds the thread; the accurate one must not take it
            assert await other.take(record.id) is not None  # type: ignore[arg-type]
            clock.off = timedelta(0)
            assert await holder.take(record.id) is None, "a live lease was taken"  # type: ignore[arg-type]
        async with accurate.read() as session:
            held = await session.get(ThreadRecord, record.id)
        assert held is not None and held.lease_until is not None
        assert abs(held.lease_until - datetime.now(UTC) - timedelta(seconds=30)) < timedelta(seconds=10)

        async with accurate.session() as session:  # the lease does run out, on the database's clock
            await session.exec(update(ThreadRecord).where(ThreadRecord.id == record.id)  # type: ignore[call-overload]
                               .values(lease_until=datetime.now(UTC) - timedelta(seconds=1)))
        clock.off = off
        assert await other.take(record.id) is not None  # type: ignore[arg-type]
    finally:
        await accurate.dispose()
        if skewed is not None:
            await skewed.dispose()
