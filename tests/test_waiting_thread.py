"""A thread whose run waits at a card answers ``status``, ``help`` and a typed ``approve`` at once.

A card may wait a day (``BATON_APPROVAL_EXPIRY_SECONDS``), and every request written in its thread meanwhile was
queued behind it: ``@baton status`` was told "Queued: I'll handle this after the approval is decided ..." and got
no answer until someone decided; ``@baton approve`` waited as long, and was then answered "I don't know how to
handle `approve`". Status and help change nothing, so they are answered beside the waiting run (``aside``); a typed
decision is told to use the card's buttons, which check who may decide (typed text approves nothing). New work
still waits for the decision, in order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import select

from bot.app import Baton
from bot.messages import InboundMessage, Message
from bot.settings import Settings
from storage.models import InboundEvent, OutboxMessage, ThreadRecord

from bot.registry import GraphRegistry, GraphSpec
from bot.routing import aside
from tests.support import has_buttons, runs_in, until, wait_for
from tests.test_cancel import alive, config_path, rows, started_sleeping  # noqa: F401 (config_path: a fixture)
from tests.test_models import guess, model_script  # noqa: F401 (a fixture)

@pytest.mark.parametrize(("text", "addressed", "asked"), [
    ("status", True, "status"), ("STATUS", False, "status"), ("force status", True, "status"),
    ("status of web-2 is fine now", False, None), ("help me", True, "help"),
    ("help me check the logs, carol?", False, None),
    ("Approve!", True, "approve"), ("approve it please", True, "approve"), ("reject.", False, "reject"),
    ("approve?", False, "approve"), ("can you approve this, bob?", False, None), ("approve it, bob", False, None),
    ("run uptime", True, None), ("summarize", True, None), ("cancel", True, None), ("", True, None),
])
def test_what_is_answered_beside_a_busy_threads_run(text: str, addressed: bool, asked: str | None) -> None:
    """Status and help as routing reads them, and a decision typed: unmentioned, people talking stays talk."""
    assert aside(text, GraphRegistry.discover(), addressed=addressed) == asked


def test_a_graph_named_approve_is_a_request_not_a_decision_typed() -> None:
    registry = GraphRegistry.discover()
    registry.add(GraphSpec(name="approve", graph=None))
    assert aside("approve", registry, addressed=True) is None


POINTER = "A typed `{}` decides nothing: use the Approve or Reject button on the approval card above"


def _pending(database_url: str) -> int:
    return int(rows(database_url, "SELECT count(*) FROM inbound_events WHERE status = 'pending'")[0][0])


def _texts(pg, thread: str, viewer: str | None = None) -> list[str]:
    return [m["text"] for m in pg.bot_replies(thread, viewer)]


def test_status_and_help_are_answered_while_a_card_waits_and_the_card_still_works(
        start_baton, database_url, counter) -> None:
    pg = start_baton(database_url).client()
    thread = pg.ask("@baton run restart service=web", user="alice")
    card = pg.wait_card(thread)

    pg.say("@baton status", thread=thread, user="carol")
    status = pg.wait_reply(thread, "Status: 1 active thread")  # before anyone decided: the card still waits
    assert "run restart service=web — waiting for approval (asked by alice" in status["text"], status["text"]
    assert "for bob" in status["text"], status["text"]
    pg.say("help", thread=thread, user="dave")  # the word alone, without a mention, in the Baton thread
    pg.wait_reply(thread, "Here is what I can do")
    assert has_buttons(next(m for m in pg.bot_replies(thread) if m["id"] == card["id"]))
    assert runs_in(counter) == []

    assert pg.click(card, "bob").status_code == 202
    pg.wait_reply(thread, "did restart web")
    assert runs_in(counter) == ["restart web"]
    assert not any("Queued" in text or "I don't know" in text for text in _texts(pg, thread))
    wait_for(lambda: _pending(database_url) == 0, what="every event handled")
    assert rows(database_url, "SELECT graph, status FROM runs ORDER BY id") == [("runbook", "done")]  # none beside


def test_a_typed_approve_is_pointed_at_the_card_at_once_and_requests_wait_for_the_decision_in_order(
        start_baton, database_url, counter) -> None:
    pg = start_baton(database_url).client()
    thread = pg.ask("@baton run restart service=web", user="alice")
    card = pg.wait_card(thread)

    pg.say("@baton Approve!", thread=thread, user="bob")
    told = pg.wait_reply(thread, POINTER.format("approve"), viewer="bob")
    assert "It is waiting for bob." in told["text"], told["text"]
    pg.say("@baton run uptime", thread=thread, user="carol")  # new work: queued behind the card
    pg.wait_reply(thread, "Queued: I'll handle this after the approval is decided and the current run finishes.")
    pg.say("reject.", thread=thread, user="alice")  # the word alone, without a mention
    withdraw = pg.wait_reply(thread, POINTER.format("reject"), viewer="alice")
    assert "You asked for it: its Reject button (or `cancel`) withdraws it." in withdraw["text"], withdraw["text"]
    pg.say("@baton run slow seconds=0.1", thread=thread, user="carol")
    wait_for(lambda: _pending(database_url) == 2, what="the pointers answered and the two requests left queued")
    assert runs_in(counter) == []  # typed text decided nothing
    assert has_buttons(next(m for m in pg.bot_replies(thread) if m["id"] == card["id"]))
    # the requests', not the pointers' (handled is not yet delivered: the second may still be on its way)
    wait_for(lambda: len([text for text in _texts(pg, thread) if "Queued" in text]) == 2, what="two Queued notes")

    assert pg.click(card, "bob").status_code == 202
    wait_for(lambda: _pending(database_url) == 0, what="the queued requests handled")
    pg.wait_reply(thread, "slept")  # the last one's reply delivered
    texts = _texts(pg, thread)
    done = [next(at for at, text in enumerate(texts) if said in text) for said in ("did restart web", "did uptime",
                                                                                   "slept")]
    assert done == sorted(done), texts  # the run the card was for, then the requests in the order asked
    assert runs_in(counter) == ["restart web", "uptime"]
    everyone = [text for viewer in ("alice", "bob", "carol") for text in _texts(pg, thread, viewer)]
    assert not any("I don't know" in text for text in everyone), everyone
    assert sum(POINTER.format("approve") in text for text in _texts(pg, thread, "bob")) == 1
    assert rows(database_url, "SELECT outcome FROM inbound_events WHERE kind = 'aside' ORDER BY id") == \
        [("typed decision",), ("typed decision",)]


def test_at_a_which_one_card_status_is_answered_and_a_typed_approve_is_told_nothing_asks_for_one(
        start_baton, sqlite_url, model_script) -> None:  # noqa: F811
    pg = start_baton(sqlite_url, env=model_script(guess("status", 0.4, "help"))).client()
    thread = pg.ask("@baton hmm, the thing?", user="alice")
    card = pg.wait_card(thread)
    pg.say("@baton status", thread=thread, user="carol")
    status = pg.wait_reply(thread, "Status: 1 active thread")
    assert "waiting for a choice (asked by alice" in status["text"], status["text"]
    pg.say("@baton approve", thread=thread, user="carol")
    pg.wait_reply(thread, 'Nothing here waits for an approval: the "Which one?" card above asks alice which graph '
                          "they meant", viewer="carol")
    assert not any("Queued" in text for text in _texts(pg, thread, "carol"))
    assert pg.click(card, "alice", action="help").status_code == 202  # the card is picked from as before
    pg.wait_reply(thread, "Here is what I can do")


def test_beside_a_running_run_status_help_and_a_typed_approve_are_answered_at_once(
        start_baton, sqlite_url, tmp_path) -> None:
    """While a run runs, status, help and a typed decision are answered by its replica beside it, at once: a
    ``status`` written during a long command was told "Queued: ..." and answered after it. The run goes on, a
    request still waits for it, and a typed decision no longer gets "I don't know"."""
    pg = start_baton(sqlite_url).client()
    thread = pg.ask("@baton run sleepy", user="alice")
    pid = started_sleeping(tmp_path)
    pg.say("@baton approve", thread=thread, user="bob")
    pg.wait_reply(thread, "Nothing in this thread waits for a decision now, so a typed `approve` changes nothing.",
                  viewer="bob")
    pg.say("@baton status", thread=thread, user="carol")
    status = pg.wait_reply(thread, "Status: 1 active thread")
    assert "run sleepy — running (asked by alice" in status["text"], status["text"]
    pg.say("help", thread=thread, user="dave")  # the word alone, without a mention, in the Baton thread
    pg.wait_reply(thread, "Here is what I can do")
    pg.say("@baton run uptime", thread=thread, user="carol")  # new work still waits for the run
    pg.wait_reply(thread, "Queued: I'll handle this after the current run finishes.")
    assert alive(pid)
    assert len([text for text in _texts(pg, thread) if "Queued" in text]) == 1  # the request's, not the asides'
    assert rows(sqlite_url, "SELECT outcome FROM inbound_events WHERE kind = 'aside' ORDER BY id") == \
        [("typed decision",), ("status",), ("help",)]

    pg.say("cancel", thread=thread, user="alice")
    pg.wait_reply(thread, "alice cancelled `run sleepy`")
    wait_for(lambda: _pending(sqlite_url) == 0, what="every event handled")
    pg.wait_reply(thread, "did uptime")  # handled is not yet delivered: its reply may still be on its way (CI met it)
    texts = _texts(pg, thread)
    assert texts.index(next(t for t in texts if "alice cancelled" in t)) < texts.index(next(
        t for t in texts if "did uptime" in t)), texts  # the request ran after the run
    assert not any("I don't know" in text for text in _texts(pg, thread, "bob"))
    assert rows(sqlite_url, "SELECT graph, status FROM runs ORDER BY id") == [
        ("runbook", "failed"), ("runbook", "done")]


@pytest.mark.postgres
def test_at_a_card_another_replica_answers_status_and_a_typed_approve_once(start_baton, postgres_url,
                                                                             counter) -> None:
    one, two = start_baton(postgres_url, name="one"), start_baton(postgres_url, name="two")
    thread = one.client().ask("@baton run restart service=web", user="alice")
    card = one.client().wait_card(thread)
    other = two.client()
    other.say("@baton status", thread=thread, user="carol")
    other.say("@baton approve", thread=thread, user="bob")
    other.say("@baton run uptime", thread=thread, user="carol")
    other.wait_reply(thread, "Status: 1 active thread")
    other.wait_reply(thread, POINTER.format("approve"), viewer="bob")
    wait_for(lambda: _pending(postgres_url) == 1, what="status and the pointer answered, the request queued")
    assert runs_in(counter) == []
    assert one.client().click(card, "bob").status_code == 202
    one.client().wait_reply(thread, "did uptime")
    wait_for(lambda: _pending(postgres_url) == 0, what="every event handled")
    texts = _texts(other, thread, "bob")
    assert sum("Status: 1 active thread" in text for text in texts) == 1
    assert sum(POINTER.format("approve") in text for text in texts) == 1
    assert runs_in(counter) == ["restart web", "uptime"]


@pytest.mark.postgres
def test_a_status_sent_to_another_replica_is_answered_beside_the_run_by_the_runs_replica(
        start_baton, postgres_url, tmp_path) -> None:
    one, two = start_baton(postgres_url, name="one"), start_baton(postgres_url, name="two")
    thread = one.client().ask("@baton run sleepy", user="alice")  # a new thread is drained where it was made
    pid = started_sleeping(tmp_path)
    assert two.client().say("@baton status", thread=thread, user="carol").status_code == 201
    status = two.client().wait_reply(thread, "Status: 1 active thread")  # found by one's sweep, within a second
    assert "run sleepy — running (asked by alice" in status["text"], status["text"]
    assert alive(pid)
    assert not any("Queued" in text for text in _texts(two.client(), thread))
    assert rows(postgres_url, "SELECT status FROM runs") == [("running",)]
    two.client().say("cancel", thread=thread, user="alice")
    two.client().wait_reply(thread, "alice cancelled `run sleepy`")


async def test_an_aside_answered_beside_a_run_that_ends_meanwhile_is_answered_once(
        database_url: str, config_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """The run ends while its replica is still answering a ``status`` written beside it: the drain, taking the
    thread's queue next, waits for that answer instead of giving a second one (or failing on the event closed
    under it), and the thread is given back."""
    async with Baton(_playground(database_url, config_path)) as baton:
        orchestrator = baton.orchestrator
        assert orchestrator is not None
        held = _HeldAnswers(orchestrator)

        async def say(event_id: str, text: str, user: str) -> None:
            await _say(baton, event_id, text, user)

        async def events() -> list[tuple[str, str, str | None]]:
            async with baton.db.read() as session:
                return [(e.kind, e.status, e.outcome) for e in (await session.exec(
                    select(InboundEvent).order_by(InboundEvent.id))).all()]  # type: ignore[arg-type]

        await say("e1", "run sleepy", "alice")
        await until(lambda: (tmp_path / "sleepy.pid").exists(), "the command to start")
        await say("e2", "status", "carol")
        await asyncio.wait_for(held.answering.wait(), 20)  # answered beside the run: held there
        await say("e3", "cancel", "alice")
        await until(lambda: _drain_at("_handle_aside"), "the drain to take the status, the run ended")
        assert (await events())[1] == ("aside", "pending", None)
        held.go_on.set()
        await until(lambda: not orchestrator._draining, "the thread's queue drained")
        kinds = await events()
        assert kinds[1] == ("aside", "done", "status"), kinds
        assert all(status == "done" for _kind, status, _outcome in kinds), kinds
        async with baton.db.read() as session:
            replies = [str(row.payload) for row in (await session.exec(select(OutboxMessage).where(
                OutboxMessage.thread == "t1"))).all()]
            record = (await session.exec(select(ThreadRecord).where(ThreadRecord.thread == "t1"))).one()
        # Made once go_on was set, after the run ended: it finds nothing running.
        assert sum("Nothing is running or waiting for approval" in reply for reply in replies) == 1, replies
        assert record.lease_owner is None  # given back: nothing else is queued
        assert len(held.first) == 1 and held.first[0].done()  # the drain did not answer it a second time
    # The drain answering it too found it closed under it: "stopped draining: event 2 was already handled elsewhere"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("baton")] == []


class _HeldAnswers:
    """The orchestrator's answers to asides, the first held until ``go_on`` is set (``answering`` says it is
    there); a second (the drain's) is made once the first is stored, the order that failed the drain."""

    def __init__(self, orchestrator: Any) -> None:
        self.answering, self.go_on = asyncio.Event(), asyncio.Event()
        self.first: list[asyncio.Task[Any]] = []
        self._answer = orchestrator._aside_answer
        orchestrator._aside_answer = self._held

    async def _held(self, event: InboundEvent, record: ThreadRecord) -> tuple[str, Message, bool]:
        if not self.first:
            self.first.append(asyncio.current_task())  # type: ignore[arg-type]
            self.answering.set()
            await self.go_on.wait()
        else:
            await asyncio.wait(self.first)
        return await self._answer(event, record)


def _playground(database_url: str, config_path: Path) -> Settings:
    return Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                    BATON_ADAPTERS="playground")


async def _status_held_beside_sleepy(baton: Baton, tmp_path: Path) -> tuple[Any, _HeldAnswers, int]:
    """alice's ``run sleepy`` running, and carol's ``status`` being answered beside it, held there: the
    orchestrator, the held answers, the command's pid."""
    orchestrator = baton.orchestrator
    assert orchestrator is not None
    held = _HeldAnswers(orchestrator)
    await _say(baton, "e1", "run sleepy", "alice")
    pidfile = tmp_path / "sleepy.pid"
    pid = int(await until(lambda: pidfile.exists() and pidfile.read_text(), "the command to start"))
    await _say(baton, "e2", "status", "carol")
    await asyncio.wait_for(held.answering.wait(), 20)
    return orchestrator, held, pid


async def _say(baton: Baton, event_id: str, text: str, user: str) -> None:
    accepted = await baton.accept_message(InboundMessage(
        platform="playground", channel="general", thread="t1", event_id=event_id, user=user, text=text, addressed=True))
    assert accepted.status == "accepted", accepted


def _drain_at(function: str) -> bool:
    """Whether a thread's drain is awaiting in ``function`` now (its chain of awaited coroutines)."""
    for task in asyncio.all_tasks():
        if task.get_name().startswith("drain-"):
            awaited = task.get_coro()
            while awaited is not None:
                if getattr(getattr(awaited, "cr_code", None), "co_name", None) == function:
                    return True
                awaited = getattr(awaited, "cr_await", None)
    return False


async def test_baton_stopping_keeps_the_thread_until_an_aside_answer_under_way_is_settled(
        database_url: str, config_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """Baton stops while a ``status`` is being answered beside a run, and the run ends in the stop's grace: the
    drain gave the thread back at once, and the answer, made, was thrown away ("stopped answering asides: thread
    1 is no longer ours"). It now waits for that answer's transaction before giving the thread back; made while the
    run ran, which it does not any more, the answer is not stored (it would say the run runs): the aside waits, in
    the thread's queue, for whoever takes the thread next."""
    async with Baton(_playground(database_url, config_path)) as baton:
        orchestrator, held, pid = await _status_held_beside_sleepy(baton, tmp_path)
        stopping = asyncio.create_task(orchestrator.stop(grace=20))
        await until(lambda: orchestrator._stopping, "the stop to begin")
        os.kill(pid, signal.SIGKILL)  # the run ends in the grace
        await until(lambda: not orchestrator._running and _drain_at("wait"), "the drain to wait for the answer")
        held.go_on.set()
        await stopping
        async with baton.db.read() as session:
            events = [(e.kind, e.status, e.outcome) for e in (await session.exec(
                select(InboundEvent).order_by(InboundEvent.id))).all()]  # type: ignore[arg-type]
            record = (await session.exec(select(ThreadRecord).where(ThreadRecord.thread == "t1"))).one()
        assert events[1] == ("aside", "pending", None), events
        assert record.lease_owner is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("baton")
            and "answering asides" in r.getMessage()] == []


async def test_an_aside_answer_made_after_the_thread_was_taken_over_is_not_stored(
        database_url: str, config_path: Path, tmp_path: Path) -> None:  # noqa: F811
    """This replica stalled past its lease while answering a ``status`` beside its run, and another took the thread
    over: its answer is not stored (the new holder answers the aside). Stored, it closed the event under the new
    holder's drain, which then stopped ("event 2 was already handled elsewhere") and left the thread stalled."""
    async with Baton(_playground(database_url, config_path)) as baton:
        orchestrator, held, pid = await _status_held_beside_sleepy(baton, tmp_path)
        async with baton.db.session() as session:  # another replica took the thread over meanwhile
            await session.exec(update(ThreadRecord).where(  # type: ignore[call-overload]
                ThreadRecord.thread == "t1").values(lease_owner="another replica"))
        held.go_on.set()
        await asyncio.wait(held.first)
        async with baton.db.read() as session:
            aside = (await session.exec(select(InboundEvent).where(InboundEvent.event_id == "e2"))).one()
            replies = [str(row.payload) for row in (await session.exec(select(OutboxMessage).where(
                OutboxMessage.thread == "t1"))).all()]
        assert (aside.status, aside.outcome) == ("pending", None)
        assert not any("Status:" in reply for reply in replies), replies
        os.kill(pid, signal.SIGKILL)  # the run ends here: Baton's stop does not wait out its grace for it


class _GatedThenAsks:
    """A graph whose node runs until ``gate`` is set, then asks for approval."""

    def __init__(self) -> None:
        from langgraph.graph import END, START, StateGraph

        from bot.kit import approve

        self.gate = asyncio.Event()

        async def work(state: dict[str, Any]) -> dict[str, Any]:
            await self.gate.wait()
            approve("Go on with the gated work?", risk="high")
            return {"reply": "gated done"}

        builder = StateGraph(dict)  # type: ignore[type-var]
        builder.add_node("work", work)
        builder.add_edge(START, "work")
        builder.add_edge("work", END)
        self.spec = GraphSpec(name="gated", graph=builder, dedupe=False)


async def test_a_typed_approve_answered_beside_a_run_that_posts_its_card_meanwhile_points_at_the_card(
        database_url: str, config_path: Path) -> None:  # noqa: F811
    """bob types ``approve`` while alice's run runs; its replica reads the thread's cards (none yet) beside the run,
    the run posts its card, and then bob's answer was stored: under the card that waits for him, "Nothing in this
    thread waits for a decision now". An answer made beside a run is stored only while the run still runs; else the
    drain answers the aside afresh."""
    gated = _GatedThenAsks()
    async with Baton(_playground(database_url, config_path)) as baton:
        orchestrator = baton.orchestrator
        assert orchestrator is not None
        orchestrator.registry.add(gated.spec)
        made, go_on = asyncio.Event(), asyncio.Event()
        answer = orchestrator._aside_answer

        async def made_then_held(event: InboundEvent, record: ThreadRecord) -> tuple[str, Message, bool]:
            answered = await answer(event, record)
            made.set()
            await go_on.wait()  # the answer is made; the transaction storing it comes a moment later
            return answered

        orchestrator._aside_answer = made_then_held  # type: ignore[method-assign]
        await _say(baton, "e1", "gated", "alice")
        await until(lambda: orchestrator._running, "alice's run to run")
        await _say(baton, "e2", "approve", "bob")
        await asyncio.wait_for(made.wait(), 20)  # made beside the run: no card yet

        async def card_posted() -> bool:
            async with baton.db.read() as session:
                return (await session.exec(select(ThreadRecord.status).where(
                    ThreadRecord.thread == "t1"))).one() == "waiting"

        gated.gate.set()
        await until(card_posted, "the run to post its card")
        go_on.set()

        async def told_bob() -> list[str]:
            async with baton.db.read() as session:
                aside = (await session.exec(select(InboundEvent).where(InboundEvent.event_id == "e2"))).one()
                return [str(row.payload) for row in (await session.exec(select(OutboxMessage).where(
                    OutboxMessage.thread == "t1", OutboxMessage.target_user == "bob"))).all()] \
                    if aside.status == "done" else []

        (told,) = await until(told_bob, "bob's approve answered")
        assert "Nothing in this thread waits for a decision now" not in told and "Approve or Reject button" in told


@pytest.mark.postgres
async def test_an_aside_closed_beside_the_run_as_another_replica_takes_the_thread_does_not_stop_its_drain(
        postgres_url: str, config_path: Path, tmp_path: Path, start_baton: Any) -> None:  # noqa: F811
    """PostgreSQL, two replicas. Replica A answers carol's ``status`` beside its run; its transaction has run the
    close (the thread's lease read as A's without taking the row) when A stalls past its lease; replica B takes the
    thread over, reads the aside as pending and answers it, waiting for the outbox lock A holds. A commits: B's
    close found the event done, and its drain stopped ("stopped draining: event 2 was already handled
    elsewhere") holding the thread, whose run was then taken up only once that lease ran out. B's answer is undone
    and it goes on."""
    import time

    import psycopg
    from sqlalchemy import event as sa_event

    lease = {"BATON_LEASE_SECONDS": "4"}
    settings = Settings(BATON_DATABASE_URL=postgres_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground", BATON_INSTANCE_NAME="replica-a", **lease)
    admin = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    async with Baton(settings) as baton:
        other = await asyncio.to_thread(start_baton, postgres_url, "two", {**lease, "BATON_INSTANCE_NAME": "replica-b"})
        await _say(baton, "e1", "run sleepy", "alice")
        pidfile = tmp_path / "sleepy.pid"
        pid = int(await until(lambda: pidfile.exists() and pidfile.read_text(), "the command to start"))
        stalled: list[str] = []

        def stall_after_close(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            """A's event loop held right after its close of the aside, before the commit (as a paused process),
            until B holds the thread and waits for the thread's outbox lock."""
            if "UPDATE inbound_events" not in statement or "lease_owner" not in statement or stalled:
                return
            stalled.append(statement)
            deadline = time.monotonic() + 40
            with psycopg.connect(admin, autocommit=True) as conn:
                while time.monotonic() < deadline:
                    owner = conn.execute("SELECT lease_owner FROM thread_records WHERE thread = 't1'").fetchone()
                    waiting = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                           "AND NOT granted").fetchone()
                    if owner and owner[0] == "replica-b" and waiting and waiting[0]:
                        return
                    time.sleep(0.05)

        engine = baton.db.read_engine.sync_engine
        sa_event.listen(engine, "after_cursor_execute", stall_after_close)
        try:
            await _say(baton, "e2", "status", "carol")
            await until(lambda: stalled, "A's close of the aside")
        finally:
            sa_event.remove(engine, "after_cursor_execute", stall_after_close)
        try:
            def taken_up() -> bool:
                return "already handled elsewhere" in other.log.read_text() or \
                    rows(postgres_url, "SELECT takeovers FROM runs")[0][0] >= 1

            await asyncio.to_thread(wait_for, taken_up, timeout=30, what="B to take alice's run up")
            assert "already handled elsewhere" not in other.log.read_text()
            statuses = rows(postgres_url, "SELECT status FROM inbound_events WHERE event_id = 'e2'")
            replies = rows(postgres_url, "SELECT payload::text FROM outbox WHERE thread = 't1'")
            assert statuses == [("done",)] and sum("Status:" in reply for (reply,) in replies) == 1, replies
        finally:
            os.kill(pid, signal.SIGKILL)


async def test_a_status_graph_refusing_an_aside_beside_a_run_is_answered_with_its_refusal(
        sqlite_url: str, config_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """A team's own ``status`` graph whose input maker refuses what it is asked (``RouteError``), asked beside a
    run: the refusal was raised out of the answer, logged with its traceback at every sweep (each second) while the
    run ran, and the asides behind it waited for the run's end. It is the aside's answer, as in an idle thread."""
    import dataclasses

    from bot.routing import RouteError

    def refuse(_request: Any, _rest: str) -> dict[str, Any]:
        raise RouteError("Say which service: `status web`.")

    async with Baton(_playground(sqlite_url, config_path)) as baton:
        orchestrator = baton.orchestrator
        assert orchestrator is not None
        status = orchestrator.registry.get("status")
        assert status is not None
        orchestrator.registry.add(dataclasses.replace(status, make_input=refuse))
        await _say(baton, "e1", "run sleepy", "alice")
        pidfile = tmp_path / "sleepy.pid"
        pid = int(await until(lambda: pidfile.exists() and pidfile.read_text(), "the command to start"))
        try:
            await _say(baton, "e2", "status", "carol")
            await _say(baton, "e3", "help", "carol")

            async def answered() -> list[str]:
                async with baton.db.read() as session:
                    return [str(row.payload) for row in (await session.exec(select(OutboxMessage).where(
                        OutboxMessage.thread == "t1").order_by(OutboxMessage.id))).all()]  # type: ignore[arg-type]

            said = await until(lambda: _two(answered()), "both asides answered while the run runs")
            assert "Say which service" in said[0] and "Here is what I can do" in said[1], said
            assert orchestrator._running  # beside the run
        finally:
            os.kill(pid, signal.SIGKILL)
    # Baton's own (asyncio's "Task exception was never retrieved" of another test's task may come here when collected)
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info and r.name.startswith("baton")]
    assert not tracebacks, tracebacks


async def _two(answered: Any) -> list[str] | None:
    said = [text for text in await answered if "Say which service" in text or "Here is what I can do" in text]
    return said if len(said) == 2 else None


async def test_a_request_behind_an_aside_alone_is_not_told_it_is_queued(sqlite_url: str, config_path: Path) -> None:
    """The run ended while a ``status`` written beside it was still being answered: a request written then was told
    "Queued: I'll handle this after the current run finishes", with no run going on (the aside counted as work)."""
    from bot import threads
    from storage.db import insert_new_id
    from storage.models import utcnow

    async with Baton(_playground(sqlite_url, config_path)) as baton:
        await _say(baton, "e1", "run uptime", "alice")

        async def ended() -> bool:
            async with baton.db.read() as session:
                return (await session.exec(select(ThreadRecord.status).where(ThreadRecord.thread == "t1"))).one() \
                    == "done"

        await until(ended, "alice's run to end")
        async with baton.db.session() as session:  # carol's status, stored beside the run, its answer under way
            record = (await session.exec(select(ThreadRecord).where(ThreadRecord.thread == "t1"))).one()
            await insert_new_id(session, InboundEvent, {
                "platform": "playground", "event_id": "e2", "kind": threads.ASIDE_KIND, "workspace": "",
                "channel": "general", "thread": "t1", "user": "carol", "text": "status",
                "payload": {"addressed": True, "aside": "status"}, "status": "pending", "thread_record_id": record.id,
                "correlation_id": "e2", "received_at": utcnow()}, ["platform", "event_id"])
        await _say(baton, "e3", "run uptime force", "bob")
        async with baton.db.read() as session:
            notes = [str(row.payload) for row in (await session.exec(select(OutboxMessage).where(
                OutboxMessage.thread == "t1"))).all() if "Queued" in str(row.payload)]
        assert notes == []


async def test_a_help_beside_a_long_status_run_is_answered_while_it_runs(sqlite_url: str, config_path: Path) -> None:
    """A team's own ``status`` graph runs long in a thread; ``status`` written beside it waits for its end (a second
    run of the graph beside the first would share its LangGraph thread), and every aside behind it waited too: a
    ``help`` was answered only once the long status had ended."""
    from langgraph.graph import END, START, StateGraph

    gate = asyncio.Event()

    async def slow_status(state: dict[str, Any]) -> dict[str, Any]:
        await gate.wait()
        return {"reply": "all systems go"}

    builder = StateGraph(dict)  # type: ignore[type-var]
    builder.add_node("look", slow_status)
    builder.add_edge(START, "look")
    builder.add_edge("look", END)
    async with Baton(_playground(sqlite_url, config_path)) as baton:
        orchestrator = baton.orchestrator
        assert orchestrator is not None
        orchestrator.registry.add(GraphSpec(name="status", graph=builder, dedupe=False))
        await _say(baton, "e1", "status", "alice")
        await until(lambda: orchestrator._running, "the long status to run")
        await _say(baton, "e2", "status", "carol")  # the running graph's: it waits for the run's end
        await _say(baton, "e3", "help", "carol")

        async def said() -> list[str]:
            async with baton.db.read() as session:
                return [str(row.payload) for row in (await session.exec(select(OutboxMessage).where(
                    OutboxMessage.thread == "t1").order_by(OutboxMessage.id))).all()]  # type: ignore[arg-type]

        async def helped() -> bool:
            return any("Here is what I can do" in text for text in await said())

        await until(helped, "carol's help answered while the status runs")
        assert orchestrator._running and not any("all systems go" in text for text in await said())
        gate.set()

        async def both_done() -> bool:
            return sum("all systems go" in text for text in await said()) == 2  # alice's, then carol's status

        await until(both_done, "alice's and carol's status answered")
