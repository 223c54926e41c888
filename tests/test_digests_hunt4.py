"""Digests, a fourth hunt: whether what a digest says is right (its numbers against a hand count)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.config import BatonConfig
from bot.digest_stats import collect
from bot.messages import Message
from graphs.digest import compose
from storage.models import Run, ThreadRecord
from tests.test_digests import Clock, digest_service

START = datetime(2026, 6, 1, 8, tzinfo=UTC)
END = START + timedelta(days=1)


async def _add_runs(digests, *rows: tuple[str, str, timedelta, str | None]) -> None:
    """Runs of #ops started in the hour after START: (graph, status, turnaround, error), each in its own thread."""
    async with digests.db.session() as session:
        for n, (graph, status, took, error) in enumerate(rows):
            record = ThreadRecord(platform="playground", channel="ops", thread=str(n), status=status)
            session.add(record)
            await session.flush()
            asked = START + timedelta(minutes=n)
            session.add(Run(thread_record_id=record.id, platform="playground", channel="ops", graph=graph, status=status,
                            requested_by="alice", correlation_id=f"c{n}", started_at=asked, finished_at=asked + took,
                            turnaround_ms=int(took.total_seconds() * 1000), error=error,
                            cancelled=(error or "").startswith("cancelled by ")))  # as a `cancel` ends it


async def _stats(database_url: str, *rows: tuple[str, str, timedelta, str | None]) -> dict:
    async with digest_service(database_url, Clock(END + timedelta(days=3)), BatonConfig()) as digests:
        await _add_runs(digests, *rows)
        async with digests.db.read() as session:
            return await collect(session, "playground", "ops", START, END + timedelta(days=3), [], END + timedelta(days=3))


async def test_the_charts_average_turnaround_leaves_out_cancelled_runs(database_url):
    """A cancelled run has no result, so no turnaround (the p50/p95 leave it out), yet the chart's average
    turnaround of its day counted it: two 1-minute deploys and one left waiting two days, then cancelled, drew
    '3 · 16h 0m' over the day, where its requests had taken a minute."""
    stats = await _stats(database_url, ("deploy", "done", timedelta(minutes=1), None),
                         ("deploy", "done", timedelta(minutes=1), None),
                         ("deploy", "failed", timedelta(days=2), "cancelled by bob"))
    assert stats["turnaround"]["count"] == 2 and stats["turnaround"]["p95_ms"] == 60_000
    assert stats["per_day"] == [{"day": "2026-06-01", "requests": 3, "avg_turnaround_ms": 60_000.0}]


async def test_a_failure_whose_error_begins_with_a_blank_line_is_listed_with_its_first_words(database_url):
    """An error whose first line is empty ("\\nTraceback ...", a tool's output starting with a newline) was listed
    as '`deploy`: ' and nothing after it, and one of spaces only the same: the lead reading the digest saw a
    failure with no reason. The first line with words is shown, 'failed' when there is none."""
    stats = await _stats(database_url, ("deploy", "failed", timedelta(minutes=1), "\n  \nValueError: no such host\nmore"),
                         ("deploy", "failed", timedelta(minutes=1), "   \n"))
    assert [failure["error"] for failure in stats["failures"]] == ["ValueError: no such host", "failed"]


def _spending_line(tokens: int, cost: float | None) -> str:
    stats = {"window": {"start": START.isoformat(), "end": END.isoformat()}, "platform": "playground", "channel": "ops",
             "per_graph": {"assistant": {"done": 1}}, "requests": 1, "turnaround": {"count": 0}, "waited_seconds": 0.0,
             "failures": [], "failure_count": 0, "decided": [], "waiting": [], "per_day": [], "tokens": tokens,
             "cost": cost, "unpriced_runs": 0}
    text = Message.model_validate(compose({"stats": stats})["reply"]).plain_text()  # type: ignore[typeddict-item]
    return next(line for line in text.splitlines() if line.startswith("Model tokens"))


def test_a_cost_too_small_for_four_decimals_is_not_shown_as_nothing():
    """A cheap model ($0.15 a million tokens) answering 120 tokens costs $0.000018: the digest said 'cost $0.0000',
    as if nothing had been spent. It says '< $0.0001'; a cost of dollars reads with cents and thousands."""
    assert _spending_line(120, 0.000018).endswith("cost < $0.0001")
    assert _spending_line(3000, 0.0012).endswith("cost $0.0012")
    assert _spending_line(3000, 0.0).endswith("cost $0.0000")  # priced at nothing (a local model): nothing spent
    assert _spending_line(90_000_000, 1234.5678).endswith("cost $1,234.57")


def _chart_days(per_day: list[dict], start: datetime, end: datetime, timezone: str = "UTC") -> list[str]:
    """The day labels the digest's chart draws, in order."""
    import base64
    import re

    stats = {"window": {"start": start.isoformat(), "end": end.isoformat()}, "platform": "playground", "channel": "ops",
             "per_graph": {"deploy": {"done": sum(day["requests"] for day in per_day)}},
             "requests": sum(day["requests"] for day in per_day), "turnaround": {"count": 0}, "waited_seconds": 0.0,
             "failures": [], "failure_count": 0, "decided": [], "waiting": [], "per_day": per_day, "timezone": timezone}
    image = next(part for part in compose({"stats": stats})["reply"]["parts"] if part["kind"] == "image")  # type: ignore[typeddict-item]
    return re.findall(r'text-anchor="middle">(\d\d-\d\d)</text>', base64.b64decode(image["data"]).decode())


def test_a_day_without_requests_is_drawn_in_the_chart_not_left_out():
    """A weekly digest's chart drew only the days with requests: Monday, Tuesday and Thursday side by side, so
    Wednesday's outage (no request at all) read as no day at all. Every day of the window has its bar, 0 included."""
    monday = datetime(2026, 6, 1, 7, tzinfo=UTC)
    per_day = [{"day": "2026-06-01", "requests": 3, "avg_turnaround_ms": 1000.0},
               {"day": "2026-06-02", "requests": 2, "avg_turnaround_ms": 1000.0},
               {"day": "2026-06-04", "requests": 1, "avg_turnaround_ms": None}]
    assert _chart_days(per_day, monday, monday + timedelta(days=7)) == \
        ["06-01", "06-02", "06-03", "06-04", "06-05", "06-06", "06-07", "06-08"]
    # a window ending at midnight UTC has no bar for the day it ends on
    assert _chart_days(per_day[:1], datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 6, 2, tzinfo=UTC)) == ["06-01"]


async def test_a_request_asked_before_the_window_and_finished_in_it_is_not_a_quiet_period(sqlite_url):
    """An overnight job asked at 20:00 (yesterday's digest: 1 still running) and done at 02:00: this morning's digest
    counts its turnaround (requests that ended in the window, whenever asked), yet said 'Quiet: no requests,
    approvals or failures' and left it out; the 6-hour turnaround was in no digest."""
    async with digest_service(sqlite_url, Clock(END), BatonConfig()) as digests:
        async with digests.db.session() as session:
            record = ThreadRecord(platform="playground", channel="ops", thread="1", status="done")
            session.add(record)
            await session.flush()
            session.add(Run(thread_record_id=record.id, platform="playground", channel="ops", graph="backup",
                            status="done", requested_by="alice", correlation_id="c1", started_at=START - timedelta(hours=12),
                            finished_at=START - timedelta(hours=6), turnaround_ms=6 * 3_600_000))
        async with digests.db.read() as session:
            stats = await collect(session, "playground", "ops", START - timedelta(hours=8), END, [], END)
    text = Message.model_validate(compose({"stats": stats})["reply"]).plain_text()  # type: ignore[typeddict-item]
    assert stats["requests"] == 0 and stats["turnaround"]["count"] == 1
    assert "Quiet" not in text and "p50 6h, p95 6h over 1 finished" in text, text


async def test_requests_per_day_are_the_days_of_the_schedules_time_zone(database_url):
    """The chart counted UTC days: a Los Angeles team's afternoon (after 17:00, midnight UTC) was drawn on the next
    day, and a Paris team's requests just after midnight on the day before. Days are the schedule's time zone's,
    a clock change in the window included (Paris went from UTC+2 to UTC+1 at 01:00 UTC on 25 October)."""
    async with digest_service(database_url, Clock(END), BatonConfig()) as digests:
        async with digests.db.session() as session:
            for n, at in enumerate((datetime(2026, 6, 1, 20, tzinfo=UTC),  # 13:00 in Los Angeles
                                    datetime(2026, 6, 2, 1, tzinfo=UTC),  # 18:00 there, the same day
                                    datetime(2026, 10, 24, 22, 30, tzinfo=UTC),  # 00:30 on the 25th in Paris (CEST)
                                    datetime(2026, 10, 25, 22, 30, tzinfo=UTC),  # 23:30 on the 25th (CET)
                                    datetime(2026, 10, 25, 23, 30, tzinfo=UTC))):  # 00:30 on the 26th
                record = ThreadRecord(platform="playground", channel="ops", thread=str(n), status="done")
                session.add(record)
                await session.flush()
                session.add(Run(thread_record_id=record.id, platform="playground", channel="ops", graph="deploy",
                                status="done", requested_by="alice", correlation_id=f"c{n}", started_at=at,
                                finished_at=at + timedelta(seconds=1), turnaround_ms=1000))
        async with digests.db.read() as session:
            june = await collect(session, "playground", "ops", datetime(2026, 6, 1, 16, tzinfo=UTC),
                                 datetime(2026, 6, 2, 16, tzinfo=UTC), [], END, "America/Los_Angeles")
            october = await collect(session, "playground", "ops", datetime(2026, 10, 24, 7, tzinfo=UTC),
                                    datetime(2026, 10, 26, 8, tzinfo=UTC), [], END, "Europe/Paris")
    assert [(day["day"], day["requests"]) for day in june["per_day"]] == [("2026-06-01", 2)]
    assert [(day["day"], day["requests"]) for day in october["per_day"]] == [("2026-10-25", 2), ("2026-10-26", 1)]
    assert _chart_days(october["per_day"], datetime(2026, 10, 24, 7, tzinfo=UTC), datetime(2026, 10, 26, 8, tzinfo=UTC),
                       "Europe/Paris") == ["10-24", "10-25", "10-26"]


def test_the_cards_period_is_written_on_the_clock_its_chart_days_are_of():
    """A Paris team's 09:00 digest was titled '07:00 to 07:00 UTC' above a chart of Paris days: two clocks on one card."""
    stats = {"window": {"start": "2026-06-01T07:00:00+00:00", "end": "2026-06-02T07:00:00+00:00"}, "platform": "playground",
             "channel": "ops", "per_graph": {}, "requests": 0, "turnaround": {"count": 0}, "waited_seconds": 0.0,
             "failures": [], "failure_count": 0, "decided": [], "waiting": [], "per_day": [], "timezone": "Europe/Paris"}
    reply = compose({"stats": stats})["reply"]  # type: ignore[typeddict-item]
    assert reply["title"] == "Digest: 2026-06-01 09:00 to 2026-06-02 09:00 Europe/Paris"
    assert compose({"stats": {**stats, "timezone": "UTC"}})["reply"]["title"].endswith(  # type: ignore[typeddict-item]
        "2026-06-01 07:00 to 2026-06-02 07:00 UTC")


async def test_a_scheduled_digest_is_counted_and_titled_on_its_schedules_clock(sqlite_url):
    """The chart's days and the card's period were the schedule's zone's only in ``collect`` and ``compose``: the
    scheduler never handed the zone over, so a Paris team's card still read '07:00 to 07:00 UTC'."""
    from bot.config import Digest
    from tests.test_digests import firings, posted_messages

    paris = Digest(platform="playground", channel="ops", cron="0 9 * * *", timezone="Europe/Paris")
    clock = Clock(datetime(2026, 6, 1, 7, 5, tzinfo=UTC))  # 09:05 in Paris (summer time: UTC+2)
    async with digest_service(sqlite_url, clock, BatonConfig(digests=[paris])) as digests:
        clock.now = datetime(2026, 6, 2, 7, 5, tzinfo=UTC)
        assert await digests.run_due(clock.now) == 1
        (firing,) = [run for run in await firings(digests) if run.fire_time == datetime(2026, 6, 2, 7, tzinfo=UTC)]
        assert firing.summary["timezone"] == "Europe/Paris"
        card = Message.model_validate((await posted_messages(digests))[-1].payload)
    assert card.title is not None and card.title.endswith("09:00 Europe/Paris"), card.title


def test_a_period_nobody_waited_in_says_none_not_0ms():
    """'Time spent waiting for humans: 0ms' read as a measurement that rounded away, not as nobody having waited."""
    stats = {"requests": 1, "per_graph": {"uptime": {"done": 1}}, "turnaround": {"count": 1, "p50_ms": 900,
             "p95_ms": 900}, "waited_seconds": 0, "failures": [], "failure_count": 0, "decided": [], "waiting": [],
             "per_day": [], "timezone": "UTC", "window": {"start": START.isoformat(), "end": END.isoformat()},
             "platform": "playground", "channel": "ops"}
    text = Message.model_validate(compose({"stats": stats})["reply"]).plain_text()
    assert "Time spent waiting for humans: none" in text, text
    stats["waited_seconds"] = 120
    assert "Time spent waiting for humans: 2m" in Message.model_validate(compose({"stats": stats})["reply"]).plain_text()
