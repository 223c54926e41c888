"""Several replicas on one database, second hunt: a replica whose clock is off by minutes, a replica paused
past its lease."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import select

import bot.threads
import storage.db
from bot import threads
from bot.app import Baton
from bot.kit import effect
from bot.messages import InboundMessage, Location
from bot.registry import GraphSpec
from bot.settings import Settings
from storage.db import Database, insert_new_id
from storage.migrate import upgrade
from storage.models import Effect, InboundEvent, PlaygroundMessage, ThreadRecord
from tests.support import until
from tests.test_graph_modules import State, _one_node

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


async def _settled(baton: Baton) -> None:
    """Until the drains this Baton started so far have ended."""
    while tasks := list(baton.orchestrator._tasks):
        await asyncio.gather(*tasks, return_exceptions=True)


def _started(made: list[str]) -> Callable[[], Awaitable[bool]]:
    async def started() -> bool:
        return bool(made)
    return started


async def _bot_replies(baton: Baton) -> list[str]:
    async with baton.db.read() as session:
        return list((await session.exec(select(PlaygroundMessage.text).where(PlaygroundMessage.is_bot))).all())


async def test_a_replica_paused_past_its_lease_starts_no_side_effect_once_the_thread_is_taken_over(
        tmp_path: Path, config_path: Path) -> None:
    """A replica paused (SIGSTOP, a frozen VM) during a run's first side effect lost its thread to another
    replica, which answered that the effect's outcome was unknown and the run failed. Resumed, the paused
    replica's run went on to its next side effect and made it: the thread had been told the run ended. Only
    its last write was fenced by the lease. A run's side effect now starts only while its replica holds the
    thread (the lease is renewed first, so it starts with a whole lease ahead of it)."""
    made: list[str] = []
    resumed = asyncio.Event()

    async def paused() -> str:
        made.append("drain web-1")
        await resumed.wait()
        return "drained"

    async def act(_state: State) -> State:
        await effect("drain", paused)
        await effect("delete", lambda: made.append("delete web-1"))
        return {"reply": "deleted"}

    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'b.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as paused_replica, Baton(settings) as taker:
        for baton in (paused_replica, taker):
            baton.registry.add(GraphSpec(name="decommission", graph=_one_node(act)))
        await paused_replica.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                           event_id="e1", user="alice", text="decommission"))
        await until(_started(made), "the first side effect to start")

        async with taker.db.session() as session:  # paused past its lease: the taker's sweeper finds the thread
            await session.exec(update(ThreadRecord).values(lease_until=datetime.now(UTC) - timedelta(seconds=1)))  # type: ignore[call-overload]
            await session.exec(update(InboundEvent).values(received_at=datetime.now(UTC) - timedelta(minutes=1)))  # type: ignore[call-overload]
        assert await taker.orchestrator.sweep() == 1
        await _settled(taker)
        told = await until(lambda: _bot_replies(taker), "the taker's answer")
        assert len(told) == 1 and "not run again" in told[0], told

        resumed.set()  # the paused replica goes on
        await _settled(paused_replica)
        async with taker.db.read() as session:
            ledger = {row.name: row.status for row in (await session.exec(select(Effect))).all()}
    assert made == ["drain web-1"], "a side effect was made after the thread was taken over and answered"
    assert ledger == {"drain": "done"}  # what the paused replica made is still recorded
    assert await _bot_replies(taker) == told
