"""``storage.sqlite_inline``: SQLite on the event loop thread, never blocking it while the database is locked."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import func, update
from sqlmodel import select

from storage.db import Database
from storage.migrate import upgrade
from storage.models import ThreadRecord


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    url = f"sqlite:///{tmp_path / 'baton.db'}"
    upgrade(url)
    database = Database(url)
    yield database
    await database.dispose()


@pytest.mark.asyncio
async def test_a_write_waits_for_another_connections_lock_without_stalling_the_loop(database: Database,
                                                                                    tmp_path: Path) -> None:
    async with database.session() as session:
        session.add(ThreadRecord(platform="p", channel="c", thread="t", status="idle"))

    other = sqlite3.connect(tmp_path / "baton.db", isolation_level=None)  # another process, say
    other.execute("BEGIN IMMEDIATE")  # holds SQLite's write lock
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    async def write() -> None:
        async with database.session() as session:
            await session.exec(update(ThreadRecord).values(status="running"))  # type: ignore[call-overload]

    ticker = asyncio.create_task(tick())
    writer = asyncio.create_task(write())
    while ticks < 50:  # the loop keeps turning while the write waits for the lock
        await asyncio.sleep(0.001)
    assert not writer.done()
    async with database.read() as session:  # and readers are not blocked either (WAL)
        assert (await session.exec(select(ThreadRecord.status))).one() == "idle"

    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(writer, 10)
    ticker.cancel()
    async with database.read() as session:
        assert (await session.exec(select(ThreadRecord.status))).one() == "running"
        assert (await session.exec(select(func.count()).select_from(ThreadRecord))).one() == 1


@pytest.mark.asyncio
async def test_a_failed_transaction_leaves_nothing_behind(database: Database, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        async with database.session() as session:
            session.add(ThreadRecord(platform="p", channel="c", thread="t", status="idle"))
            await session.flush()
            raise RuntimeError("the work failed half-way")
    async with database.read() as session:
        assert (await session.exec(select(func.count()).select_from(ThreadRecord))).one() == 0
    with closing(sqlite3.connect(tmp_path / "baton.db")) as connection:  # and the file's lock is free
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
