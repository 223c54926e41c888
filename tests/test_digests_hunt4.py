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
                            turnaround_ms=int(took.total_seconds() * 1000), error=error))


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
