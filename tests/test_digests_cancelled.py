"""A run someone cancelled is marked so (``Run.cancelled``, migration 0014): the digest tells it from a failure by the
mark, which its indexes hold, not by the error (``LIKE 'cancelled by %'``), which none can. A week's digest over
1,000,000 runs took 255 ms, its percentiles, per-graph counts and days reading the table row by row for the error."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.config import BatonConfig
from bot.digest_stats import collect
from storage.db import Database, async_url, sync_url
from storage.migrate import oldest_reader, upgrade
from storage.models import Run, ThreadRecord, utcnow
from tests.support import alive, wait_for
from tests.test_cancel import config_path, rows, started_sleeping  # noqa: F401  (config_path: the sleepy runbook)
from tests.test_digests import Clock, digest_service
from tests.test_storage_hunt import _migrate


async def _digest_of(database_url: str, channel: str) -> dict:
    database = Database(database_url)
    try:
        async with database.read() as session:
            now = utcnow()
            return await collect(session, "playground", channel, now - timedelta(hours=1), now + timedelta(minutes=1),
                                 [], now)
    finally:
        await database.dispose()


async def test_a_run_cancelled_in_chat_is_marked_and_the_digest_counts_it_apart(start_baton, database_url,
                                                                               tmp_path) -> None:
    pg = start_baton(database_url).client()
    done = pg.ask("@baton run uptime", user="alice")
    pg.wait_reply(done, "did uptime")
    thread = pg.ask("@baton run sleepy", user="alice")
    pid = started_sleeping(tmp_path)
    pg.say("@baton cancel", thread=thread, user="alice")
    pg.wait_reply(thread, "alice cancelled `run sleepy` after")
    wait_for(lambda: not alive(pid), what="the command to be killed")
    found = rows(database_url, "SELECT status, error, cancelled FROM runs ORDER BY id")
    assert [(status, error, bool(cancelled)) for status, error, cancelled in found] == [
        ("done", None, False), ("failed", "cancelled by alice", True)]
    stats = await _digest_of(database_url, "general")
    assert stats["per_graph"] == {"runbook": {"done": 1, "failed": 0, "running": 0, "cancelled": 1}}
    assert (stats["cancelled_count"], stats["failure_count"], stats["turnaround"]["count"]) == (1, 0, 1)


# (status, error, what migration 0014 marks it): what the digests took for cancelled before it, failed and the error
# starting with "cancelled by ", compared as Python's startswith and PostgreSQL's LIKE do (SQLite's LIKE ignored case).
OLD_ROWS = [("failed", "cancelled by bob", True), ("failed", "cancelled by alice while it ran", True),
            ("failed", "exit code 1", False), ("failed", None, False), ("done", "cancelled by bob", False),
            ("failed", "Cancelled by the upstream API", False), ("failed", "not cancelled by anyone", False),
            ("running", None, False), ("waiting", None, False), ("done", None, False)]
OLD_TIME = "2026-06-01 00:00:00+00:00"


def _index_columns(connection) -> dict[str, list[str]]:
    return {index["name"]: index["column_names"] for index in inspect(connection).get_indexes("runs")
            if index["name"] in ("ix_runs_digest", "ix_runs_ended")}


def test_the_migration_marks_the_runs_the_digests_took_for_cancelled_and_indexes_the_mark(database_url) -> None:
    upgrade(database_url, "0013")
    engine = create_engine(sync_url(database_url))
    try:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO thread_records (id, platform, workspace, channel, thread, lg_thread_id,"
                                    " status, created_at, updated_at) VALUES (1, 'playground', '', 'ops', '1', 'lg1',"
                                    " 'done', :now, :now)"), {"now": OLD_TIME})
            for n, (status, error, _marked) in enumerate(OLD_ROWS):
                connection.execute(text(
                    "INSERT INTO runs (thread_record_id, platform, channel, graph, status, requested_by, input_text,"
                    " correlation_id, started_at, waited_seconds, error, takeovers) VALUES (1, 'playground', 'ops',"
                    " 'deploy', :status, 'alice', '', :correlation, :now, 0, :error, 0)"),
                    {"status": status, "error": error, "correlation": f"c{n}", "now": OLD_TIME})
        upgrade(database_url, "0014")
        with engine.connect() as connection:
            assert MigrationContext.configure(connection).get_current_revision() == "0014"
            assert oldest_reader(connection) == "0008"  # added only: a Baton of 0009 to 0013 runs on it
            marked = [bool(cancelled) for (cancelled,) in connection.execute(text("SELECT cancelled FROM runs ORDER BY id"))]
            assert marked == [row[2] for row in OLD_ROWS]
            assert _index_columns(connection) == {
                "ix_runs_digest": ["platform", "channel", "started_at", "status", "graph", "turnaround_ms",
                                   "waited_seconds", "tokens", "cost", "cancelled"],
                "ix_runs_ended": ["platform", "channel", "finished_at", "status", "graph", "turnaround_ms",
                                  "waited_seconds", "cancelled"]}
        _migrate(database_url, command.downgrade, "0013")  # as README's lines for 0014 undo it by hand
        with engine.connect() as connection:
            assert "cancelled" not in {column["name"] for column in inspect(connection).get_columns("runs")}
            assert _index_columns(connection) == {
                "ix_runs_digest": ["platform", "channel", "started_at", "status", "graph", "turnaround_ms",
                                   "waited_seconds", "tokens", "cost"],
                "ix_runs_ended": ["platform", "channel", "finished_at", "status", "graph", "turnaround_ms",
                                  "waited_seconds"]}
            assert connection.execute(text("SELECT count(*) FROM runs")).scalar_one() == len(OLD_ROWS)
    finally:
        engine.dispose()


async def test_every_digest_statement_over_the_runs_alone_reads_an_index_not_the_table(sqlite_url) -> None:
    """SQLite's plan of each statement ``collect`` runs on ``runs`` alone: a covering index, never a table row (the
    failures it lists, ten at most, and the approvals' runs are read by joins, row by row, as they need)."""
    start = datetime(2026, 6, 1, 8, tzinfo=UTC)
    async with digest_service(sqlite_url, Clock(start + timedelta(days=7)), BatonConfig()) as digests:
        async with digests.db.session() as session:
            record = ThreadRecord(platform="playground", channel="ops", thread="1", status="done")
            session.add(record)
            await session.flush()
            for n, (status, error) in enumerate((("done", None), ("failed", "exit code 1"),
                                                 ("failed", "cancelled by bob"), ("running", None))):
                session.add(Run(thread_record_id=record.id, platform="playground", channel="ops", graph="deploy",
                                status=status, requested_by="alice", correlation_id=f"c{n}",
                                started_at=start + timedelta(hours=n), error=error, cancelled=error == "cancelled by bob",
                                finished_at=start + timedelta(hours=n, minutes=1) if status != "running" else None,
                                turnaround_ms=60_000 if status != "running" else None))
    statements: list[tuple[str, tuple]] = []
    engine = create_async_engine(async_url(sqlite_url))

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def keep(_connection, _cursor, statement, parameters, _context, _many) -> None:
        statements.append((statement, tuple(parameters)))

    try:
        async with AsyncSession(engine) as session:
            for graphs, zone in (([], "UTC"), (["deploy"], "Europe/Paris")):
                stats = await collect(session, "playground", "ops", start, start + timedelta(days=7), graphs,
                                      start + timedelta(days=7), zone)
                assert (stats["cancelled_count"], stats["failure_count"], stats["turnaround"]["count"]) == (1, 1, 2)
    finally:
        await engine.dispose()
    plans = {}
    with sqlite3.connect(Path(sqlite_url.removeprefix("sqlite:///"))) as connection:
        for statement, parameters in statements:
            words = " ".join(statement.split())
            if " FROM runs" in words and " JOIN " not in words:
                plans[statement] = [row[3] for row in connection.execute("EXPLAIN QUERY PLAN " + statement, parameters)
                                    if " runs " in f"{row[3]} "]
    for statement, steps in plans.items():
        assert steps and all("USING COVERING INDEX ix_runs_" in step for step in steps), (statement, steps)
    assert len(plans) == 2 * 3  # of each digest: the counts, sums and days; the ended runs' counts; the percentiles
