"""What a SQLite Baton leaves on its disk after months: the WALs of ``baton.db`` and of its checkpoints file."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from langgraph.checkpoint.base import empty_checkpoint

from storage.checkpointer import open_checkpointer, sqlite_checkpoint_path
from storage.db import WAL_SIZE_LIMIT, Database
from storage.models import AuditEntry

BIG = "x" * 60_000  # a row a few pages long: the WAL grows by megabytes in a few dozen commits
GROWN = 3 * WAL_SIZE_LIMIT


def wal_size(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """A read transaction held on ``path`` (a backup, an operator's query, a long digest scan): SQLite cannot
    fold the WAL back into the file past it, so the WAL grows meanwhile."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN")
        connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
        yield
        connection.execute("COMMIT")
    finally:
        connection.close()


async def test_the_wal_of_baton_db_shrinks_back_after_a_long_read(tmp_path: Path, migrated_sqlite: Path) -> None:
    path = tmp_path / "baton.db"
    shutil.copyfile(migrated_sqlite, path)
    db = Database(f"sqlite:///{path}")

    async def write() -> None:
        async with db.session(durable=False) as session:
            session.add(AuditEntry(correlation_id="c", kind="test", detail={"text": BIG}))

    try:
        with reading(path):
            while wal_size(path) < GROWN:
                await write()
        grown = wal_size(path)
        # Once the reader is gone, SQLite folds the WAL back at its next automatic checkpoint and writes it
        # again from its start: the file is cut back to the limit then, instead of keeping its peak for good.
        for _ in range(400):
            await write()
            if wal_size(path) <= WAL_SIZE_LIMIT:
                break
        assert wal_size(path) <= WAL_SIZE_LIMIT, f"the WAL grew to {grown} bytes and stayed at {wal_size(path)}"
    finally:
        await db.dispose()


async def test_the_wal_of_the_checkpoints_file_shrinks_back_after_a_long_read(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'baton.db'}"
    path = sqlite_checkpoint_path(url)
    async with open_checkpointer(url) as saver:
        count = 0

        async def write() -> None:
            nonlocal count
            count += 1
            checkpoint = {**empty_checkpoint(), "id": f"{count:08d}", "channel_values": {"text": BIG}}
            await saver.aput({"configurable": {"thread_id": f"t{count}", "checkpoint_ns": ""}}, checkpoint,
                             {}, {})

        await write()  # the file and its tables made
        with reading(path):
            while wal_size(path) < GROWN:
                await write()
        grown = wal_size(path)
        for _ in range(400):
            await write()
            if wal_size(path) <= WAL_SIZE_LIMIT:
                break
        assert wal_size(path) <= WAL_SIZE_LIMIT, f"the WAL grew to {grown} bytes and stayed at {wal_size(path)}"
