"""Data retention (``bot.retention``): finished rows older than ``BATON_RETENTION_DAYS`` are deleted in small
batches, what is unfinished or recent stays, and ``GET /metrics``' counters never go down across a deletion."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.migration import MigrationContext
from pydantic import ValidationError
from sqlalchemy import create_engine, func, inspect, update
from sqlmodel import Session, SQLModel, select

import bot.app
from bot import digest_stats
from bot.app import Baton
from bot.messages import InboundMessage
from bot.metrics import Metrics
from bot.retention import Retention
from bot.settings import Settings
from storage.db import Database, sync_url
from storage.migrate import oldest_reader, upgrade
from storage.models import (Approval, AuditEntry, Effect, ForgottenTotals, InboundEvent, OutboxMessage,
                            PlaygroundMessage, Run, ThreadRecord, utcnow)
from tests.support import until

DAYS = 90
OLD = utcnow() - timedelta(days=DAYS + 10)
RECENT = utcnow() - timedelta(days=1)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def insert(database_url: str, *rows: SQLModel) -> list[Any]:
    engine = create_engine(sync_url(database_url))
    try:
        with Session(engine) as session:
            for row in rows:
                session.add(row)
                session.flush()
            ids = [getattr(row, "id", None) for row in rows]
            session.commit()
        return ids
    finally:
        engine.dispose()


async def ids_of(db: Database, table: Any) -> set[Any]:
    async with db.read() as session:
        return set((await session.exec(select(table.id))).all())


def thread(n: int, **values: Any) -> ThreadRecord:
    return ThreadRecord(**{"platform": "slack", "channel": "C1", "thread": str(n), "status": "done",
                           "pruned_at": OLD, "created_at": OLD, "updated_at": OLD, **values})


def run(record: int, status: str = "done", started: Any = OLD, **values: Any) -> Run:
    finished = started if status in ("done", "failed") else None
    return Run(**{"thread_record_id": record, "platform": "slack", "channel": "C1", "graph": "runbook", "status": status,
                  "requested_by": "U1", "correlation_id": "c", "started_at": started, "finished_at": finished,
                  "turnaround_ms": 1500 if finished else None, **values})


def event(n: int, record: int | None, status: str = "done", at: Any = OLD, platform: str = "slack") -> InboundEvent:
    return InboundEvent(platform=platform, event_id=f"e{n}", kind="message", channel="C1", thread="1", user="U1",
                        status=status, thread_record_id=record, received_at=at, handled_at=at if status == "done" else None)


def message(status: str = "sent", at: Any = OLD, **values: Any) -> OutboxMessage:
    return OutboxMessage(**{"platform": "slack", "channel": "C1", "thread": "1", "status": status, "created_at": at,
                            "sent_at": at if status == "sent" else None, **values})


async def test_the_log_says_what_went_and_older_than_what(database: Database, database_url: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    insert(database_url, *(AuditEntry(at=utcnow() - timedelta(days=3), correlation_id="c", kind="request.received")
                           for _ in range(2)))  # the newest row always stays
    with caplog.at_level("INFO", logger="bot.retention"):
        assert await Retention(database, 1).delete_expired() == {"audit_log": 1}
    assert "retention: deleted what is older than 1 day: 1 audit_log" in caplog.messages  # not "1 days"


async def test_old_finished_rows_go_and_recent_or_unfinished_ones_stay(database: Database, database_url: str) -> None:
    gone_thread, waiting_thread, unpruned_thread, recent_thread = insert(
        database_url, thread(1), thread(2, status="waiting"), thread(3, pruned_at=None), thread(4, updated_at=RECENT))
    old_event, pending_event, recent_event = insert(database_url, event(1, gone_thread), event(2, unpruned_thread, "pending"),
                                                    event(3, recent_thread, at=RECENT))
    old_run, of_waiting_thread, waiting_run, unpruned_run, recent_run = insert(  # ids in the order of their times
        database_url, run(gone_thread, inbound_id=old_event), run(waiting_thread), run(waiting_thread, "waiting"),
        run(unpruned_thread, "failed"), run(recent_thread, started=RECENT))
    card, progress, edited, sent, undelivered, recent_message = insert(
        database_url, message(), message(), message(), message(), message("pending"), message(at=RECENT))
    [pending_edit] = insert(database_url, message("pending", kind="update", ref_outbox_id=edited))
    [running_run] = insert(database_url, Run(thread_record_id=waiting_thread, platform="slack", channel="C1", graph="runbook",
                             status="running", requested_by="U1", correlation_id="c", started_at=OLD,
                             progress_outbox_id=progress))
    decided, waiting_card = insert(
        database_url, Approval(run_id=old_run, thread_record_id=gone_thread, interrupt_id="i", graph="runbook",
                               summary="restart?", requested_by="U1", status="approved", created_at=OLD),
        Approval(run_id=waiting_run, thread_record_id=waiting_thread, interrupt_id="i", graph="runbook",
                 summary="restart?", requested_by="U1", card_outbox_id=card, created_at=OLD))
    old_effect, recent_effect = insert(database_url, Effect(key="k1", run_id=old_run, name="restart", status="done",
                                                            started_at=OLD, finished_at=OLD),
                                       Effect(key="k2", run_id=recent_run, name="restart", status="done"))
    old_audit, recent_audit = insert(database_url, AuditEntry(at=OLD, correlation_id="c", kind="request.received"),
                                     AuditEntry(at=RECENT, correlation_id="c", kind="request.received"))
    root, old_reply, lone, busy_root = insert(
        database_url, *(PlaygroundMessage(channel="general", user="alice", text="hi", created_at=OLD, updated_at=OLD)
                        for _ in range(4)))
    insert(database_url, PlaygroundMessage(channel="general", thread_id=str(root), user="bob", text="old reply",
                                           created_at=OLD, updated_at=OLD),
           PlaygroundMessage(channel="general", thread_id=str(busy_root), user="bob", text="new reply",
                             event_id="pg-2", updated_at=RECENT),
           PlaygroundMessage(channel="general", user="alice", text="@baton hi", event_id="pg-1", created_at=OLD,
                             updated_at=RECENT))
    gone_playground_event, playground_event = insert(database_url, event(5, None, platform="playground"),
                                                     event(4, None, platform="playground"))
    async with database.session() as session:  # the playground message of e4 is kept (recently edited)
        await session.exec(update(PlaygroundMessage).where(PlaygroundMessage.event_id == "pg-1").values(  # type: ignore[call-overload]
            event_id="e4"))

    deleted = await Retention(database, DAYS).delete_expired()

    # a waiting thread's runs (even a finished one) and a recent run stay; the old finished ones go
    assert await ids_of(database, Run) == {of_waiting_thread, waiting_run, running_run, recent_run}
    assert old_run not in await ids_of(database, Run) and unpruned_run not in await ids_of(database, Run)
    assert await ids_of(database, Approval) == {waiting_card}
    assert decided not in await ids_of(database, Approval)
    assert await ids_of(database, Effect) == {recent_effect}
    assert await ids_of(database, InboundEvent) == {pending_event, recent_event, playground_event}
    assert await ids_of(database, OutboxMessage) == {card, progress, edited, undelivered, recent_message, pending_edit}
    assert sent not in await ids_of(database, OutboxMessage)
    assert await ids_of(database, AuditEntry) == {recent_audit}
    remaining_playground = await ids_of(database, PlaygroundMessage)
    assert busy_root in remaining_playground and lone not in remaining_playground and old_reply not in remaining_playground
    # a thread's first message goes once its replies are gone: the next pass (its reply went in this one)
    assert root in remaining_playground
    # the thread with nothing left (checkpoints pruned) goes; one whose checkpoints were not pruned, a waiting one
    # and a recent one stay (the unpruned one's run went: nobody would prune its checkpoints without it)
    assert await ids_of(database, ThreadRecord) == {waiting_thread, unpruned_thread, recent_thread}
    assert deleted["runs"] == 2 and deleted["audit_log"] == 1 and deleted["thread_records"] == 1
    assert gone_playground_event not in await ids_of(database, InboundEvent)

    await Retention(database, DAYS).delete_expired()
    assert root not in await ids_of(database, PlaygroundMessage)

    # A digest over a window the retention emptied: nothing to count, nothing fails.
    async with database.read() as session:
        summary = await digest_stats.collect(session, "slack", "C1", OLD - timedelta(days=30), OLD, [], utcnow())
    assert summary["requests"] == 0 and summary["per_graph"] == {}


async def test_zero_days_keeps_everything(database: Database, database_url: str) -> None:
    [record] = insert(database_url, thread(1))
    insert(database_url, run(record), AuditEntry(at=OLD, correlation_id="c", kind="x"))
    assert await Retention(database, 0).delete_expired() == {}
    assert len(await ids_of(database, Run)) == 1 and len(await ids_of(database, AuditEntry)) == 1


def samples_of(families: list[Any]) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value for family in families for s in family.samples}


COUNTERS = ("baton_runs_started_total", "baton_runs_finished_total", "baton_run_turnaround_seconds_count",
            "baton_run_turnaround_seconds_sum", "baton_run_turnaround_seconds_bucket", "baton_model_tokens_total",
            "baton_model_cost_dollars_total", "baton_run_waited_seconds_total", "baton_inbound_events_total")


def counters(samples: Samples) -> Samples:
    return {key: value for key, value in samples.items() if key[0] in COUNTERS}


async def test_counters_do_not_go_down_when_old_rows_are_deleted(database: Database, database_url: str) -> None:
    [record] = insert(database_url, thread(1, status="idle"))
    insert(database_url, *(run(record, tokens=10, cost=0.25, waited_seconds=5.0) for _ in range(3)),
           run(record, "failed", graph="deploy"))
    [open_run] = insert(database_url, run(record, "running"))  # counted as open by the replica already scraping
    insert(database_url, run(record, started=RECENT))
    insert(database_url, *(event(n, record) for n in range(4)), event(9, record, at=RECENT))
    scraping = Metrics(database, "test", [], ["slack"])
    before = counters(samples_of(await scraping._shared()))
    assert before[("baton_runs_started_total", frozenset({("graph", "runbook")}))] == 5
    assert before[("baton_inbound_events_total", frozenset({("platform", "slack")}))] == 5

    # The open run ends long ago (it waited): it is deleted before this replica read it as final.
    async with database.session() as session:
        await session.exec(update(Run).where(Run.id == open_run).values(  # type: ignore[call-overload]
            status="done", finished_at=OLD, turnaround_ms=1500))
    ended = counters(samples_of(await Metrics(database, "fresh", [], ["slack"])._shared()))
    deleted = await Retention(database, DAYS).delete_expired()
    assert deleted["runs"] == 5 and deleted["inbound_events"] == 4

    for metrics in (scraping, Metrics(database, "started after the deletion", [], ["slack"])):
        for _ in range(2):
            after = counters(samples_of(await metrics._shared()))
            assert after == ended, metrics.instance
    assert all(after[key] >= value for key, value in before.items())
    assert after[("baton_runs_finished_total", frozenset({("graph", "runbook"), ("status", "done")}))] == 5
    assert after[("baton_model_tokens_total", frozenset({("graph", "runbook")}))] == 30

    # A second deletion, while it keeps scraping: still no step down. (The newest run always stays: SQLite would
    # give its id out again, and a replica reading only ids above those it counted would miss the next run.)
    async with database.session() as session:
        await session.exec(update(Run).where(Run.started_at >= RECENT - timedelta(minutes=1)).values(  # type: ignore[call-overload]
            started_at=OLD, finished_at=OLD))
    [newest] = insert(database_url, run(record, started=RECENT))
    assert (await Retention(database, DAYS).delete_expired())["runs"] == 1
    again = counters(samples_of(await scraping._shared()))
    assert again == counters(samples_of(await Metrics(database, "fresh", [], ["slack"])._shared()))
    assert again[("baton_runs_started_total", frozenset({("graph", "runbook")}))] == 6
    assert await ids_of(database, Run) == {newest}

    # Rows this replica never read (it was not scraped for longer than the retention) go: it counts them as the
    # replicas that read the table afresh do.
    async with database.session() as session:
        await session.exec(update(Run).values(started_at=OLD, finished_at=OLD))  # type: ignore[call-overload]
    insert(database_url, run(record), run(record), run(record, started=RECENT))
    assert (await Retention(database, DAYS).delete_expired())["runs"] == 3
    now_counted = counters(samples_of(await scraping._shared()))
    assert now_counted == counters(samples_of(await Metrics(database, "fresh", [], ["slack"])._shared()))
    assert now_counted[("baton_runs_started_total", frozenset({("graph", "runbook")}))] == 9


async def test_a_run_whose_effect_began_after_it_ended_still_goes(database: Database, database_url: str) -> None:
    """A run's effects go with it, one stamped after the run ended too (another replica's clock, hours ahead):
    looked for among the older entries only, it made the run's deletion fail at every pass."""
    [record] = insert(database_url, thread(1, status="idle", pruned_at=None))
    old_run, recent_run = insert(database_url, run(record), run(record, started=RECENT))
    insert(database_url, Effect(key="k0", run_id=recent_run, name="restart", started_at=RECENT),
           Effect(key="k1", run_id=old_run, name="restart", started_at=RECENT))
    assert (await Retention(database, DAYS).delete_expired())["runs"] == 1
    assert await ids_of(database, Run) == {recent_run} and len(await ids_of(database, Effect)) == 1


class CountingRetention(Retention):
    """Records how many rows each write transaction was given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.given: list[int] = []

    async def _delete(self, table: Any, ids: Any, *still: Any, **options: Any) -> tuple[int, int]:
        self.given.append(len(ids))
        return await super()._delete(table, ids, *still, **options)


async def test_rows_go_in_bounded_batches(database: Database, database_url: str) -> None:
    """A table's backlog goes a batch a transaction, never all at once: the write lock is held a few ms at a time."""
    [record] = insert(database_url, thread(1, status="idle", pruned_at=None))
    insert(database_url, *(AuditEntry(at=OLD, correlation_id="c", kind="x") for _ in range(10)),
           *(run(record) for _ in range(7)), AuditEntry(at=RECENT, correlation_id="c", kind="x"),
           run(record, started=RECENT))
    retention = CountingRetention(database, DAYS, batch=3)
    deleted = await retention.delete_expired()
    assert deleted == {"audit_log": 10, "runs": 7}
    assert all(size <= 3 for size in retention.given) and sum(retention.given) == 10  # the audit log's batches
    assert retention.transactions >= 4 + 3  # and the runs': 3 + 3 + 1 (fewer a batch if one held the lock long)
    async with database.read() as session:
        [totals] = (await session.exec(select(ForgottenTotals.totals).where(ForgottenTotals.metric == "runs"))).all()
    assert totals[0] == 7


async def test_two_replicas_deleting_at_once_delete_and_count_each_row_once(database: Database, database_url: str) -> None:
    [record] = insert(database_url, thread(1, status="idle", pruned_at=None))
    insert(database_url, *(run(record, tokens=1) for _ in range(40)), *(event(n, record) for n in range(40)),
           run(record, started=RECENT), event(99, record, at=RECENT))
    other = Database(database_url)
    try:
        first, second = await asyncio.gather(Retention(database, DAYS, batch=5).delete_expired(),
                                             Retention(other, DAYS, batch=5).delete_expired())
    finally:
        await other.dispose()
    assert first.get("runs", 0) + second.get("runs", 0) == 40
    assert first.get("inbound_events", 0) + second.get("inbound_events", 0) == 40
    async with database.read() as session:
        forgotten = {metric: totals for metric, totals in (await session.exec(
            select(ForgottenTotals.metric, ForgottenTotals.totals))).all()}
        assert (await session.exec(select(func.count()).select_from(Run))).one() == 1
    assert forgotten == {"runs": [40.0, 60_000.0, 0.0, 40.0, 0.0], "inbound": [40.0]}


async def test_a_request_after_its_thread_was_deleted_starts_a_new_one(tmp_path: Path, config_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: Baton's own loop deletes a real request's rows once they are old, its thread last; the same
    chat thread asked again later gets a new thread record and is answered. (Another thread's request is the
    newest, whose rows always stay.)"""
    monkeypatch.setattr(bot.app, "FIRST_PRUNE_AFTER", 0.05)
    monkeypatch.setattr(bot.app, "RETENTION_INTERVAL", 0.1)
    where = {"platform": "playground", "channel": "general", "thread": "1", "user": "alice"}
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'baton.db'}", BATON_CONFIG=config_path,
                        BATON_RETENTION_DAYS=DAYS)
    async with Baton(settings) as baton:
        assert baton.retention.days == DAYS
        async def finished(count: int) -> bool:
            async with baton.db.read() as session:
                return (await session.exec(select(Run.status))).all() == ["done"] * count

        await baton.accept_message(InboundMessage(**where, event_id="e1", text="run uptime"))
        await until(lambda: finished(1), "the run to finish")
        await baton.accept_message(InboundMessage(**{**where, "channel": "random", "thread": "2"}, event_id="e2",
                                                  text="run uptime"))
        await until(lambda: finished(2), "the other run to finish")
        async with baton.db.session() as session:  # months pass
            for table, column in ((Run, "started_at"), (Run, "finished_at"), (InboundEvent, "received_at"),
                                  (InboundEvent, "handled_at"), (OutboxMessage, "created_at"), (AuditEntry, "at"),
                                  (ThreadRecord, "created_at"), (ThreadRecord, "updated_at"),
                                  (ThreadRecord, "pruned_at"), (Effect, "started_at"), (Effect, "finished_at")):
                await session.exec(update(table).values({column: OLD}))  # type: ignore[call-overload]

        async def emptied() -> bool:
            async with baton.db.read() as session:
                return [len((await session.exec(select(table.id))).all())
                        for table in (Run, InboundEvent, ThreadRecord)] == [1, 1, 1]

        await until(emptied, "the old rows to be deleted")
        async with baton.db.read() as session:
            assert (await session.exec(select(ThreadRecord.thread))).all() == ["2"]
        await baton.accept_message(InboundMessage(**where, event_id="e3", text="run uptime"))

        async def answered() -> bool:  # the other thread's old rows may go now: they are no longer the newest
            async with baton.db.read() as session:
                return (await session.exec(select(Run.status).join(ThreadRecord).where(
                    ThreadRecord.thread == "1"))).all() == ["done"]

        await until(answered, "the new request's run to finish in a new record of thread 1")


def test_the_setting_is_read_and_checked(tmp_path: Path) -> None:
    env = tmp_path / "none.env"
    assert Settings(_env_file=env).retention_days == 0  # an upgrade deletes nothing unless asked to
    assert Settings(_env_file=env, BATON_RETENTION_DAYS="90").retention_days == 90
    with pytest.raises(ValidationError, match="BATON_RETENTION_DAYS"):
        Settings(_env_file=env, BATON_RETENTION_DAYS="-1")


def test_the_migration_adds_the_table_older_code_may_run_on(database_url: str) -> None:
    upgrade(database_url, "0009")
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            assert "forgotten_totals" not in inspect(connection).get_table_names()
        upgrade(database_url, "0010")  # not the head: later migrations have their own tests
        with engine.connect() as connection:
            assert "forgotten_totals" in inspect(connection).get_table_names()
            assert MigrationContext.configure(connection).get_current_revision() == "0010"
            assert oldest_reader(connection) == "0008"  # only added: a replica of 0009 (or 0008) runs on it
    finally:
        engine.dispose()


async def test_a_digest_reaching_past_the_retention_says_from_when_it_counts(database_url: str) -> None:
    """Baton down for three days with a retention of one day: the catch-up digest covered the three days, yet
    counted only the last (the rest was deleted), with nothing to tell it from quiet days. It says from when it
    counts; a digest within the retention says nothing of it."""
    from bot.config import BatonConfig
    from bot.messages import Message
    from tests.test_digests import PARIS_DAILY, Clock, digest_service, posted_messages

    clock = Clock(datetime(2026, 6, 1, 6, 0, tzinfo=UTC))
    async with digest_service(database_url, clock, BatonConfig(digests=[PARIS_DAILY])) as digests:
        digests.services.retention_days = 1
        clock.now = datetime(2026, 6, 1, 7, 0, tzinfo=UTC)
        assert await digests.run_due(clock.now) == 1
        clock.now = datetime(2026, 6, 4, 7, 0, tzinfo=UTC)  # back after three days: one catch-up digest
        assert await digests.run_due(clock.now) == 1
        first, catch_up = [Message.model_validate(message.payload).plain_text()
                           for message in await posted_messages(digests)]
    assert "BATON_RETENTION_DAYS" not in first
    assert ("Baton keeps 1 day of history (BATON_RETENTION_DAYS): this digest counts what happened from "
            "2026-06-03 07:00:00 UTC (Wed 09:00 in Europe/Paris) on.") in catch_up, catch_up
