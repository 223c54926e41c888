"""The LangGraph checkpointer for the configured database (SQLite or PostgreSQL, async)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiosqlite
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.engine import make_url

from storage.db import is_sqlite, sqlite_path


@asynccontextmanager
async def open_checkpointer(url: str) -> AsyncIterator[BaseCheckpointSaver]:
    """Yield a ready checkpointer (tables created) and close it on exit."""
    if is_sqlite(url):
        connection = await aiosqlite.connect(sqlite_path(url), timeout=30)
        try:
            await connection.execute("PRAGMA journal_mode=WAL")
            await connection.execute("PRAGMA busy_timeout=30000")
            saver = AsyncSqliteSaver(connection)
            await saver.setup()
            yield saver
        finally:
            await connection.close()
        return
    conninfo = make_url(url.replace("postgres://", "postgresql://", 1)).set(drivername="postgresql")
    pool = AsyncConnectionPool(
        conninfo.render_as_string(hide_password=False),
        min_size=1,
        max_size=10,
        open=False,
        # PostgresSaver's own requirements: it commits itself, reads dict rows, and cannot use
        # prepared statements behind poolers.
        kwargs={"autocommit": True, "row_factory": dict_row, "prepare_threshold": 0},
    )
    await pool.open()
    try:
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await saver.setup()
        yield saver
    finally:
        await pool.close()
