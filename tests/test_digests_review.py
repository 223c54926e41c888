"""Digests, a fresh-eyes review: the first digest's window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.config import BatonConfig, Digest
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

