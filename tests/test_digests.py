"""Scheduled digests: exactly-once firings on a controllable clock, catch-up, content, chat commands."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select, update

from bot import replies, schedules
from bot.config import BatonConfig, ConfigError, Digest, GraphPolicy, load_config
from bot.digest_stats import collect
from bot.digests import Digests
from bot.messages import Location, Message
from bot.outbox import Outbox
from bot.registry import GraphRegistry
from bot.runtime import GraphRuntime, Services
from bot.scheduler import DigestScheduler
from graphs.digest import compose
from storage.checkpointer import open_checkpointer
from storage.db import Database
from storage.migrate import upgrade
from storage.models import Approval, DigestRun, DigestSchedule, OutboxMessage, Run, ThreadRecord
from tests.support import run_cli

PARIS_DAILY = Digest(platform="playground", channel="ops", cron="0 9 * * *", timezone="Europe/Paris")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@asynccontextmanager
async def digest_service(database_url: str, clock: Clock, config: BatonConfig, instance: str = "a") -> AsyncIterator[Digests]:
    """The digest machinery of one Baton instance, on a clock the test controls."""
    await asyncio.to_thread(upgrade, database_url)
    db = Database(database_url)
    try:
        async with open_checkpointer(database_url) as checkpointer:
            registry = GraphRegistry.discover()
            digests = Digests(Services(db, config, registry), GraphRuntime(registry, checkpointer), Outbox(db), instance, clock)
            await digests.sync_config()
            yield digests
    finally:
        await db.dispose()


async def firings(digests: Digests) -> list[DigestRun]:
    async with digests.db.read() as session:
        return list((await session.exec(select(DigestRun).order_by(DigestRun.fire_time))).all())


async def posted_messages(digests: Digests) -> list[OutboxMessage]:
    async with digests.db.read() as session:
        return list((await session.exec(select(OutboxMessage).order_by(OutboxMessage.id))).all())


async def test_daily_digest_fires_once_a_day_at_local_time_across_dst(database_url):
    clock = Clock(datetime(2026, 3, 27, 0, 0, tzinfo=UTC))
    async with digest_service(database_url, clock, BatonConfig(digests=[PARIS_DAILY])) as digests:
        posted_at = []
        while clock.now < datetime(2026, 3, 31, 0, 0, tzinfo=UTC):
            if await digests.run_due(clock.now):
                posted_at.append(clock.now)
            clock.now += timedelta(minutes=15)
        runs = await firings(digests)
    # 09:00 in Paris is 08:00 UTC before the change to summer time on 29 March, 07:00 UTC after.
    assert [run.fire_time for run in runs] == [datetime(2026, 3, 27, 8, tzinfo=UTC), datetime(2026, 3, 28, 8, tzinfo=UTC),
                                               datetime(2026, 3, 29, 7, tzinfo=UTC), datetime(2026, 3, 30, 7, tzinfo=UTC)]
    assert posted_at == [run.fire_time for run in runs]  # posted at the first tick at or after the fire time
    assert [run.window_end for run in runs[:-1]] == [run.window_start for run in runs[1:]]  # windows tile exactly


async def test_two_instances_post_one_digest_per_firing(database_url):
    clock = Clock(datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    config = BatonConfig(digests=[PARIS_DAILY])
    async with digest_service(database_url, clock, config, "a") as one, digest_service(database_url, clock, config, "b") as two:
        while clock.now < datetime(2026, 6, 4, 0, 0, tzinfo=UTC):
            await asyncio.gather(one.run_due(clock.now), two.run_due(clock.now))
            clock.now += timedelta(minutes=30)
        runs = await firings(one)
        messages = await posted_messages(one)
    assert len(runs) == 3 and len({run.fire_time for run in runs}) == 3
    assert len(messages) == 3 and all(m.channel == "ops" and m.thread == "" for m in messages)
    assert {run.claimed_by for run in runs} <= {"a", "b"}


async def test_three_days_down_gives_one_catch_up_digest(database_url):
    clock = Clock(datetime(2026, 6, 1, 6, 0, tzinfo=UTC))
    async with digest_service(database_url, clock, BatonConfig(digests=[PARIS_DAILY])) as digests:
        clock.now = datetime(2026, 6, 1, 7, 5, tzinfo=UTC)  # 09:05 Paris: the first digest
        assert await digests.run_due(clock.now) == 1
    clock.now = datetime(2026, 6, 4, 12, 0, tzinfo=UTC)  # Baton was down for three days
    async with digest_service(database_url, clock, BatonConfig(digests=[PARIS_DAILY])) as digests:
        assert await digests.run_due(clock.now) == 1
        assert await digests.run_due(clock.now) == 0
        runs = await firings(digests)
    assert len(runs) == 2
    catch_up = runs[1]
    assert catch_up.fire_time == datetime(2026, 6, 4, 7, tzinfo=UTC)
    assert (catch_up.window_start, catch_up.window_end) == (runs[0].window_end, catch_up.fire_time)
    assert catch_up.window_end - catch_up.window_start == timedelta(days=3)


async def seed(db: Database, start: datetime) -> None:
    """Known runs: deploy 3 done + 1 failed, uptime 2 done + 1 running; two decided approvals, one waiting."""
    async with db.session() as session:
        threads = []
        for n in range(8):
            record = ThreadRecord(platform="playground", channel="ops", thread=str(100 + n), status="done")
            session.add(record)
            threads.append(record)
        other = ThreadRecord(platform="playground", channel="general", thread="900")
        session.add(other)
        await session.flush()

        def run(n: int, graph: str, status: str, minutes: int, turnaround_s: float | None, error: str | None = None,
                waited: float = 0.0, record: ThreadRecord | None = None) -> Run:
            at = start + timedelta(minutes=minutes)
            finished = at + timedelta(seconds=turnaround_s) if turnaround_s is not None else None
            row = Run(thread_record_id=(record or threads[n]).id, platform="playground", channel=(record or threads[n]).channel,
                      graph=graph, status=status, requested_by="alice", correlation_id=f"c{n}", started_at=at,
                      finished_at=finished, turnaround_ms=int(turnaround_s * 1000) if turnaround_s is not None else None,
                      error=error, waited_seconds=waited)
            session.add(row)
            return row

        runs = [run(0, "deploy", "done", 10, 10), run(1, "deploy", "done", 20, 20, waited=15),
                run(2, "deploy", "done", 30, 30), run(3, "deploy", "failed", 40, 40, error="exit code 2\nstack..."),
                run(4, "uptime", "done", 50, 1), run(5, "uptime", "done", 60, 2),
                run(6, "uptime", "running", 70, None), run(7, "deploy", "waiting", 80, None)]
        run(8, "uptime", "done", -60, 5, record=threads[0])          # before the window
        run(9, "uptime", "done", 30, 5, record=other)               # another channel
        await session.flush()
        session.add(Approval(run_id=runs[1].id, thread_record_id=threads[1].id, interrupt_id="i1", graph="deploy",
                             summary="Deploy web", requested_by="alice", approvers=["bob"], status="approved",
                             decided_by="bob", decided_at=start + timedelta(minutes=21)))
        session.add(Approval(run_id=runs[2].id, thread_record_id=threads[2].id, interrupt_id="i2", graph="deploy",
                             summary="Deploy api", requested_by="alice", approvers=["bob"], status="rejected",
                             decided_by="carol", decided_at=start + timedelta(minutes=31)))
        session.add(Approval(run_id=runs[7].id, thread_record_id=threads[7].id, interrupt_id="i3", graph="deploy",
                             summary="Deploy worker\nmore", requested_by="alice", approvers=["alice", "bob", "dave"],
                             risk="high", status="pending", created_at=start + timedelta(minutes=80)))


async def test_digest_content_is_exact(sqlite_url):
    start = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    end = start + timedelta(hours=2)
    clock = Clock(end)
    async with digest_service(sqlite_url, clock, BatonConfig()) as digests:
        await seed(digests.db, start)
        async with digests.db.read() as session:
            stats = await collect(session, "playground", "ops", start, end, [], end)
    assert stats["per_graph"] == {"deploy": {"done": 3, "failed": 1, "running": 1},
                                  "uptime": {"done": 2, "failed": 0, "running": 1}}
    assert stats["requests"] == 8
    # finished turnarounds (s): 1, 2, 10, 20, 30, 40 -> nearest-rank p50 = 3rd = 10 s, p95 = 6th = 40 s
    assert stats["turnaround"] == {"p50_ms": 10_000, "p95_ms": 40_000, "count": 6}
    assert stats["waited_seconds"] == 15
    assert stats["failures"] == [{"graph": "deploy", "error": "exit code 2", "channel": "ops", "thread": "103"}]
    assert [(d["status"], d["by"], d["thread"]) for d in stats["decided"]] == [("approved", "bob", "101"), ("rejected", "carol", "102")]
    # alice asked for this high-risk one: she is not among who it waits for (as on its card)
    assert stats["waiting"] == [{"summary": "Deploy worker", "approvers": ["bob", "dave"], "waiting_for": "bob, dave", "age_seconds": 2400.0,
                                 "channel": "ops", "thread": "107"}]
    assert stats["tokens"] is None and stats["cost"] is None and stats["unpriced_runs"] == 0
    message = Message.model_validate(compose({"stats": stats})["reply"])
    text = message.plain_text()
    assert "*8* requests" in text and "`deploy`: 3 done, 1 failed, 1 still running" in text
    assert "p50 10s, p95 40s over 6 finished" in text and "Approvals*: 1 granted, 1 rejected" in text
    assert "Deploy worker — waiting 40m for bob, dave" in text and "`deploy`: exit code 2" in text
    assert any(part.kind == "image" for part in message.parts)
    links = [part for part in message.parts if part.kind == "link"]
    assert {link.thread for link in links} == {"101", "102", "103", "107"}


async def test_quiet_period_gets_one_line(sqlite_url):
    start = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    async with digest_service(sqlite_url, Clock(start), BatonConfig()) as digests:
        async with digests.db.read() as session:
            stats = await collect(session, "playground", "ops", start, start + timedelta(days=1), [], start)
    message = Message.model_validate(compose({"stats": stats})["reply"])
    assert [part.kind for part in message.parts] == ["text"]
    assert message.parts[0].text.startswith("Quiet: no requests, approvals or failures")


def test_invalid_digest_in_config_names_the_line(tmp_path: Path):
    path = tmp_path / "baton.yaml"
    path.write_text("digests:\n  - platform: playground\n    channel: ops\n    cron: '0 9 * *'\n"
                    "  - platform: playground\n    channel: ops\n    cron: '0 9 * * *'\n    timezone: Mars/Base\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "line 4: digests.0: `0 9 * *` is not a cron expression" in str(error.value)  # the cron's line
    assert "line 8: digests.1: I don't know the time zone `Mars/Base`" in str(error.value)


def test_a_digest_for_a_platform_no_adapter_serves_stops_baton(tmp_path: Path):
    """It would never be posted: a typo (`slak`) must not pass unnoticed."""
    from bot.app import Baton
    from bot.settings import Settings

    config = BatonConfig(digests=[Digest(platform="slack", channel="ops", cron="0 9 * * *"),
                                  Digest(platform="slak", channel="ops", cron="0 9 * * *")])
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'b.db'}",  # type: ignore[call-arg]
                        BATON_CONFIG=str(tmp_path / "team.yaml"))
    with pytest.raises(ConfigError) as refused:
        Baton(settings, config)
    assert str(refused.value).startswith(f"{tmp_path / 'team.yaml'}: digests.1: platform: no adapter serves "
                                         "`slak` (adapters: ")  # the file BATON_CONFIG names, not baton.yaml


def test_baton_graphs_checks_a_digests_platform_as_baton_run_does(tmp_path: Path) -> None:
    """``baton graphs`` (the README's way to check a change to baton.yaml) passed a digest for ``slak``, which
    ``baton run`` and a SIGHUP refuse."""
    (tmp_path / "baton.yaml").write_text('digests:\n  - {platform: slak, channel: ops, cron: "0 9 * * *"}\n')
    done = run_cli("graphs", cwd=tmp_path, env={**os.environ, "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"})
    assert done.returncode == 2
    assert "baton.yaml: line 2: digests.0: platform: no adapter serves `slak` (adapters: " in done.stderr


def test_a_digest_for_a_playground_channel_there_is_not_stops_baton_with_its_line(tmp_path: Path) -> None:
    """A digest for the playground's `nochan` loaded without a word, and was posted every day where nobody could
    read it (``GET /api/channels/nochan/messages``: 404)."""
    (tmp_path / "baton.yaml").write_text('digests:\n  - {platform: playground, channel: general, cron: "0 9 * * *"}\n'
                                         '  - {platform: playground, channel: nochan, cron: "0 9 * * *"}\n')
    done = run_cli("graphs", cwd=tmp_path, env={**os.environ, "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"})
    assert done.returncode == 2
    assert ("baton.yaml: line 3: digests.1: channel: `nochan` is no playground channel (its channels: general, ops, "
            "random, dm-baton)") in done.stderr, done.stderr


def test_a_digest_for_a_platform_this_baton_does_not_serve_is_named_at_start(tmp_path: Path, caplog):
    """Another replica serving Slack posts it (outbox rows go to whoever serves their platform)."""
    from bot.app import Baton
    from bot.settings import Settings

    config = BatonConfig(digests=[Digest(platform="slack", channel="ops", cron="0 9 * * *"),
                                  Digest(platform="playground", channel="ops", cron="0 9 * * *",
                                         graphs=["runbook", "deploi"])],
                         graphs={"anounce": GraphPolicy(risk="high")})
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'b.db'}", BATON_ADAPTERS="playground",  # type: ignore[call-arg]
                        BATON_CONFIG=str(tmp_path / "team.yaml"))
    Baton(settings, config)
    # the file BATON_CONFIG names (it said baton.yaml whatever the file was)
    assert f"{tmp_path / 'team.yaml'} has digests for slack, which this Baton does not serve" in caplog.text
    assert "a policy for the graph anounce, which is not installed" in caplog.text  # a typo of announce
    assert "digests.1 (playground #ops) counts the graphs deploi, which are not installed" in caplog.text


def test_chat_commands_create_list_run_and_remove_schedules(start_baton, sqlite_url):
    baton = start_baton(sqlite_url)
    pg = baton.client()
    work = pg.ask("@baton run uptime", channel="ops")
    pg.wait_reply(work, "did uptime")

    made = pg.ask("@baton digest daily 09:00 Europe/Paris", channel="ops")
    pg.wait_reply(made, "Digest scheduled daily at 09:00 Europe/Paris in this channel; the next one is at")
    listed = pg.ask("@baton digest list", channel="ops")
    pg.wait_reply(listed, "daily at 09:00 Europe/Paris (set by alice)")

    now = pg.ask("@baton digest now", channel="ops", user="bob")
    digest = pg.wait_reply(now, "Digest: ")
    assert "*1* request\n" in digest["text"] and "`runbook`: 1 done, 0 failed" in digest["text"]
    assert "asked for by bob" in digest["text"]
    assert any(part["kind"] == "image" for part in digest["content"]["parts"])
    again = pg.ask("@baton digest now", channel="ops")
    quiet = pg.wait_reply(again, "Digest: ")
    assert "Quiet" in quiet["text"]  # the window starts where the previous digest ended

    baton.stop()
    pg = start_baton(sqlite_url, name="restarted").client()
    survived = pg.ask("@baton digest list", channel="ops")
    pg.wait_reply(survived, "daily at 09:00 Europe/Paris")
    off = pg.ask("@baton digest off", channel="ops")
    pg.wait_reply(off, "this channel's digest schedule is off")
    empty = pg.ask("@baton digest list", channel="ops")
    pg.wait_reply(empty, "No digests are scheduled in this channel")


def test_words_after_digest_off_now_or_list_are_refused_and_the_schedule_stays(start_baton, sqlite_url):
    """"digest off for a week" turned the channel's schedule off for good without a word about the week, and
    "digest now for #ops" posted the digest here."""
    pg = start_baton(sqlite_url).client()
    pg.wait_reply(pg.ask("@baton digest daily 09:00 Europe/Paris", channel="ops"), "Digest scheduled daily")
    threads = []
    for command, words in [("off", "for a week"), ("now", "for #ops"), ("list", "all")]:
        threads.append(thread := pg.ask(f"@baton digest {command} {words}", channel="ops"))
        refused = pg.wait_reply(thread, "Unexpected words")
        assert refused["text"] == (f"Unexpected words after `digest {command}`: `{words}` (it takes none). "
                                   "Nothing was changed."), refused["text"]
    pg.wait_reply(pg.ask("@baton digest list", channel="ops"), "daily at 09:00 Europe/Paris (set by alice)")
    assert [len(pg.bot_replies(thread)) for thread in threads] == [1, 1, 1]  # no digest posted besides
    posted = pg.http.get("/api/channels/ops/messages").json()["messages"]
    assert not [m for m in posted if "Digest: " in m["text"]], posted


@pytest.mark.parametrize(("command", "answer"), [
    ("digest daily 25:00", "`25:00` is not a time of day"),
    ("digest daily 09:00 Mars/Base", "I don't know the time zone `Mars/Base`"),
    ('digest cron "0 9 * *"', "it needs five fields"),
    ('digest cron "0 99 * * *" UTC', "is not a valid cron expression"),
    ('digest cron "* * * * *"', "would post a digest 1 minute after another"),
    ("digest weekly funday 09:00", "`funday` is not a weekday"),
    ("digest sometimes", "I understand `digest daily HH:MM [zone]`"),
])
def test_invalid_digest_commands_change_nothing(start_baton, sqlite_url, command, answer):
    pg = start_baton(sqlite_url).client()
    thread = pg.ask(f"@baton {command}", channel="ops")
    reply = pg.wait_reply(thread, answer)
    assert "Nothing was changed" in reply["text"]
    listed = pg.ask("@baton digest list", channel="ops")
    pg.wait_reply(listed, "No digests are scheduled")


def test_cron_weekdays_are_counted_as_crontab_counts_them():
    """APScheduler counts weekdays from Monday = 0: ``1-5`` handed to it as it is fired Tuesday to Saturday."""
    friday = datetime(2026, 12, 4, 10, tzinfo=UTC)
    next_days = {cron: schedules.next_fire(f"0 9 * * {cron}", "UTC", friday).strftime("%a")  # type: ignore[union-attr]
                 for cron in ("1-5", "0", "7", "6", "5-7", "*/2", "1,3", "mon-fri", "SUN")}
    assert next_days == {"1-5": "Mon", "0": "Sun", "7": "Sun", "6": "Sat", "5-7": "Sat", "*/2": "Sat", "1,3": "Mon",
                         "mon-fri": "Mon", "SUN": "Sun"}
    saturday = datetime(2026, 12, 5, 10, tzinfo=UTC)
    fires = [saturday]
    for _ in range(4):
        fires.append(schedules.next_fire("0 9 * * */2", "UTC", fires[-1] + timedelta(seconds=1)))  # type: ignore[arg-type]
    assert [fire.strftime("%a") for fire in fires[1:]] == ["Sun", "Tue", "Thu", "Sat"]  # 0,2,4,6
    for cron, answer in (("0 9 * * 8", "takes 0-7"), ("0 9 * * 5-1", "from the earlier day"),
                         ("0 9 1 * mon", "both a day of the month and a weekday")):
        with pytest.raises(schedules.ScheduleError, match=answer):
            schedules.check_schedule(cron, "UTC")
    for loose in ("sunshine", "sun,sat"):
        with pytest.raises(schedules.ScheduleError, match="is not a weekday"):
            schedules.parse_when(["weekly", loose, "10:00"])
    assert schedules.parse_when(["weekly", "Sunday", "10:00"]) == ("0 10 * * sun", "UTC")


@pytest.mark.parametrize(("cron", "answer"), [
    ("0 0 31 2 *", "never fires"),
    ("*/5 9 * * 1-5", "would post a digest 5 minutes after another"),
    ("0,10 9 * * *", "10 minutes after another"),
])
def test_schedules_that_never_fire_or_would_flood_the_channel_are_refused(cron, answer):
    with pytest.raises(schedules.ScheduleError, match=answer):
        schedules.check_schedule(cron, "UTC")
    with pytest.raises(ValueError, match=answer):  # in baton.yaml too
        Digest(platform="playground", channel="ops", cron=cron)
    for fine in ("0 * * * *", "*/15 * * * *", "0 9 29 2 *", "30 2 * * *"):  # 02:30 on a day it does not exist
        schedules.check_schedule(fine, "Europe/Paris")


async def test_scheduler_registers_cron_jobs_in_their_time_zone(sqlite_url):
    clock = Clock(datetime.now(UTC))
    config = BatonConfig(digests=[Digest(platform="playground", channel="ops", cron="30 8 * * mon",
                                         timezone="America/New_York")])
    async with digest_service(sqlite_url, clock, config) as digests:
        scheduler = DigestScheduler(digests)
        await scheduler.start()
        try:
            jobs = scheduler.next_runs()
            assert list(jobs) == ["config:playground::ops:30 8 * * mon:America/New_York"]
            upcoming = next(iter(jobs.values()))
            assert (upcoming.weekday(), upcoming.hour, upcoming.minute) == (0, 8, 30)
            assert str(upcoming.tzinfo) == "America/New_York"
            assert scheduler.scheduler.get_job(next(iter(jobs))).func == digests.run_due

            location = Location(platform="playground", channel="general", thread="1")
            await digests.set_chat_schedule(location, "0 18 * * *", "Asia/Tokyo", "alice", "c1")
            await scheduler.reconcile()
            assert "chat:playground::general" in scheduler.next_runs()
            await digests.disable_chat_schedule(location, "alice", "c2")
            await scheduler.reconcile()
            assert "chat:playground::general" not in scheduler.next_runs()

            # A schedule stored before a rule it breaks (both a day of the month and a weekday) is skipped,
            # and the others still run.
            await digests.set_chat_schedule(location, "0 18 * * *", "UTC", "alice", "c3")
            async with digests.db.session() as session:
                await session.exec(update(DigestSchedule).where(DigestSchedule.key == "chat:playground::general")
                                   .values(cron="0 9 1 * mon"))
            await scheduler.reconcile()
            assert list(scheduler.next_runs()) == ["config:playground::ops:30 8 * * mon:America/New_York"]
        finally:
            await scheduler.stop()


def test_a_schedules_next_firing_is_shown_in_utc_and_on_its_own_clock():
    now = datetime(2026, 12, 3, 8, 48, tzinfo=UTC)
    cron, timezone = schedules.parse_when(["weekly", "fri", "17:00", "Europe/Berlin"])
    upcoming = schedules.next_fire(cron, timezone, now)
    assert replies.when_in(upcoming, timezone) == "2026-12-04 16:00:00 UTC (Fri 17:00 in Europe/Berlin)"
    summer = schedules.next_fire(cron, timezone, datetime(2026, 7, 1, tzinfo=UTC))
    assert replies.when_in(summer, timezone) == "2026-07-03 15:00:00 UTC (Fri 17:00 in Europe/Berlin)"
    assert replies.when_in(schedules.next_fire("0 9 * * *", "UTC", now), "UTC") == "2026-12-03 09:00:00 UTC"
    assert replies.when(datetime(2026, 12, 3, 9, 30)) == "2026-12-03 09:30:00 UTC"  # naive: stored as UTC


def test_durations_read_as_people_say_them():
    """Whole seconds showed as "13.0s" and a 40 ms turnaround as "0.0s"."""
    from bot.kit import duration

    assert [duration(seconds) for seconds in (0.04, 0.9996, 4.25, 13, 59.6, 3700, 90000)] == \
        ["40ms", "1.0s", "4.2s", "13s", "1m", "1h 1m", "1d 1h"]
    assert [duration(seconds) for seconds in (3600, 86400, 7 * 86400)] == ["1h", "1d", "7d"]  # not "1d 0h"


def test_a_cost_that_covers_only_some_runs_says_so():
    """A price added partway through the day: the cost shown was that of the priced runs only, as if whole."""
    partial = {"tokens": 3000, "cost": 0.0012, "unpriced_runs": 2}
    whole = {"tokens": 3000, "cost": 0.0012, "unpriced_runs": 0}
    unpriced_only = {"tokens": 3000, "cost": None, "unpriced_runs": 2}
    assert "Model tokens: 3,000, cost $0.0012 (and 2 runs with no price in baton.yaml)" in _model_line(partial)
    assert _model_line(whole).endswith("Model tokens: 3,000, cost $0.0012")
    assert _model_line(unpriced_only).endswith("Model tokens: 3,000")


def _model_line(money: dict) -> str:
    stats = {"window": {"start": "2026-06-01T08:00:00+00:00", "end": "2026-06-01T10:00:00+00:00"},
             "platform": "playground", "channel": "ops", "per_graph": {"assistant": {"done": 3}}, "requests": 3,
             "turnaround": {"count": 0}, "waited_seconds": 0.0, "failures": [], "failure_count": 0,
             "decided": [], "waiting": [], "per_day": [], **money}
    text = Message.model_validate(compose({"stats": stats})["reply"]).plain_text()
    return next(line for line in text.splitlines() if line.startswith("Model tokens"))


async def test_a_digests_failures_are_the_runs_that_failed_in_its_window_whenever_they_started(sqlite_url):
    """A run asked for yesterday, approved and failed today was listed in neither digest: failures were
    selected by when the run started."""
    start = datetime(2026, 6, 2, 8, 0, tzinfo=UTC)
    end = start + timedelta(days=1)
    async with digest_service(sqlite_url, Clock(end), BatonConfig()) as digests:
        async with digests.db.session() as session:
            records = [ThreadRecord(platform="playground", channel="ops", thread=str(n), status="failed") for n in range(3)]
            for record in records:
                session.add(record)
            await session.flush()
            for record, started, failed in ((records[0], start - timedelta(hours=20), start + timedelta(hours=1)),
                                            (records[1], start + timedelta(hours=2), start + timedelta(hours=3)),
                                            (records[2], end - timedelta(hours=1), end + timedelta(hours=1))):
                session.add(Run(thread_record_id=record.id, platform="playground", channel="ops", graph="deploy",
                                status="failed", requested_by="alice", correlation_id=f"c{record.thread}",
                                started_at=started, finished_at=failed, error=f"failed in thread {record.thread}"))
        async with digests.db.read() as session:
            stats = await collect(session, "playground", "ops", start, end, [], end)
            earlier = await collect(session, "playground", "ops", start - timedelta(days=1), start, [], end)
            first_hours = await collect(session, "playground", "ops", start, start + timedelta(hours=2), [], end)
    assert [failure["thread"] for failure in stats["failures"]] == ["0", "1"]
    assert stats["failure_count"] == 2
    assert earlier["failures"] == [] and earlier["failure_count"] == 0
    assert earlier["per_graph"] == {"deploy": {"done": 0, "failed": 1, "running": 0}}  # asked that day
    # no request in the first two hours, but a failure: not "Quiet"
    assert first_hours["requests"] == 0 and first_hours["failure_count"] == 1
    shown = compose({"stats": first_hours})["reply"]  # type: ignore[typeddict-item]
    assert "failed in thread 0" in str(shown["parts"]), shown


def test_a_schedule_made_in_chat_says_which_one_it_replaces(start_baton, sqlite_url):
    """``digest weekly mon 08:30`` replaced the channel's daily digest that bob had set without a word: the channel
    has one schedule made in chat, and whoever set the other was not told it was gone."""
    pg = start_baton(sqlite_url).client()
    pg.wait_reply(pg.ask("@baton digest daily 09:00 Europe/Paris", channel="ops", user="bob"), "Digest scheduled daily")
    again = pg.wait_reply(pg.ask("@baton digest daily 09:00 Europe/Paris", channel="ops"), "Digest scheduled daily")
    assert "replaces" not in again["text"]  # the same schedule again replaces nothing
    told = pg.wait_reply(pg.ask("@baton digest weekly mon 08:30 UTC", channel="ops"), "Digest scheduled every mon")
    assert "It replaces the one daily at 09:00 Europe/Paris that alice set: a channel has one made in chat." in \
        told["text"], told["text"]
