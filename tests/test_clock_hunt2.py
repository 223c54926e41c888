"""Clocks, second hunt: approval cards stamped and compared on the database's clock; a lease written before the
clock was set back."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import select

import storage.models
from bot import threads
from bot.app import Baton
from bot.messages import InboundMessage, Location
from bot.settings import DAY, Settings
from storage.db import Database, insert_new_id
from storage.migrate import upgrade
from storage.models import Approval, DigestRun, InboundEvent, Run, utcnow
from tests.support import until
from tests.test_graph_modules import _reply
from tests.test_replicas_hunt2 import _replies_with

HERE = Location(platform="playground", channel="general", thread="1")


class _Clock(datetime):
    """``storage.models.datetime``, whose ``now`` a test sets off (every ``utcnow()``: a replica whose clock is off)."""

    off = timedelta(0)

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
        return datetime.now(tz) + cls.off


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_Clock]]:
    monkeypatch.setattr(_Clock, "off", timedelta(0))
    monkeypatch.setattr(storage.models, "datetime", _Clock)
    yield _Clock


def _settings(url: str, config_path: Path, expiry: float) -> Settings:
    return Settings(BATON_DATABASE_URL=url, BATON_CONFIG=config_path, BATON_ADAPTERS="playground",  # type: ignore[call-arg]
                    BATON_APPROVAL_EXPIRY_SECONDS=expiry)


async def _ask_for_a_card(baton: Baton, thread: str) -> None:
    await baton.accept_message(InboundMessage(platform="playground", channel="ops", thread=thread, event_id=f"e{thread}",
                                              user="alice", text="run restart service=web", addressed=True))

    async def card() -> str | None:
        async with baton.db.read() as session:
            return (await session.exec(select(Approval.id).where(Approval.status == "pending"))).first()

    await until(card, "the approval card")


@pytest.mark.postgres
async def test_a_card_asked_through_a_replica_whose_clock_is_behind_does_not_expire_early(
        postgres_url: str, config_path: Path, clock: type[_Clock]) -> None:
    """Cards were stamped with the asking replica's clock and compared with the checking replica's: a card asked
    through a replica 10 minutes behind was 10 minutes old when posted, and a 5-minute expiry had it expire at once
    (a 15-minute one after 5). Cards are stamped and compared on the database's clock."""
    settings = _settings(postgres_url, config_path, 300)
    clock.off = -timedelta(minutes=10)
    async with Baton(settings) as behind:  # its clock is behind from the start: it reads the database's then
        await _ask_for_a_card(behind, "1")
    clock.off = timedelta(0)
    async with Baton(settings) as accurate:
        assert await accurate.orchestrator.expire_approvals() == 0, "a card expired at once"


async def test_a_card_stamped_before_the_clock_was_set_back_shows_no_more_than_the_expiry_left(
        tmp_path: Path, config_path: Path) -> None:
    """A card stamped while the clock was 2 days ahead (then set back) read 'expires in 2d 1h' in status with a
    1-hour expiry: it counts as asked now."""
    async with Baton(_settings(f"sqlite:///{tmp_path / 'c.db'}", config_path, 3600)) as baton:
        await _ask_for_a_card(baton, "1")
        async with baton.db.session() as session:
            await session.exec(update(Approval).values(created_at=datetime.now(UTC) + timedelta(days=2)))  # type: ignore[call-overload]
        await baton.accept_message(InboundMessage(platform="playground", channel="ops", thread="2", event_id="e2",
                                                  user="bob", text="status", addressed=True))
        reply = await _reply(baton, "2")
    assert ", expires in 1h: Run `restart`" in reply, reply


async def _queue_old_request(db: Database, lease: tuple[str, datetime]) -> int:
    """A thread whose lease ``lease`` holds, with a request waiting since a minute ago: its record's id."""
    async with db.session() as session:
        record, _new = await threads.create(session, HERE, utcnow(), lease)
        await insert_new_id(session, InboundEvent, {
            "platform": "playground", "event_id": "e1", "kind": "message", "workspace": "", "channel": "general",
            "thread": "1", "user": "alice", "text": "run uptime", "payload": {"addressed": True}, "status": "pending",
            "thread_record_id": record.id, "correlation_id": "c1",
            "received_at": datetime.now(UTC) - timedelta(minutes=1)}, ["platform", "event_id"])
    return record.id  # type: ignore[return-value]


async def test_a_lease_taken_before_the_clock_was_set_back_is_free_to_another_process(
        tmp_path: Path, clock: type[_Clock]) -> None:
    """A lease taken while the clock was 2 days ahead, by a process that then died, lasted 2 days more once the
    clock was set back: no other process could take the thread, its requests waited that long. A lease ending
    further ahead than any Baton writes counts as run out."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    upgrade(url)
    db = Database(url)
    try:
        clock.off = timedelta(days=2)
        record_id = await _queue_old_request(db, threads.Leases(db, "dead", 30).lease_for_new_thread())
        clock.off = timedelta(0)  # set back; the process holding the lease is gone
        assert await threads.Leases(db, "other", 30).take(record_id) is not None, "the lease is still held"
    finally:
        await db.dispose()


async def test_the_sweeper_takes_over_a_thread_leased_before_the_clock_was_set_back(
        tmp_path: Path, config_path: Path, clock: type[_Clock]) -> None:
    """The sweeper (crash recovery) found a thread leased while the clock was 2 days ahead held for 2 days more."""
    async with Baton(_settings(f"sqlite:///{tmp_path / 's.db'}", config_path, 0)) as survivor:
        clock.off = timedelta(days=2)
        await _queue_old_request(survivor.db, ("dead", survivor.db.now() + timedelta(seconds=30)))
        clock.off = timedelta(0)
        await survivor.orchestrator.sweep()  # (its own every second may come first)
        assert await until(lambda: _replies_with(survivor, "did uptime"), "the request's answer", timeout=10)


async def test_a_live_lease_of_a_day_is_not_taken(tmp_path: Path, config_path: Path) -> None:
    """Replicas may hold leases of up to a day (BATON_LEASE_SECONDS): the longest is live, not 'set back'."""
    async with Baton(_settings(f"sqlite:///{tmp_path / 'd.db'}", config_path, 0)) as baton:
        record_id = await _queue_old_request(baton.db, threads.Leases(baton.db, "long", DAY).lease_for_new_thread())
        assert await threads.Leases(baton.db, "other", 30).take(record_id) is None, "a live lease was taken"
        assert await baton.orchestrator.sweep() == 0


async def _digest_now(baton: Baton, event_id: str) -> int:
    """The number of requests ``digest now`` in #ops counted, once its digest is posted."""
    await baton.accept_message(InboundMessage(platform="playground", channel="ops", thread=event_id,
                                              event_id=event_id, user="alice", text="digest now", addressed=True))

    async def posted() -> dict[str, Any] | None:
        async with baton.db.read() as session:
            return (await session.exec(select(DigestRun.summary).where(
                DigestRun.schedule_key == f"now:playground:{event_id}", DigestRun.status == "posted"))).first()

    return int((await until(posted, f"the digest asked for by {event_id}"))["requests"])


@pytest.mark.postgres
async def test_a_request_asked_through_a_replica_whose_clock_is_behind_is_in_the_next_digest(
        postgres_url: str, config_path: Path, clock: type[_Clock]) -> None:
    """A run was stamped with its replica's clock and digests cover windows of the database's: a request asked
    through a replica 10 minutes behind, just after a digest, began 'before' that digest's end and was counted in
    neither digest ([0, 0]). A request's rows are stamped on the database's clock."""
    settings = _settings(postgres_url, config_path, 0)
    async with Baton(settings) as accurate:
        counted = [await _digest_now(accurate, "d1")]
    clock.off = -timedelta(minutes=10)
    async with Baton(settings) as behind:
        await behind.accept_message(InboundMessage(platform="playground", channel="ops", thread="r1", event_id="r1",
                                                   user="alice", text="run uptime", addressed=True))

        async def done() -> bool:
            async with behind.db.read() as session:
                return (await session.exec(select(Run.id).where(Run.graph == "runbook", Run.status == "done"))).first()

        await until(done, "the uptime run")
    clock.off = timedelta(0)
    async with Baton(settings) as accurate:
        counted.append(await _digest_now(accurate, "d2"))
    assert counted == [0, 1]
