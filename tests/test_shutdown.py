"""A Baton that is asked to stop (SIGTERM, the end of ``async with Baton``) stops gracefully."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TypedDict

import pytest
from langgraph.graph import END, START, StateGraph
from sqlmodel import select

from bot.app import Baton
from bot.kit import effect
from bot.messages import InboundMessage
from bot.registry import GraphSpec
from bot.settings import Settings
from storage.models import Effect, InboundEvent, Run, ThreadRecord


class State(TypedDict, total=False):
    text: str
    reply: str


async def _until(condition, baton: Baton, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    async def check() -> None:
        while not await condition():
            await baton.outbox.wait("shutdown-test-never-woken", 0.05)

    await asyncio.wait_for(check(), timeout)


def _deploying(tmp_path: Path, config_path: Path, started: asyncio.Event,
               finish: asyncio.Event) -> tuple[Settings, GraphSpec]:
    """Settings with one drain slot, and a graph whose effect runs until ``finish`` is set."""

    async def deploy() -> str:
        started.set()
        await finish.wait()
        return "deployed"

    async def act(_state: State) -> State:
        return {"reply": f"done: {await effect('deploy', deploy)}"}

    graph = StateGraph(State)
    graph.add_node("act", act)
    graph.add_edge(START, "act")
    graph.add_edge("act", END)
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 's.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground", BATON_MAX_DRAINING_THREADS=1)
    return settings, GraphSpec(name="deploy", graph=graph, description="Deploy.")


async def test_a_stopping_baton_lets_a_running_effect_finish_and_gives_waiting_threads_back(
        tmp_path: Path, config_path: Path) -> None:
    """SIGTERM cancelled every drain at once: a command half-run was recorded as failed
    ("CancelledError: <object object at 0x...>") and its run reported "Run failed" after the restart; and
    the threads waiting for a drain slot kept this process's lease, so nobody took them for 30 s."""
    started, finish = asyncio.Event(), asyncio.Event()
    settings, spec = _deploying(tmp_path, config_path, started, finish)
    baton = await Baton(settings).__aenter__()
    try:
        baton.registry.add(spec)
        for thread in ("1", "2"):  # one slot: thread 2 waits for thread 1's drain
            await baton.accept_message(InboundMessage(platform="playground", channel="general", thread=thread,
                                                      event_id=f"e{thread}", user="alice", text="deploy"))
        await asyncio.wait_for(started.wait(), 20)
        stopping = asyncio.create_task(baton.orchestrator.stop(grace=20))

        async def thread_2_given_back() -> bool:
            async with baton.db.read() as session:
                record = (await session.exec(select(ThreadRecord).where(ThreadRecord.thread == "2"))).one()
            return record.lease_owner is None

        await _until(thread_2_given_back, baton)  # at once, while thread 1's effect still runs
        assert not stopping.done()
        finish.set()
        await asyncio.wait_for(stopping, 20)
        async with baton.db.read() as session:
            effects = [(row.status, row.result) for row in (await session.exec(select(Effect))).all()]
            runs = [(row.graph, row.status) for row in (await session.exec(select(Run))).all()]
            events = {row.event_id: row.status for row in (await session.exec(select(InboundEvent))).all()}
        assert effects == [("done", "deployed")] and runs == [("deploy", "done")]
        assert events == {"e1": "done", "e2": "pending"}  # e2 is for whoever takes thread 2 next
    finally:
        await baton.__aexit__(None, None, None)


async def test_an_effect_cut_off_by_the_end_of_the_grace_is_in_doubt_not_failed(tmp_path: Path,
                                                                                 config_path: Path) -> None:
    """Cut off, the effect may have happened: it stays "started" (not run again, its outcome unknown),
    instead of "failed" with the text of a CancelledError."""
    started, finish = asyncio.Event(), asyncio.Event()
    settings, spec = _deploying(tmp_path, config_path, started, finish)
    async with Baton(settings) as baton:
        baton.registry.add(spec)
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="deploy"))
        await asyncio.wait_for(started.wait(), 20)
        await baton.orchestrator.stop(grace=0.05)  # the effect never finishes: the grace runs out
        async with baton.db.read() as session:
            effects = [(row.status, row.result) for row in (await session.exec(select(Effect))).all()]
    assert effects == [("started", None)]


@pytest.mark.postgres
async def test_a_baton_stopping_while_its_postgresql_database_is_gone_stops_at_the_end_of_its_grace(
        tmp_path: Path, config_path: Path, postgres_url: str) -> None:
    """The database gone (a PostgreSQL outage) in the middle of a run, SIGTERM took 38 s instead of the
    8 s grace: LangGraph lets a cancelled run's checkpoint writes finish, and each waited out the
    checkpointer pool's 30-second wait for a connection that could not be made. Past the grace those
    waits now fail at once."""
    import psycopg

    from tests.support import PG_ADMIN_URL

    started, finish = asyncio.Event(), asyncio.Event()

    async def slow(_state: State) -> State:
        started.set()
        await finish.wait()
        return {"reply": "done"}

    graph = StateGraph(State)
    graph.add_node("slow", slow)
    graph.add_edge(START, "slow")
    graph.add_edge("slow", END)
    settings = Settings(BATON_DATABASE_URL=postgres_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    baton = await Baton(settings).__aenter__()
    try:
        baton.registry.add(GraphSpec(name="slow", graph=graph, description="Slow."))
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="slow"))
        await asyncio.wait_for(started.wait(), 20)
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{postgres_url.rsplit("/", 1)[1]}" WITH (FORCE)')
        finish.set()  # the step's checkpoint now waits for a connection
        pool = baton.runtime.checkpointer.conn  # type: ignore[attr-defined]

        async def checkpoint_waiting() -> bool:
            return bool(pool.get_stats()["requests_waiting"])

        await _until(checkpoint_waiting, baton)
        # 20 s: well past the 0.05 s grace, and short of the pool's 30 s (what the stop waited before)
        await asyncio.wait_for(baton.orchestrator.stop(grace=0.05), 20)
    finally:
        await baton.__aexit__(None, None, None)
