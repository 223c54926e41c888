"""The one-writer-per-thread lease, as ``bot.threads`` keeps it (SQLite, and PostgreSQL when reachable)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langgraph.graph import END, START, StateGraph
from sqlalchemy import update
from sqlmodel import select

from bot import threads
from bot.app import Baton
from bot.messages import InboundMessage, Location
from bot.registry import GraphSpec
from bot.settings import Settings
from storage.db import Database, insert_new_id
from storage.models import InboundEvent, Run, ThreadRecord, utcnow
from tests.support import until

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
        record, new = await threads.create(session, HERE, utcnow(), maker.lease_for_new_thread())
    assert new and record.lease_owner == "maker" and maker.still_fresh(record) and not other.still_fresh(record)
    async with database.session() as session:  # a second create finds it, lease and all, and makes nothing
        again, new_again = await threads.create(session, HERE, utcnow(), other.lease_for_new_thread())
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
        record, _ = await threads.create(session, HERE, utcnow())
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


class _HoldState(TypedDict, total=False):
    reply: str


def _hold_graph(release: asyncio.Event) -> StateGraph:
    """A graph whose one step waits until the test sets ``release``."""

    async def hold(_state: _HoldState) -> _HoldState:
        await release.wait()
        return {"reply": "held, then done"}

    graph = StateGraph(_HoldState)
    graph.add_node("hold", hold)
    graph.add_edge(START, "hold")
    graph.add_edge("hold", END)
    return graph


async def test_a_new_thread_that_waits_for_a_drain_slot_gives_its_lease_back_and_is_handled_once(
        tmp_path: Path, config_path: Path) -> None:
    """The first event rides along with the lease taken when the thread was made, unless every drain slot is
    busy: then the lease goes back at once, for any replica with a free slot to take the thread (held here, it
    waited up to a lease while other replicas were idle), and this one takes it again once a slot is free."""
    release = asyncio.Event()
    graph = _hold_graph(release)
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'l.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground", BATON_MAX_DRAINING_THREADS=1)
    async with Baton(settings) as baton:
        baton.registry.add(GraphSpec(name="hold", graph=graph, description="Waits for the test.", dedupe=False))
        orchestrator = baton.orchestrator
        assert orchestrator is not None
        taken: list[int] = []
        take = orchestrator.leases.take

        async def counted_take(record_id: int) -> threads.Work | None:
            taken.append(record_id)
            return await take(record_id)

        orchestrator.leases.take = counted_take  # type: ignore[method-assign]
        async def runs_with(status: str, count: int) -> list[Run]:
            while True:
                async with baton.db.read() as session:
                    runs = list((await session.exec(select(Run).where(Run.status == status))).all())
                if len(runs) == count:
                    return runs
                await baton.outbox.wait("test-never-woken", 0.05)

        async def ask(thread: str) -> None:
            accepted = await baton.accept_message(InboundMessage(
                platform="playground", channel="general", thread=thread, event_id=f"e{thread}", user="alice",
                text="hold", addressed=True))
            assert accepted.status == "accepted"

        await ask("1")
        await asyncio.wait_for(runs_with("running", 1), 20)  # thread 1 holds the only slot
        await ask("2")  # thread 2's first event waits for it, its lease given back meanwhile

        async def lease_of_thread_2() -> str | None:
            async with baton.db.read() as session:
                return (await session.exec(select(ThreadRecord.lease_owner).where(ThreadRecord.thread == "2"))).one()

        await until(lambda: _is_none(lease_of_thread_2()), "thread 2's lease given back")
        assert not orchestrator._first_work
        release.set()
        runs = await asyncio.wait_for(runs_with("done", 2), 20)
        async with baton.db.read() as session:
            waiting_id = (await session.exec(select(ThreadRecord.id).where(ThreadRecord.thread == "2"))).one()
        assert waiting_id in {run.thread_record_id for run in runs} and len({run.inbound_id for run in runs}) == 2
        assert taken == [waiting_id]  # thread 1 started with its own lease; thread 2 had to take it again
        async with baton.db.read() as session:
            events = (await session.exec(select(InboundEvent).order_by(InboundEvent.id))).all()
            record_now = await session.get(ThreadRecord, waiting_id)
        assert [(e.event_id, e.status) for e in events] == [("e1", "done"), ("e2", "done")]
        assert record_now is not None and record_now.lease_owner is None  # taken again, then given back


async def _is_none(value: Any) -> bool:
    return await value is None


async def test_a_long_run_keeps_its_thread_when_one_lease_renewal_fails(tmp_path: Path, config_path: Path) -> None:
    release = asyncio.Event()
    graph = _hold_graph(release)
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'h.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground", BATON_LEASE_SECONDS=0.6)  # a beat every 0.2 s
    async with Baton(settings) as baton:
        baton.registry.add(GraphSpec(name="hold", graph=graph, description="Waits for the test.", dedupe=False))
        orchestrator = baton.orchestrator
        assert orchestrator is not None
        renew = orchestrator.leases.renew
        beats: list[str] = []
        renewed_after_failure = asyncio.Event()

        async def flaky_renew(record_id: int) -> bool:
            if not beats:
                beats.append("failed")
                raise ConnectionError("the database went away for a moment")
            beats.append("renewed")
            renewed_after_failure.set()
            return await renew(record_id)

        orchestrator.leases.renew = flaky_renew  # type: ignore[method-assign]
        accepted = await baton.accept_message(InboundMessage(
            platform="playground", channel="general", thread="1", event_id="e1", user="alice", text="hold",
            addressed=True))
        assert accepted.status == "accepted"
        await asyncio.wait_for(renewed_after_failure.wait(), 20)  # the heartbeat outlived the failure
        release.set()

        async def handled() -> InboundEvent:
            while True:
                async with baton.db.read() as session:
                    event = (await session.exec(select(InboundEvent).where(InboundEvent.event_id == "e1"))).one()
                if event.status == "done":
                    return event
                await baton.outbox.wait("test-never-woken", 0.05)

        event = await asyncio.wait_for(handled(), 20)
        assert beats[:2] == ["failed", "renewed"] and event.outcome == "done"


@pytest.mark.asyncio
async def test_a_lease_that_ran_out_during_a_database_outage_is_left_to_its_holder_for_a_lease_after_it(
        database: Database) -> None:
    """A 35 s PostgreSQL outage, past the 30 s lease: the replica whose sweep came first once the database was back
    took over a run still running on its holder (whose heartbeat could renew nothing meanwhile), told its thread the
    command's outcome was unknown, and ran the request queued behind it beside the command. For a lease after the
    outage, a lease that ran out during it is its holder's to renew; one that ran out before it is taken as ever."""
    holder, other = threads.Leases(database, "holder", 30), threads.Leases(database, "other", 30)
    async with database.session() as session:
        record, _new = await threads.create(session, HERE, utcnow(), holder.lease_for_new_thread())
    await _queue_event(database, record.id, "e1")  # type: ignore[arg-type]

    async def lease_ends(at: timedelta) -> None:
        async with database.session() as session:
            await session.exec(update(ThreadRecord).where(ThreadRecord.id == record.id)  # type: ignore[call-overload]
                               .values(lease_until=database.now() + at))

    health = database.health
    health.failed(reason="connection refused")  # the outage begins; the holder's lease runs out during it
    await lease_ends(timedelta(seconds=0))
    health.reached()
    assert await other.take(record.id) is None  # type: ignore[arg-type]
    assert await holder.renew(record.id)  # type: ignore[arg-type]  # the holder's next heartbeat
    await lease_ends(-timedelta(seconds=1))
    health._outages = [(began - 31, ended - 31) for began, ended in health._outages]  # type: ignore[operator]
    # a lease after the outage: a holder that did not renew is gone
    taken = await other.take(record.id)  # type: ignore[arg-type]
    assert taken is not None and taken[1].lease_owner == "other"

    await lease_ends(-timedelta(seconds=5))  # a lease that ran out before an outage began is run out after it
    health.failed(reason="connection refused")
    health.reached()
    assert await holder.take(record.id) is not None  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_blip_just_after_a_long_outage_leaves_what_ran_out_in_it_to_its_holder(database: Database) -> None:
    """A 1 s blip a moment after a 35 s outage measured the outage from the blip: a lease that ran out in the long
    one counted as run out at once, and another replica took the live run over before its holder's heartbeat."""
    import time

    holder, other = threads.Leases(database, "holder", 30), threads.Leases(database, "other", 30)
    async with database.session() as session:
        record, _new = await threads.create(session, HERE, utcnow(), holder.lease_for_new_thread())
    await _queue_event(database, record.id, "e1")  # type: ignore[arg-type]
    health = database.health
    health.failed(reason="connection refused")
    health._outages = [(time.monotonic() - 35, None)]  # the outage began 35 s ago
    health._down_at = health._outages[0][0]
    async with database.session() as session:  # the holder's lease ran out during it
        await session.exec(update(ThreadRecord).where(ThreadRecord.id == record.id)  # type: ignore[call-overload]
                           .values(lease_until=database.now() - timedelta(seconds=5)))
    health.reached()
    assert await other.take(record.id) is None  # type: ignore[arg-type]
    health.failed(reason="connection refused")  # a blip, the holder's heartbeat not due yet
    health.reached()
    assert await other.take(record.id) is None  # type: ignore[arg-type]
