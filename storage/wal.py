"""Switching a new SQLite file to WAL while other processes may be opening it at the same moment.

``PRAGMA journal_mode=WAL`` needs the file to itself. When another connection holds the write lock
of a file still in rollback mode (a replica started a moment earlier, switching or migrating it),
SQLite answers "database is locked" at once, without waiting out the busy timeout (it would risk a
deadlock, holding a read lock itself), so replicas started together on a new file failed to start
about one time in fifteen. The switch is tried again until the busy timeout has passed. On a file
already in WAL the pragma takes no lock and answers at once.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

SQLITE_BUSY = 5
FIRST_PAUSE, LONGEST_PAUSE = 0.002, 0.05
SWITCH = "PRAGMA journal_mode=WAL"
_sleep, _sleep_async = time.sleep, asyncio.sleep  # looked up at each pause: tests take a turn there


def is_locked(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    return code & 0xFF == SQLITE_BUSY if code is not None else "database is locked" in str(error)


def _pauses(seconds: float) -> Any:
    """The pauses between tries, until ``seconds`` have passed since the first."""
    deadline, pause = time.monotonic() + seconds, FIRST_PAUSE
    while time.monotonic() < deadline:
        yield min(pause, max(0.0, deadline - time.monotonic()))
        pause = min(pause * 2, LONGEST_PAUSE)


def use_wal(connection: sqlite3.Connection, seconds: float) -> None:
    """Put the file of ``connection`` in WAL mode, waiting up to ``seconds`` for other connections."""
    for pause in _pauses(seconds):
        try:
            connection.execute(SWITCH)
            return
        except sqlite3.OperationalError as error:
            if not is_locked(error):
                raise
        _sleep(pause)
    connection.execute(SWITCH)  # the last try: its error, if any, is the caller's


async def use_wal_async(execute: Callable[[str], Awaitable[Any]], seconds: float) -> None:
    """``use_wal`` for an async connection (aiosqlite's ``execute``), pausing without holding the event loop."""
    for pause in _pauses(seconds):
        try:
            await execute(SWITCH)
            return
        except sqlite3.OperationalError as error:
            if not is_locked(error):
                raise
        await _sleep_async(pause)
    await execute(SWITCH)
