"""PostgreSQL restarted or failed over under a running Baton: every pooled connection dies at once."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from sqlmodel import select

from storage.checkpointer import open_checkpointer
from storage.db import Database
from storage.migrate import upgrade
from storage.models import ThreadRecord
from tests.support import PG_ADMIN_URL

pytestmark = pytest.mark.postgres


def terminate_every_connection(url: str) -> None:
    """What a restart or a failover does to Baton's connections; returns once they are all gone."""
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        killed = [row[0] for row in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (database,))]
        assert killed, "nothing to terminate: the test holds no pooled connection"
        for pid in killed:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 30
        while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (killed,)).fetchone() != (0,):
            assert time.monotonic() < deadline, "the terminated connections did not go away"
            time.sleep(0.05)


async def test_checkpoints_are_read_and_written_after_every_connection_was_terminated(postgres_url: str) -> None:
    """Runs failed with "AdminShutdown: terminating connection due to administrator command", one per dead
    connection left in the checkpointer's pool (the last of them minutes later)."""
    async with open_checkpointer(postgres_url) as saver:
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        await asyncio.gather(*(saver.aget_tuple(config) for _ in range(8)))  # several pooled connections
        await asyncio.to_thread(terminate_every_connection, postgres_url)
        for _ in range(12):  # more than the pool holds: every dead connection would have been handed out
            assert await saver.aget_tuple(config) is None


async def test_baton_own_sessions_work_after_every_connection_was_terminated(postgres_url: str) -> None:
    await asyncio.to_thread(upgrade, postgres_url)
    db = Database(postgres_url)
    try:
        async def use_every_engine() -> None:
            async with db.read() as session:
                await session.exec(select(ThreadRecord).limit(1))
            async with db.session(durable=False) as session:
                await session.exec(select(ThreadRecord).limit(1))

        await asyncio.gather(*(use_every_engine() for _ in range(6)))
        await asyncio.to_thread(terminate_every_connection, postgres_url)
        for _ in range(25):
            await use_every_engine()
    finally:
        await db.dispose()
