"""The Slack adapter end to end: signed requests into the real Bolt app of a real ``baton run``,
and a local fake of Slack's Web API and Socket Mode (``tests/fake_slack.py``)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from pathlib import Path
from typing import Any

from urllib.parse import urlencode

import httpx
import pytest
import yaml
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from adapters import slack_blocks
from adapters.slack import EVENTS_PATH, SlackAdapter
from bot.settings import Settings
from storage.db import DatabaseHealth
from bot.messages import ButtonOption, Buttons, Code, Message, Note, Text, ThreadLink
from tests.fake_slack import (
    BOT_ID,
    BOT_TOKEN,
    BOT_USER_ID,
    SIGNING_SECRET,
    FakeMessage,
    FakeSlack,
    SlackSender,
    buttons,
    check_message,
    shown_text,
)
from tests.test_database_outage import proxy  # noqa: F401 (a fixture: the database behind a TCP proxy)
from tests.support import (
    LONG_LINES,
    ROOT,
    BatonProcess,
    long_line,
    runs_in,
    wait_for,
    write_config,
)

ALICE, BOB, CAROL = "U0ALICE001", "U0BOB00002", "U0CAROL003"
GENERAL, OPS, DM = "C0GENERAL1", "C0OPS00001", "D0ALICEDM1"


@pytest.fixture
def config_path(tmp_path: Path, counter: Path) -> Path:
    """The usual test runbooks, with Slack user ids as approvers (one platform-prefixed, one bare),
    and a runbook whose output is too long for a Slack message."""
    return write_config(tmp_path, counter, approvers=[f"slack:{BOB}", ALICE])


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()


@dataclass
class Slack:
    """One Baton with the Slack adapter, the fake Slack it talks to, and Slack's side of requests."""

    baton: BatonProcess
    fake: FakeSlack
    sender: SlackSender
    database: Path

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.database) as connection:
            return connection.execute(query, params).fetchall()

    def stored_events(self) -> list[str]:
        return [row[0] for row in self.rows("SELECT event_id FROM inbound_events WHERE platform = 'slack' ORDER BY id")]

    def mention(self, text: str, *, user: str = ALICE, channel: str = GENERAL, **kwargs: Any) -> dict[str, Any]:
        event = self.sender.mention(text, user=user, channel=channel, **kwargs)
        answer = self.sender.send_event(event)
        assert answer.status_code == 200, answer.text
        return event

    def reply(self, contains: str, thread: str, channel: str = GENERAL, timeout: float = 20) -> FakeMessage:
        return wait_for(lambda: self.fake.find(contains, channel=channel, thread=thread), timeout,
                        f"a Slack message containing {contains!r} in thread {thread}")

    def card(self, thread: str, channel: str = GENERAL) -> FakeMessage:
        return wait_for(lambda: next((m for m in self.fake.messages(channel, thread) if buttons(m)), None),
                        20, f"an approval card in thread {thread}")


@pytest.fixture
def slack(fake_slack: FakeSlack, start_baton, sqlite_url: str, tmp_path: Path) -> Slack:
    baton = start_baton(sqlite_url, env=fake_slack.env())
    return Slack(baton, fake_slack, SlackSender(baton.url), tmp_path / "baton.db")


def test_mention_runs_a_low_risk_runbook_and_answers_in_the_thread(slack, counter):
    event = slack.mention("run uptime", channel=OPS)
    assert slack.stored_events() == [f"{OPS}:{event['ts']}"]  # stored before Slack got its 200
    # Slack also sends the same mention as a plain `message` event, with another event_id.
    twin = slack.sender.message(event["text"], user=ALICE, channel=OPS)
    twin["ts"] = twin["event_ts"] = event["ts"]
    assert slack.sender.send_event(twin).status_code == 200
    reply = slack.reply("did uptime", event["ts"], channel=OPS)
    assert reply.thread_ts == event["ts"] and reply.ephemeral_to is None
    assert reply.blocks[-1] == {"type": "section", "text": {"type": "mrkdwn", "text": "```\ndid uptime\n```"}}
    assert reply.blocks[0]["text"]["text"].startswith(":white_check_mark: `")
    assert runs_in(counter) == ["uptime"]
    assert slack.stored_events() == [f"{OPS}:{event['ts']}"]
    assert len(slack.fake.messages(OPS)) == 1


def test_high_risk_card_refusals_approval_and_edit(slack, counter):
    event = slack.mention("run restart service=web")
    thread = event["ts"]
    slack.reply("Plan: run", thread)
    card = slack.card(thread)
    approve, reject = buttons(card)
    (approval_id,) = slack.rows("SELECT id FROM approvals")[0]
    assert (approve["action_id"], approve["style"], approve["value"]) == ("baton:approve", "primary", approval_id)
    assert (reject["action_id"], reject["style"], reject["value"]) == ("baton:reject", "danger", approval_id)
    assert f"approvers: <@{BOB}> (not <@{ALICE}>, who asked)" in shown_text(card) and f"Requested by <@{ALICE}>" in shown_text(card)

    again = slack.mention("run restart service=web", user=CAROL)  # the same request: a link, not a second card
    link = slack.reply("The same request is waiting for approval", again["ts"])
    assert f"<{slack.fake.team_url}archives/{GENERAL}/p{thread.replace('.', '')}|open that thread>" in shown_text(link)

    assert slack.sender.click(card, user=CAROL).status_code == 200
    refusal = slack.reply(f"Only <@{BOB}> can approve this", thread)
    assert refusal.ephemeral_to == CAROL
    assert slack.sender.click(card, user=ALICE).status_code == 200
    assert slack.reply("You asked for this high-risk action", thread).ephemeral_to == ALICE
    assert slack.fake.message(GENERAL, card.ts).edits == 0 and runs_in(counter) == []

    assert slack.sender.click(card, user=BOB).status_code == 200
    slack.reply("did restart web", thread)
    edited = wait_for(lambda: (m := slack.fake.message(GENERAL, card.ts)) and m.edits and m, what="the card edit")
    assert not buttons(edited) and f"Approved by <@{BOB}> at" in shown_text(edited)
    assert [call.args["ts"] for call in slack.fake.calls("chat.update")] == [card.ts]
    assert runs_in(counter) == ["restart web"]


def test_event_delivered_four_times_runs_once(slack, counter):
    event = slack.sender.mention("run uptime", user=ALICE)
    body = slack.sender.event_body(event, event_id="Ev0RETRIED01")
    answers = [slack.sender.post(body, "application/json", retry_num=number) for number in (None, 1, 2, 3)]
    assert [answer.status_code for answer in answers] == [200] * 4
    slack.reply("did uptime", event["ts"])
    assert runs_in(counter) == ["uptime"]
    assert slack.stored_events() == [f"{GENERAL}:{event['ts']}"]
    assert len(slack.fake.messages(GENERAL, event["ts"])) == 1


def test_a_burst_of_mentions_is_acknowledged_run_and_answered_once_each(slack, counter):
    """More requests at once than Baton drains at a time (``BATON_MAX_DRAINING_THREADS``)."""
    events = [slack.sender.mention("run uptime", user=ALICE, channel=f"C0BURST{n:03d}") for n in range(40)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(slack.sender.send_event, events))
    assert [answer.status_code for answer in answers] == [200] * 40
    assert len(slack.stored_events()) == 40  # all stored before they were acknowledged
    wait_for(lambda: len(slack.fake.calls("chat.postMessage")) >= 40, 60, "40 replies")
    for event in events:
        assert len(slack.fake.messages(event["channel"], event["ts"])) == 1
    assert runs_in(counter) == ["uptime"] * 40


def test_forged_and_stale_signatures_get_401_and_store_nothing(slack, counter):
    forged = slack.sender.mention("run uptime", user=ALICE)
    body = slack.sender.event_body(forged)
    wrong = SlackSender(slack.baton.url, signing_secret="not-the-secret").signed_headers(body, "application/json")
    assert httpx.post(slack.sender.url, content=body, headers=wrong).status_code == 401
    stale = slack.sender.mention("run uptime", user=ALICE)
    six_minutes_ago = int(time.time()) - 360  # correctly signed, but outside Slack's 5-minute window
    assert slack.sender.send_event(stale, timestamp=six_minutes_ago).status_code == 401
    unsigned = httpx.post(slack.sender.url, content=slack.sender.event_body(stale),
                          headers={"Content-Type": "application/json"})
    assert unsigned.status_code == 401
    # Checked before Bolt parses anything: these were 500s with a traceback, and a forged body was logged whole.
    not_json = httpx.post(slack.sender.url, content=b"hello\n2099-01-01 ERROR forged log line",
                          headers={"Content-Type": "application/json", "X-Slack-Signature": "v0=00",
                                   "X-Slack-Request-Timestamp": str(int(time.time()))})
    assert not_json.status_code == 401
    bad_clock = dict(wrong, **{"X-Slack-Request-Timestamp": "abc"})
    assert httpx.post(slack.sender.url, content=body, headers=bad_clock).status_code == 401
    assert "forged log line" not in slack.baton.log.read_text() and "Traceback" not in slack.baton.log.read_text()
    for unreadable in ("hello", "[1]"):  # signed, but not what Slack sends
        assert slack.sender.post(unreadable, "application/json").status_code == 400
    assert "Traceback" not in slack.baton.log.read_text()
    # A good request afterwards is handled: by the time its reply is out, the bad ones would be too.
    good = slack.mention("run uptime", channel=OPS)
    slack.reply("did uptime", good["ts"], channel=OPS)
    assert slack.stored_events() == [f"{OPS}:{good['ts']}"]
    assert slack.rows("SELECT channel, thread FROM thread_records") == [(OPS, good["ts"])]
    assert runs_in(counter) == ["uptime"] and slack.fake.messages(GENERAL) == []


def test_signed_requests_of_shapes_slack_never_sends_get_400_not_a_traceback(slack, counter):
    """Bolt's matchers read such bodies without checking them; they were 500s with a traceback."""
    sender = slack.sender
    events = [{"type": "event_callback", "team_id": "T1", "event": event} for event in (None, "x", [1])]
    events.append(json.loads(sender.event_body(dict(sender.mention("run uptime", user=ALICE), user=5))))
    for body in events:
        answer = sender.post(json.dumps(body), "application/json")
        assert (answer.status_code, answer.json()) == (400, {"error": "the request body could not be read"})
    for actions in ([], None, "x", [{}], [{"action_id": 5}]):
        payload = json.dumps({"type": "block_actions", "actions": actions})
        assert sender.post(urlencode({"payload": payload}), "application/x-www-form-urlencoded").status_code == 400
    log = slack.baton.log.read_text()
    assert "Traceback" not in log and "could not be read was refused (AttributeError)" in log
    good = slack.mention("run uptime")
    slack.reply("did uptime", good["ts"])
    assert runs_in(counter) == ["uptime"]


def test_requests_baton_does_not_handle_are_acknowledged_in_one_line(slack, counter):
    """An event subscribed to by hand, ``app_rate_limited`` (sent whatever the subscriptions) and a
    shortcut got Bolt's 404: Slack retried them, counted failed deliveries, and Bolt logged a page of
    suggested code each time."""
    sender = slack.sender
    reaction = {"type": "reaction_added", "user": ALICE, "reaction": "eyes", "event_ts": "1.2",
                "item": {"type": "message", "channel": GENERAL, "ts": "1.1"}}
    assert sender.send_event(reaction).status_code == 200
    rate_limited = {"token": "legacy-verification-token", "type": "app_rate_limited", "team_id": "T1",
                    "minute_rate_limited": 1518467820, "api_app_id": "A0BATON000"}
    assert sender.post(json.dumps(rate_limited), "application/json").status_code == 200
    shortcut = {"type": "shortcut", "callback_id": "something_else", "trigger_id": "1.2.3", "team": {"id": "T1"},
                "user": {"id": ALICE}}
    answer = sender.post(urlencode({"payload": json.dumps(shortcut)}), "application/x-www-form-urlencoded")
    assert answer.status_code == 200
    log = slack.baton.log.read_text()
    assert "Unhandled request" not in log and "Traceback" not in log
    assert "does not handle (reaction_added)" in log and "rate-limiting this app's events" in log
    assert slack.stored_events() == [] and slack.fake.messages(GENERAL) == []
    good = slack.mention("run uptime")
    slack.reply("did uptime", good["ts"])
    assert runs_in(counter) == ["uptime"]


@pytest.mark.asyncio
async def test_a_listener_whose_own_work_fails_answers_500_so_that_slack_retries(fake_slack: FakeSlack,
                                                                                tmp_path: Path) -> None:
    """Only a request's shape earns a 400: when storing the event fails (the database, say), the answer
    stays a 500, and Slack delivers the event again later."""
    accepted: list[Any] = []

    class FailingBaton:
        settings = Settings(SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET,  # type: ignore[call-arg]
                            SLACK_API_URL=fake_slack.api_url, BATON_CONFIG=str(tmp_path / "absent.yaml"))

        db = SimpleNamespace(health=DatabaseHealth("sqlite:///absent.db"))  # what the adapter asks of an error

        async def accept_message(self, message: Any) -> Any:
            accepted.append(message)
            raise OSError("disk I/O error")

    adapter = SlackAdapter(FailingBaton())
    body = SlackSender.event_body(SlackSender("http://unused").mention("run uptime", user=ALICE))
    stamp = str(int(time.time()))
    signature = SignatureVerifier(SIGNING_SECRET).generate_signature(timestamp=stamp, body=body)
    response = await adapter.bolt.async_dispatch(AsyncBoltRequest(body=body, headers={
        "content-type": "application/json", "x-slack-request-timestamp": stamp, "x-slack-signature": signature}))
    assert response.status == 500 and len(accepted) == 1


def test_rate_limited_and_failing_posts_are_retried_and_delivered_once(slack, counter):
    slack.fake.fail("chat.postMessage", 429, retry_after=3)  # longer than the first backoff after an error (2 s)
    first = slack.mention("run uptime")
    slack.reply("did uptime", first["ts"], timeout=30)
    posts = slack.fake.calls("chat.postMessage")
    assert [call.status for call in posts] == [429, 200]
    assert posts[1].at - posts[0].at >= 2.9, "Retry-After: 3 was not honoured"
    assert "asked to retry message 1 in 3.0s: Slack rate limit on chat.postMessage" in slack.baton.log.read_text()
    assert len(slack.fake.messages(GENERAL, first["ts"])) == 1

    slack.fake.fail("chat.postMessage", 500)
    second = slack.mention("run disk-is-not-a-runbook", channel=OPS)
    slack.reply("I don't know a runbook called `disk-is-not-a-runbook`", second["ts"], channel=OPS, timeout=30)
    assert [call.status for call in slack.fake.calls("chat.postMessage")] == [429, 200, 500, 200]
    assert len(slack.fake.messages(OPS, second["ts"])) == 1
    wait_for(lambda: slack.rows("SELECT status, attempts FROM outbox ORDER BY id") == [("sent", 2), ("sent", 2)],
             what="both rows recorded sent (Slack shows a post before Baton has recorded it)")


def test_a_refused_token_keeps_the_replies_waiting_instead_of_failing_them(slack, counter):
    """A revoked or rotated token marked every reply failed for good: none was ever posted once it worked again."""
    slack.fake.fail("chat.postMessage", 200, error="token_revoked")
    first = slack.mention("run uptime")
    waiting = wait_for(lambda: (row := slack.rows("SELECT status, error FROM outbox"))
                       and row[0][1] and "refused Baton's token" in row[0][1] and row,
                       what="the refused reply to be put off")
    assert waiting[0][0] == "pending"
    assert "WARNING" in next(line for line in slack.baton.log.read_text().splitlines()
                             if "refused Baton's token on chat.postMessage (token_revoked)" in line)
    with sqlite3.connect(slack.database) as connection:  # five minutes later, the token put right meanwhile
        connection.execute("UPDATE outbox SET next_attempt_at = '2000-01-01 00:00:00'")
    slack.reply("did uptime", first["ts"])
    assert [call.status for call in slack.fake.calls("chat.postMessage")] == [200, 200]
    wait_for(lambda: slack.rows("SELECT status FROM outbox") == [("sent",)], what="the row recorded sent")


def test_slash_command_posts_its_own_thread(slack, counter):
    answer = slack.sender.command("run uptime", user=ALICE, channel=OPS)
    assert answer.status_code == 200 and answer.text == ""
    anchor = slack.fake.find(f"<@{ALICE}> asked: `/baton run uptime`", channel=OPS)
    assert anchor is not None and anchor.thread_ts is None
    reply = slack.reply("did uptime", anchor.ts, channel=OPS)
    assert reply.thread_ts == anchor.ts and runs_in(counter) == ["uptime"]

    slack.fake.fail("chat.postMessage", 200, error="not_in_channel")
    refused = slack.sender.command("run uptime", user=ALICE, channel="C0NOTJOINED")
    assert refused.status_code == 200
    assert refused.json()["response_type"] == "ephemeral" and "Invite me to the channel" in refused.json()["text"]
    assert len(slack.stored_events()) == 1


def test_a_redelivered_slash_command_makes_no_second_thread(slack, counter):
    """Its thread is a message Baton posts before storing the command: a redelivery posted a second
    "asked:" message, which never got a reply."""
    for _ in range(2):
        assert slack.sender.command("run uptime", user=ALICE, channel=OPS, trigger_id="123.abc").status_code == 200
    anchor = slack.fake.find(f"<@{ALICE}> asked: `/baton run uptime`", channel=OPS)
    assert anchor is not None
    slack.reply("did uptime", anchor.ts, channel=OPS)
    asked = [call for call in slack.fake.calls("chat.postMessage") if "asked:" in str(call.args.get("text"))]
    assert len(asked) == 1 and slack.stored_events() == ["command:123.abc"] and runs_in(counter) == ["uptime"]


def test_direct_message_needs_no_mention(slack, counter):
    event = slack.sender.message("run uptime", user=ALICE, channel=DM, channel_type="im")
    assert slack.sender.send_event(event).status_code == 200
    reply = slack.reply("did uptime", event["ts"], channel=DM)
    assert reply.thread_ts == event["ts"] and runs_in(counter) == ["uptime"]


def test_a_high_risk_request_in_a_direct_message_says_it_needs_a_channel_instead_of_a_card_nobody_sees(slack, counter):
    """Only the requester sees their DM with the bot, and they may not approve their own high-risk
    request: the card waited there for ever, and the request with it."""
    event = slack.sender.message("run restart service=web", user=ALICE, channel=DM, channel_type="im")
    assert slack.sender.send_event(event).status_code == 200
    answer = slack.reply("only you can see this direct message", event["ts"], channel=DM)
    assert f"This needs <@{BOB}> to approve it" in shown_text(answer) and "nothing was run" in shown_text(answer)
    assert not any(buttons(message) for message in slack.fake.messages(DM))
    assert slack.rows("SELECT count(*) FROM approvals") == [(0,)]
    assert slack.rows("SELECT status FROM thread_records") == [("failed",)]
    assert slack.rows("SELECT status, outcome FROM inbound_events") == [("done", "failed")]
    # In a channel the same request gets its card, and asking again in the DM is not a "duplicate".
    in_channel = slack.mention("run restart service=web")
    slack.card(in_channel["ts"])
    again = slack.sender.message("run restart service=web", user=ALICE, channel=DM, channel_type="im")
    assert slack.sender.send_event(again).status_code == 200
    slack.reply("only you can see this direct message", again["ts"], channel=DM)
    assert runs_in(counter) == []


def test_follow_up_in_a_baton_thread_needs_no_mention_and_other_chatter_is_ignored(slack, counter):
    event = slack.mention("run uptime")
    slack.reply("did uptime", event["ts"])
    chatter = slack.sender.message("lunch anyone?", user=CAROL)
    follow_up = slack.sender.message("help", user=CAROL, thread_ts=event["ts"])
    for message in (chatter, follow_up):
        assert slack.sender.send_event(message).status_code == 200
    slack.reply("Here is what I can do", event["ts"])
    assert slack.stored_events() == [f"{GENERAL}:{event['ts']}", f"{GENERAL}:{follow_up['ts']}"]
    assert slack.fake.messages(GENERAL, chatter["ts"]) == []


def test_messages_from_bots_and_edits_are_ignored(slack, counter):
    event = slack.mention("run uptime")
    slack.reply("did uptime", event["ts"])
    thread = event["ts"]
    own = slack.sender.message("run uptime", user=BOT_USER_ID, thread_ts=thread, bot_id=BOT_ID)
    other_bot = slack.sender.message("run uptime", user=None, thread_ts=thread, bot_id="B0OTHERBOT",
                                     subtype="bot_message")
    other_bot_user = slack.sender.message(f"<@{BOT_USER_ID}> run uptime", user="U0OTHERBOT", thread_ts=thread,
                                          bot_id="B0OTHERBOT")
    edit = slack.sender.message("", user=None, thread_ts=thread, subtype="message_changed",
                                message={"user": ALICE, "text": "run uptime", "ts": thread})
    for message in (own, other_bot, other_bot_user, edit):
        assert slack.sender.send_event(message).status_code == 200
    real = slack.sender.message("run uptime force", user=ALICE, thread_ts=thread)  # force: it ran just above
    assert slack.sender.send_event(real).status_code == 200
    wait_for(lambda: len(runs_in(counter)) == 2, what="the person's follow-up to run")
    assert slack.stored_events() == [f"{GENERAL}:{thread}", f"{GENERAL}:{real['ts']}"]


def test_an_edit_adding_a_forgotten_mention_is_a_request_and_later_edits_run_nothing(slack, counter):
    """Slack sends a message edited to mention Baton as an ``app_mention`` carrying ``edited``. A person who forgot
    the mention and adds it expects an answer: that message is a request. Edits of a request Baton took run
    nothing again (the README said every edit was ignored)."""
    plain = slack.sender.message("run uptime", user=ALICE)  # the mention forgotten: chatter, not stored
    assert slack.sender.send_event(plain).status_code == 200
    edited = slack.sender.mention("run uptime", user=ALICE, ts=plain["ts"])
    edited["edited"] = {"user": ALICE, "ts": f"{float(plain['ts']) + 5:.6f}"}
    assert slack.sender.send_event(edited).status_code == 200
    slack.reply("did uptime", plain["ts"])
    again = {**edited, "text": f"<@{BOT_USER_ID}> run uptime now", "edited": {"user": ALICE, "ts": edited["ts"]}}
    changed = slack.sender.message("", user=None, subtype="message_changed",
                                   message={"user": ALICE, "text": again["text"], "ts": plain["ts"]})
    for event in (again, changed):
        assert slack.sender.send_event(event).status_code == 200
    real = slack.sender.message("run uptime force", user=ALICE, thread_ts=plain["ts"])  # handled after any other
    assert slack.sender.send_event(real).status_code == 200
    wait_for(lambda: len(runs_in(counter)) == 2, what="the follow-up to run")
    assert runs_in(counter) == ["uptime", "uptime"]
    assert slack.stored_events() == [f"{GENERAL}:{plain['ts']}", f"{GENERAL}:{real['ts']}"]


def test_long_output_is_attached_in_full_not_cut(slack, counter):
    # The message and the file are two calls: a 429 on the upload retries the upload only.
    slack.fake.fail("files.getUploadURLExternal", 429, retry_after=1)
    event = slack.mention("run long")
    reply = slack.reply("the whole output is attached below as `output.txt`", event["ts"], timeout=30)
    assert "Showing the first" in shown_text(reply) and f"of {LONG_LINES:,} lines" in shown_text(reply)
    expected = "".join(long_line(number) + "\n" for number in range(LONG_LINES)).rstrip("\n")
    shared = wait_for(lambda: [f for f in slack.fake.files.values() if f["shared"]], what="the file to be shared")
    assert len(shared) == 1
    assert shared[0]["content"].decode() == expected
    assert shared[0]["shared"] == {"channel": GENERAL, "thread_ts": event["ts"], "title": "output.txt"}
    assert [(call.method, call.status) for call in slack.fake.calls() if call.method.startswith("files.")] == [
        ("files.getUploadURLExternal", 429), ("files.getUploadURLExternal", 200), ("files.completeUploadExternal", 200)]
    assert [m.ts for m in slack.fake.messages(GENERAL, event["ts"])] == [reply.ts]  # posted once


def test_summarize_reads_the_thread_from_slack(slack, counter):
    event = slack.mention("run uptime")
    slack.fake.said(event)
    slack.reply("did uptime", event["ts"])
    # Another bot's message in the thread: Baton ignores its event, but Slack's history has it.
    deploy_bot = slack.sender.message("deploy 42 failed on web-2", user=None, thread_ts=event["ts"],
                                      bot_id="B0DEPLOY01", subtype="bot_message")
    slack.fake.said(deploy_bot)
    assert slack.sender.send_event(deploy_bot).status_code == 200
    ask = slack.sender.mention("summarize", user=BOB, thread_ts=event["ts"])
    slack.fake.said(ask)
    assert slack.sender.send_event(ask).status_code == 200
    summary = shown_text(slack.reply("Extractive summary of this thread", event["ts"]))
    key_messages = summary.split("\n")[2:]
    assert key_messages == [f"• <@{ALICE}>: @baton run uptime", "• B0DEPLOY01: deploy 42 failed on web-2"]
    assert [call.args["ts"] for call in slack.fake.calls("conversations.replies")] == [event["ts"]]


def test_wrong_or_missing_slack_settings_stop_the_start(fake_slack, start_baton, sqlite_url):
    wrong = {**fake_slack.env(), "SLACK_BOT_TOKEN": "xoxb-revoked"}
    with pytest.raises(AssertionError, match=r"Baton cannot start: Slack refused SLACK_BOT_TOKEN \(auth.test: invalid_auth\)") \
            as refused:
        start_baton(sqlite_url, name="wrong-token", env=wrong)
    assert "Traceback" not in str(refused.value)  # one line, not uvicorn's page of frames
    unreachable = {**fake_slack.env(), "SLACK_API_URL": "http://127.0.0.1:1/api/"}
    with pytest.raises(AssertionError, match=r"Baton cannot start: Slack's API at http://127.0.0.1:1/api/ cannot be "
                                             r"reached \(ClientConnectorError"):
        start_baton(sqlite_url, name="no-slack", env=unreachable)
    incomplete = {key: value for key, value in fake_slack.env().items() if key != "SLACK_SIGNING_SECRET"}
    with pytest.raises(AssertionError, match="neither SLACK_SIGNING_SECRET .* nor SLACK_APP_TOKEN"):
        start_baton(sqlite_url, name="no-secret", env=incomplete)


def test_manifest_subscribes_to_what_the_adapter_handles():
    manifest = yaml.safe_load((ROOT / "slack" / "manifest.yaml").read_text())
    settings = manifest["settings"]
    assert set(settings["event_subscriptions"]["bot_events"]) == {
        "app_mention", "message.channels", "message.groups", "message.im"}
    urls = [settings["event_subscriptions"]["request_url"], settings["interactivity"]["request_url"],
            *(command["url"] for command in manifest["features"]["slash_commands"])]
    assert all(url.endswith(EVENTS_PATH) for url in urls) and settings["interactivity"]["is_enabled"]
    assert [command["command"] for command in manifest["features"]["slash_commands"]] == ["/baton"]
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == {
        "app_mentions:read", "channels:history", "groups:history", "im:history", "chat:write", "commands",
        "files:write"}


def test_socket_mode_receives_acknowledges_and_runs_once(fake_slack, start_baton, sqlite_url, tmp_path, counter):
    baton = start_baton(sqlite_url, env=fake_slack.env(socket_mode=True))
    wait_for(lambda: fake_slack.socket_connections == 1, what="Baton's Socket Mode connection")
    assert [call.method for call in fake_slack.calls("apps.connections.open")] == ["apps.connections.open"]
    sender = SlackSender(baton.url)
    event = sender.mention("run uptime", user=ALICE)
    payload = json.loads(sender.event_body(event))
    first = fake_slack.send_envelope(payload)
    wait_for(lambda: {"envelope_id": first} in fake_slack.socket_acks, what="the ack of the envelope")
    with sqlite3.connect(tmp_path / "baton.db") as connection:  # stored before the ack went out
        assert connection.execute("SELECT event_id FROM inbound_events").fetchall() == [(f"{GENERAL}:{event['ts']}",)]
    again = fake_slack.send_envelope(payload, retry_attempt=1)  # Slack redelivers: a new envelope, the same event
    wait_for(lambda: {"envelope_id": again} in fake_slack.socket_acks, what="the ack of the redelivery")
    reply = wait_for(lambda: fake_slack.find("did uptime", thread=event["ts"]), what="the reply")
    assert reply.thread_ts == event["ts"] and runs_in(counter) == ["uptime"]
    assert sender.send_event(sender.mention("run uptime", user=ALICE)).status_code == 404  # no HTTP endpoint
    with sqlite3.connect(tmp_path / "baton.db") as connection:
        assert connection.execute("SELECT count(*) FROM inbound_events").fetchone() == (1,)
        assert connection.execute("SELECT count(*) FROM runs").fetchone() == (1,)


# -- rendering, without a process ------------------------------------------------------------------


def link(channel: str, thread: str) -> str:
    return f"https://x.slack.com/archives/{channel}/p{thread.replace('.', '')}"


def test_chunks_never_lose_or_reorder_text():
    text = "".join(f"{n} <&> " * (n % 7 + 1) + "\n" for n in range(2000)) + "y" * 7000
    pieces = slack_blocks.chunks(text, 2900)
    assert "".join(pieces) == text
    assert all(len(slack_blocks.escape(piece)) <= 2900 for piece in pieces)


def test_long_text_is_split_into_sections_and_messages_within_slack_limits():
    text = "\n".join(f"paragraph {n}: " + "word " * 30 for n in range(400))  # ~64,000 characters
    rendered = slack_blocks.render(Message(title="Report", parts=[Text(text=text)]), link)
    assert len(rendered.messages) > 1 and not rendered.uploads
    sections = []
    for message in rendered.messages:
        fake = FakeMessage(channel="C1", ts="1.1", thread_ts=None, text=message["text"], blocks=message["blocks"])
        assert len(message["blocks"]) <= 50
        assert check_message({"channel": "C1", **message}) == ""
        sections += [block["text"]["text"] for block in fake.blocks]
    assert sections[0] == "*Report*"
    assert "\n".join(sections[1:]) == text


def test_ephemeral_long_output_is_split_not_attached():
    output = "\n".join(long_line(n) for n in range(1000))
    rendered = slack_blocks.render(Message(parts=[Code(text=output)]), link, files=False)
    assert not rendered.uploads and len(rendered.messages) > 1
    code = [block["text"]["text"].removeprefix("```\n").removesuffix("\n```")
            for message in rendered.messages for block in message["blocks"]]
    assert "\n".join(code) == output


def test_card_parts_render_as_block_kit():
    message = Message(title="Approval needed", tone="approval", parts=[
        Text(text="Run `restart` for U0BOB00002 & <friends>"), Code(text="command: a <b>"),
        Note(text="approvers: slack:U0BOB00002, bob, UPTIME"), ThreadLink(label="open | it", channel="C1", thread="1.5"),
        Buttons(approval_id="abc123")], people=["U0BOB00002"])
    (rendered,) = slack_blocks.render(message, link).messages
    texts = [block.get("text", {}).get("text") for block in rendered["blocks"]]
    assert texts[:2] == [":raised_hand: *Approval needed*", "Run `restart` for <@U0BOB00002> &amp; &lt;friends&gt;"]
    assert texts[2] == "```\ncommand: a &lt;b&gt;\n```"
    assert rendered["blocks"][3]["elements"][0]["text"] == "approvers: <@U0BOB00002>, bob, UPTIME"
    assert texts[4] == "<https://x.slack.com/archives/C1/p15|open ¦ it>"
    assert [(b["action_id"], b["value"], b["style"]) for b in rendered["blocks"][5]["elements"]] == [
        ("baton:approve", "abc123", "primary"), ("baton:reject", "abc123", "danger")]
    assert rendered["text"] == "Approval needed"


def test_choice_buttons_carry_the_option_in_the_action_id():
    choices = Buttons(approval_id="c1", options=[
        ButtonOption(value="deploy", label="deploy: roll out a release"), ButtonOption(value="status", label="status"),
        ButtonOption(value="none", label="x" * 100, style="danger")])
    (rendered,) = slack_blocks.render(Message(parts=[choices]), link).messages
    elements = rendered["blocks"][0]["elements"]
    assert [(b["action_id"], b["value"], b.get("style")) for b in elements] == [
        ("baton:deploy", "c1", None), ("baton:status", "c1", None), ("baton:none", "c1", "danger")]
    assert elements[2]["text"]["text"] == "x" * 74 + "…"


@pytest.mark.postgres
def test_an_event_sent_while_the_database_is_away_is_left_to_slack_to_send_again(
        fake_slack: FakeSlack, proxy: Any, start_baton: Any, postgres_url: str, counter: Path) -> None:
    """Slack retries an event Baton did not acknowledge: that is the way back for one sent while the database
    was away. Each was logged with a whole traceback; the outage is now logged once."""
    baton = start_baton(proxy.url(postgres_url), env=fake_slack.env())
    sender = SlackSender(baton.url)
    event = sender.mention("run uptime", user=ALICE, channel=OPS)
    proxy.cut()
    assert sender.send_event(event, event_id="Ev0OUTAGE01").status_code == 500  # Slack will send it again
    proxy.restore()
    wait_for(lambda: httpx.get(f"{baton.url}/readyz", timeout=15).status_code == 200, 30, "the database back")
    assert sender.send_event(event, event_id="Ev0OUTAGE01").status_code == 200  # Slack's retry
    wait_for(lambda: fake_slack.find("did uptime", channel=OPS, thread=event["ts"]), 20, "the answer")
    assert runs_in(counter) == ["uptime"]
    log = baton.log.read_text()
    assert "Traceback" not in log and "an event was not taken, Baton's database being away" in log
