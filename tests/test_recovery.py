"""Crashes and housekeeping: a killed replica's work is picked up, never done twice; old checkpoints go."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypedDict

import pytest
from langgraph.graph import END, START, StateGraph
from sqlalchemy import update
from sqlmodel import select

from bot.app import Baton
from bot.kit import approve, progress
from bot.messages import InboundClick, InboundMessage
from bot.registry import GraphSpec
from bot.settings import Settings
from storage.db import Database
from storage.models import Approval, Effect, InboundEvent, PlaygroundMessage, Run, ThreadRecord, utcnow
from tests.fake_models import script
from tests.support import runs_in, slow_release, wait_for


async def _effects(database_url: str) -> list[Effect]:
    database = Database(database_url)
    try:
        async with database.session() as session:
            return list((await session.exec(select(Effect))).all())
    finally:
        await database.dispose()


def effects(database_url: str) -> list[Effect]:
    return asyncio.run(_effects(database_url))


def test_killed_while_a_command_runs_it_is_not_run_again(start_baton, database_url, counter):
    fast_lease = {"BATON_LEASE_SECONDS": "2"}
    first = start_baton(database_url, name="crashing", env=fast_lease)
    pg = first.client()
    thread = pg.ask("@baton run slow seconds=9.9")  # until released below: it outlasts the takeover
    wait_for(lambda: [e for e in effects(database_url) if e.status == "started"], what="the command to start")
    first.stop(signal.SIGKILL)

    second = start_baton(database_url, name="survivor", env=fast_lease)
    pg = second.client()
    reply = pg.wait_reply(thread, "outcome is unknown", timeout=30)
    assert reply["content"]["tone"] == "error"
    # in words, not a Python class: it read "`runbook` failed: EffectInDoubt: side effect 'command' was started ..."
    assert reply["text"].startswith("*Run stopped*\n`run slow seconds=9.9` stopped: its step `command` had been started "
                                    "by a Baton that stopped"), reply["text"]
    assert [e.status for e in effects(database_url)] == ["started"]


def test_request_queued_on_a_dead_replica_is_handled_by_another(start_baton, database_url, counter):
    fast_lease = {"BATON_LEASE_SECONDS": "2"}
    first = start_baton(database_url, name="crashing", env=fast_lease)
    pg = first.client()
    thread = pg.ask("@baton run slow seconds=9.9")  # until released below: it outlasts the takeover
    pg.say("run uptime", thread=thread)
    wait_for(lambda: [e for e in effects(database_url) if e.status == "started"], what="the command to start")
    first.stop(signal.SIGKILL)
    second = start_baton(database_url, name="survivor", env=fast_lease)
    # The dead replica may have claimed the thread's next outbox row: others take it when the claim expires.
    second.client().wait_reply(thread, "did uptime", timeout=60)
    assert runs_in(counter) == ["uptime"]


@pytest.mark.asyncio
async def test_finished_threads_lose_their_checkpoints_after_retention(tmp_path, config_path):
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}", BATON_CONFIG=config_path,
                        BATON_CHECKPOINT_RETENTION_HOURS=1)
    async with Baton(settings) as baton:
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="run uptime"))

        async def finished() -> ThreadRecord | None:
            async with baton.db.session() as session:
                return (await session.exec(select(ThreadRecord).where(ThreadRecord.status == "done"))).first()

        record = None
        for _ in range(400):
            if record := await finished():
                break
            await baton.outbox.wait("never", 0.05)
        assert record is not None, "the run did not finish"
        config = {"configurable": {"thread_id": f"{record.lg_thread_id}:runbook"}}
        assert await baton.runtime.checkpointer.aget_tuple(config) is not None

        assert await baton.prune_checkpoints() == 0  # not old enough yet
        async with baton.db.session() as session:
            await session.exec(update(ThreadRecord).values(updated_at=utcnow() - timedelta(hours=2)))
        assert await baton.prune_checkpoints() == 1
        assert await baton.runtime.checkpointer.aget_tuple(config) is None
        assert await baton.prune_checkpoints() == 0


async def test_a_thread_whose_graph_was_uninstalled_since_it_ran_loses_its_checkpoints_too(tmp_path, config_path):
    """Pruning deleted the installed graphs' checkpoints only: a graph removed from graphs/ (or renamed) after
    it ran left its checkpoints for good, in a thread marked pruned."""
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}", BATON_CONFIG=config_path,
                        BATON_CHECKPOINT_RETENTION_HOURS=1)
    graph = StateGraph(_PlanState)
    graph.add_node("answer", lambda _state: {"reply": "Answered."})
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    async with Baton(settings) as baton:
        baton.registry.add(GraphSpec(name="oneoff", graph=graph))
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="oneoff"))
        for _ in range(400):
            async with baton.db.session() as session:
                if record := (await session.exec(select(ThreadRecord).where(ThreadRecord.status == "done"))).first():
                    break
            await baton.outbox.wait("never", 0.05)
        assert record is not None, "the run did not finish"
    async with Baton(settings) as baton:  # the next start, without the graph
        assert baton.registry.get("oneoff") is None
        config = {"configurable": {"thread_id": f"{record.lg_thread_id}:oneoff"}}
        assert await baton.runtime.checkpointer.aget_tuple(config) is not None
        async with baton.db.session() as session:
            await session.exec(update(ThreadRecord).values(updated_at=utcnow() - timedelta(hours=2)))
        assert await baton.prune_checkpoints() == 1
        assert await baton.runtime.checkpointer.aget_tuple(config) is None


async def test_a_pruning_pass_goes_on_until_no_finished_thread_is_due(tmp_path, config_path):
    """One batch of 500 per 10 minutes fell behind a busy team: the checkpoint file grew for good."""
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}", BATON_CONFIG=config_path,
                        BATON_CHECKPOINT_RETENTION_HOURS=1)
    async with Baton(settings) as baton:
        for channel in ("general", "ops", "random"):  # not one channel: the same request would be a duplicate
            await baton.accept_message(InboundMessage(platform="playground", channel=channel, thread="1",
                                                      event_id=f"e-{channel}", user="alice", text="run uptime"))

        async def finished() -> int:
            async with baton.db.session() as session:
                return len((await session.exec(select(ThreadRecord).where(ThreadRecord.status == "done"))).all())

        for _ in range(400):
            if await finished() == 3:
                break
            await baton.outbox.wait("never", 0.05)
        assert await finished() == 3, "the runs did not finish"
        async with baton.db.session() as session:
            await session.exec(update(ThreadRecord).values(updated_at=utcnow() - timedelta(hours=2)))
        assert await baton.prune_due_checkpoints(batch=2) == 3  # two batches in one pass
        assert await baton.prune_due_checkpoints(batch=2) == 0


async def _expire_leases(database_url: str) -> int:
    """What another replica sees when the holder stalls past its lease (a long GC pause, a frozen VM)."""
    database = Database(database_url)
    try:
        async with database.session() as session:
            taken = await session.exec(update(ThreadRecord).where(ThreadRecord.lease_owner.is_not(None))  # type: ignore[union-attr]
                                       .values(lease_until=utcnow() - timedelta(seconds=1)))
            return int(taken.rowcount)
    finally:
        await database.dispose()


def test_a_replica_that_lost_its_lease_mid_run_does_not_answer_too(start_baton, database_url, counter):
    """The holder's lease runs out while its command still runs; another replica takes the thread over
    and answers (the command's outcome is in doubt, so it is not run again). The first replica's
    result, when its command ends, must not be posted as well: its final write is fenced by the lease."""
    slow_renewal = {"BATON_LEASE_SECONDS": "60"}  # renewed every 20 s: the expiry below is not undone
    stalled = start_baton(database_url, name="stalled", env=slow_renewal)
    start_baton(database_url, name="taker", env=slow_renewal)  # sweeps the thread once its lease has run out
    pg = stalled.client()
    thread = pg.ask("@baton run slow seconds=9.9")  # until released below: it outlasts the takeover
    wait_for(lambda: [e for e in effects(database_url) if e.status == "started"], what="the command to start")
    assert asyncio.run(_expire_leases(database_url)) == 1

    taker_answer = pg.wait_reply(thread, "outcome is unknown", timeout=30)
    slow_release(counter).touch()  # the command ends now, its outcome no longer in doubt
    wait_for(lambda: [e for e in effects(database_url) if e.status == "done"], timeout=30,
             what="the stalled replica's command to end")
    wait_for(lambda: "stopped draining" in stalled.log.read_text() or
             [m for m in pg.bot_replies(thread) if "slept" in m["text"]], timeout=30,
             what="the stalled replica to write its result or be fenced off")
    assert not [m for m in pg.bot_replies(thread) if "slept" in m["text"]], "the thread was answered twice"
    # the one answer (the stalled replica may have said the command was running: a progress line)
    assert [m for m in pg.bot_replies(thread) if m["content"]["tone"] != "progress"] == [taker_answer]
    assert len(effects(database_url)) == 1  # the command ran once


class _Stopped(BaseException):
    """Baton stopping mid-request (a kill, a deploy): nothing after it in the drain runs."""


async def _bot_replies(baton: Baton, thread: str) -> list[str]:
    async with baton.db.read() as session:
        return list((await session.exec(select(PlaygroundMessage.text).where(
            PlaygroundMessage.is_bot, PlaygroundMessage.thread_id == thread).order_by(PlaygroundMessage.id))).all())


async def _until_replies(baton: Baton, thread: str, count: int) -> list[str]:
    for _ in range(400):
        if len(replies := await _bot_replies(baton, thread)) >= count:
            return replies
        await baton.outbox.wait("never", 0.05)
    raise AssertionError(f"thread {thread} got {await _bot_replies(baton, thread)}, not {count} replies")


async def _stopped_after_storing_a_run(baton: Baton, event_id: str, arrive: Awaitable[object]) -> Run:
    """Baton stores the run the event ``event_id`` starts, then "stops" before its graph runs (the
    event stays pending); then it is back, and its sweeper takes the event again. Returns that run."""
    graph_run = baton.runtime.run

    async def stop_before_the_graph(*_args: object, **_kwargs: object) -> None:
        raise _Stopped()

    baton.runtime.run = stop_before_the_graph  # type: ignore[method-assign]
    await arrive
    for _ in range(400):
        async with baton.db.read() as session:
            stopped = (await session.exec(select(Run).join(InboundEvent, Run.inbound_id == InboundEvent.id).where(
                InboundEvent.event_id == event_id, Run.status == "running"))).first()
        if stopped is not None and not baton.orchestrator._tasks:
            break
        await baton.outbox.wait("never", 0.05)
    assert stopped is not None, "the run was not stored"
    baton.runtime.run = graph_run  # type: ignore[method-assign]
    async with baton.db.session() as session:  # as if it had waited past the sweeper's delay
        await session.exec(update(InboundEvent).where(InboundEvent.event_id == event_id)  # type: ignore[call-overload]
                           .values(received_at=utcnow() - timedelta(minutes=1)))
    assert await baton.orchestrator.sweep() == 1
    return stopped


@pytest.mark.parametrize("earlier_run", [False, True], ids=["first run of the graph", "after an earlier run"])
async def test_stopped_between_storing_a_run_and_its_first_checkpoint_the_run_starts_again(
        tmp_path, config_path, counter, earlier_run: bool) -> None:
    """The graph's thread then holds no checkpoint of this run: going on from it would fail ("no input"),
    or, after an earlier run of the same graph in the thread, post that run's old result as this one's."""
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}", BATON_CONFIG=config_path)
    async with Baton(settings) as baton:
        sent = 0
        if earlier_run:
            await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                      event_id="e0", user="alice", text="run uptime", addressed=True))
            assert "did uptime" in (await _until_replies(baton, "1", 1))[-1]
            sent = 1

        stopped = await _stopped_after_storing_a_run(baton, "e1", baton.accept_message(InboundMessage(
            platform="playground", channel="general", thread="1", event_id="e1", user="alice",
            text="run slow seconds=0", addressed=True)))
        assert stopped.input_text == "run slow seconds=0"

        replies = await _until_replies(baton, "1", sent + 1)
        assert "slept" in replies[-1], replies
        async with baton.db.read() as session:
            statuses = (await session.exec(select(Run.status).order_by(Run.id))).all()
        assert statuses == ["done"] * (sent + 1)
    assert runs_in(counter) == (["uptime"] if earlier_run else [])


async def test_stopped_between_a_choice_and_the_chosen_runs_first_checkpoint_the_run_starts_again(
        tmp_path, config_path, monkeypatch) -> None:
    """The click that chose is taken again after the stop: it must start the chosen run, not answer
    "already chosen" and leave that run running for ever."""
    script_path = tmp_path / "script.json"
    monkeypatch.setenv("BATON_TEST_MODEL_SCRIPT", str(script_path))
    script(script_path, [{"tool_calls": [{"name": "GraphGuess", "id": "g1", "args": {
        "graph": "status", "confidence": 0.4, "alternatives": ["help"]}}]}])
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}", BATON_CONFIG=config_path,
                        BATON_MODEL="python:tests.fake_models:scripted")
    async with Baton(settings) as baton:
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="hmm, the thing?", addressed=True))
        await _until_replies(baton, "1", 1)  # the "which one?" card
        async with baton.db.read() as session:
            card = (await session.exec(select(Approval).where(Approval.kind == "choice"))).one()

        stopped = await _stopped_after_storing_a_run(baton, "c1", baton.accept_click(InboundClick(
            platform="playground", channel="general", thread="1", event_id="c1", user="alice", approval_id=card.id,
            action="status")))
        assert stopped.graph == "status"

        replies = await _until_replies(baton, "1", 2)
        assert "Nothing is running or waiting" in replies[-1], replies
        async with baton.db.read() as session:
            assert (await session.exec(select(Run.status).where(Run.graph == "status"))).all() == ["done"]



class _PlanState(TypedDict, total=False):
    reply: str


def _plan_then_ask_graph(going_on: asyncio.Event) -> StateGraph:
    """Posts its plan, works on it (until ``going_on``), asks for an approval, then posts progress again."""

    async def plan(_state: _PlanState) -> _PlanState:
        progress("Plan: restart web")
        await going_on.wait()
        progress("Checked: web is up")
        return {}

    def ask(_state: _PlanState) -> _PlanState:
        approve("Restart web?", risk="high")
        return {}

    def restart(_state: _PlanState) -> _PlanState:
        progress("Restarting web")
        return {"reply": "Restarted web."}

    graph = StateGraph(_PlanState)
    graph.add_node("plan", plan)
    graph.add_node("ask", ask)
    graph.add_node("restart", restart)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "ask")
    graph.add_edge("ask", "restart")
    graph.add_edge("restart", END)
    return graph


async def _bot_messages(baton: Baton, thread: str) -> list[PlaygroundMessage]:
    async with baton.db.read() as session:
        return list((await session.exec(select(PlaygroundMessage).where(
            PlaygroundMessage.is_bot, PlaygroundMessage.thread_id == thread).order_by(PlaygroundMessage.id))).all())


async def _until_messages(baton: Baton, thread: str, settled: Callable[[list[PlaygroundMessage]], bool]
                          ) -> list[PlaygroundMessage]:
    for _ in range(400):
        messages = await _bot_messages(baton, thread)
        if settled(messages) and not baton.orchestrator._tasks:
            return messages
        await baton.outbox.wait("never", 0.05)
    raise AssertionError(f"thread {thread} stopped at {[(m.text, m.revision) for m in messages]}")


async def test_a_run_taken_over_after_a_stop_edits_its_progress_message_instead_of_posting_it_again(
        tmp_path, config_path) -> None:
    """Baton stops while a node works on, after it posted the plan (the run's progress message); the run
    is taken over and the node runs again from its start, posting the plan again. The plan was in the
    thread twice: the progress message's outbox row was known only to the drain that died."""
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}", BATON_CONFIG=config_path)
    async with Baton(settings) as baton:
        going_on = asyncio.Event()
        baton.registry.add(GraphSpec(name="planned", graph=_plan_then_ask_graph(going_on), description="A plan."))
        graph_run = baton.runtime.run

        async def stop_after_the_first_progress(spec, lg_thread_id, payload, context, on_progress, run_id=None,
                                                **options):
            async def post_then_stop(text: str) -> None:
                await on_progress(text)
                raise _Stopped()

            return await graph_run(spec, lg_thread_id, payload, context, post_then_stop, run_id, **options)

        baton.runtime.run = stop_after_the_first_progress  # type: ignore[method-assign]
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="planned"))
        [plan] = await _until_messages(baton, "1", bool)
        assert plan.text == "Plan: restart web"
        baton.runtime.run = graph_run  # type: ignore[method-assign]
        going_on.set()
        async with baton.db.session() as session:  # as if it had waited past the sweeper's delay
            await session.exec(update(InboundEvent).where(InboundEvent.event_id == "e1")  # type: ignore[call-overload]
                               .values(received_at=utcnow() - timedelta(minutes=1)))
        assert await baton.orchestrator.sweep() == 1

        messages = await _until_messages(baton, "1", lambda found: len(found) >= 2 and found[0].revision >= 2)
        assert [(m.id, m.text) for m in messages] == [
            (plan.id, "Plan: restart web\nChecked: web is up"), (messages[1].id, messages[1].text)]
        assert "Restart web?" in messages[1].text and messages[0].revision == 2  # the plan's message, edited once

        async with baton.db.read() as session:
            card = (await session.exec(select(Approval))).one()
        await baton.accept_click(InboundClick(platform="playground", channel="general", thread="1", event_id="c1",
                                              user="bob", approval_id=card.id, action="approve"))
        messages = await _until_messages(baton, "1", lambda found: any("Restarted web." in m.text for m in found))
        # After the card the run goes on in a progress message of its own, as a run that never stopped does.
        assert [m.text for m in messages][::2] == ["Plan: restart web\nChecked: web is up", "Restarting web"]
        assert messages[0].revision == 2 and len(messages) == 4, [m.text for m in messages]
