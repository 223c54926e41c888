"""A lot of data: what a user sees stays bounded and answers in time with thousands of rows (a scale hunt).

Rows are inserted directly (Core ``INSERT``s of many rows at once), not made through requests. No test times
anything (``bench/`` does); each asserts on the shape of the answer, or on how the work grows with the rows."""

from __future__ import annotations

import sqlite3
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from types import FrameType
from typing import Any

from sqlalchemy import create_engine, event, insert, select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from bot import kit
from bot.config import BatonConfig
from bot.digest_stats import collect
from bot.registry import GraphRegistry
from bot.runtime import RunServices, Services
from storage.db import Database, async_url, sqlite_path, sync_url
from storage.models import Approval, InboundEvent, Run, ThreadRecord, utcnow
from tests.support import ON_SQLITE_ONLY


def seed_waiting_threads(database_url: str, count: int, *, channel: str = "general", first: int = 1000) -> None:
    """``count`` threads of ``channel`` waiting at an approval card: thread record, request event, run, card."""
    engine = create_engine(sync_url(database_url))
    now = utcnow()
    try:
        with engine.begin() as connection:
            threads = [str(first + i) for i in range(count)]
            asked = [now - timedelta(hours=3) + timedelta(seconds=first + i) for i in range(count)]  # by thread number
            connection.execute(insert(ThreadRecord), [
                {"platform": "playground", "workspace": "", "channel": channel, "thread": thread,
                 "lg_thread_id": uuid.uuid4().hex, "graph": "runbook", "status": "waiting", "title": f"run restart {i}",
                 "requested_by": "alice", "created_at": at, "updated_at": at}
                for i, (thread, at) in enumerate(zip(threads, asked, strict=True))])
            records = dict(connection.execute(select(ThreadRecord.thread, ThreadRecord.id).where(
                ThreadRecord.channel == channel, ThreadRecord.thread.in_(threads))).all())  # type: ignore[attr-defined]
            connection.execute(insert(InboundEvent), [
                {"platform": "playground", "event_id": f"seed-{channel}-{thread}", "kind": "message",
                 "channel": channel, "thread": thread, "user": "alice", "text": "@baton run restart", "payload": {},
                 "status": "done",
                 "thread_record_id": records[thread], "correlation_id": uuid.uuid4().hex, "received_at": at}
                for thread, at in zip(threads, asked, strict=True)])
            events = dict(connection.execute(select(InboundEvent.thread, InboundEvent.id).where(
                InboundEvent.event_id.like(f"seed-{channel}-%"))).all())  # type: ignore[attr-defined]
            connection.execute(insert(Run), [
                {"thread_record_id": records[thread], "inbound_id": events[thread], "platform": "playground",
                 "channel": channel, "graph": "runbook", "status": "waiting", "requested_by": "alice",
                 "input_text": "run restart", "correlation_id": uuid.uuid4().hex, "started_at": at}
                for thread, at in zip(threads, asked, strict=True)])
            runs = dict(connection.execute(select(Run.thread_record_id, Run.id).where(
                Run.thread_record_id.in_(records.values()))).all())  # type: ignore[attr-defined]
            connection.execute(insert(Approval), [
                {"id": uuid.uuid4().hex[:16], "run_id": runs[records[thread]], "thread_record_id": records[thread],
                 "interrupt_id": uuid.uuid4().hex, "graph": "runbook", "summary": f"Restart web ({thread})",
                 "details": {}, "approvers": ["bob", "carol"], "requested_by": "alice", "created_at": at}
                for thread, at in zip(threads, asked, strict=True)])
    finally:
        engine.dispose()


def run_services(database: Database, channel: str = "general") -> RunServices:
    """The context of a ``status`` asked at the top of ``channel`` (a run of its own)."""
    services = Services(db=database, config=BatonConfig(), registry=GraphRegistry([]), approval_expiry=86400.0)
    request = kit.Request(platform="playground", channel=channel, thread="1", user="dave", text="status")
    return RunServices(services, request, run_id=1)


async def python_calls(work: Callable[[], Awaitable[Any]]) -> tuple[Any, int]:
    """What ``work`` returned, and how many Python functions this thread called meanwhile: a count of the work done,
    the same on any machine, where a time would measure the machine."""
    calls = 0

    def count(_frame: FrameType, event: str, _arg: Any) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        result = await work()
    finally:
        sys.setprofile(None)
    return result, calls


async def test_status_work_grows_with_the_waiting_threads_not_with_their_square(
        database: Database, database_url: str) -> None:
    """``status`` in a channel with 2,000 waiting approval cards blocked Baton's event loop for 8 s (4,000: 47 s,
    and every channel's requests, clicks and the playground's page waited): each thread's cards were looked for
    among all the channel's cards, and each thread's people again. Twice the threads is now about twice the work."""
    seed_waiting_threads(database_url, 150, first=1000)
    small, small_calls = await python_calls(run_services(database).channel_activity)
    seed_waiting_threads(database_url, 450, first=5000)
    large, large_calls = await python_calls(run_services(database).channel_activity)
    assert (len(small), len(large)) == (150, 600)
    assert all(len(thread["approvals"]) == 1 for thread in large)
    assert large[0]["approvals"][0]["summary"] == "Restart web (1000)"  # the longest-waiting first, its own card
    assert large_calls < 6 * small_calls, (small_calls, large_calls)  # 4 times the threads; the square: 16 times


@ON_SQLITE_ONLY
async def test_a_digest_reads_the_approvals_decided_in_its_window_not_every_decided_one(
        database: Database, database_url: str) -> None:
    """The approvals a digest counts and lists as granted or rejected are those decided in its window; they were
    found by their status alone, so every approval ever decided was read (with its run) for each digest: with
    1,000,000 runs and 500,000 decided cards, a day's digest took 1.4-2.8 s against 30 ms without cards (the
    bench's data has none), and grew with the whole history. SQLite's plan now seeks the window's range."""
    seed_waiting_threads(database_url, 3)
    engine = create_engine(sync_url(database_url))
    now = utcnow()
    with engine.begin() as connection:  # two of the three decided, an hour ago
        connection.execute(Approval.__table__.update().where(Approval.summary != "Restart web (1002)").values(
            status="approved", decided_by="bob", decided_at=now - timedelta(hours=1)))
    engine.dispose()
    statements: list[tuple[str, tuple[Any, ...]]] = []
    reader = create_async_engine(async_url(database_url))

    @event.listens_for(reader.sync_engine, "before_cursor_execute")
    def keep(_connection: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        statements.append((statement, tuple(parameters)))

    try:
        async with AsyncSession(reader) as session:
            stats = await collect(session, "playground", "general", now - timedelta(days=1), now, [], now)
    finally:
        await reader.dispose()
    assert (stats["approved_count"], len(stats["decided"]), stats["waiting_count"]) == (2, 2, 1)
    with sqlite3.connect(sqlite_path(database_url)) as connection:
        plans = [[step[3] for step in connection.execute("EXPLAIN QUERY PLAN " + statement, parameters)
                  if "approvals" in step[3]]
                 for statement, parameters in statements if "decided_at >=" in " ".join(statement.split())]
    assert len(plans) == 2  # the counts, the ten listed
    for steps in plans:
        assert steps and all("decided_at>?" in step for step in steps), steps
