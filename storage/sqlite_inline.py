"""SQLite on the event loop thread: no thread hop per statement, no greenlet per statement for writes.

aiosqlite runs every statement in a worker thread and wakes the event loop for each result: a
request of ~30 statements paid ~200 round trips, most of Baton's own CPU per request (see
bench/results/request_path.md). Baton's own statements are small and indexed (tens of
microseconds each), so this driver runs them directly on the event loop thread, handed to
SQLAlchemy through ``create_async_engine(async_creator=...)``.

The one thing that must not block the loop is waiting for SQLite's write lock: another
connection (the LangGraph checkpointer of this process, whose transaction may need the loop
to finish, or another replica) can hold it. So the connection has no busy timeout, and a
statement that finds the database locked is retried after an asyncio sleep instead. A failed
SQLite statement has no effect, so retrying it, even inside a transaction, is safe.

Writes go further (``write_session``): a write transaction takes the write lock with its
``BEGIN IMMEDIATE`` (awaited as above) and then nothing in it can wait for another connection,
so its statements run synchronously on a plain ``sqlite3`` connection: prepared statements
directly (``storage.sqlite_prepared``), anything else through a SQLModel ``Session`` over that
connection. An ``AsyncSession`` spends a greenlet switch and several awaits per statement
bridging SQLAlchemy to an async driver, and SQLAlchemy's execution itself costs several times a
small statement (bench/results/request_path.md).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session

from storage.sqlite_prepared import PREPARED, PreparedResult, plan_for

SQLITE_BUSY, SQLITE_LOCKED = 5, 6
FIRST_PAUSE, LONGEST_PAUSE = 0.0005, 0.005
T = TypeVar("T")


def _is_busy(error: sqlite3.OperationalError | OperationalError) -> bool:
    error = getattr(error, "orig", None) or error  # SQLAlchemy wraps the driver's error
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)
    return "locked" in str(error) or "busy" in str(error)


async def _until_free(step: Callable[[], T], timeout: float) -> T:
    """``step()``; while the database is locked, sleep (without blocking the loop) and try again."""
    try:
        return step()
    except (sqlite3.OperationalError, OperationalError) as error:
        if not _is_busy(error):
            raise
    deadline = time.monotonic() + timeout
    pause = FIRST_PAUSE
    while True:
        await asyncio.sleep(pause)
        try:
            return step()
        except (sqlite3.OperationalError, OperationalError) as error:
            if not _is_busy(error) or time.monotonic() >= deadline:
                raise
        pause = min(pause * 2, LONGEST_PAUSE)


async def read_prepared(connection: sqlite3.Connection, statement: Any, params: dict[str, Any] | None,
                        timeout: float) -> PreparedResult:
    """One prepared SELECT on ``connection`` (autocommit: the statement is its own snapshot), waiting
    without blocking the loop while the database is busy (a reader rarely is, under WAL)."""
    plan = plan_for(statement, params)
    return await _until_free(lambda: plan.run(connection, params), timeout)


class SQLiteWriter:
    """This process's SQLite write connection, used by one writer at a time, and its syncs of the WAL.

    The process's writers take turns (``storage.db.WriterQueue``), so one connection serves them
    all: one connection, because a connection's page cache is dropped whenever another connection
    has written to the file, and with two writers taking turns every transaction started cold.
    Prepared statements (``storage.sqlite_prepared``) run on the ``sqlite3`` connection itself;
    anything else (the ORM's ``add``, ``get``, ``flush``, ad-hoc statements) goes through a SQLModel
    ``Session`` over the same connection, made only when a transaction needs one.

    Every commit is ``synchronous=NORMAL``: in WAL mode it writes its frames to the WAL without
    waiting for the disk. A durable write then awaits ``synced``: one ``fdatasync`` of the WAL,
    made on the loop's next turn, for every transaction committed before it. That is what
    ``synchronous=FULL`` does at each commit (in WAL mode FULL is NORMAL plus a sync of the WAL
    after the commit; a WAL's header and checkpoints are synced by SQLite in both), except that
    the durable writes of requests in flight together share one sync and the writers' turn is not
    held while the disk works. The sync runs on the loop's thread, as the commit did: a worker
    thread's sync cost more than it saved here (README, "Tried and left out").
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], make_engine: Callable[[Callable[[], Any]], Engine],
                 wal_path: str) -> None:
        self.connection = connect()  # synchronous=NORMAL: durable writes await ``synced`` instead
        self.engine = make_engine(lambda: self.connection)
        with self.engine.connect():  # SQLAlchemy's first-connect set-up ends with a ROLLBACK: not inside a transaction
            pass
        self.sessions = sessionmaker(self.engine, class_=Session, expire_on_commit=False)
        self._wal_path = wal_path
        self._wal: int | None = None  # a descriptor of the WAL file, for fdatasync
        self._waiting: list[asyncio.Future[None]] = []  # durable writes committed, their sync not made yet
        self._sync_loop: asyncio.AbstractEventLoop | None = None  # where the sync for ``_waiting`` is scheduled
        self.syncs = 0  # WAL syncs made so far (the tests read it)

    async def synced(self) -> None:
        """Return once everything committed so far is on disk (one sync, shared with whoever asks meanwhile)."""
        loop = asyncio.get_running_loop()
        if self._waiting and self._sync_loop is not loop:
            self._waiting = []  # a stopped loop's: their sync will not run, nor will they go on
        if not self._waiting:
            self._sync_loop = loop
            loop.call_soon(self._sync_waiting)
        waiter = loop.create_future()
        self._waiting.append(waiter)
        await waiter

    def _sync_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        try:
            self.sync_wal()
        except OSError as exc:
            for waiter in waiting:
                if not waiter.done():
                    waiter.set_exception(OSError(exc.errno, f"syncing the SQLite WAL failed: {exc.strerror}"))
            return
        for waiter in waiting:
            if not waiter.done():
                waiter.set_result(None)

    def sync_wal(self) -> None:
        """``fdatasync`` the WAL: every transaction committed before this is durable."""
        try:
            current = os.stat(self._wal_path)
        except FileNotFoundError:
            return  # no WAL: every commit is in the database file, which SQLite synced when it checkpointed
        if self._wal is not None and os.fstat(self._wal).st_ino != current.st_ino:
            os.close(self._wal)  # the WAL was made anew (the database's last connection elsewhere closed it)
            self._wal = None
        if self._wal is None:
            self._wal = os.open(self._wal_path, os.O_RDONLY)
        os.fdatasync(self._wal)
        self.syncs += 1

    def close(self) -> None:
        self.engine.dispose()
        self.connection.close()
        if self._wal is not None:
            os.close(self._wal)
            self._wal = None


class InlineSession:
    """What Baton's code uses of an ``AsyncSession`` (``exec``, ``get``, ``add``, ``flush``), in a
    transaction that already holds SQLite's write lock."""

    def __init__(self, writer: SQLiteWriter) -> None:
        self._writer = writer
        self._orm: Session | None = None
        self.info: dict[str, Any] = {}  # as ``Session.info``: what the caller keeps with the transaction

    @property
    def bind(self) -> Any:
        return self._writer.engine

    @property
    def sync_session(self) -> Session:
        """The ORM session of this transaction, on the same connection (made on first use)."""
        if self._orm is None:
            self._orm = self._writer.sessions()
        return self._orm

    async def exec(self, statement: Any, *, params: dict[str, Any] | None = None, **options: Any) -> Any:
        if not options and statement.get_execution_options().get(PREPARED):
            if self._orm is not None and (self._orm.new or self._orm.dirty or self._orm.deleted):
                self._orm.flush()  # what the ORM's autoflush would do before a statement
            return plan_for(statement, params).run(self._writer.connection, params)
        return self.sync_session.exec(statement, params=params, **options)

    async def get(self, entity: Any, ident: Any, **options: Any) -> Any:
        return self.sync_session.get(entity, ident, **options)

    def add(self, instance: Any) -> None:
        self.sync_session.add(instance)

    async def flush(self) -> None:
        if self._orm is not None:
            self._orm.flush()

    def _commit(self) -> None:
        if self._orm is not None:
            self._orm.commit()  # its flush, then the connection's COMMIT
        else:
            self._writer.connection.commit()

    def _rollback(self) -> None:
        if self._orm is not None:
            self._orm.rollback()
        if self._writer.connection.in_transaction:
            self._writer.connection.rollback()

    def _close(self) -> None:
        if self._orm is not None:
            self._orm.close()
            self._orm = None


@asynccontextmanager
async def write_session(writer: SQLiteWriter, timeout: float) -> AsyncIterator[InlineSession]:
    """A write transaction on the event loop thread: commits on success, rolls back on error.

    Only taking the write lock (``BEGIN IMMEDIATE``) is awaited: another connection may hold it.
    Once it is held, the statements and the commit cannot be kept waiting by another connection.
    The commit does not wait for the disk: a durable write awaits ``writer.synced()`` after it
    (``storage.db.Database.session``, once the next writer may go).
    """
    connection = writer.connection
    await _until_free(lambda: connection.execute("BEGIN IMMEDIATE"), timeout)
    session = InlineSession(writer)
    try:
        yield session
        session._commit()
    except BaseException:
        session._rollback()
        raise
    finally:
        session._close()


class InlineCursor:
    """The aiosqlite cursor interface SQLAlchemy's adapter uses, over a plain ``sqlite3.Cursor``."""

    def __init__(self, cursor: sqlite3.Cursor, timeout: float) -> None:
        self._cursor = cursor
        self._timeout = timeout

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *_: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, operation: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> InlineCursor:
        await _until_free(lambda: self._cursor.execute(operation, parameters), self._timeout)
        return self

    async def executemany(self, operation: str, parameters: Iterable[Any]) -> InlineCursor:
        rows = list(parameters)
        await _until_free(lambda: self._cursor.executemany(operation, rows), self._timeout)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def nextset(self) -> None:
        return None

    async def close(self) -> None:
        self._cursor.close()


class InlineConnection:
    """The aiosqlite connection interface SQLAlchemy's adapter uses, over a plain ``sqlite3.Connection``."""

    def __init__(self, connection: sqlite3.Connection, timeout: float) -> None:
        self._connection: sqlite3.Connection | None = connection
        self._timeout = timeout

    @property
    def isolation_level(self) -> str | None:
        return self._live.isolation_level

    @property
    def _live(self) -> sqlite3.Connection:
        if self._connection is None:
            raise ValueError("no active connection")
        return self._connection

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._live.cursor(), self._timeout)

    async def commit(self) -> None:
        connection = self._live
        await _until_free(connection.commit, self._timeout)

    async def rollback(self) -> None:
        self._live.rollback()

    async def create_function(self, *args: Any, **kw: Any) -> None:
        self._live.create_function(*args, **kw)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def inline_connector(path: str, timeout: float) -> Callable[[], Awaitable[InlineConnection]]:
    """The ``async_creator`` for ``create_async_engine``: autocommit mode, BEGIN is issued explicitly."""

    async def connect() -> InlineConnection:
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA busy_timeout=0")  # waiting happens in _until_free, off the loop's back
        return InlineConnection(connection, timeout)

    return connect
