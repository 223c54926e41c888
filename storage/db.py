"""The async engine: one URL setting, SQLite by default, PostgreSQL in production."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import re
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import PoolClosed, PoolTimeout, TooManyRequests
from sqlalchemy import Engine, event, text
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg
from sqlalchemy.dialects.sqlite import pysqlite as sqlite_pysqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyPoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.sqlite_inline import InlineSession, SQLiteWriter, inline_connector, read_prepared, write_session
from storage.models import M, loaded, utcnow
from storage.sqlite_prepared import PREPARED, PreparedResult


log = logging.getLogger("baton.database")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


# The query parameters SQLite's driver (SQLAlchemy's pysqlite dialect) reads itself, each as a number or a flag.
SQLITE_DRIVER_OPTIONS = frozenset({"timeout", "detect_types", "check_same_thread", "cached_statements", "uri"})


def _parsed(url: str) -> URL:
    """``url`` parsed, ``postgres://`` read as ``postgresql://``; ``ValueError`` (without the URL, which
    may hold a password) for anything Baton cannot use."""
    if url != url.strip():  # a secret written with its line break: "database "baton\n" does not exist", cut there
        raise ValueError("the database URL begins or ends with a space or a line break: remove it")
    try:
        parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number, quoted in the message
        raise ValueError("not a database URL: use sqlite:///path/to/baton.db or postgresql://user:password@host/db") from None
    if "@" in (parsed.host or ""):  # "user:p@ss@host": the password ends at the first @, the rest reads as the host
        raise ValueError("the database URL's user name or password holds an '@': write it as %40")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database '{parsed.drivername}': use sqlite:///path/to/baton.db or "
                         "postgresql://user:password@host/db")
    if parsed.get_backend_name() == "sqlite":
        sqlite_path(url)
        # The query as its driver reads it: ?timeout=30s was a traceback at the first connection.
        for name in SQLITE_DRIVER_OPTIONS.intersection(parsed.query):
            try:
                _, options = sqlite_pysqlite.dialect().create_connect_args(parsed.set(query={name: parsed.query[name]}))
            except (ValueError, TypeError) as exc:  # its words without the value they quote ("... to float: '30s'")
                raise ValueError(f"SQLite's driver cannot read the URL's {name}= ({str(exc).split(':')[0]})") from None
            if options.get("uri"):  # the driver opened "baton.db?mode=ro", made empty beside the file Baton checked
                raise ValueError("Baton opens its SQLite file by its path, not as a URI: remove uri= (and mode=, "
                                 "cache=...)")
    else:  # the hosts and ports as the engine reads them: what it refuses was a traceback at the first connection
        try:
            postgresql_psycopg.dialect().create_connect_args(parsed)
        except ArgumentError:
            raise ValueError("the database URL's hosts and ports do not go together: write several hosts as "
                             "?host=h1:5432&host=h2:5432 or ?host=h1,h2&port=5432,5432") from None
    return parsed


_QUERY_PASSWORD = re.compile(r"([?&][^=&]*password=)[^&]*", re.IGNORECASE)


def check_url(url: str) -> str:
    """Raise ``ValueError`` for a database URL Baton cannot use; return it as it may be shown: without the
    password, the one before the host or one given as ``?password=`` (libpq takes it there too)."""
    return _QUERY_PASSWORD.sub(r"\1***", _parsed(url).render_as_string(hide_password=True))


PG_CONNECT_TIMEOUT_SECONDS = 10


def pg_connect_params(parsed: URL) -> dict[str, str]:
    """The query of a PostgreSQL URL with ``connect_timeout`` unless it names one: without it libpq waits
    for ever for a server that takes the connection and never answers (a hung server, a wrong port), and
    ``baton run`` hung silently at start."""
    return {"connect_timeout": str(PG_CONNECT_TIMEOUT_SECONDS), **parsed.query}  # type: ignore[dict-item]


def async_url(url: str) -> str:
    """``sqlite:///x`` -> aiosqlite, ``postgresql://`` -> psycopg (async)."""
    return _with_driver(url, "sqlite+aiosqlite")


def sync_url(url: str) -> str:
    """The same database through a synchronous driver (Alembic)."""
    return _with_driver(url, "sqlite")


def _with_driver(url: str, sqlite_driver: str) -> str:
    parsed = _parsed(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername=sqlite_driver).render_as_string(hide_password=False)
    return parsed.set(drivername="postgresql+psycopg", query=pg_connect_params(parsed)).render_as_string(
        hide_password=False)


def sqlite_path(url: str) -> str:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise ValueError("Baton needs a SQLite file (several connections share it), not :memory:")
    return database


def linked_file(path: Path) -> Path:
    """The file ``path`` links to, as far as its links go (``path`` itself when it is no link): the one SQLite
    opens, beside which it keeps its WAL (``baton.db`` linked to a data volume)."""
    try:
        return path.resolve() if path.is_symlink() else path
    except (OSError, RuntimeError):  # a link to itself (RuntimeError on Python 3.11): SQLite says what is wrong
        return path


SQLITE_BUSY_SECONDS = 30.0
# SQLite folds its WAL back into the file every 1,000 pages (4 MiB), but not past a read transaction still open (a
# backup, an operator's query): the WAL grows meanwhile, and SQLite then writes it again from its start, keeping the
# file at its peak (hundreds of MB) until the last connection closes. Above this it is cut back once written anew.
WAL_SIZE_LIMIT = 8 * 1024 * 1024
PING_TIMEOUT_SECONDS = 5.0  # how long ``Database.ping`` (``/healthz``) waits for the database's answer
# SQLSTATEs of a PostgreSQL server that cannot serve anyone now: shutting down or starting up (57P01-57P03),
# out of connection slots (53300); class 08 is every connection exception.
_UNREACHABLE_STATES = ("57P01", "57P02", "57P03", "53300")
# How psycopg words a connection that could not be made or was lost, when the server gave no SQLSTATE.
_CONNECTION_LOST = ("connection failed", "connection timeout expired", "consuming input failed",
                    "the connection is closed", "the connection is lost", "server closed the connection")


def database_unreachable(exc: BaseException | None) -> str | None:
    """Why the database cannot be reached, when ``exc`` (or what it wraps) says so: a connection refused,
    broken or timed out, a server shutting down or out of connections, no pooled connection in time;
    ``None`` for any other error (a constraint, a deadlock, a bug: those are not the database being away).
    PostgreSQL only: SQLite's errors ("database is locked") are of another kind."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, PoolTimeout | SQLAlchemyPoolTimeout):  # no connection in time (one hangs, say)
            return _first_line(exc)
        if isinstance(exc, PoolClosed | TooManyRequests):  # Baton's own doing (a stop), or its own load
            return None
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            state = exc.sqlstate
            if state is not None:
                return _first_line(exc) if state.startswith("08") or state in _UNREACHABLE_STATES else None
            # No SQLSTATE: the server said nothing. The connection lost, or a client-side refusal (a query
            # with more than 65,535 parameters), which is Baton's bug, not an outage.
            broken = exc.pgconn is not None and exc.pgconn.status == psycopg.pq.ConnStatus.BAD
            return _first_line(exc) if broken or str(exc).startswith(_CONNECTION_LOST) else None
        if isinstance(exc, DBAPIError) and exc.connection_invalidated and not isinstance(exc.orig, sqlite3.Error):
            return _first_line(exc.orig or exc)
        exc = exc.orig if isinstance(exc, DBAPIError) else exc.__cause__
    return None


# SQLite errors of the disk or of another process, not of the request: the disk full, an I/O error, the file
# made read-only or unopenable, the write lock held elsewhere past the busy timeout.
_SQLITE_UNUSABLE = (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN,
                    sqlite3.SQLITE_BUSY)


def database_unusable(exc: BaseException | None) -> str | None:
    """Why the database cannot serve a request now, when ``exc`` says so: ``database_unreachable`` for
    PostgreSQL, and on SQLite a full disk, an I/O error, a read-only file or a lock held too long."""
    if (reason := database_unreachable(exc)) is not None:
        return reason
    seen: set[int] = set()
    wrapped = False  # by SQLAlchemy: Baton's own sessions
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sqlite3.Error):
            code = getattr(exc, "sqlite_errorcode", None)
            if code is None or code & 0xFF not in _SQLITE_UNUSABLE or not (wrapped or _passed_through_storage(exc)):
                return None
            return _first_line(exc)
        wrapped = wrapped or isinstance(exc, DBAPIError)
        exc = exc.orig if isinstance(exc, DBAPIError) else exc.__cause__
    return None


_STORAGE = tuple({str(Path(__file__).parent) + os.sep, str(Path(__file__).resolve().parent) + os.sep})


def _passed_through_storage(exc: BaseException) -> bool:
    """Whether ``exc`` came through this package (Baton's database, its checkpointer): a graph's own SQLite file,
    full or locked, is the graph's failure, not Baton's database ("Baton could not write to its database", and its
    operator told to free the disk holding it)."""
    frames = exc.__traceback__
    while frames is not None:
        if frames.tb_frame.f_code.co_filename.startswith(_STORAGE):
            return True
        frames = frames.tb_next
    return False


# What an operator does about each of those SQLite errors (``database_advice``).
_SQLITE_ADVICE = {
    sqlite3.SQLITE_FULL: "free space on the disk holding it and its checkpoints file",
    sqlite3.SQLITE_IOERR: "check the disk holding it (dmesg names the device's errors)",
    sqlite3.SQLITE_READONLY: "make it and its directory writable for Baton's user again",
    sqlite3.SQLITE_CANTOPEN: "make sure its directory is there (its volume mounted) and writable for Baton's user",
    sqlite3.SQLITE_BUSY: "another process holds its write lock: see which (fuser) and stop it",
}


def database_advice(exc: BaseException | None) -> str:
    """What an operator does about ``exc``, an error ``database_unusable`` named: for SQLite by its code (a full
    disk: free space), for PostgreSQL that the server must be reachable again. Baton goes on by itself once it is."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sqlite3.Error):
            code = getattr(exc, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _SQLITE_ADVICE:
                return _SQLITE_ADVICE[code & 0xFF]
            break
        exc = exc.orig if isinstance(exc, DBAPIError) else exc.__cause__
    return "make the database reachable again"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _shown(url: str) -> str:
    try:
        return check_url(url)
    except ValueError:
        return "(a database URL Baton cannot use)"


KEPT_OUTAGES = 16  # the last outages ``DatabaseHealth.away_lately`` reads


class DatabaseHealth:
    """Whether this process reaches its database, from what its sessions and pings last met.

    The start of an outage and its end are logged once each (the requests and background jobs that
    fail meanwhile need not each say why); ``problem`` is what ``/healthz`` reports."""

    def __init__(self, shown_url: str) -> None:
        self.shown_url = shown_url
        self.problem: str | None = None
        self.since: datetime | None = None
        self._down_at = 0.0  # by time.monotonic: when the outage began
        self._outages: list[tuple[float, float | None]] = []  # the last ones, (began, ended), newest last

    def failed(self, exc: BaseException | None = None, *, reason: str | None = None) -> None:
        """Note ``exc`` (or a ``reason`` of the caller's): an outage begins if it says the database is away."""
        reason = reason or database_unreachable(exc)
        if reason is None:
            return
        if self.problem is None:
            self.since, self._down_at = datetime.now(timezone.utc), time.monotonic()
            self._outages = [*self._outages[-(KEPT_OUTAGES - 1):], (self._down_at, None)]
            log.warning("Baton cannot reach its database %s: %s; requests get a 503 and background work is "
                        "retried until it is back", self.shown_url, reason)
        self.problem = reason

    def explains(self, exc: BaseException) -> bool:
        """True when ``exc`` is the database being away: noted (the outage logged once), so the caller
        need not log it again, let alone with a traceback every time a background job meets it."""
        reason = database_unreachable(exc)
        if reason is not None:
            self.failed(reason=reason)
        return reason is not None

    def unusable(self, exc: BaseException | None) -> str | None:
        """Why the database cannot serve a request now (``database_unusable``: PostgreSQL away, SQLite unable
        to write), ``None`` for any other error; a PostgreSQL outage is noted as ``explains`` does."""
        if exc is not None and self.explains(exc):
            return self.problem
        return database_unusable(exc)

    @staticmethod
    def advice(exc: BaseException | None) -> str:
        """What an operator does about ``exc`` (``database_advice``)."""
        return database_advice(exc)

    def reached(self) -> None:
        if self.problem is not None:
            self.problem = self.since = None
            back = time.monotonic()
            if self._outages:
                self._outages[-1] = (self._outages[-1][0], back)
            log.warning("Baton reaches its database %s again, after %.1f s", self.shown_url, back - self._down_at)

    def away_lately(self, within: float) -> float | None:
        """Seconds since an outage began, while it lasts and for ``within`` seconds after it ended; ``None``
        otherwise. Outages less than ``within`` apart count as one from the first's start: a blip just after a
        long outage measured from the blip, and what ran out in the long one counted as run out again."""
        now = time.monotonic()
        began, after = None, now
        for down, back in reversed(self._outages):
            if after - (back if back is not None else now) >= within:
                break
            began, after = down, down
        return None if began is None else now - began

    def summary(self) -> str | None:
        """The problem for ``/healthz``: since when and why in short (the log line has the server's address)."""
        if self.problem is None or self.since is None:
            return None
        # The last part of the reason, without what it quotes: "...failed: Connection refused", but a pg_hba
        # refusal quotes the host, the user and the database, and /readyz is open to anyone.
        reason = re.sub(r'"[^"]*"', '"…"', self.problem.rsplit(": ", 1)[-1])
        return f"the database cannot be reached since {self.since.isoformat(timespec='seconds')}: {reason}"


CLOCK_READ_SECONDS = 60.0  # how often a PostgreSQL database's clock is read again (``Database.read_clock``)


class DatabaseClock:
    """The database server's time, as this process reckons it from its own clock and the offset it last read.

    Replicas compare times each other wrote (a thread's lease, ``lease_until``): on each one's own clock, a
    replica whose clock was minutes ahead took every lease another held, and one behind wrote leases every
    other replica found long run out. The server's clock is the one clock they share. Its offset is read when
    a connection is opened and once a minute after (no statement more per request); SQLite's processes share
    their machine's clock, so its offset stays nought."""

    def __init__(self) -> None:
        self.offset = timedelta(0)
        self.read_at: float | None = None  # ``time.monotonic()`` of the last reading

    def now(self) -> datetime:
        return utcnow() + self.offset

    def due(self) -> bool:
        return self.read_at is None or time.monotonic() - self.read_at >= CLOCK_READ_SECONDS

    def learn(self, server_now: datetime, asked: datetime, answered: datetime) -> None:
        """Take the server's ``server_now``, read between ``asked`` and ``answered`` on this process's clock."""
        self.offset = server_now - (asked + (answered - asked) / 2)
        self.read_at = time.monotonic()


_SERVER_NOW = "SELECT statement_timestamp()"


# A write transaction: an AsyncSession on PostgreSQL, its synchronous stand-in on SQLite (same methods).
Transaction = AsyncSession | InlineSession


def create_engine(url: str, *, inline: bool = True, durable: bool = True) -> AsyncEngine:
    """The async engine for ``url``: every session on PostgreSQL; on SQLite, reads (``create_sqlite_writer``
    makes the engines for its writes).

    On SQLite, ``inline`` runs statements on the event loop thread (``storage.sqlite_inline``):
    right for Baton's small indexed statements; ``inline=False`` keeps aiosqlite's worker thread,
    for the rare long scans (digest statistics) that must not stall the loop.
    ``durable=False`` (PostgreSQL): its commits do not wait for the disk (see ``Database.session``).
    """
    if is_sqlite(url):
        path = sqlite_path(url)
        if inline:
            engine = create_async_engine(async_url(url), async_creator=inline_connector(path, SQLITE_BUSY_SECONDS))
        else:
            engine = create_async_engine(async_url(url), connect_args={"timeout": SQLITE_BUSY_SECONDS})
        _configure_sqlite(engine.sync_engine, inline=inline)
        return engine
    if not durable:
        return create_async_engine(_without_waiting_for_the_disk(async_url(url)), pool_size=5, max_overflow=5,
                                   pool_pre_ping=True)
    return create_async_engine(async_url(url), pool_size=10, max_overflow=10, pool_pre_ping=True)


def _without_waiting_for_the_disk(url: str) -> str:
    """``url`` with ``synchronous_commit=off`` added to the server options it names, if any (a schema in
    ``-csearch_path=...``, say): an ``options`` connect argument replaced them, and those connections
    looked for Baton's tables in the wrong schema."""
    parsed = make_url(url)
    given = parsed.query.get("options", ())
    options = [*([given] if isinstance(given, str) else given), "-c synchronous_commit=off"]
    return parsed.update_query_dict({"options": " ".join(options)}).render_as_string(hide_password=False)


def create_sqlite_writer(url: str) -> SQLiteWriter:
    """The SQLite write connection for transactions run on the event loop (``sqlite_inline.write_session``).

    No busy timeout: taking the write lock is awaited there instead. The connection is in autocommit
    mode; ``write_session`` issues ``BEGIN IMMEDIATE`` itself, and the ORM session made over the
    connection for the statements that are not prepared joins that transaction.
    """
    path = sqlite_path(url)

    def connect() -> sqlite3.Connection:
        return _sqlite_connection(path)  # synchronous=NORMAL: durable writes sync the WAL (SQLiteWriter)

    def make_engine(creator: Callable[[], Any]) -> Engine:
        # StaticPool: the one connection, never reset on return (that would roll back our transaction).
        return create_sync_engine(sync_url(url), creator=creator, poolclass=StaticPool, pool_reset_on_return=None)

    # SQLite keeps the WAL beside the file a symlink points to, named after it: beside a symlinked baton.db no
    # "baton.db-wal" is found, and durable writes were never synced.
    return SQLiteWriter(connect, make_engine, f"{os.path.realpath(path)}-wal")


def _sqlite_connection(path: str) -> sqlite3.Connection:
    """A plain ``sqlite3`` connection in autocommit mode, used on the event loop thread (no busy timeout)."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    _sqlite_pragmas(connection, synchronous="NORMAL", busy_ms=0)
    return connection


def _sqlite_pragmas(connection: Any, synchronous: str, busy_ms: int) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    cursor.close()


def _configure_sqlite(engine: Engine, inline: bool) -> None:
    """A read engine: WAL, a busy timeout, and an explicit plain BEGIN (under WAL readers never block anyone).

    Writers use ``BEGIN IMMEDIATE`` (``sqlite_inline.write_session``): with the default deferred
    BEGIN, two connections that read and then write deadlock and one fails at once with "database
    is locked" instead of waiting its turn; with IMMEDIATE the second waits. That is also what
    serialises writers across processes.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        if dbapi_connection.isolation_level is not None:
            dbapi_connection.isolation_level = None
        # Inline connections never wait for a lock on the loop's thread: ``sqlite_inline`` awaits it.
        _sqlite_pragmas(dbapi_connection, synchronous="FULL", busy_ms=0 if inline else int(SQLITE_BUSY_SECONDS * 1000))

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")


def prepared(statement: Any) -> Any:
    """Mark a hot Core statement (a module-level constant) as prepared: on SQLite it is compiled once
    and run on the ``sqlite3`` connection itself (``storage.sqlite_prepared``); PostgreSQL runs it
    through SQLAlchemy as any other."""
    return statement.execution_options(**{PREPARED: True})


class WriterQueue:
    """This process's SQLite writers, one at a time: urgent ones first, the others in arrival order.

    Urgent is the write a platform is waiting for: storing an inbound event before it is
    acknowledged (Slack gives up after 3 s). Without the priority that write queues behind every
    run's transactions, and under a burst the acknowledgement waits for the whole backlog.
    """

    def __init__(self) -> None:
        self._busy = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._others: deque[asyncio.Future[None]] = deque()

    @asynccontextmanager
    async def turn(self, urgent: bool = False) -> AsyncIterator[None]:
        await self._wait(urgent)
        try:
            yield
        finally:
            self._pass_on()

    async def _wait(self, urgent: bool) -> None:
        if not self._busy:
            self._busy = True
            return
        waiter = asyncio.get_running_loop().create_future()
        line = self._urgent if urgent else self._others
        line.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._pass_on()  # our turn came as we were cancelled: hand it to the next writer
            else:
                line.remove(waiter)
            raise

    def _pass_on(self) -> None:
        for line in (self._urgent, self._others):
            while line:
                waiter = line.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._busy = False


class Database:
    """Sessions that commit on success and roll back on error.

    ``session()`` is for work that writes; ``read()`` for work that only reads. On SQLite the
    writers of this process also queue (``WriterQueue``) before taking the database's write
    lock: waiting in line is cheaper than SQLite's sleep-and-retry busy handler. ``urgent=True``
    is for the write a platform waits for (see ``WriterQueue``).

    ``durable=False`` is for a write that nothing outside this process sees before a later durable
    write (the output-commit rule): its commit does not wait for the disk (on SQLite no sync of the
    WAL follows it, see ``SQLiteWriter``; PostgreSQL ``synchronous_commit=off``). A process crash
    loses none of it; a power loss or OS crash can lose it only together with everything written
    after it, since the next durable commit flushes the whole log up to itself. So every write
    that is followed by something the world sees (an acknowledgement, a side effect, a message
    sent) must be durable, and the ones in between need not wait for the disk each time.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.health = DatabaseHealth(_shown(url))
        self._writers: WriterQueue | None = None
        if is_sqlite(url):
            # Writes: synchronous sessions on the event loop on one connection (``sqlite_inline``), durable
            # or not (``sqlite_writer``); reads: the inline async driver; scans: aiosqlite's worker thread.
            self.read_engine = create_engine(url)
            self._async_engines = (self.read_engine, create_engine(url, inline=False))
            self._reads = async_sessionmaker(self.read_engine, class_=AsyncSession, expire_on_commit=False)
            self._scans = async_sessionmaker(self._async_engines[1], class_=AsyncSession, expire_on_commit=False)
            self._writers = WriterQueue()
            self._reader: sqlite3.Connection | None = None  # for ``fetch``, opened on first use
        else:
            durable, lazy = create_engine(url), create_engine(url, durable=False)
            self.read_engine = durable
            self._async_engines = (durable, lazy)
            self._writes = tuple(async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
                                 for engine in self._async_engines)
            self._reads = self._scans = self._writes[0]
            for engine in self._async_engines:  # a connection handed out has answered its pre-ping: it is back
                event.listen(engine.sync_engine.pool, "checkout", self._answered)
            event.listen(durable.sync_engine.pool, "connect", self._read_clock_on)
        self.clock = DatabaseClock()

    @functools.cached_property
    def sqlite_writer(self) -> SQLiteWriter:
        """The SQLite write connection, opened at the first write: the commands that only read (``baton
        threads``) opened it too, and on a read-only file they stopped on a traceback instead of reading.
        PostgreSQL has none (``getattr(database, "sqlite_writer", None)`` is ``None``)."""
        if self._writers is None:
            raise AttributeError("a PostgreSQL database has no SQLite writer")
        return create_sqlite_writer(self.url)

    def _answered(self, *_checkout: Any) -> None:
        self.health.reached()

    def now(self) -> datetime:
        """The database's time (``DatabaseClock``): what leases are written and compared with."""
        return self.clock.now()

    def _read_clock_on(self, connection: Any, _record: Any) -> None:
        """Read the server's clock on a connection just opened: before this process takes its first lease."""
        asked = utcnow()
        cursor = connection.cursor()
        try:
            cursor.execute(_SERVER_NOW)
            server_now = cursor.fetchone()[0]
        finally:
            cursor.close()
            connection.rollback()  # the connection is handed out as it came: no transaction of ours left open
        self.clock.learn(server_now, asked, utcnow())

    async def read_clock(self, *, unless_read: bool = False) -> None:
        """Read the database's clock again when the last reading is a minute old (a clock set meanwhile);
        ``unless_read``: only if it was never read (no connection opened yet)."""
        if self._writers is not None or not self.clock.due() or (unless_read and self.clock.read_at is not None):
            return
        async with self.read() as session:
            await session.connection()  # checked out (and pinged) first: the reading brackets the statement alone
            asked = utcnow()
            server_now = (await session.exec(text(_SERVER_NOW))).one()[0]  # type: ignore[call-overload]
            self.clock.learn(server_now, asked, utcnow())

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.url)

    @asynccontextmanager
    async def session(self, *, urgent: bool = False, durable: bool = True) -> AsyncIterator[Transaction]:
        """A write transaction; what ``when_committed`` was given runs right after its commit."""
        if self._writers is None:
            async with self._watched(self._writes[0 if durable else 1]) as session:
                yield session
            _run_committed(session)
            return
        async with self._writers.turn(urgent), write_session(self.sqlite_writer, SQLITE_BUSY_SECONDS) as inline:
            yield inline
        _run_committed(inline)
        if durable:  # after the turn is passed on: the next writer commits while this one waits for the disk
            await self.sqlite_writer.synced()

    @asynccontextmanager
    async def _watched(self, sessions: Callable[[], AsyncSession]) -> AsyncIterator[AsyncSession]:
        """A transaction of ``sessions``, its failure noted in ``health`` (an outage's start; its end is the
        next connection handed out, ``_answered``: a session that never asked for one proves nothing)."""
        try:
            async with sessions() as session, session.begin():
                yield session
        except Exception as exc:
            self.health.failed(exc)
            raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._watched(self._reads) as session:
            yield session

    async def ping(self, timeout: float = PING_TIMEOUT_SECONDS) -> str | None:
        """``None`` when the database answers a ``SELECT 1`` within ``timeout``; else why not, as
        ``health.summary()`` says it (``/healthz``). Any other error is raised. A ping that times out is
        not taken for an outage (every pooled connection may be busy under a burst): only reported."""
        try:
            async with asyncio.timeout(timeout), self.read() as session:
                await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        except TimeoutError:
            return self.health.summary() or f"the database did not answer within {timeout:g} s"
        except Exception as exc:
            if (reason := database_unusable(exc)) is None:
                raise
            return self.health.summary() or f"the database cannot be used: {reason}"  # SQLite's (no outage kept)
        return self.health.summary()

    async def fetch(self, statement: Any, params: dict[str, Any] | None = None) -> PreparedResult:
        """Run one ``prepared`` SELECT on its own, outside any transaction; its rows (``first``, ``one``, ``all``).

        For the reads made every second or so whether anything happens or not (the outbox's idle
        poll, the sweeper): on SQLite the statement runs on a read connection of its own, without
        the ORM's ``AsyncSession``, whose set-up cost 15 to 30 times such a statement and kept an
        idle Baton at ~1% of a core. PostgreSQL runs it in a ``read()`` session.
        """
        if self._writers is None:
            async with self.read() as session:
                return PreparedResult(list((await session.exec(statement, params=params)).all()))
        if self._reader is None:
            self._reader = _sqlite_connection(sqlite_path(self.url))
        return await read_prepared(self._reader, statement, params, SQLITE_BUSY_SECONDS)

    @asynccontextmanager
    async def scan(self) -> AsyncIterator[AsyncSession]:
        """A read that may take long (aggregates over many rows): on SQLite it runs off the event loop."""
        async with self._watched(self._scans) as session:
            yield session

    async def dispose(self) -> None:
        for engine in self._async_engines:
            await engine.dispose()
        if self._writers is not None:  # SQLite's write connection, if opened, and the one ``fetch`` reads on
            if (writer := self.__dict__.pop("sqlite_writer", None)) is not None:
                writer.close()
            if self._reader is not None:
                self._reader.close()
                self._reader = None


async def lock_for_transaction(session: Transaction, name: str) -> None:
    """Hold the lock called ``name`` until ``session``'s transaction ends, so that a check and the write it
    decides are one step across processes. SQLite's write transactions take turns already; PostgreSQL
    (READ COMMITTED) takes a transaction-scoped advisory lock on a 64-bit hash of ``name``."""
    if isinstance(session, InlineSession):
        return
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    await session.exec(text("SELECT pg_advisory_xact_lock(:key)"), params={"key": key})  # type: ignore[call-overload]


_COMMITTED = "baton_when_committed"


def when_committed(session: Transaction, callback: Callable[[], None]) -> None:
    """Call ``callback`` once ``session`` has committed, before its commit is waited on to reach the disk
    (never, if it rolls back).

    For work that the committed rows start and that shows nothing outside this process before a
    durable write of its own, which takes this commit to the disk too (a WAL is written in order):
    such work need not wait for this commit's sync. On SQLite it starts before the sync, which the
    event loop makes once that work first waits (e.g. for the checkpointer's thread).
    """
    session.info.setdefault(_COMMITTED, []).append(callback)


def _run_committed(session: Transaction) -> None:
    for callback in session.info.pop(_COMMITTED, ()):
        callback()


async def insert_ignore(session: Transaction, table: type[Any], values: dict[str, Any], conflict: list[str]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; true when the row was inserted (SQLite and PostgreSQL)."""
    return await _insert_returning(session, table, values, conflict, conflict) is not None


async def insert_new_id(session: Transaction, table: type[Any], values: dict[str, Any], conflict: list[str]) -> int | None:
    """INSERT ... ON CONFLICT DO NOTHING; the new row's ``id``, or ``None`` when it already existed."""
    row = await _insert_returning(session, table, values, conflict, ["id"])
    return None if row is None else int(row[0])


async def insert_returning_id(session: Transaction, table: type[Any], values: dict[str, Any]) -> Any:
    """A plain INSERT of ``values`` (every column the row needs: model defaults are not applied); the new ``id``."""
    return (await session.exec(_plain_insert(table), params=values)).one()[0]  # type: ignore[call-overload]


async def insert_row(session: Transaction, model: type[M], values: dict[str, Any]) -> M:
    """Insert ``values`` (every column but ``id``) in one Core statement; the row as a ``model`` instance.

    For rows written on every request that the caller keeps using as objects (runs): the ORM's unit
    of work, and even building the instance through ``__init__``, cost several times the statement.
    The instance belongs to no session, so later changes to it are not saved.
    """
    return loaded(model, {**values, "id": await insert_returning_id(session, model, values)})


@functools.cache
def _plain_insert(table: type[Any]) -> Any:
    return prepared(table.__table__.insert().returning(table.__table__.c["id"]))


async def _insert_returning(session: Transaction, table: type[Any], values: dict[str, Any], conflict: list[str],
                            returning: list[str]) -> Any:
    statement = _insert_statement(session.bind.dialect.name, table, tuple(conflict), tuple(returning))  # type: ignore[union-attr]
    # RETURNING rather than rowcount: drivers disagree on rowcount for ON CONFLICT DO NOTHING.
    result = await session.exec(statement, params=values)  # type: ignore[call-overload]
    return result.first()


@functools.cache
def _insert_statement(dialect: str, table: type[Any], conflict: tuple[str, ...], returning: tuple[str, ...]) -> Any:
    """Built once per shape; the values come as parameters (building it per call cost more than running it)."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    # On the Table, not the model: an ORM-enabled INSERT costs several times more CPU for the same SQL.
    columns = table.__table__.c
    return prepared(insert(table.__table__).on_conflict_do_nothing(index_elements=list(conflict))
                    .returning(*[columns[name] for name in returning]))
