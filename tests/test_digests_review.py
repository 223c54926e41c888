"""Digests, a fresh-eyes review: the first digest's window; schedules at the clock changes; a digest given up after
the next one began."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot import schedules
from bot.config import BatonConfig, Digest
from bot.messages import Location
from storage.models import DigestRun, as_utc
from tests.test_digests import Clock, digest_service, firings


async def test_a_schedules_first_digest_covers_the_period_before_it_not_the_one_after(sqlite_url: str) -> None:
    """A schedule's first digest (in a channel that never had one) covers one period: the time since its schedule
    fired before. It went back as far as the time to its *next* firing: a monthly digest's first, on 1 March,
    began on 29 January (31 days back, March's length); a weekday digest's first, on a Monday, began on the
    Sunday, leaving Friday and Saturday out, and on a Friday it began on the Tuesday."""
    monthly = Digest(platform="playground", channel="ops", cron="0 9 1 * *", timezone="UTC")
    weekdays = Digest(platform="playground", channel="dev", cron="0 9 * * 1-5", timezone="Europe/Paris")
    clock = Clock(datetime(2026, 2, 10, 12, 0, tzinfo=UTC))
    async with digest_service(sqlite_url, clock, BatonConfig(digests=[monthly, weekdays])) as digests:
        clock.now = datetime(2026, 2, 13, 8, 5, tzinfo=UTC)  # Friday 09:05 in Paris
        assert await digests.run_due(clock.now) == 1
        runs = await firings(digests)
        clock.now = datetime(2026, 3, 1, 9, 5, tzinfo=UTC)
        assert await digests.run_due(clock.now) == 2  # the monthly one, and the weekday one's catch-up
        runs = [runs[0], *(run for run in await firings(digests) if run.channel == "ops")]
    by_channel = {run.channel: run for run in runs}
    assert by_channel["dev"].window_start == datetime(2026, 2, 12, 8, tzinfo=UTC)  # Thursday 09:00 in Paris
    assert by_channel["ops"].window_start == datetime(2026, 2, 1, 9, tzinfo=UTC)
    assert by_channel["ops"].window_end - by_channel["ops"].window_start == timedelta(days=28)


def test_a_schedule_posting_twice_in_minutes_when_the_clocks_change_is_refused_whenever_it_is_made() -> None:
    """A schedule that would post a digest less than 15 minutes after another is refused, but only the next 100
    firings were checked (25 days of this one): made in June, `5,55 1,3 * * *` in New York was taken, and on
    14 March 2027, when the clocks go forward, it posts at 01:55 and again ten minutes later (03:05); made
    in March, it was refused."""
    cron, timezone = "5,55 1,3 * * *", "America/New_York"
    with pytest.raises(schedules.ScheduleError, match="10 minutes after another"):
        schedules.check_schedule(cron, timezone, datetime(2027, 3, 10, tzinfo=UTC))
    with pytest.raises(schedules.ScheduleError, match="10 minutes after another"):
        schedules.check_schedule(cron, timezone, datetime(2026, 6, 1, tzinfo=UTC))
    schedules.check_schedule("5,55 1,4 * * *", timezone, datetime(2026, 6, 1, tzinfo=UTC))  # 01:55, then 04:05


async def test_a_digest_given_up_after_the_next_one_began_is_covered_by_the_one_after(database_url: str) -> None:
    """A digest given up is no previous one: the next covers its window too. But a quarter-hourly digest that
    failed (a database timing out) was still being tried again when its next one fired, which began where it
    ended; given up after its fifth try, its quarter of an hour was in no digest, the next ones going on from
    there."""
    ops = Location(platform="playground", workspace="", channel="ops", thread="")
    first = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    clock = Clock(datetime(2026, 6, 1, 8, 50, tzinfo=UTC))
    async with digest_service(database_url, clock, BatonConfig()) as digests:
        await digests.set_chat_schedule(ops, "*/15 * * * *", "UTC", "alice", "c1")
        render = digests._render

        async def failing_at_nine(run: DigestRun, *args: Any) -> Any:
            if as_utc(run.fire_time) == first:
                raise RuntimeError("canceling statement due to statement timeout")
            return await render(run, *args)

        digests._render = failing_at_nine  # type: ignore[method-assign]
        for minute in (0, 3, 6, 9, 15, 18, 30):  # tried again each time its claim is over two minutes old
            clock.now = first.replace(minute=minute)
            await digests.run_due(clock.now)
        runs = await firings(digests)
    assert [(as_utc(run.fire_time), run.status) for run in runs] == [
        (first, "failed"), (first.replace(minute=15), "posted"), (first.replace(minute=30), "posted")]
    assert as_utc(runs[2].window_start) == first - timedelta(minutes=15), "08:45 to 09:00 was in no digest"
