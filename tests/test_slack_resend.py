"""A Slack post whose answer was lost is not posted again.

Slack has no idempotency key for ``chat.postMessage``: a post that timed out (or got a 500) after Slack
posted it was posted again by the outbox's retry, and a Baton stopped or killed between Slack's answer
and the stored delivered-mark had the message posted again by whoever took the row over. Each post now
carries message metadata naming its outbox row and step, and a try after one whose post may have
reached Slack looks for it in the thread first (``adapters/slack.py``, ``_Attempt``).
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError

from adapters import slack_blocks
from adapters.slack_blocks import delivery_metadata
from adapters.contract import RetryLater
from adapters.slack import SlackAdapter
from bot.messages import Location, Message, Text
from bot.outbox import Delivery
from bot.settings import Settings
from tests.fake_slack import BOT_TOKEN, QUICK_PACE, SIGNING_SECRET, FakeMessage, FakeSlack, SlackSender, shown_text
from tests.support import overrides, runs_in, wait_for
from tests.test_slack import ALICE, GENERAL, Slack, config_path, fake_slack, slack  # noqa: F401 (fixtures)

LOOKUPS = ("conversations.replies", "conversations.history")
DELIVERY_EVENT_TYPE = "baton_delivery"  # adapters.slack_blocks's, spelled out: what Slack keeps is the contract


def _ask(slack: Slack, text: str) -> dict[str, Any]:
    """Mention Baton; Slack keeps the person's message (the thread's root) as it does."""
    event = slack.sender.mention(text, user=ALICE)
    slack.fake.said(event)
    assert slack.sender.send_event(event).status_code == 200
    return event


def _replies(fake: FakeSlack, thread: str, contains: str) -> list[FakeMessage]:
    return [m for m in fake.messages(GENERAL, thread) if m.user != ALICE and contains in shown_text(m)]


def _lookups(fake: FakeSlack) -> list[Any]:
    return [call for method in LOOKUPS for call in fake.calls(method)]


def test_a_post_slack_made_but_answered_with_a_500_is_found_not_posted_again(slack: Slack, counter: Path) -> None:
    slack.fake.fail("chat.postMessage", 500, after=True)
    event = _ask(slack, "run uptime")
    wait_for(lambda: slack.rows("SELECT status, attempts FROM outbox") == [("sent", 2)], 30, "the retried reply")
    (reply,) = _replies(slack.fake, event["ts"], "did uptime")
    assert slack.rows("SELECT platform_message_id FROM outbox") == [(reply.ts,)]  # edits would go to that one
    assert [call.status for call in slack.fake.calls("chat.postMessage")] == [500]  # found: not posted again
    (lookup,) = _lookups(slack.fake)
    assert (lookup.method, lookup.args["ts"], lookup.args["include_all_metadata"]) == (
        "conversations.replies", event["ts"], "1")
    assert runs_in(counter) == ["uptime"]


def test_a_post_whose_connection_broke_after_slack_posted_it_is_posted_once(slack: Slack, counter: Path) -> None:
    """slack_sdk retried a call whose connection broke at once, on its own: a second message, without looking."""
    slack.fake.drop("chat.postMessage")
    event = _ask(slack, "run uptime")
    wait_for(lambda: slack.rows("SELECT status FROM outbox") == [("sent",)], 30, "the reply recorded sent")
    assert len(_replies(slack.fake, event["ts"], "did uptime")) == 1
    assert [call.status for call in slack.fake.calls("chat.postMessage")] == [0]  # the outbox's retry found it
    assert slack.rows("SELECT attempts FROM outbox") == [(2,)]


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_baton_gone_between_slack_posting_and_the_delivered_mark_the_next_one_posts_nothing_more(
        fake_slack: FakeSlack, start_baton: Any, sqlite_url: str, tmp_path: Path, counter: Path,  # noqa: F811
        stop: signal.Signals) -> None:
    """Slack posted the reply; its answer never reached a Baton that was killed (or stopped: cut off after its
    grace) before recording the delivery. The Baton started after it took the row over when its claim ran
    out, and posted the reply a second time."""
    # A stop lets the send in flight finish for STOP_GRACE_SECONDS (5 s) before it cuts it off: 1 s here.
    env = {**fake_slack.env(), "BATON_LEASE_SECONDS": "2", **overrides({"adapters.contract.STOP_GRACE_SECONDS": 1.0, **QUICK_PACE})}
    first = start_baton(sqlite_url, name="first", env=env)
    slack = Slack(first, fake_slack, SlackSender(first.url), tmp_path / "baton.db")
    fake_slack.hold("chat.postMessage")
    event = _ask(slack, "run uptime")
    wait_for(lambda: fake_slack.holding == 1, 30, "Slack to have posted the reply, its answer held back")
    first.stop(stop)
    fake_slack.release()
    assert slack.rows("SELECT status FROM outbox") == [("sending",)]  # no delivered mark
    start_baton(sqlite_url, name="second", env=env)
    wait_for(lambda: slack.rows("SELECT status FROM outbox") == [("sent",)], 30, "the row taken over and settled")
    (reply,) = _replies(fake_slack, event["ts"], "did uptime")
    assert slack.rows("SELECT platform_message_id FROM outbox") == [(reply.ts,)]
    assert len(fake_slack.calls("chat.postMessage")) == 1
    assert [call.method for call in _lookups(fake_slack)] == ["conversations.replies"]


def test_a_lookup_slack_refuses_falls_back_to_posting_once_and_says_so(slack: Slack, counter: Path) -> None:
    """The first post failed (a 500 before posting anything): its retry looks first, Slack refuses the look
    (an app installed without the history scopes); the reply is posted all the same, once, and the log says
    why a retry may show twice, without the token."""
    slack.fake.fail("chat.postMessage", 500)
    slack.fake.fail("conversations.replies", 200, error="missing_scope")
    event = _ask(slack, "run uptime")
    wait_for(lambda: slack.rows("SELECT status, attempts FROM outbox") == [("sent", 2)], 30, "the retried reply")
    assert len(_replies(slack.fake, event["ts"], "did uptime")) == 1
    assert [call.status for call in slack.fake.calls("conversations.replies")] == [200]  # the refusal: ok false
    log = slack.baton.log.read_text()
    (said,) = [line for line in log.splitlines() if "missing_scope" in line]
    assert "WARNING" in said and "posted without looking" in said
    assert BOT_TOKEN not in log


def test_a_first_try_looks_for_nothing_and_every_post_names_its_row_and_step(slack: Slack, counter: Path) -> None:
    """The hot path is as it was: no lookup. Nor after a 429 (Slack said it posted nothing), only the post
    again; every post carries the metadata a later try would look for."""
    first = _ask(slack, "run uptime")
    slack.reply("did uptime", first["ts"])
    slack.fake.fail("chat.postMessage", 429, retry_after=0.5)
    second = _ask(slack, "run uptime force")  # force: not a link to the first
    slack.reply("did uptime", second["ts"])
    wait_for(lambda: [status for (status,) in slack.rows("SELECT status FROM outbox")] == ["sent", "sent"],
             what="both replies recorded sent")
    assert _lookups(slack.fake) == []
    rows = slack.rows("SELECT id, platform_message_id, created_at FROM outbox ORDER BY id")
    stored = {row_id: delivery_metadata(row_id, 0, _utc(created))["event_payload"]["stored"]
              for row_id, _ts, created in rows}
    posts = slack.fake.calls("chat.postMessage")
    assert [call.status for call in posts] == [200, 429, 200]
    assert [call.args["metadata"] for call in posts] == [  # the row, its step, and when it was stored
        {"event_type": DELIVERY_EVENT_TYPE, "event_payload": {"delivery_id": row_id, "step": 0, "stored": stored[row_id]}}
        for row_id in (rows[0][0], rows[1][0], rows[1][0])]
    for row_id, ts, _created in rows:  # kept with the message, as Slack keeps it
        assert slack.fake.message(GENERAL, ts).metadata["event_payload"] == {
            "delivery_id": row_id, "step": 0, "stored": stored[row_id]}


def _utc(stored: str) -> datetime:
    """A ``created_at`` as SQLite keeps it (text, UTC)."""
    return datetime.fromisoformat(stored).replace(tzinfo=UTC)


# -- a message of several Slack messages: each step is looked for -----------------------------------------


class _Baton:
    def __init__(self, fake: FakeSlack, tmp_path: Path) -> None:
        self.settings = Settings(SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET,  # type: ignore[call-arg]
                                 SLACK_API_URL=fake.api_url, BATON_CONFIG=str(tmp_path / "absent.yaml"))


WHERE = Location(platform="slack", workspace="T1", channel=GENERAL, thread="1.000001")
LONG = Message(parts=[Text(text="\n".join(f"line {n}: {'z' * 90}" for n in range(300)))])  # three Slack messages


def _delivery(attempts: int, location: Location = WHERE) -> Delivery:
    return Delivery(id=7, kind="post", location=location, message=LONG, target_user=None, target_message_id=None,
                    attempts=attempts)


async def _adapter(fake: FakeSlack, tmp_path: Path) -> SlackAdapter:
    adapter = SlackAdapter(_Baton(fake, tmp_path))
    adapter.client.session = aiohttp.ClientSession()
    return adapter


@pytest.mark.asyncio
async def test_a_long_message_is_resumed_after_the_parts_slack_shows(fake_slack: FakeSlack,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    """A message of three Slack messages: the first part's connection broke after Slack posted it, and the
    retry posts the other two only. A replica taking the delivery over later (its mark lost) finds all
    three and posts nothing; one that finds two of them posts the third only."""
    parts = len(slack_blocks.render(LONG, lambda channel, ts: "").messages)
    assert parts == 3
    fake_slack.drop("chat.postMessage")
    first = await _adapter(fake_slack, tmp_path)
    try:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await first.send(_delivery(1))
        sent = await first.send(_delivery(2))
    finally:
        await first.client.session.close()
    posted = fake_slack.messages(GENERAL)
    assert sent == " ".join(m.ts for m in posted) and len(posted) == parts
    assert len(fake_slack.calls("chat.postMessage")) == parts and len(_lookups(fake_slack)) == 1

    for attempt in (3, 4):  # each a replica of its own, which has made none of the earlier tries
        other = await _adapter(fake_slack, tmp_path)
        try:
            again = await other.send(_delivery(attempt))
        finally:
            await other.client.session.close()
        if attempt == 3:
            assert again == sent
            fake_slack.delete(GENERAL, posted[-1].ts)  # as if the first replica had died before posting it
    assert again.split()[:2] == sent.split()[:2] and again.split()[2] != posted[-1].ts
    assert len(fake_slack.messages(GENERAL)) == parts and len(fake_slack.calls("chat.postMessage")) == parts + 1
    assert len(_lookups(fake_slack)) == 3


@pytest.mark.asyncio
async def test_a_top_level_post_is_looked_for_among_the_channels_recent_messages(fake_slack: FakeSlack,  # noqa: F811
                                                                                tmp_path: Path) -> None:
    """A digest is posted at the top of the channel: its earlier try is looked for in conversations.history."""
    top = Location(platform="slack", workspace="T1", channel=GENERAL, thread="")
    fake_slack.fail("chat.postMessage", 503, after=True)
    adapter = await _adapter(fake_slack, tmp_path)
    try:
        with pytest.raises(Exception):
            await adapter.send(_delivery(1, top))
        sent = await adapter.send(_delivery(2, top))
    finally:
        await adapter.client.session.close()
    assert sent == " ".join(m.ts for m in fake_slack.messages(GENERAL)) and len(fake_slack.messages(GENERAL)) == 3
    (lookup,) = _lookups(fake_slack)
    assert lookup.method == "conversations.history" and float(lookup.args["oldest"]) > 0


@pytest.mark.asyncio
async def test_a_lookup_slack_rate_limits_or_fails_posts_nothing_until_it_can_look(fake_slack: FakeSlack,  # noqa: F811
                                                                                  tmp_path: Path) -> None:
    """A 429 on the lookup waits as Retry-After says, a 503 is retried with the delivery: neither posts
    blindly what an earlier try may have posted; the try that can look finds it."""
    short = Message(parts=[Text(text="did uptime")])
    tries = iter(range(1, 5))

    def delivery() -> Delivery:
        return Delivery(id=9, kind="post", location=WHERE, message=short, target_user=None, target_message_id=None,
                        attempts=next(tries))

    fake_slack.fail("chat.postMessage", 500, after=True)
    fake_slack.fail("conversations.replies", 429, retry_after=3)
    fake_slack.fail("conversations.replies", 503, error="service_unavailable")
    adapter = await _adapter(fake_slack, tmp_path)
    try:
        with pytest.raises(SlackApiError):
            await adapter.send(delivery())
        with pytest.raises(RetryLater) as waited:
            await adapter.send(delivery())
        assert waited.value.seconds == 3
        with pytest.raises(SlackApiError):
            await adapter.send(delivery())
        sent = await adapter.send(delivery())
    finally:
        await adapter.client.session.close()
    (posted,) = fake_slack.messages(GENERAL)
    assert sent == posted.ts and len(fake_slack.calls("chat.postMessage")) == 1
    assert [call.status for call in fake_slack.calls("conversations.replies")] == [429, 503, 200]


@pytest.mark.asyncio
async def test_another_databases_row_of_the_same_id_is_not_taken_for_this_ones_post(fake_slack: FakeSlack,  # noqa: F811
                                                                                    tmp_path: Path) -> None:
    """The metadata named the row by its id only: Baton started again on a new database (baton.db removed: ids
    from 1 again, or a backup restored) found the old database's message of that id in the channel after a
    503, took it for its own post, and the new message was never posted."""
    top = Location(platform="slack", workspace="T1", channel=GENERAL, thread="")

    def row_1(text: str, attempts: int, stored: datetime) -> Delivery:
        return Delivery(id=1, kind="post", location=top, message=Message(parts=[Text(text=text)]), target_user=None,
                        target_message_id=None, attempts=attempts, created_at=stored)

    old = await _adapter(fake_slack, tmp_path)
    try:
        await old.send(row_1("yesterday's digest", 1, datetime(2026, 12, 4, 9, 0, tzinfo=UTC)))
    finally:
        await old.client.session.close()
    new = await _adapter(fake_slack, tmp_path)
    today = datetime.now(UTC)
    fake_slack.fail("chat.postMessage", 503, error="service_unavailable")  # the first try: nothing posted
    try:
        with pytest.raises(Exception):
            await new.send(row_1("today's digest", 1, today))
        ts = await new.send(row_1("today's digest", 2, today))
    finally:
        await new.client.session.close()
    assert "today's digest" in shown_text(fake_slack.message(GENERAL, ts))
    assert len(fake_slack.messages(GENERAL)) == 2


def test_a_post_made_before_posts_named_their_rows_time_is_still_recognised() -> None:
    """A row tried once by a Baton from before the stamp, then again after an upgrade (or by a new replica in a
    rolling deploy): its post carried no "stored", was not recognised, and was posted a second time."""
    stored = datetime(2026, 12, 5, 22, 0, tzinfo=UTC)
    before_the_stamp = {"metadata": {"event_type": DELIVERY_EVENT_TYPE, "event_payload": {"delivery_id": 5, "step": 0}}}
    assert slack_blocks.delivery_step(before_the_stamp, 5, stored) == 0
    other_database = {"metadata": slack_blocks.delivery_metadata(5, 0, datetime(2026, 12, 4, tzinfo=UTC))}
    assert slack_blocks.delivery_step(other_database, 5, stored) is None
    assert slack_blocks.delivery_step({"metadata": slack_blocks.delivery_metadata(5, 1, stored)}, 5, stored) == 1
