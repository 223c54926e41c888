"""The channel digest: what the bots and the people got done since the last one.

Baton computes the numbers (``bot.digest_stats``) and hands them to this graph as ``stats``; the
graph turns them into the card and, with a model configured, writes a short summary on top.
Copy it to write your own digest.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypedDict
from zoneinfo import ZoneInfo
from xml.sax.saxutils import escape

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.graph import END, START, StateGraph

from bot.kit import ModelFailed, Request, chat, current, duration
from bot.messages import cut

DESCRIPTION = "Digests of this channel: `digest daily 09:00 Europe/Paris`, `digest now`, `digest list`, `digest off`."
EXAMPLE = "digest now"
DEDUPE = False


class DigestState(TypedDict, total=False):
    stats: dict[str, Any]
    reply: dict[str, Any]


def make_input(_request: Request, _args: str) -> dict[str, Any]:
    raise ValueError("digests are started by the schedule or by `digest now`")


def compose(state: DigestState) -> DigestState:
    stats = state["stats"]
    start, end = (datetime.fromisoformat(stats["window"][key]) for key in ("start", "end"))
    zone = stats.get("timezone") or "UTC"
    # No channel in it: a digest is posted in its channel, and Baton knows a channel by its id, which Slack and
    # Discord showed as written in a title ("Digest for #C0123ABCD", "#1234567890123456789").
    title = f"Digest: {_span(start, end, zone)}"
    quiet = (not stats["requests"] and not stats["decided"] and not stats["waiting"] and not stats["failures"]
             and not stats.get("cancelled_count")
             # a request asked before the window and ended in it: its turnaround and wait are this digest's
             and not stats["turnaround"]["count"] and not stats.get("waited_seconds"))
    if quiet:
        text = f"Quiet: no requests, approvals or failures from {_span(start, end, zone)}."
        if stats.get("tokens") is not None:  # what the digest before this one spent on its summary
            text += f" {_spending(stats)}."
        return {"reply": {"title": title, "tone": "info", "parts": [{"kind": "text", "text": text}]}}
    parts: list[dict[str, Any]] = []
    lines = [f"*{stats['requests']}* request{'' if stats['requests'] == 1 else 's'}"]
    for graph, counts in sorted(stats["per_graph"].items()):
        cancelled = f"{counts['cancelled']} cancelled, " if counts.get("cancelled") else ""
        lines.append(f"• `{graph}`: {counts.get('done', 0)} done, {counts.get('failed', 0)} failed, {cancelled}"
                     f"{counts.get('running', 0)} still running or waiting")
    turnaround = stats["turnaround"]
    if turnaround["count"]:
        lines.append(f"Turnaround (request to result): p50 {duration(turnaround['p50_ms'] / 1000)}, "
                     f"p95 {duration(turnaround['p95_ms'] / 1000)} over {turnaround['count']} finished")
    waited = stats["waited_seconds"]  # nobody waited: "none", not "0ms"
    lines.append(f"Time spent waiting for humans: {duration(waited) if waited else 'none'}")
    if stats.get("cancelled_count"):  # ended by someone's `cancel`: stopped, not broken (not among the failures)
        lines.append(f"Runs cancelled: {stats['cancelled_count']}")
    if stats.get("tokens") is not None:
        lines.append(_spending(stats))
    parts.append({"kind": "text", "text": "\n".join(lines)})
    if stats["decided"]:
        granted, rejected = stats["approved_count"], stats["rejected_count"]
        parts.append({"kind": "text", "text": f"*Approvals*: {granted} granted, {rejected} rejected"
                                              + _not_listed(granted + rejected, stats["decided"])})
        for decided in stats["decided"]:
            verb = "approved" if decided["status"] == "approved" else "rejected"
            parts.append({"kind": "link", "label": f"{decided['summary']} — {verb} by {decided['by']}",
                          "channel": decided["channel"], "thread": decided["thread"]})
    if stats["waiting"]:
        parts.append({"kind": "text", "text": f"*Waiting for approval*: {stats['waiting_count']}"
                                              + _not_listed(stats["waiting_count"], stats["waiting"])})
        for waiting in stats["waiting"]:
            parts.append({"kind": "link", "label": f"{waiting['summary']} — waiting {duration(waiting['age_seconds'])} "
                                                   f"for {waiting.get('waiting_for') or ', '.join(waiting['approvers'])}",
                          "channel": waiting["channel"], "thread": waiting["thread"]})
    if stats["failures"]:
        parts.append({"kind": "text", "text": f"*Failures*: {stats['failure_count']}"
                                              + _not_listed(stats["failure_count"], stats["failures"])})
        for failure in stats["failures"]:
            parts.append({"kind": "link", "label": f"`{failure['graph']}`: {failure['error']}",
                          "channel": failure["channel"], "thread": failure["thread"]})
    if stats["per_day"]:
        unit, drawn = chart_bars(stats["per_day"], start, end, zone, stats.get("per_day_finished"))
        parts.append(chart(drawn, unit))
    if stats.get("reason"):
        parts.append({"kind": "note", "text": f"Digest {stats['reason']}."})
    tone = "warning" if stats["failures"] or stats["waiting"] else "success"
    return {"reply": {"title": title, "tone": tone, "parts": parts}}


def _spending(stats: dict[str, Any]) -> str:
    cost = f", cost {dollars(stats['cost'])}" if stats.get("cost") is not None else ""
    unpriced = stats.get("unpriced_runs") or 0
    if unpriced and stats.get("cost") is not None:  # the cost shown is only part of it
        cost += f" (and {unpriced} run{'s' if unpriced > 1 else ''} with no price in baton.yaml)"
    return f"Model tokens: {stats['tokens']:,}{cost}"


def dollars(cost: float) -> str:
    """Money as a digest shows it, with no more digits than the amount deserves: cents from a dollar on
    ("$1,234.57"; $0.99996 is "$1.00", not "$1.0000"), two significant figures below it and at most four
    decimals ("$0.12", "$0.012", "$0.0012"), "< $0.0001" for something too small for that (never "$0.0000"
    when something was spent). Nothing spent (a model priced at nothing) reads "$0.0000"."""
    if not math.isfinite(cost):
        return f"${cost}"
    if cost < 0:
        return "-" + dollars(-cost)
    if cost == 0:
        return "$0.0000"
    amount = Decimal(repr(cost))
    if amount.quantize(Decimal("0.01"), ROUND_HALF_UP) >= 1:
        return f"${amount.quantize(Decimal('0.01'), ROUND_HALF_UP):,}"
    places = min(4, max(2, 1 - amount.adjusted()))  # two significant figures: 0.12, 0.012, 0.0012, 0.0001
    shown = amount.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
    if shown == 0:
        return "< $0.0001"
    text = f"{shown:f}"
    while text.endswith("0") and len(text.split(".")[1]) > 2:  # 0.10, not 0.100 (0.0999 at two figures)
        text = text[:-1]
    return f"${text}"


def _not_listed(count: int, listed: list[Any]) -> str:
    """Only the first few of a long list are links (a card of hundreds would be many messages)."""
    more = count - len(listed)
    return f" ({more} more not listed)" if more > 0 else ""


# A bar is a day for periods up to a month, a week up to half a year, a month up to three years, then a year: a
# chart keeps to some 40 bars (a decade's catch-up aside), each wide enough for its figures written upwards.
MOST_DAYS = 31
MOST_WEEKS_DAYS = 26 * 7
MOST_MONTHS = 36


def chart_bars(per_day: list[dict[str, Any]], start: datetime, end: datetime, timezone: str,
               finished: dict[str, int] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The chart's unit (``day``, ``week``, ``month`` or ``year``) and its bars, in order: every day of the window
    is in one, a day without a single request (an outage, a holiday) included, so that it is not left out as if
    the days before and after were adjacent. ``per_day`` holds the days with requests, in ``timezone``;
    ``finished`` how many of each day's requests have a turnaround (what its average is of; by default all).
    A bar's ``day`` and ``until`` are the first and last of its days in the window."""
    zone = ZoneInfo(timezone)
    first, last = ((at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(zone).date()
                   for at in (start, end - timedelta(microseconds=1)))
    counted = {day["day"]: day for day in per_day}
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    months = (last.year - first.year) * 12 + last.month - first.month + 1
    unit = ("day" if len(days) <= MOST_DAYS else "week" if len(days) <= MOST_WEEKS_DAYS
            else "month" if months <= MOST_MONTHS else "year")
    grouped: list[dict[str, Any]] = []
    key = None
    for day in days:
        day_key = {"day": day, "week": day - timedelta(days=day.weekday()), "month": (day.year, day.month),
                   "year": day.year}[unit]
        if day_key != key:
            key = day_key
            grouped.append({"day": str(day), "until": str(day), "requests": 0, "_weight": 0, "_total_ms": 0.0})
        bar, counts = grouped[-1], counted.get(str(day))
        bar["until"] = str(day)
        if counts is None:
            continue
        bar["requests"] += counts["requests"]
        if counts["avg_turnaround_ms"] is not None:
            weight = (finished or {}).get(str(day), counts["requests"])
            bar["_weight"] += weight
            bar["_total_ms"] += counts["avg_turnaround_ms"] * weight
    for bar in grouped:
        weight, total = bar.pop("_weight"), bar.pop("_total_ms")
        bar["avg_turnaround_ms"] = total / weight if weight else None
    return unit, grouped


FONT = 10
CHAR = 6.5  # room given to a character of FONT (sans-serif averages less; "m" takes about this)
HEADING_FONT, HEADING_CHAR = 11, 7.2
MIN_SLOT = 14.0  # a bar and the gap beside it: its figures still fit written upwards
PLAIN_WIDTH = 360  # a chart of few bars; more bars (or a long heading) make it wider
PLOT = 90  # the tallest bar
LINE = 12  # a figure written on two lines: from one to the next
SUBHEADINGS = {"week": "weeks from Monday, each under its first day", "month": "calendar months",
               "year": "calendar years"}


def chart(bars: list[dict[str, Any]], unit: str = "day") -> dict[str, Any]:
    """Requests per ``unit`` (``chart_bars()``) as bars, each with its requests and average turnaround written above
    it: on one line when that fits the bar's width, else on two, else upwards. Under the bars their first days,
    every bar's when they fit, else every second (third...) bar's, each with a tick; the heading says what a bar is."""
    count = max(len(bars), 1)
    headings = [(f"requests per {unit} · average turnaround", HEADING_FONT, HEADING_CHAR, "#555")]
    if unit != "day":
        headings.append((SUBHEADINGS[unit] + _partial(bars, unit), FONT, CHAR, "#777"))
    width = max(PLAIN_WIDTH, *(8 + len(text) * char for text, _font, char, _colour in headings))
    labels = [_label(bar, unit) for bar in bars]
    label_width = max((len(label) for label in labels), default=1) * CHAR
    slot = max(MIN_SLOT, (width - 8) / count)
    every = max(1, math.ceil((label_width + 6) / slot))
    side = max(4.0, label_width / 2 - slot / 2 + 2)  # the first and last labels, centred on their bars, stay inside
    slot = max(slot, (width - 2 * side) / count)
    width = max(width, 2 * side + count * slot)
    figures = [_figure(bar) for bar in bars]
    room = slot - 4
    if all(len(" · ".join(figure)) * CHAR <= room for figure in figures):
        lines, figure_height = [[" · ".join(figure)] for figure in figures], FONT + 8
    elif all(len(piece) * CHAR <= room for figure in figures for piece in figure):
        lines, figure_height = figures, 2 * LINE + 8
    else:
        lines, figure_height = None, max(len(" · ".join(figure)) for figure in figures) * CHAR + 8
    top = 4 + 14 * len(headings) + figure_height
    axis = top + PLOT
    height = axis + 24
    most = max((bar["requests"] for bar in bars), default=0) or 1
    drawn = [f'<text x="4" y="{15 + 14 * n}" font-size="{font}" fill="{colour}">{escape(text)}</text>'
             for n, (text, font, _char, colour) in enumerate(headings)]
    drawn.append(f'<line x1="{side:.1f}" y1="{axis}" x2="{side + count * slot:.1f}" y2="{axis}" stroke="#999"/>')
    for index, (bar, figure, label) in enumerate(zip(bars, figures, labels, strict=True)):
        bar_height = PLOT * bar["requests"] / most
        middle, y = side + index * slot + slot / 2, axis - bar_height
        drawn.append(f'<rect x="{middle - slot * 0.35:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{bar_height:.1f}" '
                     f'fill="#4a7dff"><title>{escape(_tooltip(bar))}</title></rect>')
        if lines is None:  # upwards, the glyphs standing on either side of the bar's middle
            x = middle + FONT * 0.35
            drawn.append(f'<text x="{x:.1f}" y="{y - 4:.1f}" font-size="{FONT}" transform="rotate(-90 {x:.1f} {y - 4:.1f})">'
                         f'{escape(" · ".join(figure))}</text>')
        else:
            for above, line in enumerate(reversed(lines[index])):
                drawn.append(f'<text x="{middle:.1f}" y="{y - 4 - above * LINE:.1f}" font-size="{FONT}" '
                             f'text-anchor="middle">{escape(line)}</text>')
        if index % every == 0:
            drawn.append(f'<line x1="{middle:.1f}" y1="{axis}" x2="{middle:.1f}" y2="{axis + 3}" stroke="#999"/>'
                         f'<text x="{middle:.1f}" y="{height - 6}" font-size="{FONT}" text-anchor="middle">{escape(label)}</text>')
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{math.ceil(width)}" height="{math.ceil(height)}" '
           f'font-family="sans-serif">{"".join(drawn)}</svg>')
    return {"kind": "image", "alt": f"Requests per {unit} and average turnaround", "mime": "image/svg+xml",
            "data": base64.b64encode(svg.encode()).decode(), "filename": "digest.svg"}


def _figure(bar: dict[str, Any]) -> list[str]:
    """What is written above a bar: its requests and their average turnaround ("-": none finished)."""
    if not bar["requests"]:
        return ["0"]
    turnaround = duration(bar["avg_turnaround_ms"] / 1000) if bar["avg_turnaround_ms"] is not None else "-"
    return [f"{bar['requests']:,}", turnaround]


def _label(bar: dict[str, Any], unit: str) -> str:
    """A bar's name under it: its (first) day, or its month, or its year."""
    return {"month": bar["day"][:7], "year": bar["day"][:4]}.get(unit, bar["day"][5:])


def _tooltip(bar: dict[str, Any]) -> str:
    days = bar["day"] if bar.get("until", bar["day"]) == bar["day"] else f"{bar['day']} to {bar['until']}"
    if not bar["requests"]:
        return f"{days}: no requests"
    turnaround = (f", average turnaround {duration(bar['avg_turnaround_ms'] / 1000)}"
                  if bar["avg_turnaround_ms"] is not None else "")
    return f"{days}: {bar['requests']:,} request{'' if bar['requests'] == 1 else 's'}{turnaround}"


def _partial(bars: list[dict[str, Any]], unit: str) -> str:
    """Which of the first and last bars hold only part of their week (month, year): the window's ends cut them."""
    if not bars:
        return ""
    first, last = date.fromisoformat(bars[0]["day"]), date.fromisoformat(bars[-1].get("until", bars[-1]["day"]))
    following = last + timedelta(days=1)
    starts = {"week": first.weekday() == 0, "month": first.day == 1, "year": (first.month, first.day) == (1, 1)}
    ends = {"week": following.weekday() == 0, "month": following.day == 1, "year": (following.month, following.day) == (1, 1)}
    cut = [name for name, whole in (("first", starts[unit]), ("last", ends[unit])) if not whole]
    if len(bars) == 1 and cut:
        return f"; a part {unit}"
    if len(cut) == 2:
        return f"; the first and last are part {unit}s"
    return f"; the {cut[0]} is a part {unit}" if cut else ""


def _span(start: datetime, end: datetime, timezone: str = "UTC") -> str:
    """The window on the clock of ``timezone``, the one its chart's days are of."""
    zone = ZoneInfo(timezone)
    start, end = ((at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(zone) for at in (start, end))  # naive: UTC
    return f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} {timezone}"


async def summarize(state: DigestState) -> DigestState:
    """With a model, a short written summary above the numbers; without one, the numbers alone."""
    reply = state["reply"]
    if current().model is None or not state["stats"]["requests"]:
        return {}
    stats = {key: value for key, value in state["stats"].items() if key not in ("per_day", "per_day_finished")}
    if stats.get("cost") is not None:  # as the card shows it: the model repeated "$0.99996" (or made "$1.0000" of it)
        stats["cost"] = dollars(stats["cost"])
    try:
        answer = await chat([SystemMessage(content="Write two sentences for a team channel summarising what their "
                                                   "bots and people got done, from these digest numbers. Plain words, "
                                                   "no lists."),
                             HumanMessage(content=json.dumps(stats, default=str))], what="The digest summary")
    except ModelFailed as exc:  # the numbers matter more than the prose: post them anyway
        note = {"kind": "note", "text": f"No written summary: the model failed ({cut(str(exc), 200)})."}
        return {"reply": {**reply, "parts": [*reply["parts"], note]}}
    # The text blocks only: providers such as Anthropic answer in a list of blocks, which str() showed as a list
    written = answer.text.strip()
    if not written:  # no words: an empty part was a blank line on top of the card
        return {}
    return {"reply": {**reply, "parts": [{"kind": "text", "text": written}, *reply["parts"]]}}


builder = StateGraph(DigestState)
builder.add_node("compose", compose)
builder.add_node("summarize", summarize)
builder.add_edge(START, "compose")
builder.add_edge("compose", "summarize")
builder.add_edge("summarize", END)
graph = builder
