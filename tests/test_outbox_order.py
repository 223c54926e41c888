"""Order per thread when several transactions store rows in one thread at once (replicas, or one process).

On PostgreSQL (READ COMMITTED) a transaction cannot see the rows another one has stored and not yet
committed, and a row's id is taken from the sequence when it is inserted, not when it commits. A
"Queued: I'll handle this after the current run finishes" note stored by one replica while another
replica's drain stores the run's result in the same thread: the result, committed first, was claimed (or
handed straight to the adapter) because nothing earlier in its thread was visible, and the note, numbered
before it, went out after it. SQLite's writers take turns, so there a row's id follows commit order already.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from bot import threads
from bot.messages import Location, Message
from bot.orchestrator import Orchestrator
from bot.outbox import Delivery, Outbox
from storage.db import Database, Transaction
from storage.migrate import upgrade
from storage.models import utcnow
from tests.support import until

THREAD = Location(platform="playground", workspace="", channel="ops", thread="42")
QUEUED = "Queued: I'll handle this after the current run finishes."
RESULT = "did uptime"


@dataclass
class Replica:
    db: Database
    outbox: Outbox


@pytest.fixture(params=["two replicas", "one process"])
async def replicas(request: pytest.FixtureRequest, postgres_url: str) -> AsyncIterator[tuple[Replica, Replica]]:
    """Two writers on one PostgreSQL database: two replicas (each its engine and outbox), or one process."""
    upgrade(postgres_url)
    one_db = Database(postgres_url)
    one = Replica(one_db, Outbox(one_db, worker="replica-1"))
    if request.param == "one process":
        yield one, one
    else:
        two_db = Database(postgres_url)
        yield one, Replica(two_db, Outbox(two_db, worker="replica-2"))
        await two_db.dispose()
    await one_db.dispose()


async def _held_open(db: Database, store: Callable[[Transaction], Awaitable[Any]], stored: asyncio.Event,
                     commit: asyncio.Event) -> Any:
    """Store in a transaction that commits only once ``commit`` is set (a slow accept, a commit waiting for the disk)."""
    async with db.session() as session:
        result = await store(session)
        stored.set()
        await commit.wait()
    return result


async def _stored(db: Database, store: Callable[[Transaction], Awaitable[Any]]) -> Any:
    async with db.session() as session:
        return await store(session)


def _done_or_waiting(db: Database, task: asyncio.Task[Any]) -> Callable[[], Awaitable[bool]]:
    """The second writer has committed, or is waiting for a lock (for the first writer's commit)."""
    waiting = _waiting_for_a_lock(db)

    async def check() -> bool:
        return task.done() or await waiting()
    return check


async def _send(outbox: Outbox, delivery: Delivery, sent: list[tuple[int, str]]) -> None:
    """What an adapter does with a delivery: send it, then mark it delivered."""
    sent.append((delivery.id, delivery.message.plain_text()))
    await outbox.delivered(delivery.id, f"m{delivery.id}")


async def _send_due(outbox: Outbox, sent: list[tuple[int, str]]) -> int:
    """One round of a delivery loop: claim what is due and send it."""
    claimed = await outbox.claim(THREAD.platform, outbox.worker)
    for delivery in claimed:
        await _send(outbox, delivery, sent)
    return len(claimed)


async def _send_the_rest(outbox: Outbox, sent: list[tuple[int, str]]) -> None:
    for _round in range(10):
        if not await _send_due(outbox, sent):
            return


@pytest.mark.postgres
async def test_a_row_committed_first_does_not_overtake_a_row_of_its_thread_stored_before_it(
        replicas: tuple[Replica, Replica]) -> None:
    """The note is stored (and numbered) first, its transaction still open; the result is stored and committed
    meanwhile. A delivery loop polling then sent the result at once: nothing earlier in its thread was visible."""
    one, two = replicas
    stored, commit = asyncio.Event(), asyncio.Event()
    note = asyncio.create_task(_held_open(one.db, lambda session: one.outbox.enqueue(
        session, THREAD, Message.text(QUEUED)), stored, commit))
    await stored.wait()
    result = asyncio.create_task(_stored(two.db, lambda session: two.outbox.enqueue(
        session, THREAD, Message.text(RESULT))))
    await until(_done_or_waiting(two.db, result), "the result stored, or waiting for the note's commit")

    sent: list[tuple[int, str]] = []
    await _send_due(two.outbox, sent)  # a delivery loop polls while the note's transaction is still open
    commit.set()
    note_id, result_id = await note, await result
    await _send_the_rest(two.outbox, sent)

    assert [message for _id, message in sent] == [QUEUED, RESULT]
    assert note_id < result_id  # the thread's ids follow the order in which its rows are committed


@pytest.mark.postgres
async def test_a_final_reply_is_not_handed_over_while_an_earlier_row_of_its_thread_is_still_to_commit(
        replicas: tuple[Replica, Replica]) -> None:
    """``enqueue_claimed`` stores the final reply already claimed when nothing earlier in its thread is
    undelivered, and the adapter sends it at once: a note stored in a transaction not yet committed was not
    seen, and went out after the reply."""
    one, two = replicas
    two.outbox.attach(THREAD.platform, 0.0)  # the replica finishing the run delivers the platform's messages
    stored, commit = asyncio.Event(), asyncio.Event()
    note = asyncio.create_task(_held_open(one.db, lambda session: one.outbox.enqueue(
        session, THREAD, Message.text(QUEUED)), stored, commit))
    await stored.wait()
    reply = asyncio.create_task(_stored(two.db, lambda session: two.outbox.enqueue_claimed(
        session, THREAD, Message.text(RESULT))))
    await until(_done_or_waiting(two.db, reply), "the reply stored, or waiting for the note's commit")

    sent: list[tuple[int, str]] = []
    if reply.done() and (handed := reply.result()) is not None:
        await _send(two.outbox, handed, sent)  # handed over after its commit: the adapter sends it first
    commit.set()
    await note
    if (handed := await reply) is not None and not sent:
        await _send(two.outbox, handed, sent)
    await _send_the_rest(two.outbox, sent)

    assert [message for _id, message in sent] == [QUEUED, RESULT]
    assert [row_id for row_id, _message in sent] == sorted(row_id for row_id, _message in sent)


async def test_an_edit_waits_for_its_post_and_a_post_failed_for_good_holds_nothing_up(database: Database) -> None:
    """A card's edit goes after the card, to the card's message. A post the platform refused for good is
    failed: the rows behind it go on (its edit is posted in its place), and a final reply behind only sent
    and failed rows is handed over at once."""
    outbox = Outbox(database, worker="me")
    sent: list[tuple[int, str]] = []
    async with database.session() as session:
        card = await outbox.enqueue(session, THREAD, Message.text("restart web? waiting for bob"))
    async with database.session() as session:  # the click, in a later transaction
        await outbox.enqueue(session, THREAD, Message.text("restart web: approved by bob"), kind="update",
                             ref_outbox_id=card)
    [post] = await outbox.claim(THREAD.platform, "me")
    assert post.id == card
    assert await outbox.claim(THREAD.platform, "me") == []  # the edit waits until its post is sent
    await _send(outbox, post, sent)
    [edit] = await outbox.claim(THREAD.platform, "me")
    assert (edit.kind, edit.target_message_id, edit.message.plain_text()) == \
        ("update", f"m{card}", "restart web: approved by bob")
    await _send(outbox, edit, sent)

    async with database.session() as session:
        refused = await outbox.enqueue(session, THREAD, Message.text("step 1 of 2"))
        await outbox.enqueue(session, THREAD, Message.text("step 2 of 2"), kind="update", ref_outbox_id=refused)
        await outbox.enqueue(session, THREAD, Message.text("a note after it"))
    [first] = await outbox.claim(THREAD.platform, "me")
    assert first.id == refused
    await outbox.failed(first.id, "msg_too_long")
    [edit] = await outbox.claim(THREAD.platform, "me")
    assert (edit.kind, edit.target_message_id, edit.message.plain_text()) == ("update", None, "step 2 of 2")
    await _send(outbox, edit, sent)
    [note] = await outbox.claim(THREAD.platform, "me")
    assert note.message.plain_text() == "a note after it"
    await _send(outbox, note, sent)

    outbox.attach(THREAD.platform, 0.0)
    async with database.session() as session:
        reply = await outbox.enqueue_claimed(session, THREAD, Message.text(RESULT))
    assert reply is not None  # nothing in the thread is still to be sent: the reply goes at once


@pytest.mark.postgres
async def test_a_message_arriving_while_its_thread_is_answered_does_not_deadlock(
        replicas: tuple[Replica, Replica]) -> None:
    """A new event's row holds a KEY SHARE lock on its thread's record (its foreign key) while its accept waits
    for the thread's outbox lock to store the "Queued" note; the drain answering the thread held that lock and
    then locked the record FOR UPDATE to close its event: PostgreSQL killed one of them as a deadlock (the
    accept answered the platform 500, or the request failed with "Something went wrong")."""
    one, two = replicas
    async with one.db.session() as session:
        record, _ = await threads.create(session, THREAD, utcnow())
    inserted, answer_locked = asyncio.Event(), asyncio.Event()

    async def accept() -> None:  # accept_message's order: the event (its foreign key), then the note
        async with one.db.session(urgent=True) as session:
            await Orchestrator._claim(session, "playground", "e-1", "message", THREAD, "bob", "run uptime",
                                      {"addressed": True}, record.id, "c-1", utcnow())
            inserted.set()
            await answer_locked.wait()
            await one.outbox.enqueue(session, THREAD, Message.text(QUEUED, tone="progress"))

    async def answer() -> None:  # _answer's order: the reply (the thread's outbox lock), then _mark_done
        await inserted.wait()
        async with two.db.session() as session:
            await two.outbox.enqueue_claimed(session, THREAD, Message.text(RESULT))
            answer_locked.set()
            await until(_waiting_for_a_lock(two.db), "the accept waiting for the thread's outbox lock")
            await threads.lock_status(session, record.id)  # type: ignore[arg-type]

    accepting = asyncio.create_task(accept())
    await answer()
    await accepting


def _waiting_for_a_lock(db: Database) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        async with db.read() as session:
            return bool((await session.exec(text(  # type: ignore[call-overload]
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"))).one()[0])
    return check


@pytest.mark.postgres
async def test_a_take_an_accept_and_a_stalled_drain_do_not_deadlock(
        replicas: tuple[Replica, Replica], monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica's ``take`` of a thread whose lease ran out updates its record, then reads it locked; a new
    event's foreign key holds KEY SHARE on the record while its accept waits for the thread's outbox lock; the
    drain that stalled past its lease holds that lock and waits for the record. With FOR UPDATE, the take's
    read waited for the accept: a cycle of three, and PostgreSQL killed one (a 500 to the platform, say)."""
    one, two = replicas
    async with one.db.session() as session:
        record, _ = await threads.create(session, THREAD, utcnow(), ("stalled", utcnow() - timedelta(minutes=1)))
    updated, inserted = asyncio.Event(), asyncio.Event()
    reading = threads.Leases._next_or_release

    async def read_after_the_accept(self: threads.Leases, session: Transaction, record_id: int) -> Any:
        updated.set()
        await inserted.wait()
        await until(_waiting_for_a_lock(one.db), "the accept waiting for the thread's outbox lock")
        return await reading(self, session, record_id)

    monkeypatch.setattr(threads.Leases, "_next_or_release", read_after_the_accept)
    drain_stored, drain_may_close = asyncio.Event(), asyncio.Event()

    async def stalled_drain() -> None:  # its reply stored (the outbox lock), then it closes its event
        async with one.db.session() as session:
            await one.outbox.enqueue_claimed(session, THREAD, Message.text(RESULT))
            drain_stored.set()
            await drain_may_close.wait()
            await threads.lock_status(session, record.id)  # type: ignore[arg-type]

    async def accept() -> None:
        await updated.wait()
        async with one.db.session(urgent=True) as session:
            await Orchestrator._claim(session, "playground", "e-1", "message", THREAD, "bob", "run uptime",
                                      {"addressed": True}, record.id, "c-1", utcnow())
            inserted.set()
            await one.outbox.enqueue(session, THREAD, Message.text(QUEUED, tone="progress"))

    drain = asyncio.create_task(stalled_drain())
    await drain_stored.wait()
    taking = asyncio.create_task(threads.Leases(two.db, "replica-2", 30).take(record.id))  # type: ignore[arg-type]
    accepting = asyncio.create_task(accept())
    await updated.wait()
    await inserted.wait()
    drain_may_close.set()
    await asyncio.gather(drain, taking, accepting)
