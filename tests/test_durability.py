"""``Database.session(durable=...)``: which commits wait for the disk (the output-commit rule)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import select

from bot.app import Baton
from bot.messages import InboundMessage
from bot.settings import Settings
from storage.db import Database, when_committed
from storage.migrate import upgrade
from storage.models import ThreadRecord
from storage.sqlite_inline import SQLiteWriter


async def _commit_level(database: Database, durable: bool) -> str:
    """PostgreSQL: the session's ``synchronous_commit``."""
    async with database.session(durable=durable) as session:
        return str((await session.exec(text("SHOW synchronous_commit"))).one()[0])  # type: ignore[call-overload]


async def _wal_syncs(database: Database, *durables: bool) -> int:
    """SQLite: how many syncs of the WAL the writes (made at once) took."""
    before = database.sqlite_writer.syncs

    async def write(durable: bool) -> None:
        async with database.session(durable=durable) as session:
            session.add(ThreadRecord(platform="p", channel="c", thread=uuid.uuid4().hex, status="idle"))

    await asyncio.gather(*(write(durable) for durable in durables))
    return database.sqlite_writer.syncs - before


async def test_writes_wait_for_the_disk_unless_they_say_nothing_is_seen_before_a_later_durable_write(
        database: Database) -> None:
    if not database.is_sqlite:
        assert await _commit_level(database, durable=True) == "on"
        assert await _commit_level(database, durable=False) == "off"
        assert await _commit_level(database, durable=True) == "on"  # the lazy setting does not leak into durable writes
        return
    assert await _wal_syncs(database, True) == 1
    assert await _wal_syncs(database, False) == 0
    # Durable writes committed together share one sync, and it covers a lazy one committed among them.
    assert await _wal_syncs(database, True, False, True, True) == 1
    assert await _wal_syncs(database, True) == 1


async def test_a_durable_write_returns_only_after_its_sync(sqlite_url: str, monkeypatch) -> None:
    """SQLite: nothing may follow a durable write (an acknowledgement, a command) before the disk has it.
    (PostgreSQL's own commit waits for its WAL flush: synchronous_commit=on, tested above.)"""
    upgrade(sqlite_url)
    database = Database(sqlite_url)
    order: list[str] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        order.append("sync")
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    try:
        async with database.session() as session:
            session.add(ThreadRecord(platform="p", channel="c", thread="durable", status="idle"))
        order.append("returned")
    finally:
        await database.dispose()
    assert order == ["sync", "returned"]


async def test_a_write_that_need_not_wait_for_the_disk_survives_the_process_being_killed(database: Database) -> None:
    """Only a power loss or an OS crash can take a non-durable commit; a killed process cannot."""
    script = textwrap.dedent(f"""
        import asyncio, os, signal
        from storage.db import Database
        from storage.models import ThreadRecord

        async def main():
            database = Database({database.url!r})
            async with database.session(durable=False) as session:
                session.add(ThreadRecord(platform="p", channel="c", thread="killed", status="idle"))
            os.kill(os.getpid(), signal.SIGKILL)  # no clean shutdown, no dispose

        asyncio.run(main())
    """)
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert finished.returncode == -9, finished.stderr.decode()
    async with database.read() as session:
        assert (await session.exec(select(ThreadRecord.thread))).all() == ["killed"]


def test_a_sync_cut_off_by_a_stopped_loop_does_not_stall_the_next_durable_write(sqlite_url: str) -> None:
    """A loop that stops between a durable commit and its sync (it never runs the sync) leaves a waiter
    behind; the next durable write, on another loop, schedules a sync of its own instead of waiting for it."""
    upgrade(sqlite_url)
    database = Database(sqlite_url)
    writer = database.sqlite_writer

    async def write(thread: str) -> None:
        async with database.session() as session:
            session.add(ThreadRecord(platform="p", channel="c", thread=thread, status="idle"))

    async def until_waiting() -> None:
        while not writer._waiting:  # committed; its sync would come next
            await asyncio.sleep(0)

    stopped = asyncio.new_event_loop()
    real_call_soon = stopped.call_soon

    def call_soon(callback, *args, **kwargs):  # the loop stops before the sync it was given
        return None if callback == writer._sync_waiting else real_call_soon(callback, *args, **kwargs)

    stopped.call_soon = call_soon  # type: ignore[method-assign]
    try:
        cut_off = stopped.create_task(write("cut off"))
        stopped.run_until_complete(until_waiting())
        cut_off.cancel()
        stopped.run_until_complete(asyncio.gather(cut_off, return_exceptions=True))
    finally:
        stopped.close()
    assert writer._waiting  # left behind: nothing will resolve it
    asyncio.run(asyncio.wait_for(write("next"), 10))
    asyncio.run(database.dispose())


async def test_work_started_by_a_commit_runs_before_its_sync_and_never_after_a_rollback(database: Database,
                                                                                         monkeypatch) -> None:
    """``when_committed``: right after the commit, before the durable write waits for the disk (SQLite's
    sync of the WAL; PostgreSQL's commit waits for its own flush); a transaction rolled back runs none."""
    order: list[str] = []
    if database.is_sqlite:
        _record_syncs(monkeypatch, database.sqlite_writer, order)
    async with database.session() as session:
        session.add(ThreadRecord(platform="p", channel="c", thread="committed", status="idle"))
        when_committed(session, lambda: order.append("started"))
        order.append("written")
    order.append("returned")
    assert order == ["written", "started", "sync", "returned"] if database.is_sqlite else \
        ["written", "started", "returned"]

    with pytest.raises(RuntimeError):
        async with database.session() as session:
            session.add(ThreadRecord(platform="p", channel="c", thread="rolled back", status="idle"))
            when_committed(session, lambda: order.append("never"))
            raise RuntimeError("rolled back")
    assert "never" not in order
    async with database.read() as session:
        threads = (await session.exec(select(ThreadRecord.thread))).all()
    assert list(threads) == ["committed"]


async def test_a_request_starts_before_its_event_reaches_the_disk_and_is_acknowledged_only_after(
        tmp_path: Path, config_path: Path, counter: Path, monkeypatch) -> None:
    """The drain starts at the event's commit, and the acknowledgement waits for a sync made after it."""
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'd.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        order: list[str] = []
        real_drain = baton.orchestrator._drain_now

        async def drain_now(record_id: int) -> None:
            order.append("drain")
            await real_drain(record_id)

        _record_syncs(monkeypatch, baton.db.sqlite_writer, order)
        monkeypatch.setattr(baton.orchestrator, "_drain_now", drain_now)
        accepted = await asyncio.wait_for(baton.accept_message(InboundMessage(
            platform="playground", channel="general", thread="1", event_id="e1", user="alice", text="run uptime")), 20)
        order.append("ack")
        assert accepted.status == "accepted"
        assert order[:3] == ["drain", "sync", "ack"]

        async def replied() -> None:
            while not await _thread_done(baton, "1"):
                await baton.outbox.wait("durability-test-never-woken", 0.05)

        await asyncio.wait_for(replied(), 20)
        assert counter.read_text().splitlines() == ["uptime"]


def _record_syncs(monkeypatch: pytest.MonkeyPatch, writer: SQLiteWriter, order: list[str]) -> None:
    """Append "sync" to ``order`` at each sync of ``writer``'s WAL."""
    real_sync_wal = writer.sync_wal

    def sync_wal() -> None:
        order.append("sync")
        real_sync_wal()

    monkeypatch.setattr(writer, "sync_wal", sync_wal)


async def _thread_done(baton: Baton, thread: str) -> bool:
    async with baton.db.read() as session:
        record = (await session.exec(select(ThreadRecord).where(ThreadRecord.thread == thread))).first()
    return record is not None and record.status == "done"
