"""Several replicas on one database, second hunt: a replica whose clock is off by minutes, a replica paused
past its lease."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from langgraph.graph import END, START, StateGraph
from sqlalchemy import update
from sqlmodel import select

import bot.threads
import storage.db
from bot import threads
from bot.app import Baton
from bot.kit import approve, effect
from bot.messages import InboundClick, InboundMessage, Location
from bot.registry import GraphSpec
from bot.settings import Settings
from storage.db import Database, insert_new_id
from storage.migrate import upgrade
from storage.models import Approval, Effect, InboundEvent, PlaygroundMessage, ThreadRecord, utcnow
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
            record, _new = await threads.create(session, HERE, utcnow())
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


async def _replies_with(baton: Baton, words: str) -> list[str]:
    return [text for text in await _bot_replies(baton) if words in text]


async def _bot_replies(baton: Baton) -> list[str]:
    async with baton.db.read() as session:
        return list((await session.exec(select(PlaygroundMessage.text).where(PlaygroundMessage.is_bot))).all())


@pytest.mark.parametrize("noticed", [False, True], ids=["resumed unaware", "its heartbeat noticed first"])
async def test_a_replica_paused_past_its_lease_starts_no_side_effect_once_the_thread_is_taken_over(
        tmp_path: Path, config_path: Path, caplog: pytest.LogCaptureFixture, noticed: bool) -> None:
    """A replica paused (SIGSTOP, a frozen VM) during a run's first side effect lost its thread to another
    replica, which answered that the effect's outcome was unknown and the run failed. Resumed, the paused
    replica's run went on to its next side effect and made it: the thread had been told the run ended. Only
    its last write was fenced by the lease. A run's side effect now starts only while its replica holds the
    thread (the lease is renewed first, so it starts with a whole lease ahead of it). The effect under way when
    the replica finds out is not cut off: it ends, and is recorded, as it would have."""
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
    heartbeat = settings.model_copy(update={"lease_seconds": 0.6}) if noticed else settings
    async with Baton(heartbeat) as paused_replica, Baton(settings) as taker:
        for baton in (paused_replica, taker):
            baton.registry.add(GraphSpec(name="decommission", graph=_one_node(act)))
        await paused_replica.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                           event_id="e1", user="alice", text="decommission"))
        await until(_started(made), "the first side effect to start")

        await _taken_by(taker)  # paused past its lease
        told = await until(lambda: _bot_replies(taker), "the taker's answer")
        assert len(told) == 1 and "not run again" in told[0], told

        if noticed:
            await until(_logged(caplog, "lost the lease on thread"), "the paused replica to find its lease lost")
        resumed.set()  # the paused replica goes on
        await _settled(paused_replica)
        async with taker.db.read() as session:
            ledger = {row.name: row.status for row in (await session.exec(select(Effect))).all()}
    assert made == ["drain web-1"], "a side effect was made after the thread was taken over and answered"
    assert ledger == {"drain": "done"}  # what the paused replica made is still recorded
    assert await _bot_replies(taker) == told


async def _taken_by(taker: Baton) -> None:
    """The thread's replica stalled past its lease, and ``taker`` took it over and handled its queue."""
    async with taker.db.session() as session:
        await session.exec(update(ThreadRecord).values(  # type: ignore[call-overload]
            lease_owner=taker.instance, lease_until=datetime.now(UTC) + timedelta(seconds=30)))
        record = (await session.exec(select(ThreadRecord))).one()
    taker.orchestrator._schedule(record.id)  # type: ignore[arg-type]
    await _settled(taker)


def _think_then_ask(first_thought: asyncio.Event, thinking: list[str]) -> StateGraph:
    """think (the first time, until ``first_thought`` is set: a slow model call) -> ask (a card) -> reply."""

    async def think(_state: State) -> State:
        if not thinking:
            thinking.append("the first thought")
            await first_thought.wait()
        return {"text": "restart web-1"}

    def ask(state: State) -> State:
        return {"reply": f"{state['text']}: " + ("approved" if approve("Go?").approved else "rejected")}

    graph = StateGraph(State)
    graph.add_node("think", think)
    graph.add_node("ask", ask)
    graph.add_edge(START, "think")
    graph.add_edge("think", "ask")
    graph.add_edge("ask", END)
    return graph


async def thinking_on(stalled: Baton, taker: Baton, first_thought: asyncio.Event) -> None:
    """Both replicas know the ``change`` graph; ``stalled`` starts a request of it, whose run thinks until
    ``first_thought`` is set (a slow model call)."""
    thinking: list[str] = []
    graph = _think_then_ask(first_thought, thinking)
    for baton in (stalled, taker):
        baton.registry.add(GraphSpec(name="change", graph=graph))
    await stalled.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                event_id="e1", user="alice", text="change"))
    await until(_started(thinking), "the stalled replica's run to think")


async def test_a_replica_that_stalled_past_its_lease_mid_step_leaves_the_card_to_the_run_that_took_over(
        tmp_path: Path, config_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A replica stalled in a step with no side effect (a slow model answer) lost its thread to another, whose
    run posted the approval card. Its heartbeat found the lease lost, and said so, but its run went on: it
    finished the step and wrote LangGraph checkpoints beside the other's, and its own question became the
    thread's latest. Approve on the posted card then found its question gone: the card turned stale, the
    approver was told 'no longer current', and the thread waited for good with no card to decide. A run whose
    thread was taken over is now cut off when its replica finds out."""
    first_thought = asyncio.Event()
    database_url = f"sqlite:///{tmp_path / 'c.db'}"
    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    quick_heartbeat = settings.model_copy(update={"lease_seconds": 0.6})
    async with Baton(quick_heartbeat) as stalled, Baton(settings) as taker:
        await thinking_on(stalled, taker, first_thought)
        await _taken_by(taker)  # stalled past its lease
        async with taker.db.read() as session:
            card = (await session.exec(select(Approval))).one()

        await until(_logged(caplog, "lost the lease on thread"), "the stalled replica to find its lease lost")
        first_thought.set()  # its step would end now
        await _settled(stalled)
        await approved_once_by_the_taker(taker, card)


async def approved_once_by_the_taker(taker: Baton, card: Approval) -> None:
    """Approve on the card the taker posted goes on with its run to its one reply: the card is still current."""
    await taker.accept_click(InboundClick(platform="playground", channel="general", thread="1", event_id="c1",
                                          user="bob", approval_id=card.id, action="approve"))
    await _settled(taker)
    told = await until(lambda: _replies_with(taker, "restart web-1: "), "the run's reply")
    async with taker.db.read() as session:
        decided = [approval.status for approval in (await session.exec(select(Approval))).all()]
        record = (await session.exec(select(ThreadRecord))).one()
    assert decided == ["approved"] and record.status == "done", (decided, record.status)
    assert told == ["restart web-1: approved"]


def _logged(caplog: pytest.LogCaptureFixture, words: str) -> Callable[[], Awaitable[bool]]:
    async def logged() -> bool:
        return words in caplog.text
    return logged


async def test_requests_a_replica_whose_clock_was_ahead_stored_before_it_died_are_taken_over_at_once(
        tmp_path: Path, config_path: Path) -> None:
    """The sweeper takes over events pending for more than 2 s, by their received_at: stamped by a replica whose
    clock was 5 minutes ahead, which then died, they looked 5 minutes newer than they were, and the thread's
    requests waited that long for another replica. An event stamped ahead of the sweeper's clock counts as old."""
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'd.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as survivor:
        async with survivor.db.session() as session:
            record, _new = await threads.create(session, Location(platform="playground", channel="general", thread="1"),
                                                utcnow())
        async with survivor.db.session() as session:
            await insert_new_id(session, InboundEvent, {
                "platform": "playground", "event_id": "e1", "kind": "message", "workspace": "", "channel": "general",
                "thread": "1", "user": "alice", "text": "run uptime", "payload": {"addressed": True},
                "status": "pending", "thread_record_id": record.id, "correlation_id": "c1",
                "received_at": datetime.now(UTC) + SKEW}, ["platform", "event_id"])
        assert await survivor.orchestrator.sweep() == 1
        await _settled(survivor)
        assert await until(lambda: _replies_with(survivor, "did uptime"), "the request's answer")
