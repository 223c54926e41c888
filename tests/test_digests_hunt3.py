"""Digests, a third hunt: cancelled runs, `digest off` mid-way, clocks with 30 and 45 minute shifts, long gaps."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import update

from bot.config import BatonConfig, Digest
from bot.digest_stats import collect
from bot.messages import Location, Message
from graphs.digest import compose
from storage.models import OutboxMessage, Run, ThreadRecord
from tests.test_digests import Clock, digest_service, firings, posted_messages
from tests.test_digests_hunt import wait_until

OPS = Location(platform="playground", workspace="", channel="ops", thread="")


async def _runs(digests, start: datetime, *rows: tuple[str, str, str | None]) -> None:
    """Runs of #ops started (and ended) in the hour after ``start``: (graph, status, error)."""
    async with digests.db.session() as session:
        for n, (graph, status, error) in enumerate(rows):
            record = ThreadRecord(platform="playground", channel="ops", thread=str(n), status=status)
            session.add(record)
            await session.flush()
            session.add(Run(thread_record_id=record.id, platform="playground", channel="ops", graph=graph, status=status,
                            requested_by="alice", correlation_id=f"c{n}", started_at=start + timedelta(minutes=n),
                            finished_at=start + timedelta(minutes=n + 1), turnaround_ms=60_000, error=error,
                            cancelled=(error or "").startswith("cancelled by ")))  # as a `cancel` ends it


async def test_a_cancelled_run_is_shown_as_cancelled_not_as_a_failure(sqlite_url):
    """`cancel` ends a run as failed with "cancelled by bob": the digest listed it under *Failures*, in a
    warning card, as if something broke."""
    start = datetime(2026, 6, 1, 8, tzinfo=UTC)
    end = start + timedelta(days=1)
    async with digest_service(sqlite_url, Clock(end), BatonConfig()) as digests:
        await _runs(digests, start, ("deploy", "done", None), ("deploy", "failed", "cancelled by bob"),
                    ("deploy", "failed", "exit code 2"))
        async with digests.db.read() as session:
            stats = await collect(session, "playground", "ops", start, end, [], end)
            only_cancelled = await collect(session, "playground", "ops", start + timedelta(seconds=30),
                                           start + timedelta(minutes=2, seconds=30), [], end)
    assert stats["per_graph"] == {"deploy": {"done": 1, "failed": 1, "cancelled": 1, "running": 0}}
    assert stats["requests"] == 3
    assert [failure["error"] for failure in stats["failures"]] == ["exit code 2"] and stats["failure_count"] == 1
    assert stats["cancelled_count"] == 1
    text = Message.model_validate(compose({"stats": stats})["reply"]).plain_text()
    assert "`deploy`: 1 done, 1 failed, 1 cancelled, 0 still running or waiting" in text
    assert "Runs cancelled: 1" in text and "cancelled by bob" not in text
    reply = compose({"stats": only_cancelled})["reply"]
    assert only_cancelled["failures"] == [] and only_cancelled["cancelled_count"] == 1
    assert reply["tone"] == "success", reply  # nothing broke


async def test_digest_off_while_a_digest_is_being_built_posts_nothing(database_url):
    """`digest off` answered while the day's digest was being built (a slow model summary): the digest was
    posted anyway, after the channel was told its digests were off."""
    clock = Clock(datetime(2026, 6, 1, 6, 0, tzinfo=UTC))
    async with digest_service(database_url, clock, BatonConfig()) as digests:
        await digests.set_chat_schedule(OPS, "0 9 * * *", "Europe/Paris", "alice", "c1")
        clock.now = datetime(2026, 6, 1, 7, 0, tzinfo=UTC)  # 09:00 in Paris
        built = asyncio.Event()
        render = digests._render

        async def slow_render(*args):
            await built.wait()
            return await render(*args)

        digests._render = slow_render  # type: ignore[method-assign]
        building = asyncio.create_task(digests.run_due(clock.now))
        await wait_until(lambda: firings(digests), lambda runs: len(runs) == 1)
        assert await digests.disable_chat_schedule(OPS, "alice", "c2")
        built.set()
        assert await building == 0
        assert await posted_messages(digests) == []
        # turned on again, its first digest covers the window of the one dropped
        digests._render = render  # type: ignore[method-assign]
        await digests.set_chat_schedule(OPS, "0 9 * * *", "Europe/Paris", "alice", "c3")
        clock.now = datetime(2026, 6, 2, 7, 0, tzinfo=UTC)
        assert await digests.run_due(clock.now) == 1
        runs = await firings(digests)
    assert runs[1].window_start == runs[0].window_start  # the dropped one's day is in the next digest


async def test_the_digest_after_one_the_channel_refused_covers_its_window_too(database_url):
    """Baton removed from the channel: Slack refused the day's card (not_in_channel), yet the next digest
    started where the refused one ended; invited back, the channel never heard of the days it missed."""
    clock = Clock(datetime(2026, 6, 1, 6, 0, tzinfo=UTC))
    async with digest_service(database_url, clock, BatonConfig()) as digests:
        await digests.set_chat_schedule(OPS, "0 9 * * *", "Europe/Paris", "alice", "c1")
        for day in (1, 2, 3):
            clock.now = datetime(2026, 6, day, 7, 0, tzinfo=UTC)
            assert await digests.run_due(clock.now) == 1
            if day < 3:  # the platform refused the card (the adapter marks it failed)
                card = (await posted_messages(digests))[-1]
                async with digests.db.session() as session:
                    await session.exec(update(OutboxMessage).where(OutboxMessage.id == card.id).values(
                        status="failed", error="chat.postMessage: not_in_channel"))
        runs = await firings(digests)
    assert [run.status for run in runs] == ["posted"] * 3
    assert runs[2].window_start == runs[0].window_start and runs[2].window_end == runs[2].fire_time


LORD_HOWE, CHATHAM = "Australia/Lord_Howe", "Pacific/Chatham"  # clocks move 30 minutes; 45 minutes off the hour


@pytest.mark.parametrize(("cron", "zone", "first", "last", "wanted"), [
    # Lord Howe springs forward from 02:00 to 02:30 on 4 October (3 October, 15:30 UTC): 02:15 that day is
    # posted at 02:45 (as cron does), once
    ("15 2 * * *", LORD_HOWE, datetime(2026, 10, 3, 12, tzinfo=UTC), datetime(2026, 10, 6, 0, tzinfo=UTC),
     [datetime(2026, 10, 3, 15, 45, tzinfo=UTC), datetime(2026, 10, 4, 15, 15, tzinfo=UTC),
      datetime(2026, 10, 5, 15, 15, tzinfo=UTC)]),
    ("15 2 * * sun", LORD_HOWE, datetime(2026, 9, 26, 12, tzinfo=UTC), datetime(2026, 10, 12, 0, tzinfo=UTC),
     [datetime(2026, 9, 26, 15, 45, tzinfo=UTC), datetime(2026, 10, 3, 15, 45, tzinfo=UTC),
      datetime(2026, 10, 10, 15, 15, tzinfo=UTC)]),
    # and falls back from 02:00 to 01:30 on 5 April (4 April, 15:00 UTC): 01:45 happens twice, posted once
    ("45 1 * * *", LORD_HOWE, datetime(2026, 4, 4, 12, tzinfo=UTC), datetime(2026, 4, 7, 0, tzinfo=UTC),
     [datetime(2026, 4, 4, 14, 45, tzinfo=UTC), datetime(2026, 4, 5, 15, 15, tzinfo=UTC),
      datetime(2026, 4, 6, 15, 15, tzinfo=UTC)]),
    ("0,30 1-2 * * *", LORD_HOWE, datetime(2026, 4, 4, 12, tzinfo=UTC), datetime(2026, 4, 4, 18, tzinfo=UTC),
     [datetime(2026, 4, 4, 14, tzinfo=UTC), datetime(2026, 4, 4, 14, 30, tzinfo=UTC),  # 01:00, 01:30 summer time
      datetime(2026, 4, 4, 15, 30, tzinfo=UTC), datetime(2026, 4, 4, 16, tzinfo=UTC)]),  # 02:00, 02:30 winter time
    # Chatham (+12:45, +13:45 in summer) springs forward from 02:45 to 03:45 on 27 September (26th, 14:00 UTC)
    ("50 2 * * *", CHATHAM, datetime(2026, 9, 25, 12, tzinfo=UTC), datetime(2026, 9, 28, 0, tzinfo=UTC),
     [datetime(2026, 9, 25, 14, 5, tzinfo=UTC), datetime(2026, 9, 26, 14, 5, tzinfo=UTC),
      datetime(2026, 9, 27, 13, 5, tzinfo=UTC)]),
])
async def test_digests_across_half_hour_clock_changes_are_posted_once_per_firing(sqlite_url, cron, zone, first, last, wanted):
    clock = Clock(first)
    config = BatonConfig(digests=[Digest(platform="playground", channel="ops", cron=cron, timezone=zone)])
    async with digest_service(sqlite_url, clock, config) as digests:
        while clock.now <= last:
            await digests.run_due(clock.now)
            clock.now += timedelta(hours=3) if cron.endswith("sun") else timedelta(minutes=15)  # a firing is due at
        runs = await firings(digests)  # the first tick at or after it: its fire time is the same
    assert [run.fire_time for run in runs] == wanted
    assert [run.window_end for run in runs[:-1]] == [run.window_start for run in runs[1:]]  # windows tile exactly


@pytest.mark.parametrize("cron", ["0 * * * *", "30 8 * * mon", "0 9 * * 1-5"])
async def test_a_week_down_gives_one_catch_up_digest_from_two_replicas(database_url, cron):
    config = BatonConfig(digests=[Digest(platform="playground", channel="ops", cron=cron, timezone="Asia/Kathmandu")])
    clock = Clock(datetime(2026, 5, 25, 0, tzinfo=UTC))
    async with digest_service(database_url, clock, config, "a") as one:
        clock.now = datetime(2026, 5, 26, 12, tzinfo=UTC)
        assert await one.run_due(clock.now) == 1
        clock.now = datetime(2026, 6, 9, 12, tzinfo=UTC)  # Baton was down for two weeks
        async with digest_service(database_url, clock, config, "b") as two:
            posted = await asyncio.gather(one.run_due(clock.now), two.run_due(clock.now))
            assert await two.run_due(clock.now) == 0
            runs = await firings(one)
    assert sum(posted) == 1 and len(runs) == 2
    assert runs[1].window_start == runs[0].window_end and runs[1].window_end == runs[1].fire_time
    assert runs[1].fire_time <= clock.now and runs[1].fire_time > clock.now - timedelta(days=7)


async def test_a_request_approved_the_day_after_it_was_asked_counts_in_that_days_turnaround_and_waiting(sqlite_url):
    """Asked at 20:00, approved the next morning: the evening's digest saw it still waiting (no turnaround, no
    wait yet) and the morning's left it out (asked before its window), so the slowest requests and the longest
    waits for humans were in no digest at all."""
    day = datetime(2026, 6, 2, 7, tzinfo=UTC)
    async with digest_service(sqlite_url, Clock(day + timedelta(days=1)), BatonConfig()) as digests:
        async with digests.db.session() as session:
            records = [ThreadRecord(platform="playground", channel="ops", thread=str(n), status="done") for n in range(3)]
            for record in records:
                session.add(record)
            await session.flush()
            for n, (asked, took, waited, error) in enumerate((
                    (day - timedelta(hours=11), timedelta(hours=12), 36_000.0, None),  # approved at 08:00
                    (day + timedelta(hours=1), timedelta(seconds=30), 0.0, None),
                    (day + timedelta(hours=2), timedelta(hours=1), 3_000.0, "cancelled by bob"))):  # no result
                session.add(Run(thread_record_id=records[n].id, platform="playground", channel="ops", graph="deploy",
                                status="failed" if error else "done", requested_by="alice", correlation_id=f"c{n}",
                                started_at=asked, finished_at=asked + took, turnaround_ms=int(took.total_seconds() * 1000),
                                waited_seconds=waited, error=error, cancelled=error is not None))
        async with digests.db.read() as session:
            stats = await collect(session, "playground", "ops", day, day + timedelta(days=1), [], day + timedelta(days=1))
    assert stats["turnaround"] == {"p50_ms": 30_000, "p95_ms": 12 * 3_600_000, "count": 2}
    assert stats["waited_seconds"] == 39_000.0
