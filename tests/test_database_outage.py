"""Baton's PostgreSQL database goes away while Baton runs, and comes back.

A ``DatabaseProxy`` (tests/db_proxy.py) stands between a real ``baton run`` and the shared server: cut, it
closes every connection and refuses new ones, as a server that went down; restored, it listens again.
During the outage the playground's API answers a 503 with the reason (it was a 500 and a traceback, and
the next request on the same connection was reset), ``/readyz`` names the database (``/healthz`` said all was
well), the log says once that the database is away and once that it is back, and a live event stream
stays open. Once it is back Baton goes on by itself: nothing half stored, nothing run twice.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from storage.db import database_unreachable
from tests.db_proxy import DatabaseProxy
from tests.support import BatonProcess, overrides, runs_in, slow_release, wait_for

OUTAGE_LINE = "Baton cannot reach its database"
BACK_LINE = "reaches its database"


@pytest.fixture
def proxy() -> Iterator[DatabaseProxy]:
    started = DatabaseProxy().start()
    yield started
    for process in [process for process in BatonProcess.running if f":{started.port}/" in process.database_url]:
        process.stop()  # before the proxy: a Baton stopping without its database waits out its grace
    started.stop()


def readyz(baton: BatonProcess) -> httpx.Response:
    return httpx.get(f"{baton.url}/readyz", timeout=15)


def log_of(baton: BatonProcess) -> str:
    return baton.log.read_text()


def cut_and_wait(proxy: DatabaseProxy, baton: BatonProcess) -> None:
    proxy.cut()
    wait_for(lambda: OUTAGE_LINE in log_of(baton) or readyz(baton).status_code == 503, 20, "Baton to see the outage")


def restore_and_wait(proxy: DatabaseProxy, baton: BatonProcess) -> None:
    proxy.restore()
    wait_for(lambda: readyz(baton).status_code == 200, 30, "/readyz to say all is well again")


@pytest.mark.postgres
def test_requests_in_an_outage_get_a_503_with_the_reason_and_nothing_is_half_stored(
        start_baton: Any, postgres_url: str, proxy: DatabaseProxy, counter: Path) -> None:
    baton = start_baton(proxy.url(postgres_url))
    pg = baton.client()
    done = pg.ask("@baton run uptime")
    pg.wait_reply(done, "did uptime")
    asked = pg.ask("@baton run restart service=web")
    card = pg.wait_card(asked)

    cut_and_wait(proxy, baton)
    ready = readyz(baton)
    assert ready.status_code == 503, ready.text
    assert "cannot be reached" in ready.json()["problems"]["database"], ready.text
    # liveness stays: a replica restarted now could not start, and would come back late (the back-off)
    assert httpx.get(f"{baton.url}/healthz", timeout=15).status_code == 200
    assert httpx.head(f"{baton.url}/readyz", timeout=15).status_code == 503
    answers = {
        "message": pg.say("@baton run uptime force", event_id="in-the-outage"),
        "click": pg.click(card, "bob", event_id="click-in-the-outage"),
        "thread": pg.http.get(f"/api/threads/{done}/messages"),
        "channel": pg.http.get("/api/channels/general/messages"),
        "reply in a thread": pg.say("and again", thread=done),
    }
    for what, answer in answers.items():  # the same keep-alive connection throughout: none was reset
        assert answer.status_code == 503, (what, answer.status_code, answer.text)
        assert answer.headers["content-type"] == "application/json", (what, answer.text)
        assert "database cannot be reached" in answer.json()["detail"], (what, answer.text)
        assert int(answer.headers["retry-after"]) > 0, what

    restore_and_wait(proxy, baton)
    # Nothing of the refused requests was stored: the message is not there (nor handed over later by the
    # look for stranded messages), the card is undecided, the command did not run.
    texts = [m["text"] for m in pg.http.get("/api/channels/general/messages").json()["messages"]]
    assert texts == ["@baton run uptime", "@baton run restart service=web"]
    assert "and again" not in [m["text"] for m in pg.replies(done)]
    assert runs_in(counter) == ["uptime"]
    # The same requests sent again, as the page does (same event ids), are carried out once.
    again = pg.say("@baton run uptime force", event_id="in-the-outage")
    assert again.status_code == 201 and again.json()["delivery"] == "accepted", again.text
    pg.wait_reply(again.json()["thread_id"], "did uptime")
    clicked = pg.click(card, "bob", event_id="click-in-the-outage")
    assert clicked.status_code == 202 and clicked.json()["delivery"] == "accepted", clicked.text
    wait_for(lambda: runs_in(counter) == ["uptime", "uptime", "restart web"], 20, "each command run once")
    assert pg.click(card, "bob", event_id="click-in-the-outage").json()["delivery"] == "duplicate"

    log = log_of(baton)
    assert "Exception in ASGI application" not in log  # the 503s come without a traceback
    assert log.count(OUTAGE_LINE) == 1, log[-3000:]
    assert log.count(BACK_LINE) == 1, log[-3000:]
    # The outage's one line says why: a new connection refused, or (when a pooled one met the cut first, as on
    # a loaded machine) the old one closed under it.
    outage = next(line for line in log.splitlines() if OUTAGE_LINE in line)
    assert "Connection refused" in outage or "server closed the connection" in outage, outage


@pytest.mark.postgres
def test_a_request_accepted_before_the_outage_is_answered_once_after_it(
        start_baton: Any, postgres_url: str, proxy: DatabaseProxy, counter: Path) -> None:
    """The database goes away while a command runs (nothing of Baton's is talking to it then) and comes
    back before it ends: the run's next writes wait for it, both requests are answered, each once.
    (A cut that breaks a statement in flight fails that run: the README's "When the database goes away".)"""
    baton = start_baton(proxy.url(postgres_url))
    pg = baton.client()
    thread = pg.ask("@baton run slow seconds=4")
    follow_up = pg.say("@baton run uptime force", thread=thread)  # queued behind the slow one
    assert follow_up.status_code == 201 and follow_up.json()["delivery"] == "accepted", follow_up.text
    # The ledger's entry committed: the command runs now, and the run says nothing to the database until it
    # ends (the audit line "effect.started" is written in that transaction: a cut then broke its commit).
    wait_for(lambda: _effects(postgres_url) == ["started"], 20, "the slow command to start")
    cut_and_wait(proxy, baton)
    restore_and_wait(proxy, baton)

    answers = wait_for(lambda: (texts := [m["text"] for m in pg.bot_replies(thread)])
                       and any("slept" in text for text in texts) and any("did uptime" in text for text in texts)
                       and texts, 60, "both requests answered")
    assert sum("slept" in text for text in answers) == 1, answers
    assert sum("did uptime" in text for text in answers) == 1, answers
    assert not any("failed" in text.lower() for text in answers), answers
    assert runs_in(counter) == ["uptime"]
    fresh = pg.ask("@baton run uptime force")  # and a new request after it
    pg.wait_reply(fresh, "did uptime")
    assert runs_in(counter) == ["uptime", "uptime"]


@pytest.mark.postgres
def test_a_command_that_ends_while_the_database_is_away_keeps_its_outcome(
        start_baton: Any, postgres_url: str, proxy: DatabaseProxy, counter: Path) -> None:
    """The database goes away while a command runs, and the command ends before it is back (a failover of a few
    seconds): the run's next write, the command's outcome before its step's checkpoint, failed at once, the run
    stopped ("Baton's database cannot be written or reached"), its end could not be stored either, and once its
    lease ran out the thread was told the command's "outcome is unknown". The write waits for the database, as a
    checkpoint's connection does, and the run ends as it would have."""
    baton = start_baton(proxy.url(postgres_url))
    pg = baton.client()
    thread = pg.ask("@baton run slow seconds=9.9")
    wait_for(lambda: _effects(postgres_url) == ["started"], 20, "the slow command to start")
    cut_and_wait(proxy, baton)
    slow_release(counter).touch()  # the command ends now, the database away
    wait_for(lambda: "checkpoint waits for the database" in log_of(baton) or "cannot be written or reached"
             in log_of(baton), 60, "the run to meet the outage")  # a bound: 6 s alone, over 20 s in a slow suite
    assert "cannot be written or reached" not in log_of(baton), log_of(baton)[-2000:]
    restore_and_wait(proxy, baton)
    reply = pg.wait_reply(thread, "slept", timeout=30)
    assert "unknown" not in reply["text"] and _effects(postgres_url) == ["done"], reply["text"]


def _effects(database_url: str) -> list[str]:
    """The effects ledger's statuses, read past the proxy."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        return [row[0] for row in connection.execute("SELECT status FROM effects ORDER BY id").fetchall()]


@pytest.mark.postgres
def test_a_live_event_stream_stays_open_through_an_outage(
        start_baton: Any, postgres_url: str, proxy: DatabaseProxy) -> None:
    baton = start_baton(proxy.url(postgres_url))
    pg = baton.client()
    lines: queue.Queue[str | None] = queue.Queue()

    def listen() -> None:
        try:
            with httpx.stream("GET", f"{baton.url}/api/events", timeout=httpx.Timeout(5, read=30)) as stream:
                for line in stream.iter_lines():
                    lines.put(line)
        except httpx.HTTPError as exc:
            lines.put(f"error: {exc!r}")
        lines.put(None)  # the stream ended

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert lines.get(timeout=10) == ": connected"
    cut_and_wait(proxy, baton)
    wait_for(lambda: "cannot be reached" in drain(lines), 10, "the stream to say the database is away")
    restore_and_wait(proxy, baton)
    thread = pg.ask("@baton hello after the outage")
    wait_for(lambda: f'"id": {thread},' in drain(lines), 20, "the message after the outage on the same stream")
    assert listener.is_alive()


def drain(lines: queue.Queue[str | None]) -> str:
    """What the stream said since the last look; fails when it ended."""
    said = []
    while True:
        try:
            line = lines.get_nowait()
        except queue.Empty:
            return "\n".join(said)
        assert line is not None, f"the event stream ended: {said}"
        said.append(line)


async def test_an_outage_ends_when_a_connection_answers_not_when_a_session_asked_for_none() -> None:
    from sqlalchemy import text

    from storage.db import Database

    database = Database("postgresql://baton@127.0.0.1:1/baton")  # port 1: nothing listens
    try:
        with pytest.raises(OperationalError):
            async with database.read() as session:
                await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        assert database.health.problem is not None
        async with database.read():
            pass  # no statement, no connection: it says nothing of the database (it ended the outage)
        assert database.health.problem is not None
    finally:
        await database.dispose()


def test_what_counts_as_the_database_being_away() -> None:
    refused = psycopg.OperationalError('connection failed: connection to server at "db", port 5432 failed: '
                                       "Connection refused\n\tIs the server running?")
    wrapped = OperationalError("SELECT 1", {}, refused)
    wrapped.__cause__ = refused
    assert database_unreachable(wrapped) == str(refused).splitlines()[0]
    assert database_unreachable(refused) is not None
    from psycopg_pool import PoolTimeout
    assert database_unreachable(PoolTimeout("couldn't get a connection after 30.00 sec")) is not None
    # A deadlock, a constraint or SQLite's lock are errors of another kind: a 500 (or the caller's handling).
    deadlock = psycopg.errors.DeadlockDetected("deadlock detected")
    assert database_unreachable(OperationalError("UPDATE", {}, deadlock)) is None
    assert database_unreachable(IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("dup"))) is None
    assert database_unreachable(OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked"))) is None
    assert database_unreachable(ValueError("no")) is None
    # No SQLSTATE is not enough: psycopg refusing a query client-side is Baton's bug, with the connection fine;
    # a pool Baton closed itself (a stop) or overloaded is not the database being away either.
    too_many = psycopg.OperationalError("sending query and params failed: number of parameters must be between 0 "
                                        "and 65535")
    assert database_unreachable(OperationalError("INSERT", {}, too_many)) is None
    from psycopg_pool import PoolClosed, TooManyRequests
    assert database_unreachable(PoolClosed("the pool 'pool-1' is closed")) is None
    assert database_unreachable(TooManyRequests("the pool 'pool-1' has already 10 requests waiting")) is None
    broken = psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly")
    assert database_unreachable(broken) is not None
    from sqlalchemy.exc import TimeoutError as QueuePoolTimeout  # every pooled connection held (by a hung server)
    assert database_unreachable(QueuePoolTimeout("QueuePool limit of size 10 overflow 10 reached")) is not None


@pytest.mark.postgres
def test_an_outage_is_logged_once_not_as_a_traceback_every_half_second(
        start_baton: Any, postgres_url: str, proxy: DatabaseProxy) -> None:
    """124 tracebacks of ~80 lines in a 20 s outage: the outbox's poll (every 0.5 s), the sweeper (every
    1 s), the lease's renewal and the stranded-message loop each logged the same outage every time; the digests'
    scheduler (every minute) still did, with two chained tracebacks on every replica."""
    # The outbox's poll and the sweeper five and ten times as often: the 20 tries come in ~1.5 s, not ~7 s; the
    # digests' look for due schedules too.
    quick_polls = overrides({"adapters.playground.PlaygroundAdapter.idle_poll_seconds": 0.1,
                             "bot.app.SWEEP_INTERVAL": 0.1, "bot.scheduler.RECONCILE_SECONDS": 0.1})
    baton = start_baton(proxy.url(postgres_url), env=quick_polls)
    pg = baton.client()
    thread = pg.ask("@baton hello")
    wait_for(lambda: pg.bot_replies(thread), 20, "an answer")
    proxy.cut(count=True)
    # the outbox's poll and the sweeper each met the outage several times
    wait_for(lambda: proxy.refused >= 20, 30, "Baton to try the database 20 times")
    restore_and_wait(proxy, baton)
    log = log_of(baton)
    assert "Traceback" not in log, log[-4000:]
    assert log.count(OUTAGE_LINE) == 1 and log.count(BACK_LINE) == 1, log[-4000:]


async def test_a_full_disk_gets_a_503_with_the_reason_and_baton_goes_on_once_there_is_room(
        tmp_path: Path, config_path: Path) -> None:
    """SQLite on a full disk: each message was a 500 "Internal Server Error" with a traceback in the log.
    (The disk is "full" here by SQLite's own ``max_page_count`` on Baton's writing connection.)"""
    from bot.server import create_app
    from bot.settings import Settings

    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'baton.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
        writer = app.state.baton.db.sqlite_writer.connection
        writer.execute(f"PRAGMA max_page_count={writer.execute('PRAGMA page_count').fetchone()[0]}")
        answers = []
        for number in range(500):  # until the pages SQLite has free are used up
            answers.append(await http.post("/api/messages", json={
                "channel": "general", "user": "alice", "text": f"note {number}: the deploy went fine"}))
            if answers[-1].status_code != 201:
                break
        refused = answers[-1]
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5", refused.text
        assert "cannot be written just now (database or disk is full)" in refused.json()["detail"]
        stored = (await http.get("/api/channels/general/messages", params={"limit": 500})).json()["messages"]
        assert len(stored) == len(answers) - 1  # the refused one was not half stored

        writer.execute("PRAGMA max_page_count=1073741823")  # room again
        asked = await http.post("/api/messages", json={"channel": "general", "user": "alice",
                                                       "text": "@baton run uptime"})
        assert asked.status_code == 201, asked.text
        thread = asked.json()["thread_id"]

        async def replies() -> list[str]:
            while True:
                found = (await http.get(f"/api/threads/{thread}/messages")).json()["replies"]
                if found:
                    return [reply["text"] for reply in found]
                await asyncio.sleep(0.05)

        assert "did uptime" in (await asyncio.wait_for(replies(), 20))[0]
