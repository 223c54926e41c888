"""A claim's work must not grow with its platform's backlog.

10,000 approval cards expiring together in one channel store 20,000 housekeeping messages there, which Slack takes
at one a second. Each claim (one a second, on SQLite run on the event loop, the whole bot waiting) read every unsent
row of the platform, checked each for an earlier row of its thread, sorted them all by id, and on a paced platform
read on page after page past the rows of the channel it had given its one slot: 13 / 69 / 467 ms a claim at 200 /
2,000 / 8,000 rows in one channel (the housekeeping's: 21 / 112 / 686 ms), 8.5 s on PostgreSQL at 2,000 before
ANALYZE; the idle poll while that channel was paced out read them all too. Counted here as work, not time: on SQLite
the virtual machine's steps (a progress handler on the connections the claim reads and writes on), on PostgreSQL the
rows each of its SELECTs read (EXPLAIN ANALYZE of each, as run, in its transaction).
"""

from __future__ import annotations

import json
from datetime import timedelta
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import delete, event, insert, update
from sqlmodel import select

from bot.messages import Location, Message
from bot.outbox import Outbox, _row
from storage.db import Database, prepared
from storage.models import ChannelPace, OutboxMessage

SLACK = "slack"
BUSY, QUIET = "ops", "random"
SMALL, LARGE = 40, 4000
STEPS = 50  # SQLite's progress handler is called every STEPS instructions of its virtual machine
_ANY_ROW = prepared(select(OutboxMessage.id).limit(1))


@dataclass
class Work:
    units: int = 0


def _plan_rows(node: dict[str, Any]) -> int:
    """The rows a plan node and the nodes under it produced or read and threw away, over all their loops."""
    read = node.get("Actual Rows", 0) + sum(node.get(key, 0) for key in (
        "Rows Removed by Filter", "Rows Removed by Index Recheck", "Rows Removed by Join Filter"))
    return int(read * node.get("Actual Loops", 1)) + sum(_plan_rows(child) for child in node.get("Plans", ()))


@asynccontextmanager
async def _counted(database: Database) -> AsyncIterator[Work]:
    """The work of the statements run inside: SQLite's VM steps, or PostgreSQL's rows read by its SELECTs."""
    work = Work()
    if database.is_sqlite:
        def tick() -> int:
            work.units += STEPS
            return 0
        await database.fetch(_ANY_ROW, {})  # opens ``fetch``'s read connection, as a claim does
        connections = [database._reader, database.sqlite_writer.connection]  # noqa: SLF001 - what the claim uses
        for connection in connections:
            connection.set_progress_handler(tick, STEPS)  # type: ignore[union-attr]
        try:
            yield work
        finally:
            for connection in connections:
                connection.set_progress_handler(None, STEPS)  # type: ignore[union-attr]
        return

    def explained(conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if not statement.lstrip().upper().startswith(("SELECT", "WITH")):
            return
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
            plan = cursor.fetchone()[0]
        finally:
            cursor.close()
        plan = json.loads(plan) if isinstance(plan, str) else plan
        work.units += _plan_rows(plan[0]["Plan"])

    engine = database.read_engine.sync_engine
    event.listen(engine, "before_cursor_execute", explained)
    try:
        yield work
    finally:
        event.remove(engine, "before_cursor_execute", explained)


def _housekeeping(count: int) -> Iterator[dict[str, Any]]:
    """``count`` rows of expired cards in the busy channel: each card's edit, then its thread's notice."""
    for number in range(count // 2):
        where = Location(platform=SLACK, workspace="", channel=BUSY, thread=f"{number}.0")
        yield _row(where, Message.text(f"card {number} expired"), kind="update", housekeeping=True)
        yield _row(where, Message.text(f"request {number} expired"), housekeeping=True)


def _answers(count: int) -> Iterator[dict[str, Any]]:
    """``count`` answers waiting in the busy channel, each in a thread of its own."""
    for number in range(count):
        yield _row(Location(platform=SLACK, workspace="", channel=BUSY, thread=f"{number}.1"),
                   Message.text(f"answer {number}"))


async def _store(database: Database, rows: list[dict[str, Any]]) -> None:
    async with database.session() as session:
        for start in range(0, len(rows), 500):
            await session.exec(insert(OutboxMessage.__table__), params=rows[start:start + 500])  # type: ignore[attr-defined,call-overload]


@dataclass
class Claims:
    first: list[str]  # what a paced claim took, the busy channel's backlog stored
    first_work: int
    idle_work: int  # the next claim's, every channel with a waiting message paced out
    next: list[str]  # what the claim took once the channels' next slots came
    next_work: int


async def _claims(database: Database, backlog: list[dict[str, Any]]) -> Claims:
    """Store ``backlog`` in the busy channel, then an answer in it and one in the quiet channel; claim as Slack's
    delivery loop does (one message a channel a second), count each claim's work."""
    outbox = Outbox(database, worker="slack-loop")
    await _store(database, backlog)
    async with database.session() as session:
        await outbox.enqueue(session, Location(platform=SLACK, workspace="", channel=BUSY, thread="fresh.0"),
                             Message.text("answer in the busy channel"))
        await outbox.enqueue(session, Location(platform=SLACK, workspace="", channel=QUIET, thread="1.0"),
                             Message.text("answer in the quiet channel"))
    await outbox.claim("warm-up", outbox.worker, pace_seconds=1.0)  # the clock read, the statements compiled

    async with _counted(database) as work:
        first = await outbox.claim(SLACK, outbox.worker, pace_seconds=1.0)
    first_work = work.units
    for delivery in first:
        await outbox.delivered(delivery.id, f"ts-{delivery.id}")
    async with database.session() as session:  # the slots just taken, however long that claim took
        await session.exec(update(ChannelPace).values(  # type: ignore[call-overload]
            next_at=database.now() + timedelta(seconds=60)))
    async with _counted(database) as work:
        idle = await outbox.claim(SLACK, outbox.worker, pace_seconds=1.0)
    assert idle == [], (first, idle)  # every channel with something to send was given its slot a moment ago
    idle_work = work.units
    async with database.session() as session:  # a second later
        await session.exec(update(ChannelPace).values(next_at=database.now()))  # type: ignore[call-overload]
    async with _counted(database) as work:
        following = await outbox.claim(SLACK, outbox.worker, pace_seconds=1.0)
    return Claims([delivery.message.plain_text() for delivery in first], first_work, idle_work,
                  [delivery.message.plain_text() for delivery in following], work.units)


@pytest.mark.parametrize("backlog", [_housekeeping, _answers])
async def test_a_paced_claim_and_the_idle_poll_do_no_more_work_for_a_backlog_of_thousands(
        database: Database, backlog: Any) -> None:
    """The same claims with 40 and with 4,000 rows waiting in one channel: the same rows taken, and (well within
    a factor of 3) the same work; before, the work grew with the backlog (SQLite 14x to 60x, PostgreSQL more)."""
    small = await _claims(database, list(backlog(SMALL)))
    async with database.session() as session:
        await session.exec(update(OutboxMessage).values(status="sent"))  # type: ignore[call-overload]
        await session.exec(delete(ChannelPace))  # type: ignore[call-overload]
    large = await _claims(database, list(backlog(LARGE)))

    for claims in (small, large):  # the quiet channel is not held up, whatever waits in the busy one
        if backlog is _housekeeping:  # the answer first, then the housekeeping drains
            assert sorted(claims.first) == ["answer in the busy channel", "answer in the quiet channel"]
            assert claims.next == ["card 0 expired"]
        else:  # answers in the order they were stored
            assert sorted(claims.first) == ["answer 0", "answer in the quiet channel"]
            assert claims.next == ["answer 1"]
    for what in ("first_work", "idle_work", "next_work"):
        assert getattr(large, what) < 3 * getattr(small, what), (what, small, large)


async def test_an_unpaced_claim_takes_the_first_due_rows_of_every_channel_in_order(database: Database) -> None:
    """Unpaced (Discord), a claim takes several rows of a channel: each channel's next is read once its first is
    taken, and the claim holds the platform's first due rows, answers first, each thread's first alone."""
    outbox = Outbox(database, worker="me")
    stored = [(BUSY, "1", "a1", False), (QUIET, "1", "b1", False), (BUSY, "2", "a2", False),
              (BUSY, "1", "a1 again", False), (BUSY, "3", "tidying", True), (QUIET, "2", "b2", False)]
    async with database.session() as session:
        for channel, thread, text, housekeeping in stored:
            await outbox.enqueue(session, Location(platform="discord", workspace="", channel=channel, thread=thread),
                                 Message.text(text), housekeeping=housekeeping)
    assert [d.message.plain_text() for d in await outbox.claim("discord", "me", limit=3)] == ["a1", "b1", "a2"]
    assert [d.message.plain_text() for d in await outbox.claim("discord", "me")] == ["b2", "tidying"]
