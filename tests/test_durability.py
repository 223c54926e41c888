"""``Database.session(durable=...)``: which commits wait for the disk (the output-commit rule)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from sqlalchemy import text
from sqlmodel import select

from storage.db import Database
from storage.models import ThreadRecord


async def _commit_level(database: Database, durable: bool) -> str:
    async with database.session(durable=durable) as session:
        if database.is_sqlite:
            level = (await session.exec(text("PRAGMA synchronous"))).one()[0]  # type: ignore[call-overload]
            return {1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(level, str(level))
        return str((await session.exec(text("SHOW synchronous_commit"))).one()[0])  # type: ignore[call-overload]


async def test_writes_wait_for_the_disk_unless_they_say_nothing_is_seen_before_a_later_durable_write(
        database: Database) -> None:
    full, lazy = ("FULL", "NORMAL") if database.is_sqlite else ("on", "off")
    assert await _commit_level(database, durable=True) == full
    assert await _commit_level(database, durable=False) == lazy
    assert await _commit_level(database, durable=True) == full  # the lazy setting does not leak into durable writes


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
