"""What a channel's digest says, computed in SQL over a time window (indexes, not Python loops)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, case, func, not_, or_
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.approvals import waiting_for, who_may_approve
from bot.messages import first_line
from bot.routing import CHOOSER, ROUTER
from storage.models import Approval, DigestRun, Run, ThreadRecord, as_utc

MAX_LISTED = 10
DIGEST_GRAPH = "digest"
# A run ended by the `cancel` command is failed (its error ``bot.threads.CANCELLED_BY`` + who) and marked
# ``Run.cancelled``: nothing broke, someone stopped it, so the digest counts it as cancelled, not among the
# failures. Both indexes the digest reads hold the mark (the error, in neither, was read from the table).


def _no_request(graph: str, status: str) -> bool:
    """A run that is no request of its own: chatter a model routed nowhere (``ROUTER``: its run holds what asking
    the model cost, counted with the tokens), or a choice card the requester picked from (the graph picked is the
    request's run; a card still waiting, or expired, is the request's only run). ``_requests()`` in SQL."""
    return graph == ROUTER or (graph == CHOOSER and status == "done")


def _requests() -> list[Any]:
    """``not _no_request(Run.graph, Run.status)``, as a query's conditions."""
    return [Run.graph != ROUTER, or_(Run.graph != CHOOSER, Run.status != "done")]


async def collect(session: AsyncSession, platform: str, channel: str, start: datetime, end: datetime,
                  graphs: list[str], now: datetime, timezone: str = "UTC") -> dict[str, Any]:
    """Everything the digest of ``[start, end)`` shows, as plain JSON-able data; ``per_day``'s days are those of
    ``timezone`` (the schedule's: a team's evening is on its own day, not on the next UTC one)."""
    in_window = [Run.platform == platform, Run.channel == channel, Run.started_at >= start, Run.started_at < end]
    if graphs:
        in_window.append(Run.graph.in_(graphs))  # type: ignore[attr-defined]
    # One index-only scan (ix_runs_digest covers every column used) for the counts, the sums and the days.
    day = _local_date(session, Run.started_at, timezone, start, end)
    per_graph: dict[str, dict[str, int]] = {}
    days: dict[str, list[int]] = {}  # a day's requests, its turnarounds' total and how many
    for d, graph, status, cancelled, count, total, timed in (await session.exec(
            select(day, Run.graph, Run.status, Run.cancelled, func.count(), func.sum(Run.turnaround_ms),
                   func.count(Run.turnaround_ms))
            .where(*in_window).group_by(day, Run.graph, Run.status, Run.cancelled))).all():
        if not _no_request(graph, status):
            bucket = "cancelled" if cancelled else "running" if status in ("running", "waiting") else status
            per_graph.setdefault(graph, {"done": 0, "failed": 0, "running": 0})
            per_graph[graph][bucket] = per_graph[graph].get(bucket, 0) + count  # "cancelled" only where some are
            one = days.setdefault(str(d), [0, 0, 0])
            one[0] += count
            if not cancelled:  # as the p50/p95, a cancelled run's time (its wait for a card, say) is no turnaround
                one[1], one[2] = one[1] + int(total or 0), one[2] + timed
    per_day = [{"day": d, "requests": n, "avg_turnaround_ms": total / timed if timed else None}
               for d, (n, total, timed) in sorted(days.items())]
    # Turnarounds and waits of the requests that ended in the window, whenever they were asked for: one asked
    # last evening and approved this morning (the slowest, the longest wait) was in neither digest by its start.
    # And the runs that failed in the window, whenever they started (one asked yesterday, approved and failed
    # today is today's failure; by its start it was in neither digest's list). One index-only scan of the ended
    # runs (ix_runs_ended: platform, channel, finished_at, ...) for the counts, one for both percentiles.
    ended_in_window = [Run.platform == platform, Run.channel == channel,
                       Run.finished_at >= start, Run.finished_at < end]  # type: ignore[operator]
    if graphs:
        ended_in_window.append(Run.graph.in_(graphs))  # type: ignore[attr-defined]
    ended = [*ended_in_window, Run.status.in_(("done", "failed"))]  # type: ignore[attr-defined]
    # a cancelled run has no result: no turnaround (its wait was still someone's wait)
    finished = [Run.turnaround_ms.is_not(None), *_requests(), not_(Run.cancelled)]  # type: ignore[union-attr]
    failed_here = [Run.status == "failed", not_(Run.cancelled)]
    # A run's model tokens and cost are counted with the runs that ended in the window, as its turnaround is: all
    # of them, once. By its start, what a run spent after the digest of its start (an assistant's answer once its
    # card was approved the next morning) was in no digest.
    waited, finished_count, failure_count, cancelled_count, tokens, cost, cost_known, with_tokens = (
        await session.exec(select(
            func.sum(Run.waited_seconds), _count_of(*finished), _count_of(*failed_here),
            _count_of(Run.status == "failed", Run.cancelled), func.sum(Run.tokens), func.sum(Run.cost),
            func.count(Run.cost), func.count(Run.tokens)).where(*ended))).one()

    if not graphs or DIGEST_GRAPH in graphs:
        # The channel's earlier digests' own model summaries: no run holds them (each counted by the
        # digest whose window its firing falls in, the one after it).
        tokens_sum, cost_sum, costs, tokened = (await session.exec(
            select(func.sum(DigestRun.tokens), func.sum(DigestRun.cost), func.count(DigestRun.cost),
                   func.count(DigestRun.tokens))
            .where(DigestRun.platform == platform, DigestRun.channel == channel, DigestRun.fire_time >= start,
                   DigestRun.fire_time < end))).one()
        tokens = (tokens or 0) + tokens_sum if tokens_sum is not None else tokens
        cost = (cost or 0.0) + cost_sum if cost_sum is not None else cost
        cost_known += costs
        with_tokens += tokened
    p50, p95 = await _percentiles(session, [*ended, *finished], finished_count, (0.50, 0.95))
    turnaround = {"p50_ms": p50, "p95_ms": p95, "count": finished_count}
    failures = [
        {"graph": graph, "error": first_line(error or "", 200) or "failed", "channel": c, "thread": t}
        for graph, error, c, t in (await session.exec(
            select(Run.graph, Run.error, ThreadRecord.channel, ThreadRecord.thread)
            .join(ThreadRecord, ThreadRecord.id == Run.thread_record_id)
            .where(*ended_in_window, *failed_here).order_by(Run.finished_at).limit(MAX_LISTED))).all()
    ] if failure_count else []
    # Approvals only: a choice card ("which graph did you mean?") picked is no approval granted.
    approvals_here = [Run.platform == platform, Run.channel == channel, Approval.kind == "approval"]
    if graphs:
        approvals_here.append(Approval.graph.in_(graphs))  # type: ignore[attr-defined]
    decided_filter = [*approvals_here, Approval.decided_at >= start, Approval.decided_at < end,
                      Approval.status.in_(("approved", "rejected"))]  # type: ignore[attr-defined]
    decided_counts = {"approved": 0, "rejected": 0, **dict((await session.exec(
        select(Approval.status, func.count()).join(Run, Run.id == Approval.run_id)
        .where(*decided_filter).group_by(Approval.status))).all())}
    decided = [
        {"status": status, "by": by, "summary": first_line(summary, 120), "channel": c, "thread": t}
        for status, by, summary, c, t in (await session.exec(
            select(Approval.status, Approval.decided_by, Approval.summary, ThreadRecord.channel, ThreadRecord.thread)
            .join(Run, Run.id == Approval.run_id).join(ThreadRecord, ThreadRecord.id == Approval.thread_record_id)
            .where(*decided_filter).order_by(Approval.decided_at).limit(MAX_LISTED))).all()
    ]
    waiting_filter = [*approvals_here, Approval.status == "pending"]
    waiting_count = (await session.exec(select(func.count()).select_from(Approval).join(Run, Run.id == Approval.run_id)
                                        .where(*waiting_filter))).one()
    waiting = [
        {"summary": first_line(summary, 120), "approvers": who_may_approve(approvers, requested_by, risk),
         "waiting_for": waiting_for(approvers, requested_by, risk),
         "age_seconds": (now - created).total_seconds(), "channel": c, "thread": t}
        for summary, approvers, requested_by, risk, created, c, t in (await session.exec(
            select(Approval.summary, Approval.approvers, Approval.requested_by, Approval.risk, Approval.created_at,
                   ThreadRecord.channel, ThreadRecord.thread)
            .join(Run, Run.id == Approval.run_id).join(ThreadRecord, ThreadRecord.id == Approval.thread_record_id)
            .where(*waiting_filter).order_by(Approval.created_at).limit(MAX_LISTED))).all()
    ]
    return {
        "window": {"start": start.isoformat(), "end": end.isoformat()},
        "timezone": timezone,  # of per_day's days
        "platform": platform,
        "channel": channel,
        "per_graph": per_graph,
        "requests": sum(sum(counts.values()) for counts in per_graph.values()),
        "turnaround": turnaround,
        "waited_seconds": float(waited or 0.0),
        "tokens": int(tokens) if tokens is not None else None,
        "cost": float(cost) if cost_known else None,
        "unpriced_runs": with_tokens - cost_known,  # tokens and no price (none for the model then): not in "cost"
        "failures": failures,
        "failure_count": failure_count,  # of the window (by when they failed); per_graph is by request
        "cancelled_count": cancelled_count,  # runs someone cancelled in the window: no failures
        "decided": decided,  # the first MAX_LISTED; the counts are of all
        "approved_count": decided_counts["approved"],
        "rejected_count": decided_counts["rejected"],
        "waiting": waiting,  # the oldest MAX_LISTED
        "waiting_count": waiting_count,
        "per_day": per_day,
        # of each day's requests, how many have a turnaround: what its average is of (a week's bar weighs its days so)
        "per_day_finished": {d: timed for d, (_n, _total, timed) in sorted(days.items())},
    }


def _local_date(session: AsyncSession, column: Any, timezone: str, start: datetime, end: datetime) -> Any:
    """The date in ``timezone`` of ``column`` (a time in ``[start, end)``). PostgreSQL knows the zones; SQLite adds
    the zone's offset, one per stretch of the window between its clock changes."""
    if timezone == "UTC":
        return _utc_date(session, column)
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        return func.date(func.timezone(timezone, column))
    stretches = _offsets(ZoneInfo(timezone), start, end)
    shifted = [func.date(column, f"{minutes:+d} minutes") for _until, minutes in stretches]
    if len(stretches) == 1:
        return shifted[0]
    return case(*((column < until, date) for (until, _minutes), date in zip(stretches[:-1], shifted, strict=False)),
                else_=shifted[-1])


def _offsets(zone: ZoneInfo, start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """``zone``'s UTC offset in minutes over ``[start, end)``, as (until, minutes): each until a clock change."""
    def minutes(at: datetime) -> int:
        offset = at.astimezone(zone).utcoffset()
        return int(offset.total_seconds() // 60) if offset is not None else 0

    start, end = as_utc(start), as_utc(end)
    stretches: list[tuple[datetime, int]] = []
    at, current = start, minutes(start)
    while at < end:
        step = min(at + timedelta(hours=1), end)
        if minutes(step) != current and step < end:  # a clock change in (at, step]: find its second
            low, high = at, step
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                low, high = (middle, high) if minutes(middle) == current else (low, middle)
            change = low.replace(microsecond=0) + timedelta(seconds=1)  # clocks change on a whole second
            stretches.append((change, current))
            at, current = change, minutes(change)
            continue
        at = step
    return [*stretches, (end, current)]


def _utc_date(session: AsyncSession, column: Any) -> Any:
    """The UTC date of ``column``: PostgreSQL's ``date()`` of a timestamptz is the server's own date
    (its TimeZone setting); SQLite stores the UTC time as text already."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        return func.date(func.timezone("UTC", column))
    return func.date(column)


def _count_of(*conditions: Any) -> Any:
    """How many of the query's rows meet ``conditions``: several counts from one scan."""
    return func.count(case((and_(*conditions), 1)))


async def _percentiles(session: AsyncSession, where: list[Any], count: int, qs: tuple[float, ...]) -> list[int | None]:
    """Nearest-rank percentiles of the ``count`` turnarounds ``where`` selects: the values at ranks ceil(q * n), all
    read with one ordered scan (an ORDER BY ... OFFSET a percentile sorted the rows once for each)."""
    if count == 0:
        return [None for _q in qs]
    ranks = [max(1, math.ceil(round(q * count, 9))) for q in qs]
    ordered = select(Run.turnaround_ms, func.row_number().over(order_by=Run.turnaround_ms).label("rank")) \
        .where(*where).subquery()
    found = dict((await session.exec(select(ordered.c.rank, ordered.c.turnaround_ms)
                                     .where(ordered.c.rank.in_(sorted(set(ranks)))))).all())
    return [found.get(rank) for rank in ranks]  # none: rows went between the count and this (PostgreSQL)
