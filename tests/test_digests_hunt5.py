"""Digests, a fifth hunt: the chart of a long period, money shown with honest digits, refused cards named."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import update

from bot.config import BatonConfig
from bot.digest_stats import collect
from bot.messages import Location, Message
from graphs.digest import compose
from storage.models import OutboxMessage, Run, ThreadRecord
from tests.fake_models import calls
from tests.test_digests import Clock, digest_service, firings, posted_messages
from tests.test_cost_hunt import digest_written_by

SVG = "{http://www.w3.org/2000/svg}"
OPS = Location(platform="playground", workspace="", channel="ops", thread="")


def _stats(per_day: list[dict], start: datetime, end: datetime, **more) -> dict:
    requests = sum(day["requests"] for day in per_day)
    return {"window": {"start": start.isoformat(), "end": end.isoformat()}, "platform": "playground", "channel": "ops",
            "per_graph": {"deploy": {"done": requests}}, "requests": requests, "turnaround": {"count": 0},
            "waited_seconds": 0.0, "failures": [], "failure_count": 0, "decided": [], "waiting": [], "per_day": per_day,
            "timezone": "UTC", **more}


def _chart(stats: dict) -> ElementTree.Element:
    image = next(part for part in compose({"stats": stats})["reply"]["parts"] if part["kind"] == "image")  # type: ignore[typeddict-item]
    return ElementTree.fromstring(base64.b64decode(image["data"]))


def _bars(svg: ElementTree.Element) -> list[str]:
    """Each bar's description (its tooltip), in order."""
    return [rect.findtext(f"{SVG}title") or "" for rect in svg.iter(f"{SVG}rect")]


def _texts(svg: ElementTree.Element) -> list[tuple[str, float, float, float, float]]:
    """Every text's box as a browser roughly draws it (a sans-serif glyph is about 0.55 of the font size wide on
    average; 0.6 is taken): (text, left, top, right, bottom); upright ones (rotate(-90)) turned."""
    boxes = []
    for text in svg.iter(f"{SVG}text"):
        size, content = float(text.get("font-size", "16")), text.text or ""
        x, y, width = float(text.get("x", 0)), float(text.get("y", 0)), len(content) * size * 0.6
        if "rotate(-90" in text.get("transform", ""):
            boxes.append((content, x - 0.8 * size, y - width, x + 0.2 * size, y))
            continue
        anchor = text.get("text-anchor", "start")
        left = {"start": x, "middle": x - width / 2, "end": x - width}[anchor]
        boxes.append((content, left, y - 0.8 * size, left + width, y + 0.2 * size))
    return boxes


def _overlaps(svg: ElementTree.Element) -> list[tuple[str, str]]:
    boxes = _texts(svg)
    return [(a[0], b[0]) for n, a in enumerate(boxes) for b in boxes[n + 1:]
            if a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]]


def _busy_days(start: datetime, days: int) -> list[dict]:
    """Every day of the period busy: three-figure counts and hour-long turnarounds, the widest figures there are."""
    first = start.date()
    return [{"day": str(first + timedelta(days=n)), "requests": 100 + n % 900, "avg_turnaround_ms": 3_723_000.0 + n}
            for n in range(days)]


@pytest.mark.parametrize("days", [7, 12, 20, 31, 40, 120, 200, 400, 3000])
def test_the_charts_figures_and_labels_never_overlap(days):
    """From about 12 bars on, a bar's figures ('312 · 1h 2m') ran into its neighbours' and the day labels under the
    bars into each other (31 of them in 360 pixels), so a month's chart was unreadable; nothing is cut off either."""
    start = datetime(2026, 6, 1, tzinfo=UTC)
    svg = _chart(_stats(_busy_days(start, days), start, start + timedelta(days=days)))
    assert _overlaps(svg) == []
    width = float(svg.get("width", 0))
    assert all(0 <= left and right <= width for _text, left, _top, right, _bottom in _texts(svg)), _texts(svg)


def test_a_period_over_31_days_draws_every_week_its_quiet_ones_included():
    """A 40-day catch-up drew only its days with requests: 3 June and 8 July side by side, the five weeks between
    (an outage) gone. Each bar is a week now, the quiet ones 0, and the chart says what a bar is."""
    start, end = datetime(2026, 6, 3, 7, tzinfo=UTC), datetime(2026, 7, 13, 7, tzinfo=UTC)  # Wednesday to Monday
    per_day = [{"day": "2026-06-03", "requests": 3, "avg_turnaround_ms": 60_000.0},
               {"day": "2026-06-05", "requests": 1, "avg_turnaround_ms": 180_000.0},
               {"day": "2026-07-08", "requests": 2, "avg_turnaround_ms": None}]
    svg = _chart(_stats(per_day, start, end))
    assert _bars(svg) == ["2026-06-03 to 2026-06-07: 4 requests, average turnaround 1m",  # (3 × 1m + 3m) / 4
                          "2026-06-08 to 2026-06-14: no requests", "2026-06-15 to 2026-06-21: no requests",
                          "2026-06-22 to 2026-06-28: no requests", "2026-06-29 to 2026-07-05: no requests",
                          "2026-07-06 to 2026-07-12: 2 requests", "2026-07-13: no requests"]
    texts = [text for text, *_box in _texts(svg)]
    assert texts[:2] == ["requests per week · average turnaround",
                         "weeks from Monday, each under its first day; the first and last are part weeks"]
    assert texts.count("0") == 5


@pytest.mark.parametrize(("days", "unit", "bars"), [(31, "day", 31), (32, "week", 5), (182, "week", 26),
                                                    (183, "month", 6), (800, "month", 27), (1200, "year", 4)])
def test_a_long_periods_bars_are_weeks_months_or_years_and_count_every_request(days, unit, bars):
    """A yearly schedule (or a long catch-up) drew up to hundreds of day bars, or only the days with requests."""
    start = datetime(2026, 6, 1, tzinfo=UTC)
    per_day = _busy_days(start, days)
    svg = _chart(_stats(per_day, start, start + timedelta(days=days)))
    descriptions = _bars(svg)
    assert len(descriptions) == bars and next(text for text, *_box in _texts(svg)).startswith(f"requests per {unit} ")
    counted = sum(int(re.search(r": ([\d,]+) requests", text)[1].replace(",", "")) for text in descriptions)  # type: ignore[index]
    assert counted == sum(day["requests"] for day in per_day)


async def test_a_weeks_average_turnaround_is_that_of_its_finished_requests(database_url):
    """A week's bar averages its days' turnarounds over the requests that have one: Monday's ten 1-minute
    deploys and Tuesday's one 12-minute deploy beside nine still running average 2 minutes, not 6m 30s."""
    start, end = datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 7, 11, tzinfo=UTC)
    async with digest_service(database_url, Clock(end), BatonConfig()) as digests:
        async with digests.db.session() as session:
            for n in range(20):
                running = n > 10
                record = ThreadRecord(platform="playground", channel="ops", thread=str(n), status="running" if running else "done")
                session.add(record)
                await session.flush()
                asked = start + timedelta(days=n // 10, minutes=n)
                took = timedelta(minutes=1 if n < 10 else 12)
                session.add(Run(thread_record_id=record.id, platform="playground", channel="ops", graph="deploy",
                                status="running" if running else "done", requested_by="alice", correlation_id=f"c{n}",
                                started_at=asked, finished_at=None if running else asked + took,
                                turnaround_ms=None if running else int(took.total_seconds() * 1000)))
        async with digests.db.read() as session:
            stats = await collect(session, "playground", "ops", start, end, [], end)
    assert _bars(_chart(stats))[0] == "2026-06-01 to 2026-06-07: 20 requests, average turnaround 2m"


def _spending_line(cost: float) -> str:
    start = datetime(2026, 6, 1, 8, tzinfo=UTC)
    stats = _stats([], start, start + timedelta(days=1), tokens=3000, cost=cost, unpriced_runs=0)
    stats["per_graph"], stats["requests"] = {"assistant": {"done": 1}}, 1
    text = Message.model_validate(compose({"stats": stats})["reply"]).plain_text()  # type: ignore[typeddict-item]
    return next(line for line in text.splitlines() if line.startswith("Model tokens"))


@pytest.mark.parametrize(("cost", "shown"), [
    (0.99996, "$1.00"), (0.995, "$1.00"), (0.994, "$0.99"),  # was "$1.0000", "$0.9950", "$0.9940"
    (0.123456, "$0.12"), (0.0999, "$0.10"), (0.05, "$0.05"), (0.0123, "$0.012"), (0.0012, "$0.0012"),
    (0.00004, "< $0.0001"), (0.000018, "< $0.0001"), (1234.5678, "$1,234.57"), (0.0, "$0.0000"),
])
def test_a_cost_is_shown_with_the_digits_it_deserves(cost, shown):
    """$0.99996 read "$1.0000": four decimals claiming a precision the rounding had just thrown away, and 12 cents
    read "$0.1235". Below a dollar, two significant figures (at most four decimals); from a dollar, cents."""
    assert _spending_line(cost) == f"Model tokens: 3,000, cost {shown}"


async def test_the_written_summary_is_given_the_cost_as_the_card_shows_it(sqlite_url, tmp_path):
    """The model writing the digest's summary was handed the raw sum ("cost": 0.99996) and wrote it back as it
    pleased ("$0.99996", "$1.0000") above a card saying otherwise; it is given "$1.00", as the card says."""
    message = await digest_written_by(sqlite_url, tmp_path, {"content": "A quiet day."}, tokens=9000, cost=0.99996,
                                      cron="0 9 * * *", timezone="Europe/Paris")
    assert "Model tokens: 9,000, cost $1.00" in message.plain_text()
    [call] = calls(tmp_path / "script.json")
    assert '"cost": "$1.00"' in call["last"] and "0.99996" not in call["last"], call["last"]


async def test_digest_list_can_say_which_digests_the_platform_refused(database_url):
    """Baton removed from #ops for two days: Slack refused those days' cards (not_in_channel). Invited back,
    `digest list` said only when the next digest comes, nothing of the two the channel never saw. The schedule's
    refused cards are found for it: how many, why, and from when the next digest covers."""
    clock = Clock(datetime(2026, 6, 1, 6, 0, tzinfo=UTC))
    async with digest_service(database_url, clock, BatonConfig()) as digests:
        await digests.set_chat_schedule(OPS, "0 9 * * *", "Europe/Paris", "alice", "c1")
        for day in (1, 2, 3):
            clock.now = datetime(2026, 6, day, 7, 0, tzinfo=UTC)
            assert await digests.run_due(clock.now) == 1
            if day > 1:  # the platform refused the card (the adapter marks it failed)
                card = (await posted_messages(digests))[-1]
                async with digests.db.session() as session:
                    await session.exec(update(OutboxMessage).where(OutboxMessage.id == card.id).values(
                        status="failed", error="chat.postMessage: not_in_channel"))
        [schedule] = await digests.in_channel(OPS)
        refused = await digests.refused_cards([schedule])
        runs = await firings(digests)
        clock.now = datetime(2026, 6, 4, 7, 0, tzinfo=UTC)  # the next one is shown: nothing is missed any more
        assert await digests.run_due(clock.now) == 1
        after = await digests.refused_cards([schedule])
    missed = refused[schedule.key]
    assert (missed.count, missed.error) == (2, "chat.postMessage: not_in_channel")
    assert missed.since == runs[1].window_start.replace(tzinfo=UTC) == datetime(2026, 6, 1, 7, tzinfo=UTC)
    assert missed.describe("Europe/Paris") == (
        "its last 2 digests were not posted: the platform refused their cards (`chat.postMessage: not_in_channel`); "
        "the next one covers the time since 2026-06-01 07:00:00 UTC (Mon 09:00 in Europe/Paris)")
    assert after == {}
