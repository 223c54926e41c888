"""Digests as a demanding user meets them: clocks going back, slow builds, shared channels, busy days."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from langgraph.graph import END, START, StateGraph
from sqlmodel import select, update

from bot import schedules
from bot.config import BatonConfig, Digest
from bot.digests import MAX_ATTEMPTS, RETAKE_AFTER, Digests
from bot.digest_stats import collect
from bot.messages import Location, Message
from bot.outbox import Outbox
from bot.registry import GraphRegistry, GraphSpec
from bot.runtime import GraphRuntime, Services
from bot.scheduler import DigestScheduler
from graphs.digest import compose
from storage.checkpointer import open_checkpointer
from storage.db import Database
from storage.migrate import upgrade
from storage.models import Approval, DigestRun, DigestSchedule, Run, ThreadRecord
from tests.fake_models import ScriptedModel, calls, script
from tests.support import wait_for
from tests.test_digests import PARIS_DAILY, Clock, digest_service, firings, posted_messages

PARIS_NIGHTLY = Digest(platform="playground", channel="ops", cron="30 2 * * *", timezone="Europe/Paris")


@pytest.mark.parametrize("cron", ["30 2 * * *", "0 * * * *"])
def test_a_schedule_near_the_autumn_clock_change_is_accepted(cron):
    """02:30 in Paris happens twice on 25 October: the schedule was refused ("1 minute after another")
    from August on, and a baton.yaml holding it stopped `baton run`."""
    for now in (datetime(2026, 8, 1, tzinfo=UTC), datetime(2026, 10, 22, tzinfo=UTC)):
        schedules.check_schedule(cron, "Europe/Paris", now)


def test_firings_across_the_autumn_clock_change_are_once_per_wall_clock_time():
    since = datetime(2026, 10, 23, 12, tzinfo=UTC)
    daily = []
    for _ in range(4):
        since = schedules.next_fire("30 2 * * *", "Europe/Paris", since + timedelta(microseconds=1))  # type: ignore[assignment]
        daily.append(since.astimezone(UTC))
    # 02:30 CEST is 00:30 UTC; on the 25th the clocks go back at 03:00 and 02:30 comes again (01:30 UTC): once, as in crontab
    assert daily == [datetime(2026, 10, 24, 0, 30, tzinfo=UTC), datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
                     datetime(2026, 10, 26, 1, 30, tzinfo=UTC), datetime(2026, 10, 27, 1, 30, tzinfo=UTC)]
    hourly = schedules.latest_due("0 * * * *", "Europe/Paris", datetime(2026, 10, 25, 0, tzinfo=UTC),
                                  datetime(2026, 10, 25, 1, 30, tzinfo=UTC))
    assert hourly is None  # 02:00 CET (01:00 UTC) repeats 02:00 CEST (00:00 UTC): not due again


async def test_a_nightly_digest_is_posted_once_on_the_night_the_clocks_go_back(sqlite_url):
    clock = Clock(datetime(2026, 10, 24, 0, 0, tzinfo=UTC))
    async with digest_service(sqlite_url, clock, BatonConfig(digests=[PARIS_NIGHTLY])) as digests:
        while clock.now < datetime(2026, 10, 27, 0, 0, tzinfo=UTC):
            await digests.run_due(clock.now)
            clock.now += timedelta(minutes=15)
        runs = await firings(digests)
    assert [run.fire_time for run in runs] == [datetime(2026, 10, 24, 0, 30, tzinfo=UTC),
                                               datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
                                               datetime(2026, 10, 26, 1, 30, tzinfo=UTC)]
    assert [run.window_end for run in runs[:-1]] == [run.window_start for run in runs[1:]]


async def test_a_digest_still_being_built_when_another_replica_takes_it_over_is_posted_once(database_url):
    """A build slower than the two minutes after which a claim counts as lost (a slow model summary):
    the other replica posted it, and so did the slow one when it finished."""
    clock = Clock(datetime(2026, 6, 1, 6, 0, tzinfo=UTC))
    config = BatonConfig(digests=[PARIS_DAILY])
    async with digest_service(database_url, clock, config, "a") as slow, digest_service(database_url, clock, config, "b") as other:
        clock.now = datetime(2026, 6, 1, 7, 0, tzinfo=UTC)  # 09:00 in Paris
        built = asyncio.Event()
        render = slow._render

        async def slow_render(*args):
            await built.wait()
            return await render(*args)

        slow._render = slow_render  # type: ignore[method-assign]
        building = asyncio.create_task(slow.run_due(clock.now))
        await wait_until(lambda: firings(other), lambda runs: len(runs) == 1)
        clock.now += RETAKE_AFTER + timedelta(seconds=1)
        assert await other.run_due(clock.now) == 1
        built.set()
        await building
        messages = await posted_messages(other)
        runs = await firings(other)
    assert len(messages) == 1
    assert [(run.status, run.claimed_by) for run in runs] == [("posted", "b")]


async def wait_until(read, ready, timeout: float = 10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not ready(value := await read()):
        assert asyncio.get_running_loop().time() < deadline, f"still {value!r}"
        await asyncio.sleep(0.02)
    return value


async def test_a_weekly_digest_beside_a_daily_one_in_the_same_channel_covers_its_week(sqlite_url):
    """The window started where the channel's previous digest ended, whichever schedule posted it: the
    Monday 09:30 weekly digest covered the 30 minutes since the 09:00 daily one."""
    daily = Digest(platform="playground", channel="ops", cron="0 9 * * *", timezone="UTC", graphs=["deploy"])
    weekly = Digest(platform="playground", channel="ops", cron="30 9 * * mon", timezone="UTC")
    clock = Clock(datetime(2026, 6, 1, 0, 0, tzinfo=UTC))  # a Monday
    async with digest_service(sqlite_url, clock, BatonConfig(digests=[daily, weekly])) as digests:
        while clock.now < datetime(2026, 6, 16, 0, 0, tzinfo=UTC):
            await digests.run_due(clock.now)
            clock.now += timedelta(minutes=30)
        runs = await firings(digests)
    weeklies = [(run.window_start, run.window_end) for run in runs if run.schedule_key.endswith("mon:UTC")]
    assert weeklies[1:] == [(datetime(2026, 6, 1, 9, 30, tzinfo=UTC), datetime(2026, 6, 8, 9, 30, tzinfo=UTC)),
                            (datetime(2026, 6, 8, 9, 30, tzinfo=UTC), datetime(2026, 6, 15, 9, 30, tzinfo=UTC))]
    dailies = [run for run in runs if run.schedule_key.endswith("0 9 * * *:UTC")]
    assert all(run.window_end - run.window_start == timedelta(days=1) for run in dailies[1:])


async def test_two_schedules_at_the_same_time_in_one_channel_each_cover_the_day(sqlite_url):
    """One in baton.yaml, one made in chat, both at 09:00: the second to be built was always 'Quiet'."""
    clock = Clock(datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    config = BatonConfig(digests=[Digest(platform="playground", channel="ops", cron="0 9 * * *", timezone="UTC")])
    async with digest_service(sqlite_url, clock, config) as digests:
        await digests.set_chat_schedule(Location(platform="playground", channel="ops", thread="1"), "0 9 * * *", "UTC",
                                        "alice", "c1")
        while clock.now < datetime(2026, 6, 4, 0, 0, tzinfo=UTC):
            await digests.run_due(clock.now)
            clock.now += timedelta(hours=1)
        runs = await firings(digests)
    assert len(runs) == 6
    assert all(run.window_end - run.window_start == timedelta(days=1) for run in runs[2:])


async def seed_busy_day(db, start: datetime, decided: int, waiting: int) -> None:
    """``decided`` approvals decided (every third rejected), ``waiting`` still pending, and a choice
    card ("which graph did you mean?") picked and another not yet picked."""
    async with db.session() as session:
        for n in range(decided + waiting + 2):
            record = ThreadRecord(platform="playground", channel="ops", thread=str(1000 + n), status="done")
            session.add(record)
            await session.flush()
            chooser = n >= decided + waiting
            run = Run(thread_record_id=record.id, platform="playground", channel="ops", graph="choose" if chooser else "deploy",
                      status="done", requested_by="alice", correlation_id=f"c{n}", started_at=start + timedelta(seconds=n),
                      finished_at=start + timedelta(seconds=n + 1), turnaround_ms=1000)
            session.add(run)
            await session.flush()
            pending = n >= decided and (not chooser or n == decided + waiting + 1)
            session.add(Approval(
                run_id=run.id, thread_record_id=record.id, interrupt_id=f"i{n}", graph=run.graph,
                kind="choice" if chooser else "approval", summary=f"Which did you mean {n}?" if chooser else f"Deploy {n}",
                requested_by="alice", approvers=["bob"], risk="high", created_at=start + timedelta(seconds=n),
                status="pending" if pending else ("rejected" if n % 3 == 2 else "approved"),
                decided_by=None if pending else "bob", decided_at=None if pending else start + timedelta(seconds=n + 1)))


async def test_a_busy_days_digest_fits_one_slack_message_and_counts_every_approval(sqlite_url):
    """Every decided and waiting approval was a line of its own: 300 made the card seven Slack
    messages (50 blocks each). A choice card's pick was counted as an approval granted."""
    from adapters.slack_blocks import render

    start = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    end = start + timedelta(days=1)
    async with digest_service(sqlite_url, Clock(end), BatonConfig()) as digests:
        await seed_busy_day(digests.db, start, decided=300, waiting=40)
        async with digests.db.read() as session:
            stats = await collect(session, "playground", "ops", start, end, [], end)
    message = Message.model_validate(compose({"stats": stats})["reply"])
    text = message.plain_text()
    assert "*Approvals*: 200 granted, 100 rejected (290 more not listed)" in text
    assert "*Waiting for approval*: 40 (30 more not listed)" in text
    assert "Which did you mean" not in text
    assert len(render(message, lambda channel, thread: f"https://x/{channel}/{thread}").messages) == 1


async def test_a_digest_put_back_in_baton_yaml_waits_for_its_next_time(sqlite_url):
    """Taken out of baton.yaml and put back ten days later: at the restart it posted at once, a catch-up
    for the days it was off (a schedule made again in chat waits for its next time)."""
    clock = Clock(datetime(2026, 6, 1, 6, 0, tzinfo=UTC))
    async with digest_service(sqlite_url, clock, BatonConfig(digests=[PARIS_DAILY])) as digests:
        clock.now = datetime(2026, 6, 1, 7, 5, tzinfo=UTC)
        assert await digests.run_due(clock.now) == 1
    clock.now = datetime(2026, 6, 2, 12, 0, tzinfo=UTC)
    async with digest_service(sqlite_url, clock, BatonConfig()) as digests:
        assert await digests.run_due(clock.now) == 0
    clock.now = datetime(2026, 6, 12, 12, 0, tzinfo=UTC)
    async with digest_service(sqlite_url, clock, BatonConfig(digests=[PARIS_DAILY])) as digests:
        assert await digests.run_due(clock.now) == 0
        clock.now = datetime(2026, 6, 13, 7, 0, tzinfo=UTC)
        assert await digests.run_due(clock.now) == 1


@asynccontextmanager
async def digest_service_with_model(database_url: str, clock: Clock, config: BatonConfig, model) -> AsyncIterator[Digests]:
    await asyncio.to_thread(upgrade, database_url)
    db = Database(database_url)
    try:
        async with open_checkpointer(database_url) as checkpointer:
            registry = GraphRegistry.discover()
            services = Services(db, config, registry, model=model, model_name="fake:model", model_deadline=5)
            digests = Digests(services, GraphRuntime(registry, checkpointer), Outbox(db), "a", clock)
            await digests.sync_config()
            yield digests
    finally:
        await db.dispose()


async def test_a_model_that_fails_does_not_stop_the_digest(sqlite_url, tmp_path):
    """The written summary failed, so the whole digest did: never posted, built again every two minutes
    (asking the failing model each time). The numbers are posted, saying the summary is missing."""
    clock = Clock(datetime(2026, 6, 1, 6, 0, tzinfo=UTC))
    script_path = tmp_path / "script.json"
    script(script_path, [{"error": "quota exceeded"}])
    model = ScriptedModel(messages=iter(()), script_path=str(script_path))
    async with digest_service_with_model(sqlite_url, clock, BatonConfig(digests=[PARIS_DAILY]), model) as digests:
        await seed_busy_day(digests.db, datetime(2026, 6, 1, 6, 10, tzinfo=UTC), decided=2, waiting=0)
        clock.now = datetime(2026, 6, 1, 7, 0, tzinfo=UTC)
        assert await digests.run_due(clock.now) == 1
        [message] = await posted_messages(digests)
        runs = await firings(digests)
    text = Message.model_validate(message.payload).plain_text()
    assert "*2* requests" in text and "No written summary: the model failed (quota exceeded)." in text
    assert [run.status for run in runs] == ["posted"]
    assert len(calls(script_path)) == 1


def test_two_replicas_starting_together_post_a_missed_digest_once_and_a_restart_posts_nothing(start_baton, postgres_url):
    """Real `baton run` processes on one PostgreSQL: the 09:00-style daily digest fell due while both were down."""
    upgrade(postgres_url)
    due = datetime.now(UTC) - timedelta(minutes=10)
    cron = f"{due.minute} {due.hour} * * *"
    asyncio.run(_store_schedule(postgres_url, cron, datetime.now(UTC) - timedelta(days=2)))
    with ThreadPoolExecutor(2) as pool:
        one, two = pool.map(lambda name: start_baton(postgres_url, name=name), ["one", "two"])
    pg = one.client()

    def digests_in_ops() -> list[dict]:
        messages = pg.http.get("/api/channels/ops/messages").json()["messages"]
        return [m for m in messages if m["is_bot"] and m["text"].startswith("*Digest: ")]

    wait_for(lambda: digests_in_ops() or None, 20, "the catch-up digest in #ops")
    two.stop()
    start_baton(postgres_url, name="two-again")
    assert asyncio.run(_firing_count(postgres_url)) == 1
    assert len(digests_in_ops()) == 1


async def _store_schedule(url: str, cron: str, created_at: datetime) -> None:
    db = Database(url)
    try:
        async with db.session() as session:
            session.add(DigestSchedule(key="chat:playground::ops", source="chat", platform="playground", channel="ops",
                                       cron=cron, timezone="UTC", created_by="alice", created_at=created_at))
    finally:
        await db.dispose()


async def _firing_count(url: str) -> int:
    db = Database(url)
    try:
        async with db.read() as session:
            return len((await session.exec(select(DigestRun))).all())
    finally:
        await db.dispose()


async def test_a_chat_schedule_moved_to_another_time_zone_gets_a_job_in_that_zone(sqlite_url):
    """Only the cron fields were compared: the job kept firing on the old zone's clock (the digest came
    up to a minute late, from the next reconciling)."""
    clock = Clock(datetime.now(UTC))
    async with digest_service(sqlite_url, clock, BatonConfig()) as digests:
        scheduler = DigestScheduler(digests)
        await scheduler.start()
        try:
            location = Location(platform="playground", channel="ops", thread="1")
            await digests.set_chat_schedule(location, "0 9 * * *", "UTC", "alice", "c1")
            await scheduler.reconcile()
            await digests.set_chat_schedule(location, "0 9 * * *", "Asia/Tokyo", "alice", "c2")
            await scheduler.reconcile()
            upcoming = scheduler.next_runs()["chat:playground::ops"]
        finally:
            await scheduler.stop()
    assert str(upcoming.tzinfo) == "Asia/Tokyo" and upcoming.hour == 9  # type: ignore[attr-defined]


async def test_a_digest_that_cannot_be_built_is_given_up_after_a_few_attempts(sqlite_url):
    """A digest graph that raises (a custom one with a bug) was built again every two minutes forever,
    each firing adding one more, with a traceback every minute."""
    clock = Clock(datetime(2026, 6, 1, 6, 0, tzinfo=UTC))
    async with digest_service(sqlite_url, clock, BatonConfig(digests=[PARIS_DAILY])) as digests:
        attempts = []

        async def broken_render(*_args):
            attempts.append(clock.now)
            raise KeyError("per_graph")

        digests._render = broken_render  # type: ignore[method-assign]
        clock.now = datetime(2026, 6, 1, 7, 0, tzinfo=UTC)
        for _ in range(30):
            await digests.run_due(clock.now)
            clock.now += timedelta(minutes=1)
        [run] = await firings(digests)
    assert len(attempts) == MAX_ATTEMPTS
    assert run.status == "failed" and "KeyError" in run.summary["error"]


async def test_a_digest_graph_that_fails_leaves_no_checkpoints_behind(sqlite_url):
    """Its LangGraph thread belongs to no thread record, which the pruning goes by: deleted only after a
    build that succeeded, a failed one's checkpoints stayed for good."""
    def broken(_state: dict) -> dict:
        raise KeyError("per_graph")

    graph = StateGraph(dict)
    graph.add_node("compose", broken)
    graph.add_edge(START, "compose")
    graph.add_edge("compose", END)
    clock = Clock(datetime(2026, 6, 1, 6, 0, tzinfo=UTC))
    async with digest_service(sqlite_url, clock, BatonConfig()) as digests:
        digests.registry.add(GraphSpec(name="digest", graph=graph))
        assert not await digests.run_now(Location(platform="playground", channel="ops", thread="42"), "e1", "alice")
        [run] = await firings(digests)
        config = digests.runtime.config_for(f"digest-{run.id}", "digest")
        assert await digests.runtime.checkpointer.aget_tuple(config) is None
    assert run.status == "failed" and "KeyError" in run.summary["error"]


async def test_an_approval_with_an_empty_question_does_not_break_the_digest(sqlite_url):
    """A graph's ``interrupt("")`` stores an empty summary: the digest's ``splitlines()[0]`` raised
    IndexError, and every digest of the channel failed, was given up, and the next one failed again."""
    clock = Clock(datetime(2026, 6, 1, 9, 0, tzinfo=UTC))
    async with digest_service(sqlite_url, clock, BatonConfig()) as digests:
        async with digests.db.session() as session:
            record = ThreadRecord(platform="playground", channel="ops", thread="1", lg_thread_id="t1", status="waiting")
            session.add(record)
            await session.flush()
            run = Run(thread_record_id=record.id, platform="playground", channel="ops", graph="announce",
                      status="waiting", requested_by="alice", input_text="announce", correlation_id="c1",
                      started_at=clock.now - timedelta(hours=1))
            session.add(run)
            await session.flush()
            session.add(Approval(run_id=run.id, thread_record_id=record.id, interrupt_id="i1", graph="announce",
                                 summary="", details={}, risk="high", approvers=[], requested_by="alice",
                                 created_at=clock.now - timedelta(minutes=30)))
        async with digests.db.read() as session:
            stats = await collect(session, "playground", "ops", clock.now - timedelta(days=1), clock.now, [], clock.now)
    [waiting] = stats["waiting"]
    assert waiting["summary"] == "" and waiting["waiting_for"] == "an approver (baton.yaml names none)"
    text = Message.model_validate(compose({"stats": stats})["reply"]).plain_text()
    assert "for an approver (baton.yaml names none)" in text


async def test_digest_now_that_cannot_be_built_says_so_in_its_thread(sqlite_url):
    clock = Clock(datetime(2026, 6, 1, 6, 0, tzinfo=UTC))
    async with digest_service(sqlite_url, clock, BatonConfig()) as digests:
        async def broken_render(*_args):
            raise KeyError("per_graph")

        digests._render = broken_render  # type: ignore[method-assign]
        location = Location(platform="playground", channel="ops", thread="42")
        assert not await digests.run_now(location, "e1", "alice")
        clock.now += RETAKE_AFTER * 3
        await digests.run_due(clock.now)  # not tried again: the asker knows, and may ask again
        [message] = await posted_messages(digests)
        [run] = await firings(digests)
    assert message.thread == "42" and "could not build the digest" in Message.model_validate(message.payload).plain_text()
    assert run.status == "failed"


async def test_a_replica_still_building_a_digest_keeps_its_claim(database_url):
    """A build longer than two minutes (a model answering slowly, its deadline is three) was taken
    over although its replica was alive, and the takeover's build too: none was ever posted."""
    clock = Clock(datetime(2026, 6, 1, 6, 0, tzinfo=UTC))
    config = BatonConfig(digests=[PARIS_DAILY])
    async with digest_service(database_url, clock, config, "a") as slow, digest_service(database_url, clock, config, "b") as other:
        slow.renew_seconds = 0.01
        clock.now = datetime(2026, 6, 1, 7, 0, tzinfo=UTC)
        render = slow._render
        taken_over = []

        async def slow_render(*args):
            clock.now += RETAKE_AFTER + timedelta(seconds=1)
            await wait_until(lambda: firings(other), lambda runs: runs[0].claimed_at == clock.now)  # renewed
            taken_over.append(await other.run_due(clock.now))
            return await render(*args)

        slow._render = slow_render  # type: ignore[method-assign]
        assert await slow.run_due(clock.now) == 1
        runs = await firings(other)
        messages = await posted_messages(other)
    assert taken_over == [0]
    assert [(run.status, run.claimed_by) for run in runs] == [("posted", "a")] and len(messages) == 1


async def test_two_digests_in_one_channel_at_one_time_for_different_graphs_are_both_posted(sqlite_url):
    """baton.yaml's schedules were keyed without their graph filter: the second replaced the first, silently."""
    deploys = Digest(platform="playground", channel="ops", cron="0 9 * * *", graphs=["deploy"])
    uptime = Digest(platform="playground", channel="ops", cron="0 9 * * *", graphs=["uptime"])
    clock = Clock(datetime(2026, 6, 1, 6, 0, tzinfo=UTC))
    async with digest_service(sqlite_url, clock, BatonConfig(digests=[deploys, uptime])) as digests:
        clock.now = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
        assert await digests.run_due(clock.now) == 2
        runs = await firings(digests)
    assert sorted(run.summary["graphs"] for run in runs) == [["deploy"], ["uptime"]]


async def test_a_stored_schedule_that_breaks_a_rule_is_named_once_not_every_minute(sqlite_url, caplog):
    """Each minute's reconciling logged a warning for it and a traceback ('digest ... failed')."""
    clock = Clock(datetime.now(UTC))
    async with digest_service(sqlite_url, clock, BatonConfig()) as digests:
        scheduler = DigestScheduler(digests)
        await scheduler.start()
        try:
            await digests.set_chat_schedule(Location(platform="playground", channel="ops", thread="1"), "0 18 * * *",
                                            "UTC", "alice", "c1")
            async with digests.db.session() as session:
                await session.exec(update(DigestSchedule).values(cron="0 9 1 * mon"))
            for _ in range(3):
                await scheduler.reconcile()
        finally:
            await scheduler.stop()
    skipped = [r for r in caplog.records if "is skipped" in r.getMessage()]
    assert len(skipped) == 1 and "both a day of the month and a weekday" in skipped[0].getMessage()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_requests_per_day_are_counted_by_utc_day_whatever_the_servers_time_zone(postgres_url):
    """The chart grouped by the PostgreSQL server's own date (its TimeZone setting): on a server in
    Auckland a request at 20:00 UTC counted for the next day, under a title that says UTC."""
    from sqlalchemy import create_engine, make_url, text

    name = make_url(postgres_url).database
    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'ALTER DATABASE "{name}" SET timezone TO \'Pacific/Auckland\''))
    engine.dispose()
    start = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)
    end = start + timedelta(days=1)
    async with digest_service(postgres_url, Clock(end), BatonConfig()) as digests:
        await seed_busy_day(digests.db, start + timedelta(hours=20), decided=1, waiting=0)
        async with digests.db.read() as session:
            stats = await collect(session, "playground", "ops", start, end, [], end)
    assert [day["day"] for day in stats["per_day"]] == ["2026-06-01"]


async def test_the_digest_after_one_given_up_covers_its_window_too(sqlite_url):
    clock = Clock(datetime(2026, 6, 1, 6, 0, tzinfo=UTC))
    async with digest_service(sqlite_url, clock, BatonConfig(digests=[PARIS_DAILY])) as digests:
        render = digests._render

        async def broken_render(*_args):
            raise KeyError("per_graph")

        digests._render = broken_render  # type: ignore[method-assign]
        clock.now = datetime(2026, 6, 1, 7, 0, tzinfo=UTC)
        for _ in range(MAX_ATTEMPTS * 3):
            await digests.run_due(clock.now)
            clock.now += RETAKE_AFTER
        digests._render = render  # type: ignore[method-assign]
        clock.now = datetime(2026, 6, 2, 7, 0, tzinfo=UTC)
        assert await digests.run_due(clock.now) == 1
        failed, posted = await firings(digests)
    assert failed.status == "failed" and posted.status == "posted"
    assert (posted.window_start, posted.window_end) == (failed.window_start, posted.fire_time)
