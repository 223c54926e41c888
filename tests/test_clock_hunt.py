"""Clocks that are off or jump: a replica whose clock is ahead of the others', a clock set back (NTP correcting
a virtual machine after it resumed). No test changes the machine's clock: the outbox reads a clock the test sets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import select

import apscheduler.schedulers.base
import apscheduler.triggers.interval

from bot import outbox as outbox_module
from bot import scheduler as scheduler_module
from bot import schedules
from bot.messages import Location, Message
import storage.models
from bot.config import BatonConfig, Digest
from bot.digests import Digests
from bot.outbox import Outbox
from bot.registry import GraphRegistry
from bot.runtime import GraphRuntime, Services
from bot.scheduler import DigestScheduler
from storage.checkpointer import open_checkpointer
from storage.db import Database
from storage.migrate import upgrade
from storage.models import DigestRun, utcnow
from tests.support import until


class SkewedClock:
    """The time as this process reckons it, ``ahead`` of the real one by as much as the test says."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.ahead


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, database: Database) -> Iterator[SkewedClock]:
    """The outbox's clock off: the machine's, and the database's as this process reckons it (on SQLite the machine's;
    on PostgreSQL until the server's clock is read again, up to a minute after the machine's clock jumped)."""
    skewed = SkewedClock()
    monkeypatch.setattr(outbox_module, "utcnow", skewed)
    monkeypatch.setattr(database, "now", skewed, raising=False)
    yield skewed


class MachineClock:
    """This machine's clock, ``ahead`` of the real one (a replica whose NTP is broken); the database server's is right."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)


@pytest.fixture
def machine_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[MachineClock]:
    """Every ``utcnow()`` of this process off: its own clock, and the one it reads the server's clock with."""
    machine, real = MachineClock(), datetime

    class _MachineTime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return real.now(tz) + machine.ahead

    monkeypatch.setattr(storage.models, "datetime", _MachineTime)
    yield machine


def _at(channel: str, thread: str, platform: str = "slack") -> Location:
    return Location(platform=platform, workspace="T1", channel=channel, thread=thread)


async def _store(database: Database, outbox: Outbox, location: Location, text: str) -> int:
    async with database.session() as session:
        return await outbox.enqueue(session, location, Message.text(text))


async def test_a_channel_paced_by_a_replica_whose_clock_was_days_ahead_gets_its_next_message_now(
        database: Database, clock: SkewedClock) -> None:
    """Slack is paced (``channel_pace.next_at``: the channel's next slot). A replica whose clock was three days
    ahead (or a clock set back three days after sending) took a slot ending three days ahead, and the channel got
    no message from any replica until then. A slot further ahead than any wait Baton sets counts as come; the
    pace then holds again, on the right clock."""
    ahead, right = Outbox(database, worker="ahead"), Outbox(database, worker="right")
    for thread in ("t1", "t2", "t3"):
        await _store(database, ahead, _at("C1", thread), thread)
    clock.ahead = timedelta(days=3)
    [first] = await ahead.claim("slack", "ahead", pace_seconds=60.0)
    await ahead.delivered(first.id, "ts-1")

    clock.ahead = timedelta(0)
    [second] = await right.claim("slack", "right", pace_seconds=60.0)
    assert second.message.plain_text() == "t2"
    await right.delivered(second.id, "ts-2")
    assert await right.claim("slack", "right", pace_seconds=60.0) == []  # the channel's pace, on the right clock


async def test_a_429_in_a_channel_held_on_a_clock_that_was_ahead_still_holds_the_channel(
        database: Database, clock: SkewedClock) -> None:
    """Discord is unpaced: its channel's pace row only holds a 429's hold. A hold written on a clock three days
    ahead counts as over once the clock is right, but the next 429's hold was written only over an earlier end:
    the one days ahead swallowed it, and every next message of the channel went into the 429."""
    ahead, right = Outbox(database, worker="ahead"), Outbox(database, worker="right")
    await _store(database, ahead, _at("C1", "t1", "discord"), "t1")
    clock.ahead = timedelta(days=3)
    [first] = await ahead.claim("discord", "ahead")
    await ahead.retry(first.id, 60, "Discord rate limit", hold_channel=True)

    clock.ahead = timedelta(0)
    await _store(database, right, _at("C1", "t2", "discord"), "t2")
    taken = await right.claim("discord", "right")
    assert "t2" in [delivery.message.plain_text() for delivery in taken]
    for delivery in taken:
        await right.retry(delivery.id, 600, "Discord rate limit", hold_channel=True)
    await _store(database, right, _at("C1", "t3", "discord"), "t3")
    assert await right.claim("discord", "right") == []  # held: t3 (and the retries) wait for the 429's end
    await _store(database, right, _at("C2", "t4", "discord"), "elsewhere")
    [elsewhere] = await right.claim("discord", "right")
    assert elsewhere.location.channel == "C2"


async def test_a_message_stored_by_a_replica_whose_clock_is_ahead_is_sent_at_once_by_the_others(
        database: Database, clock: SkewedClock) -> None:
    """A new row is due from its ``next_attempt_at``, the storing replica's clock: one ten minutes ahead stored
    every reply ten minutes in the future for the replica that delivers (the one running Slack's adapter), and each
    reached its thread ten minutes late. A message never tried is due at once, whoever's clock stored it."""
    ahead, right = Outbox(database, worker="ahead"), Outbox(database, worker="right")
    clock.ahead = timedelta(minutes=10)
    await _store(database, ahead, _at("C1", "t1"), "the reply")
    clock.ahead = timedelta(0)
    [reply] = await right.claim("slack", "right", pace_seconds=1.0)
    assert reply.message.plain_text() == "the reply"


async def test_a_retry_set_on_a_clock_days_ahead_is_due_once_the_clock_is_right(
        database: Database, clock: SkewedClock) -> None:
    """A retry in 5 s set on a clock three days ahead waited three days (and the thread's later messages behind it):
    a retry time further ahead than the longest retry Baton sets (``MAX_RETRY_SECONDS``) counts as come. A retry
    on the right clock still waits."""
    ahead, right = Outbox(database, worker="ahead"), Outbox(database, worker="right")
    await _store(database, ahead, _at("C1", "t1", "discord"), "first")
    clock.ahead = timedelta(days=3)
    [first] = await ahead.claim("discord", "ahead")
    await ahead.retry(first.id, 5, "Discord: 503 Service Unavailable")

    clock.ahead = timedelta(0)
    [again] = await right.claim("discord", "right")
    assert (again.id, again.attempts) == (first.id, 2)
    await right.retry(again.id, 600, "Discord: 503 Service Unavailable")
    assert await right.claim("discord", "right") == []


async def test_a_429_hold_seen_before_the_clock_was_set_back_ends_when_the_platform_said(
        database: Database, clock: SkewedClock) -> None:
    """This process remembers the 429 holds it saw (Discord: a final reply is handed straight to the adapter unless
    its channel is held). A hold seen before the clock was set back three days (NTP correcting a resumed virtual
    machine) ended three days later on the corrected clock: until then every final reply of that channel went the
    slow way, through the stored queue, and a later 429's hold was remembered as that one."""
    outbox = Outbox(database, worker="me")
    outbox.attach("discord", 0.0)
    await _store(database, outbox, _at("C1", "t1", "discord"), "first")
    clock.ahead = timedelta(days=3)
    [first] = await outbox.claim("discord", "me")
    await outbox.retry(first.id, 60, "Discord rate limit", hold_channel=True)

    clock.ahead = timedelta(0)
    async with database.session() as session:
        reply = await outbox.enqueue_claimed(session, _at("C1", "t2", "discord"), Message.text("reply"))
    assert reply is not None  # handed straight to the adapter: the hold is over


async def test_a_429_after_the_clock_was_set_back_holds_its_channel(database: Database, clock: SkewedClock) -> None:
    """A new hold was remembered as the later of it and the one already remembered: one seen before the clock was
    set back days, which is forgotten as over, and the new hold with it: the next final reply went into the 429."""
    outbox = Outbox(database, worker="me")
    outbox.attach("discord", 0.0)
    await _store(database, outbox, _at("C1", "t1", "discord"), "first")
    clock.ahead = timedelta(days=3)
    [first] = await outbox.claim("discord", "me")
    await outbox.retry(first.id, 60, "Discord rate limit", hold_channel=True)

    clock.ahead = timedelta(0)
    await _store(database, outbox, _at("C1", "t2", "discord"), "second")
    for delivery in await outbox.claim("discord", "me"):
        await outbox.retry(delivery.id, 600, "Discord rate limit", hold_channel=True)
    async with database.session() as session:
        held = await outbox.enqueue_claimed(session, _at("C1", "t3", "discord"), Message.text("reply"))
    assert held is None  # stored for the delivery loop, which waits for the 429's end


@pytest.mark.postgres
@pytest.mark.parametrize("off", [timedelta(minutes=5), -timedelta(minutes=5)], ids=["ahead", "behind"])
async def test_a_replica_whose_clock_is_off_by_minutes_does_not_send_a_message_another_replica_is_sending(
        postgres_url: str, machine_clock: MachineClock, off: timedelta) -> None:
    """An outbox claim lasts ``claimed_until``, written and compared on each replica's own clock: a replica 5 minutes
    ahead found the claim of a replica sending a message run out, took the row and sent it again (posted twice); one
    5 minutes behind wrote claims every other replica found run out. Claims, retries, paces and holds are on the
    database server's clock, which every replica reads."""
    upgrade(postgres_url)
    accurate, skewed = Database(postgres_url), None
    try:
        right = Outbox(accurate, worker="right")
        await _store(accurate, right, _at("C1", "t1"), "the reply")
        machine_clock.ahead = off  # the other replica's machine: its clock is off, and it starts so
        skewed = Database(postgres_url)
        other = Outbox(skewed, worker="other")
        if off > timedelta(0):  # the accurate replica sends it; the one ahead must not take it over
            machine_clock.ahead = timedelta(0)
            [sending] = await right.claim("slack", "right", pace_seconds=1.0)
            machine_clock.ahead = off
            assert await other.claim("slack", "other", pace_seconds=1.0) == [], "a message being sent was taken over"
        else:  # the replica behind sends it; the accurate one must not take it over
            [sending] = await other.claim("slack", "other", pace_seconds=1.0)
            machine_clock.ahead = timedelta(0)
            assert await right.claim("slack", "right", pace_seconds=1.0) == [], "a message being sent was taken over"
        assert sending.message.plain_text() == "the reply"
    finally:
        await accurate.dispose()
        if skewed is not None:
            await skewed.dispose()


@asynccontextmanager
async def _replica_digests(database_url: str, config: BatonConfig, instance: str) -> AsyncIterator[Digests]:
    """One replica's digest machinery, on the clock it has (none injected)."""
    db = Database(database_url)
    try:
        async with open_checkpointer(database_url) as checkpointer:
            registry = GraphRegistry.discover()
            yield Digests(Services(db, config, registry), GraphRuntime(registry, checkpointer), Outbox(db), instance)
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_a_replica_whose_clock_is_hours_ahead_does_not_post_a_digest_before_its_time(
        postgres_url: str, machine_clock: MachineClock) -> None:
    """Every replica looks for due digests each minute, on its own clock: one two hours ahead posted the digest due
    in an hour, an hour early, its window ending in the future (what happened in that hour was in no digest). Digests
    fire on the database server's clock."""
    upgrade(postgres_url)
    fires_at = (utcnow() + timedelta(hours=1)).replace(second=0, microsecond=0)
    config = BatonConfig(digests=[Digest(platform="playground", channel="ops", cron=f"{fires_at.minute} {fires_at.hour} * * *",
                                         timezone="UTC")])
    async with _replica_digests(postgres_url, config, "accurate") as accurate:
        await accurate.sync_config()  # the schedule, made on the right clock
    machine_clock.ahead = timedelta(hours=2)
    async with _replica_digests(postgres_url, config, "ahead") as ahead:
        assert await ahead.run_due() == 0
        async with ahead.db.read() as session:
            assert (await session.exec(select(DigestRun))).first() is None


class SetClock:
    """A digest replica's clock, which the test sets (jumps included)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


DAILY_9 = BatonConfig(digests=[Digest(platform="playground", channel="ops", cron="0 9 * * *", timezone="UTC")])


@asynccontextmanager
async def _digests_on(database_url: str, clock: SetClock) -> AsyncIterator[Digests]:
    upgrade(database_url)
    db = Database(database_url)
    try:
        async with open_checkpointer(database_url) as checkpointer:
            registry = GraphRegistry.discover()
            digests = Digests(Services(db, DAILY_9, registry), GraphRuntime(registry, checkpointer), Outbox(db), "a", clock)
            await digests.sync_config()
            yield digests
    finally:
        await db.dispose()


async def _fire_times(digests: Digests) -> list[datetime]:
    async with digests.db.read() as session:
        return list((await session.exec(select(DigestRun.fire_time).order_by(DigestRun.fire_time))).all())


def _utc(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 6, day, hour, minute, tzinfo=UTC)


async def test_a_clock_set_back_after_a_digest_does_not_post_it_again(database_url: str) -> None:
    """The clock set back an hour just after the 09:00 digest (NTP): 09:00 comes twice, its digest is posted once."""
    clock = SetClock(_utc(1, 6))
    async with _digests_on(database_url, clock) as digests:
        clock.now = _utc(1, 9, 1)
        assert await digests.run_due() == 1
        clock.now = _utc(1, 8, 30)  # set back
        assert await digests.run_due() == 0
        clock.now = _utc(1, 9, 1)
        assert await digests.run_due() == 0
        clock.now = _utc(2, 9, 1)
        assert await digests.run_due() == 1
        assert await _fire_times(digests) == [_utc(1, 9), _utc(2, 9)]


async def test_digests_resume_at_their_times_after_a_clock_days_ahead_is_set_back(database_url: str) -> None:
    """A machine whose clock was three days ahead (a VM restored with a wrong clock) posted one catch-up digest for
    the firing three days ahead; set right, its schedule posted nothing until that firing's time had come (three
    days without a digest), as if the firings before it were done. A firing posted on a clock that was ahead no
    longer stands for the ones before it; a jump forward posts one catch-up digest, not one a missed day."""
    clock = SetClock(_utc(1, 6))
    async with _digests_on(database_url, clock) as digests:
        clock.now = _utc(4, 12)  # three days ahead
        assert await digests.run_due() == 1
        clock.now = _utc(1, 10)  # set right
        assert await digests.run_due() == 1
        clock.now = _utc(2, 9, 5)
        assert await digests.run_due() == 1
        assert await _fire_times(digests) == [_utc(1, 9), _utc(2, 9), _utc(4, 9)]


async def test_a_schedule_made_on_a_clock_days_ahead_posts_its_next_digest_once_the_clock_is_set_right(
        database_url: str) -> None:
    """A schedule counts its firings from when it was made: one made (baton.yaml read, `digest daily` said) while the
    clock was three days ahead posted nothing, once the clock was set right, for those three days."""
    clock = SetClock(_utc(4, 12))
    async with _digests_on(database_url, clock) as digests:
        clock.now = _utc(1, 8)  # set right
        assert await digests.run_due() == 0
        clock.now = _utc(1, 9, 1)
        assert await digests.run_due() == 1
        clock.now = _utc(2, 9, 1)
        assert await digests.run_due() == 1
        assert await _fire_times(digests) == [_utc(1, 9), _utc(2, 9)]


class _LookingDigests:
    """Digests with no schedule: how often the scheduler looked for due ones."""

    def __init__(self) -> None:
        self.looks = 0

    async def sync_config(self) -> None:
        return None

    async def enabled(self) -> list[Any]:
        return []

    async def run_due(self) -> int:
        self.looks += 1
        return 0


async def test_the_schedulers_look_for_due_digests_goes_on_after_the_clock_is_set_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each minute the scheduler reconciles its jobs with the database and posts what is due (catch-up, another
    replica's chat schedules). That minute was an APScheduler interval job, whose next run is a wall-clock time: with
    the clock set back three hours (NTP), it did not run for three hours. It counts minutes on a clock that is never
    set, the event loop's."""
    wall = MachineClock()
    real = datetime

    class _WallTime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return real.now(tz) + wall.ahead

    for module in (apscheduler.schedulers.base, apscheduler.triggers.interval):
        monkeypatch.setattr(module, "datetime", _WallTime)
    monkeypatch.setattr(scheduler_module, "RECONCILE_SECONDS", 0.05)
    digests = _LookingDigests()
    scheduler = DigestScheduler(digests)  # type: ignore[arg-type]
    wall.ahead = timedelta(hours=3)
    await scheduler.start()
    try:
        wall.ahead = timedelta(0)  # set back
        looked = digests.looks

        async def looked_again() -> bool:
            return digests.looks >= looked + 3

        await until(looked_again, "the scheduler's look for due digests", timeout=5)
    finally:
        await scheduler.stop()


@pytest.mark.parametrize(("cron", "zone", "first", "wanted"), [
    # Paris springs forward at 02:00 on 29 March 2026: 02:30 does not happen that day; it fires at 03:30, once
    ("30 2 * * *", "Europe/Paris", datetime(2026, 3, 28, tzinfo=UTC),
     ["2026-03-28 02:30+0100", "2026-03-29 03:30+0200", "2026-03-30 02:30+0200"]),
    # New York falls back at 02:00 on 1 November 2026: 01:30 happens twice; it fires at the first, once
    ("30 1 * * *", "America/New_York", datetime(2026, 10, 31, tzinfo=UTC),
     ["2026-10-31 01:30-0400", "2026-11-01 01:30-0400", "2026-11-02 01:30-0500"]),
])
def test_a_daily_digest_in_a_skipped_or_repeated_hour_fires_once_that_day(
        cron: str, zone: str, first: datetime, wanted: list[str]) -> None:
    """The days the clocks change, a digest set in the hour that is skipped fires once, an hour later; one set in the
    hour that comes twice fires once, the first time (as crontab does)."""
    fired, moment = [], first
    for _ in wanted:
        fire = schedules.next_fire(cron, zone, moment)
        assert fire is not None
        fired.append(fire.astimezone(schedules.zone(zone)).strftime("%Y-%m-%d %H:%M%z"))
        moment = fire + timedelta(microseconds=1)
    assert fired == wanted


async def test_a_digest_claimed_before_the_clock_was_set_back_by_a_replica_that_died_is_posted(database_url: str) -> None:
    """A firing claimed by a replica that died is taken over once its claim is two minutes old. One claimed while
    the clock was three days ahead (then set back) was 'fresh' for three days: the digest came three days late.
    A claim further ahead than a builder's renewals keep it counts as lost."""
    clock = SetClock(_utc(1, 6))
    async with _digests_on(database_url, clock) as digests:
        [schedule] = await digests.enabled()
        async with digests.db.session() as session:
            session.add(DigestRun(schedule_key=schedule.key, fire_time=_utc(1, 9), platform="playground", channel="ops",
                                  window_start=_utc(1, 9) - timedelta(days=1), window_end=_utc(1, 9), status="claimed",
                                  claimed_by="died", claimed_at=_utc(4, 9), summary={"reason": "daily", "graphs": []}))
        clock.now = _utc(1, 9, 5)
        assert await digests.run_due() == 1
        async with digests.db.read() as session:
            run = (await session.exec(select(DigestRun))).one()
        assert (run.status, run.claimed_by) == ("posted", "a")
