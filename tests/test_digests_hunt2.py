"""Digests, a second hunt: what a digest counts as a request, and chat input a person may type."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from bot import schedules
from bot.config import BatonConfig, Digest
from bot.digests import RETAKE_AFTER
from bot.messages import Location
from tests.fake_models import script
from tests.support import wait_for
from tests.test_digests import Clock, digest_service, firings, posted_messages

MODEL = "python:tests.fake_models:scripted"
SUMMARY = {"content": "All fine.", "usage": {"input_tokens": 1, "output_tokens": 1}}  # the digest's written summary


def guess(graph: str, confidence: float, *alternatives: str) -> dict:
    return {"tool_calls": [{"name": "GraphGuess", "id": "g1", "args": {
        "graph": graph, "confidence": confidence, "alternatives": list(alternatives)}}],
        "usage": {"input_tokens": 100, "output_tokens": 10}}


@pytest.fixture
def model_env(tmp_path, config_path):
    """A scripted model (priced in baton.yaml) answering with ``replies``: the environment of ``baton run``."""
    config_path.write_text(config_path.read_text() + f'\nmodels:\n  prices:\n    "{MODEL}": {{input: 1.0, output: 2.0}}\n')
    return lambda *replies: script(tmp_path / "script.json", list(replies))


def runs(database_url: str) -> list[tuple[str, str]]:
    with sqlite3.connect(database_url.removeprefix("sqlite:///")) as db:
        return db.execute("SELECT graph, status FROM runs ORDER BY id").fetchall()


def test_chatter_a_model_routed_nowhere_is_no_request(start_baton, sqlite_url, model_env):
    """With a model, "thanks!" in a Baton thread is kept as a finished run of the pseudo-graph `route` (what
    asking the model cost). The digest counted each as a request: one request was "*3* requests" with a
    `route` line, and the chatter's 0 ms turnarounds pulled p50 down. What it cost is still counted."""
    pg = start_baton(sqlite_url, env=model_env(guess("none", 0.1), guess("none", 0.1), SUMMARY)).client()
    thread = pg.ask("@baton run uptime", channel="ops")
    pg.wait_reply(thread, "did uptime")
    for n in range(2):
        assert pg.say("thanks!", thread=thread, user="bob", channel="ops", event_id=f"chatter-{n}").status_code == 201
    wait_for(lambda: runs(sqlite_url).count(("route", "done")) == 2 or None, what="the chatter's cost to be kept")

    digest = pg.wait_reply(pg.ask("@baton digest now", channel="ops"), "Digest: ")["text"]
    assert "*1* request\n" in digest and "`runbook`: 1 done" in digest and "`route`" not in digest
    assert "over 1 finished" in digest
    assert "Model tokens: 220" in digest  # the two routing calls


def test_a_request_sent_to_the_graph_its_requester_picked_is_one_request(start_baton, sqlite_url, model_env):
    """An unsure model offers a choice card; the pick ends the `choose` run (done) and starts a run of the
    graph picked. The digest counted one request twice: "*2* requests" with a `choose` line."""
    pg = start_baton(sqlite_url, env=model_env(guess("none", 0.3, "status", "help"), SUMMARY)).client()
    asked = pg.ask("@baton hmm?", channel="ops")
    assert pg.click(pg.wait_card(asked), "alice", action="status").status_code == 202
    pg.wait_reply(asked, "Nothing is running")
    assert sorted(runs(sqlite_url)) == [("choose", "done"), ("status", "done")]

    digest = pg.wait_reply(pg.ask("@baton digest now", channel="ops"), "Digest: ")["text"]
    assert "*1* request\n" in digest and "`status`: 1 done" in digest and "`choose`" not in digest


@pytest.mark.parametrize("words", [["daily", "²:00"], ["daily", "09:²⁰"], ["weekly", "mon", "¹:30"], ["cron", "0 9 * * ¹"],
                                   ["cron", "0 9 * * 1-⁵"]])
def test_a_superscript_digit_is_refused_as_bad_input(words):
    """``"²".isdigit()`` is true and ``int("²")`` fails: `digest daily ²:00` answered "Something went wrong
    while handling this" (a ValueError the chat command does not expect) instead of saying what is wrong."""
    with pytest.raises(schedules.ScheduleError):
        schedules.parse_when(words)


@pytest.mark.parametrize(("words", "wanted"), [
    (["daily", "09:00", "europe/paris"], ("0 9 * * *", "Europe/Paris")),
    (["weekly", "mon", "08:30", "utc"], ("30 8 * * mon", "UTC")),
    (["cron", "0 9 * * 1-5", "AMERICA/NEW_YORK"], ("0 9 * * 1-5", "America/New_York")),
])
def test_a_time_zone_written_in_another_case_is_taken_by_its_iana_name(words, wanted):
    """`digest daily 09:00 utc` was "I don't know the time zone `utc`" (the zone files are found by name, on a
    case-sensitive disk); it is taken, and stored and shown as `UTC`."""
    assert schedules.parse_when(words) == wanted
    assert schedules.describe(*wanted) in ("daily at 09:00 Europe/Paris", "every mon at 08:30 UTC",
                                           "cron `0 9 * * 1-5` (America/New_York)")


async def test_digest_now_handled_again_after_its_replica_stopped_is_posted_once(sqlite_url):
    """`digest now` is answered while its event is handled: a replica stopped mid-way (the 8 s grace is
    shorter than a model's summary) leaves the event to be handled again, by another replica or after the
    restart. Each handling fired a digest of its own (keyed by the event, and by the time it was handled),
    and the claim the stopped one left was taken over too: two digest cards in the thread."""
    clock = Clock(datetime(2026, 6, 1, 6, 0, tzinfo=UTC))
    location = Location(platform="playground", channel="ops", thread="42")
    async with digest_service(sqlite_url, clock, BatonConfig(), "a") as stopped, \
            digest_service(sqlite_url, clock, BatonConfig(), "b") as other:
        cut_off = asyncio.Event()

        async def endless_render(*_args):
            cut_off.set()
            await asyncio.Event().wait()

        stopped._render = endless_render  # type: ignore[method-assign]
        handling = asyncio.create_task(stopped.run_now(location, "e1", "alice"))
        await cut_off.wait()
        handling.cancel()  # the grace is over
        with pytest.raises(asyncio.CancelledError):
            await handling
        clock.now += timedelta(seconds=30)
        await other.run_now(location, "e1", "alice")  # the event, handled again
        clock.now += RETAKE_AFTER * 2
        await other.run_due(clock.now)
        messages = await posted_messages(other)
        runs = await firings(other)
    assert [message.thread for message in messages] == ["42"]
    assert [run.status for run in runs] == ["posted"]


async def test_a_baton_yaml_digest_naming_no_workspace_is_the_channels_in_its_workspace(sqlite_url):
    """A Slack digest in baton.yaml names its channel (`{platform: slack, channel: C0123ABCD, cron: ...}`, nothing
    says to name the workspace), while a Slack event carries its team id as the workspace: `digest list` in that
    channel said "No digests are scheduled in this channel", and `digest now` there covered the day before
    instead of the time since the scheduled digest an hour earlier."""
    daily = Digest(platform="slack", channel="C0123ABCD", cron="0 9 * * *", timezone="UTC")
    clock = Clock(datetime(2026, 6, 1, 8, 0, tzinfo=UTC))
    in_slack = Location(platform="slack", workspace="T0123ABCD", channel="C0123ABCD", thread="1780000000.000100")
    async with digest_service(sqlite_url, clock, BatonConfig(digests=[daily])) as digests:
        assert [schedule.cron for schedule in await digests.in_channel(in_slack)] == ["0 9 * * *"]
        clock.now = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
        assert await digests.run_due(clock.now) == 1
        clock.now = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
        assert await digests.run_now(in_slack, "Ev1", "U0123ABCD")
        runs = await firings(digests)
    assert [(run.window_start, run.window_end) for run in runs][-1] == (datetime(2026, 6, 1, 9, 0, tzinfo=UTC), clock.now)
