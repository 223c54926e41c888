"""Scheduled digests: schedules (from baton.yaml and chat), exactly-once firings, and posting.

A firing is claimed by inserting (schedule key, fire time) with a unique key before anything is
built or posted, so several replicas, or a replica restarted mid-way, post each digest once. The
window of a digest starts where its schedule's previous digest ended (``digest now``: the
channel's); missed firings (Baton was down) coalesce into one catch-up digest for the latest due
time, covering the whole gap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, or_, true, update
from sqlalchemy.orm import aliased
from sqlmodel import select

from bot import audit, schedules
from bot.config import BatonConfig, Digest
from bot.digest_stats import DIGEST_GRAPH, collect
from bot.kit import Request
from bot.messages import Location, Message, Note, first_line, quoted_code
from bot.models import cost_of, usage_of
from bot.outbox import Outbox
from bot.replies import when, when_in
from bot.runtime import GraphRuntime, RunServices, Services
from storage.db import Transaction, insert_ignore
from storage.models import DigestRun, DigestSchedule, OutboxMessage, as_utc

log = logging.getLogger("baton.digests")
RETAKE_AFTER = timedelta(minutes=2)  # a claimed firing not posted by then was lost with its replica
MANUAL_WINDOW = timedelta(hours=24)  # `digest now` in a channel that never had a digest
RENEW_SECONDS = RETAKE_AFTER.total_seconds() / 4  # a replica building a digest says so this often
REFUSED_LOOKBACK = 60  # a schedule's digests whose cards were refused, in a row, read back to find the last one shown
MAX_ATTEMPTS = 5  # a digest that fails to build this often (a bug in its graph) is given up, not retried forever


@dataclass
class Spend:
    """What building a digest cost in model tokens (and dollars, when baton.yaml prices the model)."""

    tokens: int = 0
    cost: float | None = None

    def values(self) -> dict[str, Any]:
        """The update adding this to a firing's own spend (earlier attempts' included)."""
        values: dict[str, Any] = {"tokens": func.coalesce(DigestRun.tokens, 0) + self.tokens}
        if self.cost is not None:
            values["cost"] = func.coalesce(DigestRun.cost, 0.0) + self.cost
        return values


@dataclass
class Claim:
    """This replica's claim on a firing: ``at`` moves on each time it is renewed."""

    run_id: int
    at: datetime
    spent: Spend = field(default_factory=Spend)


class DigestContext(RunServices):
    """The digest graph's run context: no run row holds its model's usage, so it is added up here."""

    def __init__(self, services: Services, request: Request, workspace: str, spent: Spend, correlation_id: str) -> None:
        super().__init__(services, request, None, workspace, correlation_id)
        self._spent = spent

    async def record_usage(self, reply: Any, model: str | None = None) -> None:
        input_tokens, output_tokens = usage_of(reply)
        if not (input_tokens or output_tokens):
            return
        self._spent.tokens += input_tokens + output_tokens
        cost = cost_of(self.price_of(model), input_tokens, output_tokens)
        if cost is not None:
            self._spent.cost = (self._spent.cost or 0.0) + cost


@dataclass
class Refused:
    """A schedule's latest digests whose cards the platform refused, one after the other (Baton removed from the
    channel, the channel archived): what the channel missed, which its next digest covers."""

    count: int
    since: datetime  # where the oldest of them began: the next digest covers the time from there
    error: str  # what the platform said of the newest card

    def describe(self, timezone: str) -> str:
        """For ``digest list``: what was not posted, why, and what the next digest covers."""
        more = " or more" if self.count >= REFUSED_LOOKBACK else ""
        what = "last digest was" if self.count == 1 else f"last {self.count}{more} digests were"
        cards = "its card" if self.count == 1 else "their cards"
        return (f"its {what} not posted: the platform refused {cards} (`{quoted_code(self.error, 120)}`); "
                f"the next one covers the time since {when_in(self.since, timezone)}")


def _correlation(run: DigestRun) -> str:
    """A digest run's correlation id (its card, its posting and its effects in the audit log)."""
    return f"digest-{run.id}"


class Digests:
    def __init__(self, services: Services, runtime: GraphRuntime, outbox: Outbox, instance: str,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.services = services
        self.db = services.db
        self.registry = services.registry
        self.runtime = runtime
        self.outbox = outbox
        self.instance = instance
        # The database's clock, which every replica reads: on its own, a replica whose clock was hours ahead posted
        # the digest due in an hour an hour early (its window ending in the future), and took over the claims of
        # digests other replicas were building.
        self.clock = clock or self.db.now
        self.renew_seconds = RENEW_SECONDS

    @property
    def config(self) -> BatonConfig:
        """``baton.yaml`` as read last: it may be read again while Baton runs (``Baton.reload_config``)."""
        return self.services.config

    # -- schedules -------------------------------------------------------------------------------

    async def sync_config(self) -> None:
        """Make the ``config`` schedules in the database match ``baton.yaml``."""
        wanted = {_config_key(digest): digest for digest in self.config.digests}
        await self.db.read_clock(unless_read=True)  # at start: no connection may have read the database's clock yet
        now = self.clock()
        async with self.db.session() as session:
            for key, digest in wanted.items():
                await insert_ignore(session, DigestSchedule, {
                    "key": key, "source": "config", "platform": digest.platform, "workspace": digest.workspace,
                    "channel": digest.channel, "cron": digest.cron, "timezone": digest.timezone, "graphs": digest.graphs,
                    "enabled": True, "created_at": now, "updated_at": now}, ["key"])
                # put back after being taken out: it starts afresh, with no catch-up for the time it was off
                await session.exec(update(DigestSchedule).where(  # type: ignore[arg-type]
                    DigestSchedule.key == key, DigestSchedule.enabled == False)  # noqa: E712
                    .values(enabled=True, created_at=now, updated_at=now))
                if digest.timezone != digest.written_timezone:  # an earlier Baton stored the zone as written
                    await session.exec(update(DigestSchedule).where(  # type: ignore[arg-type]
                        DigestSchedule.key == key, DigestSchedule.timezone != digest.timezone)
                        .values(timezone=digest.timezone))
            await session.exec(update(DigestSchedule).where(  # type: ignore[arg-type]
                DigestSchedule.source == "config", DigestSchedule.key.not_in(list(wanted) or [""]))  # type: ignore[attr-defined]
                .values(enabled=False, updated_at=now))

    async def enabled(self) -> list[DigestSchedule]:
        async with self.db.read() as session:
            return list((await session.exec(select(DigestSchedule).where(DigestSchedule.enabled == True))).all())  # noqa: E712

    async def in_channel(self, location: Location) -> list[DigestSchedule]:
        async with self.db.read() as session:
            return list((await session.exec(select(DigestSchedule).where(
                DigestSchedule.enabled == True, DigestSchedule.platform == location.platform,  # noqa: E712
                _in_workspace(DigestSchedule.workspace, location.workspace), DigestSchedule.channel == location.channel))).all())

    async def refused_cards(self, found: list[DigestSchedule]) -> dict[str, Refused]:
        """Of these schedules, those whose latest digests' cards the platform refused, by key: posted as far as
        Baton knows, yet the channel saw nothing (``_shown_until`` starts the next digest before them)."""
        refused: dict[str, Refused] = {}
        async with self.db.read() as session:
            for schedule in found:
                rows = (await session.exec(select(DigestRun.window_start, DigestRun.summary).where(
                    DigestRun.schedule_key == schedule.key, DigestRun.status == "posted")
                    .order_by(DigestRun.window_end.desc()).limit(REFUSED_LOOKBACK))).all()  # type: ignore[attr-defined]
                cards = [summary.get("outbox_id") for _start, summary in rows if summary.get("outbox_id") is not None]
                errors = dict((await session.exec(select(OutboxMessage.id, OutboxMessage.error).where(
                    OutboxMessage.id.in_(cards), OutboxMessage.status == "failed"))).all()) if cards else {}  # type: ignore[union-attr]
                missed = []
                for start, summary in rows:
                    if summary.get("outbox_id") not in errors:
                        break
                    missed.append((start, errors[summary["outbox_id"]]))
                if missed:
                    refused[schedule.key] = Refused(len(missed), as_utc(missed[-1][0]),  # SQLite's: naive, UTC
                                                    first_line(missed[0][1] or "", 200) or "no reason given")
        return refused

    async def set_chat_schedule(self, location: Location, cron: str, timezone: str, user: str,
                                correlation: str) -> DigestSchedule | None:
        """The channel's chat-made schedule (one per channel; a new one replaces the old): the one it replaced, if
        another was on."""
        schedules.check_schedule(cron, timezone)
        key = f"chat:{location.platform}:{location.workspace}:{location.channel}"
        now = self.clock()
        async with self.db.session() as session:
            inserted = await insert_ignore(session, DigestSchedule, {
                "key": key, "source": "chat", "platform": location.platform, "workspace": location.workspace,
                "channel": location.channel, "cron": cron, "timezone": timezone, "graphs": [], "enabled": True,
                "created_by": user, "created_at": now, "updated_at": now}, ["key"])
            replaced = None
            if not inserted:
                old = (await session.exec(select(DigestSchedule).where(DigestSchedule.key == key))).one()
                if old.enabled and (old.cron, old.timezone) != (cron, timezone):
                    replaced = DigestSchedule(**old.model_dump())  # as it was, before the update below
                await session.exec(update(DigestSchedule).where(DigestSchedule.key == key).values(  # type: ignore[arg-type]
                    cron=cron, timezone=timezone, enabled=True, created_by=user, created_at=now, updated_at=now))
            await audit.record(session, "digest.scheduled", correlation, platform=location.platform, channel=location.channel,
                               user=user, cron=cron, timezone=timezone)
        return replaced

    async def disable_chat_schedule(self, location: Location, user: str, correlation: str) -> bool:
        key = f"chat:{location.platform}:{location.workspace}:{location.channel}"
        async with self.db.session() as session:
            result = await session.exec(update(DigestSchedule).where(  # type: ignore[arg-type]
                DigestSchedule.key == key, DigestSchedule.enabled == True)  # noqa: E712
                .values(enabled=False, updated_at=self.clock()))
            if result.rowcount:
                await audit.record(session, "digest.unscheduled", correlation, platform=location.platform,
                                   channel=location.channel, user=user)
            return bool(result.rowcount)

    # -- firing ----------------------------------------------------------------------------------

    async def run_due(self, now: datetime | None = None) -> int:
        """Post every digest that is due at ``now`` and not posted yet; returns how many this replica posted."""
        await self.db.read_clock(unless_read=True)
        now = now or self.clock()
        posted = 0
        for schedule in await self.enabled():
            try:
                posted += await self._run_schedule(schedule, now)
            except schedules.ScheduleError:
                pass  # stored before a rule it breaks: the scheduler names it, once
            except Exception:
                log.exception("digest for %s/%s failed", schedule.platform, schedule.channel)
        return posted + await self._retake_lost(now)

    async def _run_schedule(self, schedule: DigestSchedule, now: datetime) -> int:
        if schedule.created_at > now:  # made on a clock that was ahead: it counted its firings from then
            await self._made_now(schedule.key, now)
            return 0  # nothing is due since now
        async with self.db.read() as session:  # not a firing ahead of now: posted on a clock that was ahead, it
            last = (await session.exec(select(func.max(DigestRun.fire_time)).where(  # stood for the firings before it
                DigestRun.schedule_key == schedule.key, DigestRun.fire_time <= now))).one()
        since = max(last, schedule.created_at) if last else schedule.created_at
        due = schedules.latest_due(schedule.cron, schedule.timezone, since, now)
        if due is None:
            return 0
        location = Location(platform=schedule.platform, workspace=schedule.workspace, channel=schedule.channel, thread="")
        period = self._period(schedule, due)
        return int(await self._fire(schedule.key, location, schedule.graphs, due, period, schedules.describe(
            schedule.cron, schedule.timezone), scheduled=True, timezone=schedule.timezone))

    async def _made_now(self, key: str, now: datetime) -> None:
        """The schedule ``key``, made ahead of ``now``, counts as made now (a digest's first window is its period)."""
        async with self.db.session() as session:
            await session.exec(update(DigestSchedule).where(  # type: ignore[arg-type]
                DigestSchedule.key == key, DigestSchedule.created_at > now).values(created_at=now))

    async def run_now(self, location: Location, event_id: str, user: str) -> bool:
        """``digest now``: a digest in the request's thread, covering the time since the channel's last one."""
        key = f"now:{location.platform}:{event_id}"
        async with self.db.read() as session:
            fired = (await session.exec(select(DigestRun.id).where(DigestRun.schedule_key == key))).first()
        if fired is not None:  # handled again (its replica stopped mid-way): that firing is posted, or taken over
            return False
        return await self._fire(key, location, [], self.clock(), MANUAL_WINDOW, f"asked for by {user}", asked_by=user)

    async def _fire(self, key: str, location: Location, graphs: list[str], fire_time: datetime, default_window: timedelta,
                    reason: str, scheduled: bool = False, timezone: str = "UTC", asked_by: str = "") -> bool:
        async with self.db.session() as session:
            start = await self._window_start(session, key, location, fire_time, default_window, scheduled)
            claimed = await insert_ignore(session, DigestRun, {
                "schedule_key": key, "fire_time": fire_time, "platform": location.platform,
                "workspace": location.workspace, "channel": location.channel, "window_start": start,
                "window_end": fire_time, "status": "claimed", "claimed_by": self.instance, "claimed_at": self.clock(),
                "summary": {"reason": reason, "thread": location.thread, "graphs": graphs, "timezone": timezone,
                            **({"asked_by": asked_by} if asked_by else {})}},
                ["schedule_key", "fire_time"])
            if not claimed:
                return False
            run = (await session.exec(select(DigestRun).where(DigestRun.schedule_key == key,
                                                              DigestRun.fire_time == fire_time))).one()
        return await self._post(run, run.claimed_at)

    @staticmethod
    async def _window_start(session: Transaction, key: str, location: Location, fire_time: datetime, default_window: timedelta,
                            scheduled: bool) -> datetime:
        """Where this schedule's previous digest ended (a channel may have several schedules: a weekly one
        beside a daily one covers its week). A schedule's first digest covers one period, or goes back to
        the channel's previous digest when that is older (an edited schedule leaves no gap); ``digest
        now`` covers the time since the channel's previous digest. A digest given up (``failed``) is
        no previous one: the next covers its window too."""
        before = [DigestRun.window_end <= fire_time, DigestRun.status != "failed"]
        given_up = await _given_up_from(session, key)
        own = await _shown_until(session, [DigestRun.schedule_key == key, *before])
        if own is not None:
            return min(own, given_up) if given_up is not None else own
        channel = await _shown_until(session, [
            DigestRun.platform == location.platform, _in_workspace(DigestRun.workspace, location.workspace),
            DigestRun.channel == location.channel, *before])
        one_period = fire_time - default_window
        if channel is None:
            start = one_period
        else:
            start = min(channel, one_period) if scheduled else channel
        return min(start, given_up) if given_up is not None else start

    async def _retake_lost(self, now: datetime) -> int:
        async with self.db.read() as session:
            lost = (await session.exec(select(DigestRun).where(DigestRun.status == "claimed", or_(
                DigestRun.claimed_at < now - RETAKE_AFTER,
                # claimed before the clock was set back: a live builder's renewals keep its claim nearer than this
                DigestRun.claimed_at > now + RETAKE_AFTER)))).all()
        posted = 0
        for run in lost:
            claimed_at = self.clock()
            async with self.db.session() as session:
                taken = await session.exec(update(DigestRun).where(  # type: ignore[arg-type]
                    DigestRun.id == run.id, DigestRun.status == "claimed", DigestRun.claimed_at == run.claimed_at)
                    .values(claimed_by=self.instance, claimed_at=claimed_at))
            if taken.rowcount:
                posted += int(await self._post(run, claimed_at))
        return posted

    async def _post(self, run: DigestRun, claimed_at: datetime) -> bool:
        claim = Claim(run.id, claimed_at)  # type: ignore[arg-type]
        try:
            return await self._build_and_post(run, claim)
        except Exception as exc:
            await self._attempt_failed(run, claim, exc)
            return False

    async def _attempt_failed(self, run: DigestRun, claim: Claim, exc: Exception) -> None:
        """Count the failed build on the claim; after ``MAX_ATTEMPTS`` the digest is ``failed`` and left.

        ``digest now`` is not tried again: its thread is told at once, and the asker may ask again.
        """
        attempts = int(run.summary.get("attempts", 0)) + 1
        asked = run.schedule_key.startswith("now:")
        given_up = asked or attempts >= MAX_ATTEMPTS
        error = f"{type(exc).__name__}: {exc}"[:500]
        log.error("digest %s for %s/%s failed (attempt %d%s)", run.id, run.platform, run.channel, attempts,
                  ", given up" if given_up else ", tried again in a few minutes", exc_info=exc)
        async with self.db.session() as session:
            ours = await session.exec(update(DigestRun).where(  # type: ignore[arg-type]
                DigestRun.id == run.id, DigestRun.status == "claimed", DigestRun.claimed_by == self.instance,
                DigestRun.claimed_at == claim.at).values(
                status="failed" if given_up else "claimed", summary={**run.summary, "attempts": attempts, "error": error}))
            if ours.rowcount:  # not when it was posted after all (a commit whose end failed: counted then)
                await _add_spend(session, run.id, claim.spent)  # type: ignore[arg-type]
            if asked and ours.rowcount:
                location = Location(platform=run.platform, workspace=run.workspace, channel=run.channel,
                                    thread=run.summary.get("thread") or "")
                await self.outbox.enqueue(session, location, Message.text(
                    f"I could not build the digest ({error}). Nothing was posted; the error is in Baton's log.",
                    tone="error"), correlation_id=_correlation(run))
        if asked:
            self.outbox.wake(run.platform)

    async def _build_and_post(self, run: DigestRun, claim: Claim) -> bool:
        """Build the card and post it, if ``claim`` is still this replica's.

        The claim is renewed while the card is built (a slow model may take minutes), so only a
        replica that died loses it; one that stalled past ``RETAKE_AFTER`` anyway finds it taken
        over and drops its card.
        """
        stop = asyncio.Event()
        keeping = asyncio.create_task(self._keep_claim(claim, stop))
        try:
            graphs = list(run.summary.get("graphs") or [])
            async with self.db.scan() as session:
                stats = await collect(session, run.platform, run.channel, run.window_start, run.window_end, graphs,
                                      self.clock(), run.summary.get("timezone") or "UTC")  # an older firing's: UTC
            stats["reason"] = run.summary.get("reason", "")
            location = Location(platform=run.platform, workspace=run.workspace, channel=run.channel,
                                thread=run.summary.get("thread") or "")
            message = await self._render(run, stats, location, claim.spent)
        finally:
            stop.set()
            await keeping  # a renewal under way finishes first: ``claim.at`` is then the stored one
        async with self.db.session() as session:
            if not await self._still_scheduled(session, run):  # `digest off` (or out of baton.yaml) while it was built
                dropped = await session.exec(update(DigestRun).where(  # type: ignore[arg-type]
                    DigestRun.id == run.id, DigestRun.status == "claimed", DigestRun.claimed_by == self.instance,
                    DigestRun.claimed_at == claim.at).values(  # as one given up: the next digest covers its window
                    status="failed", summary={**run.summary, "error": "its schedule was turned off before it was posted"}))
                await _add_spend(session, run.id, claim.spent)  # type: ignore[arg-type]
                claim.spent = Spend()
                if dropped.rowcount:
                    log.info("digest %s for %s/%s not posted: its schedule was turned off", run.id, run.platform, run.channel)
                return False
            still_ours = await session.exec(update(DigestRun).where(  # type: ignore[arg-type]
                DigestRun.id == run.id, DigestRun.status == "claimed", DigestRun.claimed_by == self.instance,
                DigestRun.claimed_at == claim.at).values(status="posted", posted_at=self.clock()))
            await _add_spend(session, run.id, claim.spent)  # type: ignore[arg-type]  # spent even if taken over
            if not still_ours.rowcount:
                log.info("digest %s for %s/%s was taken over by another replica meanwhile", run.id, run.platform, run.channel)
                return False
            card_id = await self.outbox.enqueue(session, location, message, correlation_id=_correlation(run))
            await session.exec(update(DigestRun).where(DigestRun.id == run.id).values(  # type: ignore[arg-type]
                summary={**run.summary, "requests": stats["requests"], "outbox_id": card_id}))
            await audit.record(session, "digest.posted", _correlation(run), platform=run.platform, channel=run.channel,
                               window_start=run.window_start.isoformat(), window_end=run.window_end.isoformat(),
                               requests=stats["requests"])
        claim.spent = Spend()  # committed: not to be added again should anything below fail
        self.outbox.wake(run.platform)
        return True

    @staticmethod
    async def _still_scheduled(session: Transaction, run: DigestRun) -> bool:
        """Whether a scheduled digest's schedule is still on (``digest now`` has none). The row is locked
        (PostgreSQL): a ``digest off`` at the same moment comes before this digest is posted, or after."""
        if run.schedule_key.startswith("now:"):
            return True
        enabled = (await session.exec(select(DigestSchedule.enabled).where(
            DigestSchedule.key == run.schedule_key).with_for_update())).first()
        return bool(enabled)

    async def _keep_claim(self, claim: Claim, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.renew_seconds)
                return
            except TimeoutError:
                pass
            renewed_at = self.clock()
            try:
                async with self.db.session() as session:
                    renewed = await session.exec(update(DigestRun).where(  # type: ignore[arg-type]
                        DigestRun.id == claim.run_id, DigestRun.status == "claimed",
                        DigestRun.claimed_by == self.instance, DigestRun.claimed_at == claim.at)
                        .values(claimed_at=renewed_at))
            except Exception:
                log.warning("digest %s: its claim could not be renewed; trying again", claim.run_id, exc_info=True)
                continue
            if not renewed.rowcount:
                return  # taken over: the final check drops this card
            claim.at = renewed_at

    async def _render(self, run: DigestRun, stats: dict[str, Any], location: Location, spent: Spend) -> Message:
        spec = self.registry.get(DIGEST_GRAPH)
        if spec is None:
            return Message.text(f"Digest {when(run.window_start)} to {when(run.window_end)}: "
                                f"{stats['requests']} request{'' if stats['requests'] == 1 else 's'} (the `digest` graph is not installed).")
        services = DigestContext(self.services, Request(
            platform=run.platform, channel=run.channel, thread=location.thread, user="baton", text="digest"),
            run.workspace, spent, _correlation(run))  # its effects audited as its card and posting are
        lg_thread = f"digest-{run.id}"

        async def no_progress(_text: str) -> None:
            return None

        try:
            outcome = await self.runtime.run(spec, lg_thread, {"stats": stats, "reply": {}}, services, no_progress)
            await services.flush_effects()
        finally:  # no thread record holds this LangGraph thread: the pruning never finds it
            await self.runtime.forget(lg_thread, [DIGEST_GRAPH])
        message = Message.model_validate(outcome.values["reply"]).naming(run.summary.get("asked_by"), *_people(stats))
        return self._with_retention_note(message, run)

    def _with_retention_note(self, message: Message, run: DigestRun) -> Message:
        """A digest whose window begins before what Baton keeps (``BATON_RETENTION_DAYS``) counted less than its
        period held, with nothing to tell it from a quiet one: it says from when it counts."""
        days = self.services.retention_days
        kept_from = self.clock() - timedelta(days=days)
        if not days or as_utc(run.window_start) >= kept_from:
            return message
        timezone = run.summary.get("timezone") or "UTC"
        note = Note(text=f"Baton keeps {days} day{'' if days == 1 else 's'} of history (BATON_RETENTION_DAYS): this digest counts what "
                         f"happened from {when_in(kept_from, timezone)} on.")
        return message.model_copy(update={"parts": [*message.parts, note]})

    @staticmethod
    def _period(schedule: DigestSchedule, fire_time: datetime) -> timedelta:
        """The period a firing at ``fire_time`` covers: since the schedule's firing before it (the time to its next
        one made a weekday digest's first, on a Monday, begin on the Sunday, and a monthly one's go back 31 days)."""
        previous = schedules.previous_fire(schedule.cron, schedule.timezone, fire_time)
        return (fire_time - previous) if previous else timedelta(days=1)


def _people(stats: dict[str, Any]) -> list[str]:
    """Who the digest's figures name: who decided each approval listed, and the approvers each waiting one waits for."""
    return [*(decided.get("by") or "" for decided in stats.get("decided") or []),
            *(name for waiting in stats.get("waiting") or [] for name in waiting.get("approvers") or [])]


async def _shown_until(session: Transaction, where: list[Any]) -> datetime | None:
    """Where the newest of these digests whose card the platform did not refuse ended. A refused card (Baton
    was removed from the channel, the channel archived) told the channel nothing: the digest after it covers
    its window too, so a channel that invites Baton back is told what happened while it could not post."""
    rows = (await session.exec(select(DigestRun.window_start, DigestRun.window_end, DigestRun.summary).where(*where)
                               .order_by(DigestRun.window_end.desc()).limit(REFUSED_LOOKBACK))).all()  # type: ignore[attr-defined]
    cards = [summary.get("outbox_id") for _start, _end, summary in rows if summary.get("outbox_id") is not None]
    refused = set((await session.exec(select(OutboxMessage.id).where(
        OutboxMessage.id.in_(cards), OutboxMessage.status == "failed"))).all()) if cards else set()  # type: ignore[union-attr]
    for _start, end, summary in rows:
        if summary.get("outbox_id") not in refused:  # None (no card yet) included
            return end
    return rows[-1][0] if rows else None


async def _given_up_from(session: Transaction, key: str) -> datetime | None:
    """Where the oldest of the schedule ``key``'s digests given up that no digest of its covers began: the next
    covers it. One given up after the next had begun (tried again until then) is covered by none of them."""
    covering = aliased(DigestRun, name="covering")
    return (await session.exec(select(func.min(DigestRun.window_start)).where(
        DigestRun.schedule_key == key, DigestRun.status == "failed",
        ~exists().where(covering.schedule_key == key, covering.status != "failed",
                        covering.window_start <= DigestRun.window_start,
                        covering.window_end >= DigestRun.window_end)))).one()


async def _add_spend(session: Transaction, run_id: int, spent: Spend) -> None:
    if spent.tokens:
        await session.exec(update(DigestRun).where(DigestRun.id == run_id).values(**spent.values()))  # type: ignore[arg-type]


def _in_workspace(column: Any, workspace: str) -> Any:
    """A channel's rows in ``workspace``. A ``baton.yaml`` digest may name no workspace (nothing asks a Slack
    one to; the channel's id is enough), while its platform's events carry one (a Slack team id): such a
    digest is the channel's in any workspace, and its channel's rows in any workspace are its own."""
    return column.in_((workspace, "")) if workspace else true()


def _config_key(digest: Digest) -> str:
    """A ``baton.yaml`` schedule's key; its graph filter is part of it only when it has one (the keys
    made before it was, for schedules without a filter, stay the same)."""
    key = f"config:{digest.platform}:{digest.workspace}:{digest.channel}:{digest.cron}:{digest.written_timezone}"
    return f"{key}:{','.join(sorted(set(digest.graphs)))}" if digest.graphs else key
