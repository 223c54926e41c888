"""The checkpoint pruner holds a thread by its lease while it deletes the thread's checkpoints. It wrote that
lease on its own clock, while replicas compare leases on the database's (``Database.now``): a pruner whose
clock was 5 minutes behind wrote a lease every other replica found long run out, so a follow-up's run could
start there and have its checkpoints deleted under it."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import select

import bot.app
import storage.db
from bot import threads
from bot.app import Baton
from bot.messages import InboundMessage
from bot.settings import Settings
from storage.db import Database, insert_new_id
from storage.models import InboundEvent, ThreadRecord
from tests.support import until

WHERE = {"platform": "playground", "channel": "general", "thread": "1"}


def _five_minutes_behind() -> datetime:
    return datetime.now(UTC) - timedelta(minutes=5)


@pytest.mark.postgres
async def test_a_pruner_whose_clock_is_behind_still_holds_the_thread_it_prunes(
        postgres_url: str, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(BATON_DATABASE_URL=postgres_url, BATON_CONFIG=config_path, BATON_CHECKPOINT_RETENTION_HOURS=1)
    other_db = Database(postgres_url)
    try:
        async with Baton(settings) as baton:
            async def thread() -> ThreadRecord:
                async with baton.db.read() as session:
                    return (await session.exec(select(ThreadRecord).execution_options(populate_existing=True))).one()

            await baton.accept_message(InboundMessage(**WHERE, event_id="e1", user="alice", text="run uptime"))
            record = await until(lambda: _finished(thread()), "the first run to finish")
            async with baton.db.session() as session:
                await session.exec(update(ThreadRecord).values(  # type: ignore[call-overload]
                    updated_at=datetime.now(UTC) - timedelta(hours=2)))

            for module in (bot.app, storage.db):  # this replica's machine: its clock is behind
                monkeypatch.setattr(module, "utcnow", _five_minutes_behind)
            baton.db.clock.read_at = None
            await baton.db.read_clock()  # it knows the database's time, as every replica does after a minute
            other = threads.Leases(other_db, "other replica", 30)
            taken_meanwhile: list[object] = []

            async def forget(_lg_thread_id: str, _graphs: Iterable[str] | None = None) -> None:
                """While the pruner holds the thread, a follow-up is stored and another replica looks at it."""
                async with other_db.session() as session:
                    await insert_new_id(session, InboundEvent, {
                        "platform": "playground", "event_id": "e2", "kind": "message", "workspace": "",
                        "channel": "general", "thread": "1", "user": "alice", "text": "run uptime", "payload": {},
                        "status": "pending", "thread_record_id": record.id, "correlation_id": "e2",
                        "received_at": datetime.now(UTC)}, ["platform", "event_id"])
                taken_meanwhile.append(await other.take(record.id))  # type: ignore[arg-type]

            monkeypatch.setattr(baton.runtime, "forget", forget)
            assert await baton.prune_checkpoints() == 1
            assert taken_meanwhile == [None], "another replica took the thread the pruner held"
    finally:
        await other_db.dispose()


async def _finished(record: object) -> ThreadRecord | None:
    found = await record  # type: ignore[misc]
    return found if found.status == "done" and found.lease_owner is None else None


async def test_a_thread_whose_lease_was_written_before_the_clock_was_set_back_is_pruned(tmp_path: Path,
                                                                                         config_path: Path) -> None:
    """A crashed process's lease written 2 days ahead (its clock was, until NTP set it back): the pruner took it for
    live and kept the thread's checkpoints until the clock caught up; leases are taken over then (bot.threads)."""
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'baton.db'}", BATON_CONFIG=config_path,
                        BATON_CHECKPOINT_RETENTION_HOURS=1)
    async with Baton(settings) as baton:
        await baton.accept_message(InboundMessage(**WHERE, event_id="e1", user="alice", text="run uptime"))

        async def thread() -> ThreadRecord:
            async with baton.db.read() as session:
                return (await session.exec(select(ThreadRecord).execution_options(populate_existing=True))).one()

        await until(lambda: _finished(thread()), "the run to finish")
        async with baton.db.session() as session:
            await session.exec(update(ThreadRecord).values(  # type: ignore[call-overload]
                updated_at=datetime.now(UTC) - timedelta(hours=2), lease_owner="a crashed process",
                lease_until=datetime.now(UTC) + timedelta(days=2)))
        assert await baton.prune_checkpoints() == 1
        assert (await thread()).pruned_at is not None
