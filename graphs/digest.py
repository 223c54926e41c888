"""The channel digest: what the bots and the people got done since the last one.

Baton computes the numbers (``bot.digest_stats``) and hands them to this graph as ``stats``; the
graph turns them into the card and, with a model configured, writes a short summary on top.
Copy it to write your own digest.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict
from zoneinfo import ZoneInfo
from xml.sax.saxutils import escape

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.graph import END, START, StateGraph

from bot.kit import ModelFailed, Request, chat, current, duration

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
    title = f"Digest for #{stats['channel']}: {_span(start, end, zone)}"
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
        parts.append(chart(_every_day(stats["per_day"], start, end, stats.get("timezone") or "UTC")))
    if stats.get("reason"):
        parts.append({"kind": "note", "text": f"Digest {stats['reason']}."})
    tone = "warning" if stats["failures"] or stats["waiting"] else "success"
    return {"reply": {"title": title, "tone": tone, "parts": parts}}


def _spending(stats: dict[str, Any]) -> str:
    cost = f", cost {_dollars(stats['cost'])}" if stats.get("cost") is not None else ""
    unpriced = stats.get("unpriced_runs") or 0
    if unpriced and stats.get("cost") is not None:  # the cost shown is only part of it
        cost += f" (and {unpriced} run{'s' if unpriced > 1 else ''} with no price in baton.yaml)"
    return f"Model tokens: {stats['tokens']:,}{cost}"


def _dollars(cost: float) -> str:
    """$0.0012 for a model's cents' worth, "< $0.0001" rather than "$0.0000" for some spent, $1,234.57 for dollars."""
    if 0 < cost < 0.00005:
        return "< $0.0001"
    return f"${cost:,.2f}" if cost >= 1 else f"${cost:.4f}"


def _not_listed(count: int, listed: list[Any]) -> str:
    """Only the first few of a long list are links (a card of hundreds would be many messages)."""
    more = count - len(listed)
    return f" ({more} more not listed)" if more > 0 else ""


MOST_DAYS_DRAWN = 31  # a longer catch-up's chart shows its days with requests only


def _every_day(per_day: list[dict[str, Any]], start: datetime, end: datetime, timezone: str) -> list[dict[str, Any]]:
    """``per_day`` (the days with requests, in ``timezone``) with the window's other days as 0: a day without a
    single request (an outage, a holiday) is a bar of its own, not left out as if the days before and after were
    adjacent."""
    zone = ZoneInfo(timezone)
    first, last = ((at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(zone)
                   for at in (start, end - timedelta(microseconds=1)))
    days = [first.date() + timedelta(days=n) for n in range((last.date() - first.date()).days + 1)]
    if len(days) > MOST_DAYS_DRAWN:
        return per_day
    counted = {day["day"]: day for day in per_day}
    return [counted.get(str(day), {"day": str(day), "requests": 0, "avg_turnaround_ms": None}) for day in days]


def chart(per_day: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests per day as bars, with the day's average turnaround written above each bar."""
    width, height, top, bottom = 360, 150, 36, 22
    most = max(day["requests"] for day in per_day) or 1
    slot = width / len(per_day)
    bars = []
    for index, day in enumerate(per_day):
        bar_height = (height - top - bottom) * day["requests"] / most
        x, y = index * slot + slot * 0.15, height - bottom - bar_height
        turnaround = duration(day["avg_turnaround_ms"] / 1000) if day["avg_turnaround_ms"] is not None else "-"
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{bar_height:.1f}" fill="#4a7dff"/>'
            f'<text x="{x + slot * 0.35:.1f}" y="{y - 4:.1f}" font-size="10" text-anchor="middle">{day["requests"]} · {escape(turnaround)}</text>'
            f'<text x="{x + slot * 0.35:.1f}" y="{height - 6}" font-size="10" text-anchor="middle">{escape(day["day"][5:])}</text>')
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">'
           f'<text x="4" y="13" font-size="11" fill="#555">requests per day · average turnaround</text>{"".join(bars)}</svg>')
    return {"kind": "image", "alt": "Requests per day and average turnaround", "mime": "image/svg+xml",
            "data": base64.b64encode(svg.encode()).decode(), "filename": "digest.svg"}


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
    stats = {key: value for key, value in state["stats"].items() if key != "per_day"}
    try:
        answer = await chat([SystemMessage(content="Write two sentences for a team channel summarising what their "
                                                   "bots and people got done, from these digest numbers. Plain words, "
                                                   "no lists."),
                             HumanMessage(content=json.dumps(stats, default=str))], what="The digest summary")
    except ModelFailed as exc:  # the numbers matter more than the prose: post them anyway
        note = {"kind": "note", "text": f"No written summary: the model failed ({str(exc)[:200]})."}
        return {"reply": {**reply, "parts": [*reply["parts"], note]}}
    summary = {"kind": "text", "text": str(answer.content).strip()}
    return {"reply": {**reply, "parts": [summary, *reply["parts"]]}}


builder = StateGraph(DigestState)
builder.add_node("compose", compose)
builder.add_node("summarize", summarize)
builder.add_edge(START, "compose")
builder.add_edge("compose", "summarize")
builder.add_edge("summarize", END)
graph = builder
