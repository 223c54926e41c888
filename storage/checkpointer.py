"""The LangGraph checkpointer for the configured database (SQLite or PostgreSQL, async)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import psycopg
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from storage.db import (SQLITE_BUSY_SECONDS, WAL_SIZE_LIMIT, database_unreachable, is_sqlite, linked_file,
                        pg_connect_params, sqlite_path)
from storage.wal import use_wal_async

log = logging.getLogger(__name__)
RECONNECT_GIVE_UP_SECONDS = 4.0
RECONNECT_LOOK_SECONDS = 1.0
_PG_SETUP_LOCK = 0x62617431  # "bat1": one replica sets LangGraph's checkpoint tables up, the others wait


class CheckpointFence(Protocol):
    """What a run's checkpoint write waits for: its chat thread still held, and what the run must store in Baton's
    database before it (``bot.orchestrator`` gives one per run). The pruning of a finished thread's checkpoints
    gives one too: each deletion waits for the thread still held (``bot.app``)."""

    def surely_held(self) -> bool:
        """True while the write may go ahead with no statement first: the thread is surely still the run's by this
        process's own clock, and the run has nothing to store before it."""

    async def confirm(self) -> None:
        """Make sure the thread is still the run's (renew its hold) and store what must come before the checkpoint
        (the outcomes of the side effects of the step it ends: once it is written, that step never runs again to
        find them), or raise: nothing of the run is written then."""


# Set for the length of a run (``GraphRuntime.run``): LangGraph's tasks copy it, so its checkpoint writes see it.
checkpoint_fence: contextvars.ContextVar[CheckpointFence | None] = contextvars.ContextVar(
    "baton_checkpoint_fence", default=None)


class _Fenced:
    """A checkpointer whose writes are fenced by the running run's ``checkpoint_fence``.

    A replica stalled past its thread's lease (SIGSTOP, a frozen VM) whose step ended before its heartbeat
    noticed the thread taken over wrote that step's checkpoint beside the new holder's; it became the thread's
    latest, and the card the new holder had posted turned stale. A write after such a stall confirms the hold
    first. While the hold is surely fresh (the heartbeat renews it every third of the lease) a write costs no
    statement more.

    ``storable``, set by whoever runs the graphs (``bot.runtime.GraphRuntime``), makes each value written storable
    first (storage knows nothing of what a chat message can hold)."""

    storable: Callable[[Any], Any] | None = None

    async def aput(self, config: Any, checkpoint: Any, *args: Any, **kwargs: Any) -> Any:
        await _confirm_fence()
        if self.storable is not None:
            values = self.storable(checkpoint["channel_values"])
            if values is not checkpoint["channel_values"]:
                checkpoint = {**checkpoint, "channel_values": values}
        return await super().aput(config, checkpoint, *args, **kwargs)  # type: ignore[misc]

    async def adelete_thread(self, thread_id: str) -> None:
        await _confirm_fence()  # a stalled pruning deleted what the thread's new holder had written meanwhile
        await super().adelete_thread(thread_id)  # type: ignore[misc]

    # No ``task_path`` parameter: LangGraph passes one only to a saver whose signature names it.
    async def aput_writes(self, config: Any, writes: Any, *args: Any, **kwargs: Any) -> Any:
        await _confirm_fence()
        if self.storable is not None:
            writes = [(channel, self.storable(value)) for channel, value in writes]
        return await super().aput_writes(config, writes, *args, **kwargs)  # type: ignore[misc]


async def _confirm_fence() -> None:
    fence = checkpoint_fence.get()
    if fence is not None and not fence.surely_held():
        await fence.confirm()


# How long a SQLite checkpoint write waits for room on a full disk: as long as a PostgreSQL run's write waits for a
# connection while its database is away (psycopg_pool's timeout), so that either outage, ended within it, costs no run.
CHECKPOINT_ROOM_WAIT_SECONDS = 30.0
LONGEST_ROOM_PAUSE = 1.0


class FencedSqliteSaver(_Fenced, AsyncSqliteSaver):
    """The SQLite checkpointer, fenced; a write that finds its disk full waits for room.

    A full disk failed every run at its first checkpoint ("database or disk is full"), an approved one too, while
    PostgreSQL's checkpointer waits up to 30 s for its database: a disk freed within ``CHECKPOINT_ROOM_WAIT_SECONDS``
    now costs no run (``_waiting_out``). SQLite rolls a failed commit back; a statement that failed may leave its
    transaction open, so it is rolled back before the write is tried again."""

    async def aput(self, *args: Any, **kwargs: Any) -> Any:
        return await _waiting_out(lambda: super(FencedSqliteSaver, self).aput(*args, **kwargs), _ROOM,
                                  self._rolled_back)

    async def aput_writes(self, *args: Any, **kwargs: Any) -> Any:
        return await _waiting_out(lambda: super(FencedSqliteSaver, self).aput_writes(*args, **kwargs), _ROOM,
                                  self._rolled_back)

    async def _rolled_back(self) -> None:
        async with self.lock:
            if self.conn.in_transaction:
                await self.conn.rollback()

    async def aprune(self, thread_ids: Any, *, strategy: str = "keep_latest") -> None:
        """LangGraph's ``aprune``, which its SQLite saver lacks: ``keep_latest`` keeps each namespace's latest
        checkpoint and its parent (an older LangGraph's pending sends are read from the parent's writes), with
        their writes, and deletes the subgraph calls made from the checkpoints it deletes, as PostgreSQL's does
        (each call has a namespace of its own: a thread in use for good kept 2 checkpoints of every run's call).
        A thread of a ``DeltaChannel`` is refused (``NotImplementedError``), as PostgreSQL's does: its channels
        are rebuilt from every ancestor."""
        if strategy == "delete":
            for thread_id in thread_ids:
                await self.adelete_thread(thread_id)
            return
        if strategy != "keep_latest":
            raise ValueError(f"Unknown prune strategy: {strategy!r}")
        await self.setup()
        async with self.lock:
            try:
                for thread_id in map(str, thread_ids):
                    async with self.conn.execute(_USES_DELTA, (thread_id,)) as cursor:
                        if await cursor.fetchone() is not None:
                            raise NotImplementedError(f"keep_latest can't prune threads that use a DeltaChannel: "
                                                      f"{thread_id}")
                    for statement in _CALLS_NOT_KEPT:
                        async with self.conn.execute(statement, {"thread": thread_id}):
                            pass
                    for statement in _OLDER_THAN_KEPT:
                        async with self.conn.execute(statement, (thread_id,)):
                            pass
                await self.conn.commit()
            finally:
                if self.conn.in_transaction:
                    await self.conn.rollback()


# The oldest checkpoint ``aprune(strategy="keep_latest")`` keeps of a thread's namespace: its latest one's parent
# (its checkpoint ids grow with time, as LangGraph's own ``ORDER BY checkpoint_id DESC`` takes them to).
_KEPT_FROM = ("(SELECT coalesce(head.parent_checkpoint_id, head.checkpoint_id) FROM checkpoints AS head "
              "WHERE head.thread_id = {table}.thread_id AND head.checkpoint_ns = {table}.checkpoint_ns "
              "ORDER BY head.checkpoint_id DESC LIMIT 1)")
_OLDER_THAN_KEPT = tuple(f"DELETE FROM {table} WHERE thread_id = ? AND checkpoint_id < {_KEPT_FROM.format(table=table)}"
                         for table in ("writes", "checkpoints"))  # the writes first: they are found by the checkpoints
# A subgraph call's namespace ("node:<task id>", unlike a ``checkpointer=True`` subgraph's, whose state outlives each
# call) goes with the root checkpoint it was made from (``parents[""]`` in its metadata) once that one is older than
# the oldest the root namespace keeps: deleted now or before. One made from a root checkpoint not written yet stays.
_ROOT_KEPT_FROM = ("(SELECT coalesce(head.parent_checkpoint_id, head.checkpoint_id) FROM checkpoints AS head "
                   "WHERE head.thread_id = :thread AND head.checkpoint_ns = '' ORDER BY head.checkpoint_id DESC LIMIT 1)")
_CALLS_NOT_KEPT = tuple(
    f"DELETE FROM {table} WHERE thread_id = :thread AND checkpoint_ns IN (SELECT call.checkpoint_ns FROM checkpoints "
    "AS call WHERE call.thread_id = :thread AND instr(call.checkpoint_ns, ':') > 0 AND "
    f"json_extract(CAST(call.metadata AS TEXT), '$.parents.\"\"') < {_ROOT_KEPT_FROM})"
    for table in ("writes", "checkpoints"))  # the writes first: they are found by the checkpoints
_USES_DELTA = ("SELECT 1 FROM checkpoints WHERE thread_id = ? AND (json_extract(CAST(metadata AS TEXT), "
               "'$.counters_since_delta_snapshot') IS NOT NULL OR json_extract(CAST(metadata AS TEXT), "
               "'$.delta_writes_versioned') IS NOT NULL) LIMIT 1")


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's full disk: the checkpoints file's, or that of the lease renewal fencing the write
    after half a lease without one (``_confirm_fence``; SQLAlchemy's error, wrapping it). On one disk with the
    checkpoints, Baton's database cannot renew a lease while it is full: a renewal failing so failed the run at
    most half a lease into its wait for room."""
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    return isinstance(cause, sqlite3.OperationalError) and (
        getattr(cause, "sqlite_errorcode", None) or 0) & 0xFF == sqlite3.SQLITE_FULL


class FencedPostgresSaver(_Fenced, AsyncPostgresSaver):
    """The PostgreSQL checkpointer, fenced; a write that meets the database away is tried again once it is back.

    psycopg_pool waits up to 30 s for a connection, but a write that met one the outage broke, or the fence's own
    write in Baton's database (the outcome of the command that has just ended, ``CheckpointFence.confirm``), failed
    at once: a command that ended during a failover of a few seconds had its run stopped, its end could not be
    stored either, and once its lease ran out the thread was told its outcome was unknown. Both are tried again
    for up to ``CHECKPOINT_ROOM_WAIT_SECONDS`` (``_waiting_out``)."""

    async def aput(self, *args: Any, **kwargs: Any) -> Any:
        return await _waiting_out(lambda: super(FencedPostgresSaver, self).aput(*args, **kwargs), _DATABASE)

    async def aput_writes(self, *args: Any, **kwargs: Any) -> Any:
        return await _waiting_out(lambda: super(FencedPostgresSaver, self).aput_writes(*args, **kwargs), _DATABASE)


@dataclass
class _Trouble:
    """What a checkpoint write waits out (a full disk, the database away): ``says`` what an error is of it (``None``
    for any other error), ``warning`` is logged (with that and the wait) when the first write begins to wait, not
    once per write; ``bounded``: a try waits no longer than the wait has left (psycopg_pool's own wait for a
    connection is 30 s: a try begun just before the end waited it all again)."""

    says: Callable[[BaseException], str | None]
    warning: str
    bounded: bool = False
    waiting: int = 0  # writes waiting now


_ROOM = _Trouble(lambda exc: str(exc) if _disk_full(exc) else None,
                 "a run's checkpoint waits for room (%s): free space on the disk holding Baton's checkpoints file; "
                 "runs go on once there is, or stop after %g s")
_DATABASE = _Trouble(database_unreachable,
                     "a run's checkpoint waits for the database (%s); runs go on once it is back, or stop after %g s",
                     bounded=True)


async def _waiting_out(write: Callable[[], Awaitable[Any]], trouble: _Trouble,
                       after_failure: Callable[[], Awaitable[None]] | None = None) -> Any:
    """``write()``, tried again while it meets ``trouble``, for ``CHECKPOINT_ROOM_WAIT_SECONDS`` from the first try;
    then its last error is raised. ``after_failure``: what a failed try leaves is undone before the next (SQLite: a
    statement that failed may leave its transaction open). LangGraph's writes are upserts (INSERT OR REPLACE /
    IGNORE, ON CONFLICT), and the fence writes only what is still unwritten: a retry stores each row once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CHECKPOINT_ROOM_WAIT_SECONDS
    try:  # the write itself: every checkpoint of every run comes here
        return await write()
    except Exception as exc:
        if (said := trouble.says(exc)) is None:
            raise
        last = exc
    if not trouble.waiting:
        log.warning(trouble.warning, said, CHECKPOINT_ROOM_WAIT_SECONDS)
    trouble.waiting += 1
    pause = 0.05
    try:
        while True:
            if after_failure is not None:
                await after_failure()
            if (now := loop.time()) >= deadline:
                raise last
            await asyncio.sleep(min(pause, deadline - now))
            pause = min(pause * 2, LONGEST_ROOM_PAUSE)
            try:
                if not trouble.bounded:
                    return await write()
                async with asyncio.timeout(max(deadline - loop.time(), 0.0)):
                    return await write()
            except TimeoutError:
                if not trouble.bounded or loop.time() < deadline:
                    raise  # not this wait's: the write's own
                raise last from None
            except Exception as exc:
                if trouble.says(exc) is None:
                    raise
                last = exc
    finally:
        trouble.waiting -= 1


def sqlite_checkpoint_path(url: str) -> Path:
    """Where a SQLite Baton keeps LangGraph's checkpoints: a file of their own beside the database.

    SQLite has one write lock per file. The checkpointer's transactions span several event loop
    turns (aiosqlite), so in the same file every inbound event's insert, the write Slack waits
    for, queued behind them. A database that already holds checkpoints (made before this split)
    keeps them where they are, so no waiting approval loses its run.
    """
    database = Path(sqlite_path(url))
    # Beside the file a symlink points to (baton.db linked to a data volume), as SQLite keeps its WAL: beside
    # the link, the checkpoints stayed in the container's own directory, and a new container lost every run
    # waiting for an approval while baton.db kept their cards.
    target = linked_file(database)
    separate = _checkpoints_beside(target)
    if target != database and not separate.exists():
        beside_link = _checkpoints_beside(database)
        if beside_link.exists():  # made there by a Baton before this one: its runs go on from it
            return beside_link
    if not separate.exists() and database.exists() and _holds_checkpoints(database):
        return database
    return separate


def _checkpoints_beside(database: Path) -> Path:
    return database.with_name(f"{database.stem}.checkpoints{database.suffix or '.db'}")


def check_sqlite_checkpoints(url: str) -> None:
    """Raise ``sqlite3.Error`` when the SQLite file of the checkpoints cannot be opened and written
    (a directory, not a database, read-only), so that it is one line at start, not a traceback."""
    if not is_sqlite(url):
        return  # PostgreSQL: the checkpoints live in Baton's own database, checked already
    with closing(sqlite3.connect(sqlite_checkpoint_path(url), timeout=30, isolation_level=None)) as connection:
        connection.execute("BEGIN IMMEDIATE")  # the file is read (a header)...
        try:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            # ...and written: BEGIN IMMEDIATE succeeds on a read-only file (which failed Baton's start later,
            # with a traceback). Rolled back: nothing stays.
            connection.execute("CREATE TABLE baton_write_check (x)")
        finally:
            connection.execute("ROLLBACK")


def postgres_conninfo(url: str) -> str:
    """psycopg's connection string for a PostgreSQL ``url``, from its parts: a URL written out again from them
    (SQLAlchemy's) keeps a password's space bare, which psycopg refuses, though Baton's own engine took it."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    # The parameters Baton's own engine connects with (SQLAlchemy's psycopg dialect): several hosts for a
    # failover (``?host=a:5432&host=b:5432``, or ``host=a,b&port=...``) are libpq's lists. Copied by hand, the
    # query's tuples came out as Python's ``('a', 'b')``, and such a URL stopped the start at the checkpointer.
    _, params = postgresql_psycopg.dialect().create_connect_args(parsed.set(query=pg_connect_params(parsed)))
    return make_conninfo("", **{name: value for name, value in params.items() if value is not None})


async def setup_postgres_checkpoints(url: str) -> None:
    """Make or migrate LangGraph's checkpoint tables in Baton's PostgreSQL database, unless they are up to date.

    LangGraph's setup begins with a ``CREATE TABLE IF NOT EXISTS``, which PostgreSQL refuses a role that may not
    create tables even when the table is there: replicas running as a role granted only the use of the tables
    (made by the owner's first start) stopped at every start (a traceback). Replicas starting together on a new
    database collided in LangGraph's unguarded setup (a unique violation): one sets up at a time. The others
    poll rather than wait in pg_advisory_lock: a waiting statement holds a snapshot, and the setup's CREATE
    INDEX CONCURRENTLY waits for every snapshot, so all of them hung."""
    async with await psycopg.AsyncConnection.connect(postgres_conninfo(url), autocommit=True,
                                                     prepare_threshold=0) as connection:
        if await _checkpoints_ready(connection):
            return
        while not await _one_value(connection, "SELECT pg_try_advisory_lock(%s)", _PG_SETUP_LOCK):
            await asyncio.sleep(0.2)
        try:
            if not await _checkpoints_ready(connection):
                await AsyncPostgresSaver(connection).setup()  # type: ignore[arg-type]
        finally:
            await connection.execute("SELECT pg_advisory_unlock(%s)", (_PG_SETUP_LOCK,))


async def _checkpoints_ready(connection: psycopg.AsyncConnection) -> bool:
    """LangGraph's checkpoint tables are there, with every migration this LangGraph knows applied."""
    if not await _one_value(connection, "SELECT to_regclass('checkpoint_migrations') IS NOT NULL"):
        return False
    applied = await _one_value(connection, "SELECT max(v) FROM checkpoint_migrations")
    return applied is not None and applied >= len(AsyncPostgresSaver.MIGRATIONS) - 1


async def _one_value(connection: psycopg.AsyncConnection, query: str, *params: object) -> Any:
    row = await (await connection.execute(query, params or None)).fetchone()  # type: ignore[arg-type]
    return row[0] if row else None


def _holds_checkpoints(database: Path) -> bool:
    with closing(sqlite3.connect(database)) as connection:
        found = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'checkpoints'").fetchone()
        return bool(found and connection.execute("SELECT 1 FROM checkpoints LIMIT 1").fetchone())


async def fail_waiting_calls(checkpointer: BaseCheckpointSaver) -> None:
    """Make every call of ``checkpointer`` still waiting for a PostgreSQL connection fail now, and any
    new one: for a Baton stopping past its grace. LangGraph lets a cancelled run's checkpoint writes
    finish, and with the database gone each waited out the pool's 30 s for a connection. Calls that
    hold a connection finish as they would. (SQLite's checkpointer has no pool to wait for.)"""
    pool = getattr(checkpointer, "conn", None)
    if isinstance(pool, AsyncConnectionPool):
        await pool.close(timeout=1)  # its workers may be trying to connect: not waited for long


class _OncePerMinute(logging.Filter):
    """psycopg_pool's lines for failed attempts to reconnect, one a minute: with attempts every second or
    two while the database is away they were most of the log (``storage.db`` logs the outage and its end)."""

    PREFIXES = ("error connecting in", "reconnection attempt in pool")

    def __init__(self) -> None:
        super().__init__()
        self._last = -60.0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.PREFIXES):
            return True
        if record.created - self._last < 60:
            return False
        self._last = record.created
        return True


_QUIET_RECONNECTS = _OncePerMinute()


@asynccontextmanager
async def open_checkpointer(url: str, serde: SerializerProtocol | None = None) -> AsyncIterator[BaseCheckpointSaver]:
    """Yield a ready checkpointer (tables created) and close it on exit. ``serde``: LangGraph's own serializer
    unless given."""
    if is_sqlite(url):
        connection = await aiosqlite.connect(sqlite_checkpoint_path(url), timeout=30)
        try:
            await use_wal_async(connection.execute, SQLITE_BUSY_SECONDS)  # replicas started together on a new file
            await connection.execute("PRAGMA busy_timeout=30000")
            await connection.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            saver = FencedSqliteSaver(connection, serde=serde)
            await saver.setup()
            yield saver
        finally:
            await connection.close()
        return
    conninfo = postgres_conninfo(url)
    logging.getLogger("psycopg.pool").addFilter(_QUIET_RECONNECTS)  # once: a logger keeps a filter once
    pool = AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=10,
        open=False,
        # psycopg_pool waits twice as long before each attempt to reconnect (1, 2, 4 ... s) until this gives
        # up (its default: 5 minutes); ``_reconnect_while_waited_for`` then starts a new one (see there).
        reconnect_timeout=RECONNECT_GIVE_UP_SECONDS,
        # A connection is checked as it is handed out: after a PostgreSQL restart or failover every pooled one
        # is dead, and each failed one run ("AdminShutdown") when it was next used, minutes later for some.
        check=AsyncConnectionPool.check_connection,
        # PostgresSaver's own requirements: it commits itself, reads dict rows, and cannot use
        # prepared statements behind poolers.
        kwargs={"autocommit": True, "row_factory": dict_row, "prepare_threshold": 0},
    )
    await pool.open()
    try:
        saver = FencedPostgresSaver(pool, serde=serde)  # type: ignore[arg-type]
        await setup_postgres_checkpoints(url)
        reconnecting = asyncio.create_task(_reconnect_while_waited_for(pool), name="checkpointer-reconnect")
        try:
            yield saver
        finally:
            reconnecting.cancel()
            await asyncio.gather(reconnecting, return_exceptions=True)
    finally:
        await pool.close()


async def _reconnect_while_waited_for(pool: AsyncConnectionPool) -> None:
    """While a run waits for a connection the pool has not got (the database away, or just back), start an
    attempt to connect every ``RECONNECT_LOOK_SECONDS``. The pool's own attempts back off: after a 40 s
    outage it tried again only 23 s after the database was back, and the runs waiting meanwhile failed at
    its 30 s (``PoolTimeout``)."""
    while not pool.closed:  # closed early by ``fail_waiting_calls``
        await asyncio.sleep(RECONNECT_LOOK_SECONDS)
        if pool.get_stats().get("requests_waiting") and not pool.closed:
            try:
                await pool.check()  # grows the pool unless an attempt is under way
            except Exception as exc:  # an attempt that fails is the pool's to log
                log.debug("checking the checkpointer's pool failed: %s", exc)
