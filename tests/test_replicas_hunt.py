"""Several Batons on one database: a replica that stalls past its claim, processes that start together,
a database a newer Baton migrated, a PostgreSQL URL that names a schema."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import select

from bot.app import Baton
from bot.messages import InboundMessage, Location, Message
from bot.outbox import Delivery, Outbox
from bot.settings import Settings
from storage.db import Database, sqlite_path
from storage.migrate import upgrade
from storage.models import OutboxMessage, PlaygroundMessage, utcnow
from tests.migrate_together import upgrade_together
from tests.support import run_cli

HERE = Location(platform="slack", workspace="T1", channel="C1", thread="1.0")


async def _claim_runs_out(db: Database, row_id: int) -> None:
    """As if the replica holding the claim stalled past it (a paused VM, a network partition)."""
    async with db.session() as session:
        await session.exec(update(OutboxMessage).where(OutboxMessage.id == row_id)  # type: ignore[call-overload]
                           .values(claimed_until=utcnow() - timedelta(seconds=1)))


async def _row(db: Database, row_id: int) -> OutboxMessage:
    async with db.read() as session:
        row = await session.get(OutboxMessage, row_id)
    assert row is not None
    return row


@pytest.mark.asyncio
async def test_a_stalled_replica_that_settles_a_message_another_replica_sent_does_not_have_it_sent_again(
        database: Database) -> None:
    """The replica whose claim ran out answered late: its retry (the platform timed out) put the row the
    other replica had sent back in the queue, and the message was posted a second time; its "failed"
    marked a sent message failed."""
    stalled, survivor = Outbox(database, worker="stalled"), Outbox(database, worker="survivor")
    async with database.session() as session:
        await stalled.enqueue(session, HERE, Message.text("restarting web"))
    [delivery] = await stalled.claim("slack", "stalled")
    await _claim_runs_out(database, delivery.id)
    [taken] = await survivor.claim("slack", "survivor")
    assert taken.id == delivery.id
    await survivor.delivered(taken.id, "ts-by-survivor")

    await stalled.retry(delivery.id, 0, "the platform timed out")
    assert await survivor.claim("slack", "survivor") == []  # not sent again
    await stalled.failed(delivery.id, "gave up")
    await stalled.delivered(delivery.id, "ts-by-stalled")
    row = await _row(database, delivery.id)
    assert (row.status, row.platform_message_id, row.claimed_by) == ("sent", "ts-by-survivor", "survivor")


@pytest.mark.asyncio
async def test_a_claim_nobody_took_over_is_still_settled_by_its_replica_after_it_ran_out(database: Database) -> None:
    outbox = Outbox(database, worker="slow")
    async with database.session() as session:
        await outbox.enqueue(session, HERE, Message.text("first"))
        await outbox.enqueue(session, HERE, Message.text("second"))
    [first] = await outbox.claim("slack", "slow")
    await _claim_runs_out(database, first.id)
    await outbox.delivered(first.id, "ts-1")
    assert (await _row(database, first.id)).status == "sent"
    [second] = await outbox.claim("slack", "slow")
    await _claim_runs_out(database, second.id)
    await outbox.retry(second.id, 0, "a 503")
    assert (await _row(database, second.id)).status == "pending"


async def test_a_playground_replica_that_stalled_past_its_claim_does_not_post_what_another_replica_posted(
        database_url: str, config_path: Path) -> None:
    """The playground promises each message once: its send stores the message and marks the row in one
    transaction. The mark did not check the claim was still the replica's, so a replica that stalled
    between claiming a reply and storing it stored it a second time beside the one another replica had."""
    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        playground = next(adapter for adapter in baton.adapters if adapter.name == "playground")
        survivor = Outbox(baton.db, worker="survivor")
        posted_elsewhere: list[int] = []
        send, deliver, settled = playground.send, playground._deliver, asyncio.Event()

        async def stalled_send(delivery: Delivery) -> str | None:
            await _claim_runs_out(baton.db, delivery.id)
            [taken] = await survivor.claim("playground", "survivor")  # ... and posts it:
            await survivor.delivered(taken.id, "posted-by-survivor")
            posted_elsewhere.append(taken.id)
            return await send(delivery)  # the stalled replica goes on

        async def deliver_once(delivery: Delivery) -> None:
            try:
                await deliver(delivery)
            finally:
                settled.set()

        playground.send = stalled_send  # type: ignore[method-assign]
        playground._deliver = deliver_once  # type: ignore[method-assign]
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="help", addressed=True))
        await asyncio.wait_for(settled.wait(), 20)
        async with baton.db.read() as session:
            stored = (await session.exec(select(PlaygroundMessage).where(PlaygroundMessage.is_bot))).all()
        row = await _row(baton.db, posted_elsewhere[0])
    assert stored == []  # the survivor's copy is the one
    assert (row.status, row.platform_message_id) == ("sent", "posted-by-survivor")


def test_processes_started_together_on_a_new_sqlite_file_all_migrate_it(sqlite_url: str) -> None:
    """Only PostgreSQL's migrations took a lock: processes started at the same moment on a new SQLite
    file each created the tables, statement by statement, and all but one stopped at start with
    'table audit_log already exists'. The migrations now run in one transaction that holds SQLite's
    write lock, so the others wait and find the database migrated."""
    context = multiprocessing.get_context("spawn")
    start, outcomes = context.Barrier(3), context.Queue()
    processes = [context.Process(target=upgrade_together, args=(sqlite_url, start, outcomes)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    assert sorted(outcomes.get(timeout=5) for _ in processes) == ["migrated"] * 3
    with closing(sqlite3.connect(sqlite_path(sqlite_url))) as connection:
        assert connection.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)


def test_a_database_a_newer_baton_migrated_is_named_as_such(tmp_path: Path, config_path: Path, sqlite_url: str) -> None:
    """A rolling upgrade rolled back: the database is at a revision this Baton does not have. `baton db upgrade`
    said only "Can't locate revision identified by '0099'" (and `baton run` showed it under a traceback)."""
    upgrade(sqlite_url)
    with closing(sqlite3.connect(sqlite_path(sqlite_url))) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = '0099'")
        connection.execute("UPDATE baton_oldest_reader SET revision = '0099'")  # a change this Baton may not read
    env = {**os.environ, "BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": sqlite_url}
    result = run_cli("db", "upgrade", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "Baton cannot upgrade to 'head': the database is at revision 0099, which this Baton does not have: a newer "
        "Baton migrated it. Run that Baton (or a newer one); Baton does not downgrade.")


@pytest.mark.postgres
def test_a_postgresql_url_naming_a_schema_in_its_options_is_used_by_every_connection(start_baton, postgres_url: str):
    """Baton's own schema, named in the URL (``?options=-csearch_path%3Dbaton``), as teams sharing a database do:
    the migrations made the tables there, but the connections for the writes that need not wait for the disk
    replaced the URL's options with their own (``synchronous_commit=off``), found no tables, and every
    request failed ('relation "thread_records" does not exist')."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE SCHEMA baton")
    in_schema = postgres_url + "?options=-csearch_path%3Dbaton"
    pg = start_baton(in_schema).client()
    thread = pg.ask("@baton run uptime")
    pg.wait_reply(thread, "did uptime")
    with psycopg.connect(postgres_url) as connection:
        schemas = connection.execute("SELECT DISTINCT table_schema FROM information_schema.tables "
                                     "WHERE table_name = 'thread_records'").fetchall()
    assert schemas == [("baton",)]
