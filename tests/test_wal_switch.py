"""Replicas started together on a new SQLite file: the one that switches it to WAL second found the first
holding the file's write lock, and SQLite answered its ``PRAGMA journal_mode=WAL`` "database is locked" at
once, without waiting out the busy timeout: one start in about fifteen failed (three processes, 300 tries).
Each test holds the lock as that first replica would and lets go at the waiting side's first pause."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

import storage.wal
from storage.checkpointer import open_checkpointer, sqlite_checkpoint_path
from storage.migrate import upgrade


@pytest.fixture
def locked_new_file(tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    """A connection holding the write lock of a new file still in rollback mode (another replica mid-start)."""
    path = tmp_path / "baton.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE started_first (x)")
    with closing(holder):
        yield path, holder


def _journal_mode(path: Path) -> str:
    with closing(sqlite3.connect(path)) as connection:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])


def test_the_migration_waits_for_a_replica_holding_a_new_files_lock(locked_new_file, monkeypatch) -> None:
    path, holder = locked_new_file
    pauses: list[float] = []

    def first_replica_done(seconds: float) -> None:
        if not pauses:
            holder.execute("COMMIT")
        pauses.append(seconds)

    monkeypatch.setattr(storage.wal, "_sleep", first_replica_done)
    upgrade(f"sqlite:///{path}")
    assert pauses, "the switch never found the file locked: the test proves nothing"
    assert _journal_mode(path) == "wal"
    with closing(sqlite3.connect(path)) as connection:
        assert connection.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)


def test_the_checkpointer_waits_for_a_replica_holding_its_new_files_lock(tmp_path: Path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'baton.db'}"
    path = sqlite_checkpoint_path(url)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE started_first (x)")
    pauses: list[float] = []

    async def first_replica_done(seconds: float) -> None:
        if not pauses:
            holder.execute("COMMIT")
        pauses.append(seconds)

    async def open_it() -> None:
        async with open_checkpointer(url):
            pass

    monkeypatch.setattr(storage.wal, "_sleep_async", first_replica_done)
    with closing(holder):
        asyncio.run(open_it())
    assert pauses, "the switch never found the file locked: the test proves nothing"
    assert _journal_mode(path) == "wal"


def test_a_file_locked_for_longer_than_the_busy_timeout_fails_with_sqlites_own_error(locked_new_file) -> None:
    path, _holder = locked_new_file
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            storage.wal.use_wal(connection, seconds=0.05)


def test_an_error_other_than_a_lock_is_not_tried_again(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(storage.wal, "_sleep", lambda _seconds: pytest.fail("paused for an error that is no lock"))
    with closing(sqlite3.connect(tmp_path / "baton.db")) as connection:
        connection.close()
        with pytest.raises(sqlite3.ProgrammingError):
            storage.wal.use_wal(connection, seconds=5)
