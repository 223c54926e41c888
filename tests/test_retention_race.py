"""Retention deleting a long-idle thread record while a message for that chat thread is being accepted
(PostgreSQL: SQLite has one writer, so the two never overlap there).

The accept found the record, then stored its event with a foreign key to it: when retention's deletion
committed in between, the insert failed and the platform got a 500 (Discord never delivers again: the
message was lost). Now the accept holds the record it found (``threads.find``, KEY SHARE) and retention
looks again once it has its lock: whichever comes first, the message is accepted and answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import select

from bot import threads
from bot.app import Baton
from bot.messages import InboundClick, InboundMessage, Location
from bot.retention import Retention
from bot.settings import Settings
from storage.db import Database, Transaction
from storage.models import Approval, AuditEntry, InboundEvent, OutboxMessage, ThreadRecord
from tests.support import until
from tests.test_retention import DAYS, OLD, RECENT, insert, run, thread

CHAT = {"platform": "playground", "workspace": "", "channel": "general"}


class Hold:
    """A point where one side stops, its transaction open, until the test lets it go on."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    async def __call__(self) -> None:
        self.reached.set()
        await self.go.wait()


class RetentionHeldBeforeCommit(Retention):
    """Stops once its deletion from ``table`` has run, before that transaction commits."""

    def __init__(self, db: Database, hold: Hold, table: str = "thread_records") -> None:
        super().__init__(db, DAYS)
        self.hold, self.table = hold, table

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[Transaction]:
        async with super()._writing() as session:
            yield session
            if self._table == self.table:
                await self.hold()


@pytest.fixture
async def baton(database_url: str, config_path: Path) -> AsyncIterator[Baton]:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite has one writer: retention's deletion and an accept never overlap")
    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as started:
        yield started


def old_thread(database_url: str) -> int:
    """A long-idle record of chat thread t1, which retention deletes (a recent one, t2, is the newest)."""
    old, _ = insert(database_url, thread(1, **CHAT, thread="t1"), thread(2, **CHAT, thread="t2", updated_at=RECENT))
    return int(old)


def message() -> InboundMessage:
    return InboundMessage(platform="playground", channel="general", thread="t1", event_id="e1", user="dave",
                          text="help", addressed=True)


async def waiting_for_a_lock(db: Database) -> bool:
    async with db.read() as session:
        return bool((await session.exec(text(  # type: ignore[call-overload]
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"))).one()[0])


async def answered(baton: Baton) -> tuple[InboundEvent, list[int]]:
    """The message's event (stored once, with its audit entry) once handled and its reply delivered: (event, the
    records of chat thread t1)."""
    async def done() -> Any:
        async with baton.db.read() as session:
            event = (await session.exec(select(InboundEvent).where(InboundEvent.event_id == "e1"))).one()
            received = (await session.exec(select(AuditEntry.id).where(
                AuditEntry.correlation_id == event.correlation_id, AuditEntry.kind == "request.received"))).all()
            replies = (await session.exec(select(OutboxMessage.status).where(
                OutboxMessage.correlation_id == event.correlation_id))).all()
            records = (await session.exec(select(ThreadRecord.id).where(ThreadRecord.thread == "t1"))).all()
        assert len(received) == 1
        return (event, list(records)) if event.status == "done" and replies and set(replies) == {"sent"} else None

    return await until(done, "the message handled and its reply delivered")


async def test_a_message_waiting_for_the_deletion_of_its_thread_goes_to_a_new_record(
        baton: Baton, database_url: str) -> None:
    old = old_thread(database_url)
    hold = Hold()
    deleting = asyncio.create_task(RetentionHeldBeforeCommit(baton.db, hold).delete_expired())
    await hold.reached.wait()  # the record is deleted, not yet committed
    accepting = asyncio.create_task(baton.accept_message(message()))
    await until(lambda: waiting_for_a_lock(baton.db), "the accept waiting for the deletion")
    hold.go.set()

    assert await deleting == {"thread_records": 1}
    accepted = await accepting
    assert accepted.status == "accepted", accepted
    event, records = await answered(baton)
    assert old not in records and records == [event.thread_record_id]  # one new record, the event under it


async def test_a_deletion_waiting_for_a_message_being_accepted_leaves_its_thread(
        baton: Baton, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    old = old_thread(database_url)
    hold, real_find = Hold(), threads.find

    async def find_then_hold(session: Transaction, location: Location) -> ThreadRecord | None:
        found = await real_find(session, location)
        if not hold.reached.is_set():
            await hold()  # the accept has found the record, and not stored its event yet
        return found

    monkeypatch.setattr(threads, "find", find_then_hold)
    accepting = asyncio.create_task(baton.accept_message(message()))
    await hold.reached.wait()
    deleting = asyncio.create_task(Retention(baton.db, DAYS).delete_expired())

    async def deletion_waits_or_is_done() -> bool:
        return deleting.done() or await waiting_for_a_lock(baton.db)

    await until(deletion_waits_or_is_done, "retention waiting for the accept (or done)")
    hold.go.set()

    accepted = await accepting
    assert accepted.status == "accepted", accepted
    assert await deleting == {}  # the record got an event: it stays, and nothing else was due
    event, records = await answered(baton)
    assert records == [old] and event.thread_record_id == old


async def test_a_message_does_not_wait_for_a_drain_holding_its_thread(baton: Baton, database_url: str) -> None:
    """The accept's hold on the record is KEY SHARE, which waits for a deletion only: a drain holding the record
    (NO KEY UPDATE, ``threads.lock_status``) while it answers the thread does not hold the accept up."""
    old = old_thread(database_url)
    async with baton.db.session() as session:
        assert await threads.lock_status(session, old) == "done"
        accepting = asyncio.create_task(baton.accept_message(message()))

        async def accepted_or_waiting() -> bool:
            return accepting.done() or await waiting_for_a_lock(baton.db)

        await until(accepted_or_waiting, "the accept done (or waiting for the drain)")
        assert accepting.done()
    assert (await accepting).status == "accepted"
    event, records = await answered(baton)
    assert records == [old] and event.thread_record_id == old


# -- clicks: retention deletes an approval only with its finished run (never a pending one), and its thread after.


def old_decided_card(database_url: str) -> tuple[int, str]:
    """Chat thread t1's long-idle record with an old run and its card, decided long ago (a newer run is the
    newest, which always stays): retention deletes the card, the run and the record in one pass."""
    old, recent = insert(database_url, thread(1, **CHAT, thread="t1"), thread(2, **CHAT, thread="t2", updated_at=RECENT))
    old_run, _ = insert(database_url, run(old, platform="playground", channel="general"),
                        run(recent, platform="playground", channel="general", started=RECENT))
    [card] = insert(database_url, Approval(run_id=old_run, thread_record_id=old, interrupt_id="i", graph="runbook",
                                           summary="restart?", requested_by="dave", status="approved", created_at=OLD))
    return int(old), str(card)


def click(card: str) -> InboundClick:
    return InboundClick(platform="playground", channel="general", thread="t1", event_id="c1", user="bob",
                        approval_id=card, action="approve")


async def click_answered(baton: Baton) -> tuple[InboundEvent, str]:
    """The click's event once closed, and the text of its (ephemeral) answer."""
    async def done() -> Any:
        async with baton.db.read() as session:
            event = (await session.exec(select(InboundEvent).where(InboundEvent.event_id == "c1"))).one()
            notes = (await session.exec(select(OutboxMessage).where(
                OutboxMessage.correlation_id == event.correlation_id))).all()
        return (event, str(notes[0].payload)) if event.status == "done" and len(notes) == 1 else None

    return await until(done, "the click answered")


async def test_a_click_on_a_card_being_deleted_is_told_it_is_unknown(baton: Baton, database_url: str) -> None:
    """Retention deleting the card's run, its transaction open: the click waits for it, then finds no card."""
    record, card = old_decided_card(database_url)
    hold = Hold()
    deleting = asyncio.create_task(RetentionHeldBeforeCommit(baton.db, hold, table="runs").delete_expired())
    await hold.reached.wait()
    clicking = asyncio.create_task(baton.accept_click(click(card)))

    async def clicked_or_waiting() -> bool:
        return clicking.done() or await waiting_for_a_lock(baton.db)

    await until(clicked_or_waiting, "the click waiting for the deletion (or accepted)")
    hold.go.set()
    assert (await clicking).status == "accepted"
    assert await deleting == {"runs": 1, "thread_records": 1}
    event, answer = await click_answered(baton)
    assert event.thread_record_id is None and event.outcome == "unknown approval"
    assert "don't know that approval" in answer, answer
    async with baton.db.read() as session:
        assert (await session.exec(select(ThreadRecord.id).where(ThreadRecord.id == record))).first() is None


async def test_a_click_read_its_card_before_retention_deleted_it(baton: Baton, database_url: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The click has read its card, and not stored its event yet, when retention runs a whole pass (card, run,
    the thread record): its event named a record gone by then, and the click got a 500."""
    record, card = old_decided_card(database_url)
    hold, claim = Hold(), baton.orchestrator._claim

    async def hold_then_claim(*args: Any, **kwargs: Any) -> Any:
        await hold()
        return await claim(*args, **kwargs)

    monkeypatch.setattr(baton.orchestrator, "_claim", hold_then_claim)
    clicking = asyncio.create_task(baton.accept_click(click(card)))
    await hold.reached.wait()
    deleting = asyncio.create_task(Retention(baton.db, DAYS).delete_expired())

    async def deletion_waits_or_is_done() -> bool:
        return deleting.done() or await waiting_for_a_lock(baton.db)

    await until(deletion_waits_or_is_done, "retention waiting for the click (or done)")
    hold.go.set()
    assert (await clicking).status == "accepted"
    assert await deleting == {"runs": 1}  # the card and its run; the record got the click's event and stays
    event, answer = await click_answered(baton)
    # Its drain read the card before or after retention's commit: decided already, or gone.
    assert event.thread_record_id == record and ("Already approved" in answer or "can't find the run" in answer), answer
