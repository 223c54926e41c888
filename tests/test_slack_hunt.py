"""The Slack adapter against what real Slack sends and refuses: its markup in people's text, its limits
on what Baton posts (``tests/fake_slack.py`` checks them the way Slack does), edits of cards too long
for one message, files it will not take, rate limits and failures at start-up, refused signatures."""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from adapters import slack_blocks
from adapters.slack import SlackAdapter
from bot.messages import Location, Message, Note, Text, ThreadLink
from bot.outbox import Delivery
from bot.replies import approval_card
from bot.settings import Settings
from storage.models import Approval
from tests.fake_slack import (
    BOT_TOKEN,
    SIGNING_SECRET,
    USER_TOKEN,
    FakeSlack,
    SlackSender,
    buttons,
    check_message,
    shown_text,
)
from tests.support import runs_in, wait_for, write_config
from tests.test_slack import ALICE, BOB, GENERAL, OPS, Slack, config_path, fake_slack, slack  # noqa: F401 (fixtures)

RECORD = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n'); print('did', sys.argv[2])"


@pytest.fixture
def config_path(tmp_path: Path, counter: Path) -> Path:  # noqa: F811 (the usual runbooks, and two with an address)
    config = write_config(tmp_path, counter, approvers=[f"slack:{BOB}", ALICE])
    config.write_text(config.read_text() + f"""
  ping:
    description: Ping a host.
    command: [{sys.executable!r}, "-c", {RECORD!r}, {str(counter)!r}, "ping {{host}}"]
    args:
      host:
        pattern: "^[a-z0-9.-]+$"
    risk: low
    timeout: 10
  probe:
    description: Probe a URL.
    command: [{sys.executable!r}, "-c", {RECORD!r}, {str(counter)!r}, "probe {{url}}"]
    args:
      url:
        pattern: "^https://[^ ]+$"
    risk: low
    timeout: 10
""")
    return config


def test_addresses_slack_turned_into_links_reach_the_runbook_as_typed(slack: Slack, counter: Path) -> None:
    """Slack sends a host name or a URL a person typed as a link (``<http://db1.example.com|db1.example.com>``):
    the runbook refused it ("does not match the allowed pattern"), and nothing a person can type avoided it."""
    host = slack.mention("run ping host=<http://db1.example.com|db1.example.com>")
    slack.reply("did ping db1.example.com", host["ts"])
    url = slack.mention("run probe url=<https://status.example.com/x?a=1&amp;b=2>", channel=OPS)
    slack.reply("did probe https://status.example.com/x?a=1&amp;b=2", url["ts"], channel=OPS)
    assert runs_in(counter) == ["ping db1.example.com", "probe https://status.example.com/x?a=1&b=2"]


def test_mentions_channels_and_links_in_a_thread_read_as_people_see_them(slack: Slack, counter: Path) -> None:
    """Other people's mentions, channels and links were quoted as raw markup (``<@U0BOB00002>``, shown
    escaped, as text); they are shown as Slack shows them: a mention, ``#ops``, the address."""
    event = slack.mention("run uptime")
    slack.fake.said(event)
    slack.reply("did uptime", event["ts"])
    note = slack.sender.message(f"failed again, <@{BOB}> see <#{OPS}|ops> and <https://status.example.com> "
                                "<!here>", user=ALICE, thread_ts=event["ts"])
    slack.fake.said(note)
    ask = slack.sender.mention("summarize", user=BOB, thread_ts=event["ts"])
    slack.fake.said(ask)
    assert slack.sender.send_event(ask).status_code == 200
    summary = shown_text(slack.reply("Extractive summary of this thread", event["ts"]))
    assert f"• <@{ALICE}>: failed again, <@{BOB}> see #ops and https://status.example.com @here" in summary


def test_typed_text_undoes_slack_markup() -> None:
    cases = {
        "<@U0BOB00002> and <@U0CAROL003|carol>": "@U0BOB00002 and @U0CAROL003",
        "<#C0OPS00001|ops> <#C0OPS00001>": "#ops #C0OPS00001",
        "<!here> <!channel> <!everyone|everyone> <!subteam^S0TEAM|@oncall>": "@here @channel @everyone @oncall",
        "<!date^1392734382^{date_num}|2014-02-18>": "2014-02-18",
        "<http://a.example.com|a.example.com> <mailto:ops@x.io|ops@x.io> <https://x.io/?a=1&amp;b=2>":
            "a.example.com ops@x.io https://x.io/?a=1&b=2",
        "<https://x.io/runbook|the runbook>": "the runbook (https://x.io/runbook)",
        "a &lt;b&gt; &amp;lt; c": "a <b> &lt; c",
    }
    for sent, typed in cases.items():
        assert slack_blocks.typed_text(sent) == typed


def test_mentions_read_back_in_replies_are_mentions_again() -> None:
    (rendered,) = slack_blocks.render(Message(parts=[Text(text="ask @U0BOB00002, not me@U0BOB00002")]),
                                      lambda channel, ts: "").messages
    assert rendered["blocks"][0]["text"]["text"] == "ask <@U0BOB00002>, not me@U0BOB00002"


@pytest.mark.parametrize("part", [Text, Note])
def test_text_full_of_user_ids_stays_within_slack_section_limits(part: type[Text] | type[Note]) -> None:
    """Each id becomes ``<@...>`` after the text was split: a 2,900-character piece grew past Slack's
    3,000, and Slack refused the whole message (``invalid_blocks``): it was never shown."""
    lines = "".join(f"U0USER{n:04d} ran restart web\n" for n in range(150))
    one_line = "U0USER0001 " * 400
    for text in (lines, one_line):
        rendered = slack_blocks.render(Message(parts=[part(text=text)]), lambda channel, ts: "")
        assert [check_message({"channel": GENERAL, **message}) for message in rendered.messages] == [""] * len(
            rendered.messages)


def _approval(**decided: Any) -> Approval:
    return Approval(id="ap1", run_id=1, thread_record_id=1, interrupt_id="i1", graph="terraform",
                    summary=decided.pop("summary", "Apply this plan?"), details=decided.pop("details", {}),
                    approvers=[BOB], requested_by=ALICE, **decided)


def _decided(approval: Approval) -> Approval:
    return approval.model_copy(update={"status": "approved", "decided_by": BOB,
                                       "decided_at": datetime(2026, 12, 5, 1, 0, tzinfo=UTC)})


class _Baton:
    def __init__(self, fake: FakeSlack, tmp_path: Path) -> None:
        self.settings = Settings(SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET,  # type: ignore[call-arg]
                                 SLACK_API_URL=fake.api_url, BATON_CONFIG=str(tmp_path / "absent.yaml"))


async def _post_then_decide(fake: FakeSlack, tmp_path: Path, card: Approval) -> str:
    """The card posted, then edited to its decision, as the outbox hands them to the adapter."""
    adapter = SlackAdapter(_Baton(fake, tmp_path))
    adapter.client.session = aiohttp.ClientSession()
    where = Location(platform="slack", workspace="T1", channel=GENERAL, thread="1.000001")
    try:
        posted = await adapter.send(Delivery(id=1, kind="post", location=where, message=approval_card(card),
                                             target_user=None, target_message_id=None, attempts=1))
        assert posted is not None
        await adapter.send(Delivery(id=2, kind="update", location=where, message=approval_card(_decided(card)),
                                    target_user=None, target_message_id=posted, attempts=1))
    finally:
        await adapter.client.session.close()
    return posted


@pytest.mark.asyncio
async def test_deciding_a_card_with_long_details_attaches_them_once(fake_slack: FakeSlack, tmp_path: Path) -> None:
    """Details too long for the card (a plan to review) are attached as a file when the card is posted;
    the edit after the decision attached the same file to the thread a second time."""
    plan = "\n".join(f"  ~ resource {n}: {'x' * 60}" for n in range(300))
    await _post_then_decide(fake_slack, tmp_path, _approval(details={"plan": plan}))
    assert len(fake_slack.files) == 1
    (card,) = fake_slack.messages(GENERAL)
    assert card.edits == 1 and "Approved by" in shown_text(card) and "attached below as `output.txt`" in shown_text(card)


@pytest.mark.asyncio
async def test_deciding_a_card_too_long_for_one_message_edits_every_part(fake_slack: FakeSlack,
                                                                         tmp_path: Path) -> None:
    """A card over one Slack message is posted as several; the edit replaced only the first, so the
    Approve/Reject buttons stayed live on the second, and the rest of the decided card was posted anew."""
    summary = "\n".join(f"step {n}: {'y' * 90}" for n in range(150))  # ~15,000 characters
    await _post_then_decide(fake_slack, tmp_path, _approval(summary=summary))
    messages = fake_slack.messages(GENERAL)
    assert len(messages) == 2 and all(message.edits == 1 for message in messages)
    assert not any(buttons(message) for message in messages)
    assert "Approved by" in shown_text(messages[-1])


@pytest.mark.asyncio
async def test_a_decided_card_shorter_than_the_card_leaves_no_buttons_behind(fake_slack: FakeSlack,
                                                                            tmp_path: Path) -> None:
    """The buttons alone spilled over into a second Slack message; the decided card fits in one."""
    def messages(card: Approval) -> int:
        return len(slack_blocks.render(approval_card(card), lambda channel, ts: "").messages)

    card = next(card for size in range(11_600, 12_000, 10)
                if messages(card := _approval(summary="z" * size)) == 2 and messages(_decided(card)) == 1)
    await _post_then_decide(fake_slack, tmp_path, card)
    (decided,) = fake_slack.messages(GENERAL)
    assert decided.edits == 1 and not buttons(decided) and "Approved by" in shown_text(decided)


def test_a_rate_limited_start_waits_as_slack_says_instead_of_blaming_the_token(fake_slack: FakeSlack, start_baton,
                                                                                sqlite_url: str, counter: Path) -> None:
    """``apps.connections.open`` allows about one call a minute: a Socket Mode Baton restarted twice in a
    minute stopped with "Slack refused SLACK_APP_TOKEN (apps.connections.open: ratelimited)", and a 429 at
    ``auth.test`` with "Slack refused SLACK_BOT_TOKEN": the tokens were fine, Slack only asked to wait."""
    fake_slack.fail("auth.test", 429, retry_after=1)
    fake_slack.fail("apps.connections.open", 429, retry_after=1)
    baton = start_baton(sqlite_url, env=fake_slack.env(socket_mode=True))
    wait_for(lambda: fake_slack.socket_connections == 1, what="Baton's Socket Mode connection")
    opened = fake_slack.calls("apps.connections.open")
    assert [call.status for call in opened] == [429, 200] and opened[1].at - opened[0].at >= 0.9
    assert [call.status for call in fake_slack.calls("auth.test")] == [429, 200]
    log = baton.log.read_text()
    assert "Slack is rate-limiting auth.test; trying again in 1 s" in log and "refused" not in log
    sender = SlackSender(baton.url)
    event = sender.mention("run uptime", user=ALICE)
    fake_slack.send_envelope(json.loads(sender.event_body(event)))
    wait_for(lambda: fake_slack.find("did uptime", thread=event["ts"]), what="the reply")


def test_a_graph_s_long_title_or_link_label_is_split_not_refused() -> None:
    """A title or a link's label over 3,000 characters made Slack refuse the whole reply (``invalid_blocks``)."""
    url = "https://baton-test.slack.com/archives/C1/p12"
    title, label = "Deploy " + "t" * 3500, "l" * 3500
    message = Message(title=title, parts=[Text(text="hi"), ThreadLink(label=label, channel="C1", thread="1.2")])
    rendered = slack_blocks.render(message, lambda channel, ts: url)
    assert [check_message({"channel": GENERAL, **content}) for content in rendered.messages] == [""]
    texts = [block["text"]["text"] for block in rendered.messages[0]["blocks"]]
    assert "".join(text.strip("*") for text in texts[:2]) == title and texts[2] == "hi"
    assert texts[3].startswith(f"<{url}|l") and texts[3].endswith("l>")
    assert texts[3].removeprefix(f"<{url}|").removesuffix(">") + "".join(texts[4:]) == label


def test_output_slack_will_not_take_as_a_file_is_said_not_promised(slack: Slack, counter: Path) -> None:
    """A workspace that does not let the app upload files (an install from before ``files:write``, or
    uploads turned off by an admin): the reply said "the whole output is attached below" and no file
    came, the delivery was recorded as failed, and only the log said why."""
    slack.fake.fail("files.getUploadURLExternal", 200, error="missing_scope")
    event = slack.mention("run long")
    slack.reply("the whole output is attached below as `output.txt`", event["ts"], timeout=30)
    note = slack.reply("I could not attach `output.txt`", event["ts"], timeout=30)
    assert "missing_scope" in shown_text(note) and "files:write" in shown_text(note)
    wait_for(lambda: slack.rows("SELECT status FROM outbox") == [("sent",)], what="the row recorded sent")


def test_the_first_request_after_a_start_does_not_hang_on_a_second_sign_in(slack: Slack, counter: Path) -> None:
    """Bolt signed in again (``auth.test``) at the first request after each start: when Slack failed that
    call, the event was acknowledged and dropped, and a slash command was told "your installation with
    this app is no longer available. Please reinstall this app"."""
    slack.fake.fail("auth.test", 500, times=2)
    answer = slack.sender.command("run uptime", user=ALICE, channel=OPS)
    assert (answer.status_code, answer.text) == (200, "")
    event = slack.mention("run uptime")
    slack.reply("did uptime", event["ts"])
    anchor = slack.fake.find(f"<@{ALICE}> asked: `/baton run uptime`", channel=OPS)
    assert anchor is not None
    slack.reply("did uptime", anchor.ts, channel=OPS)
    assert [call.status for call in slack.fake.calls("auth.test")] == [200]  # the start's own


def test_refused_signatures_say_why_in_the_log_without_the_body(slack: Slack) -> None:
    """A wrong SLACK_SIGNING_SECRET, or this machine's clock off by more than 5 minutes, made every Slack
    request a 401 and Baton's log said nothing: Slack only showed failed deliveries."""
    wrong = SlackSender(slack.baton.url, signing_secret="not-the-secret")
    body = wrong.event_body(wrong.mention("secret body text", user=ALICE))
    assert wrong.post(body, "application/json").status_code == 401
    assert wrong.post(body, "application/json").status_code == 401  # a flood is one line, not one each
    late = slack.sender.mention("run uptime", user=ALICE)
    assert slack.sender.send_event(late, timestamp=int(time.time()) - 3600).status_code == 401
    log = wait_for(lambda: (text := slack.baton.log.read_text()).count("check the clock") and text,
                   what="the clock's line")
    assert log.count("signature does not match SLACK_SIGNING_SECRET") == 1
    assert re.search(r"signed 360\d s before this machine's clock", log) and "secret body text" not in log


def test_a_command_where_baton_may_never_post_is_not_told_to_try_again(slack: Slack) -> None:
    """``/baton`` in a read-only (announcement) channel: "please try again in a moment", which never helps."""
    slack.fake.fail("chat.postMessage", 200, error="restricted_action_read_only_channel")
    refused = slack.sender.command("run uptime", user=ALICE, channel=OPS).json()
    assert refused["response_type"] == "ephemeral" and "try again" not in refused["text"]
    assert "Slack does not let me post in this conversation (`restricted_action_read_only_channel`)" in refused["text"]
    slack.fake.fail("chat.postMessage", 429, retry_after=1)
    busy = slack.sender.command("run uptime", user=ALICE, channel=OPS).json()
    assert "please try again in a moment" in busy["text"]


def test_a_person_s_token_in_place_of_the_bot_s_stops_the_start(fake_slack: FakeSlack, start_baton,
                                                                 sqlite_url: str) -> None:
    """Slack's "OAuth & Permissions" page shows the User OAuth Token (xoxp-) above the bot's: with it Baton
    started, posted as that person, and ignored everything that person wrote (their own id was "the bot's")."""
    with pytest.raises(AssertionError, match=r"Baton cannot start: SLACK_BOT_TOKEN is not a bot token .*xoxb-"):
        start_baton(sqlite_url, name="user-token", env={**fake_slack.env(), "SLACK_BOT_TOKEN": USER_TOKEN})


def test_a_timestamp_too_large_for_a_clock_is_refused_politely(slack: Slack) -> None:
    """``X-Slack-Request-Timestamp: 999...9`` (400 digits) overflowed the clock's arithmetic: a 500 with a traceback."""
    body = slack.sender.event_body(slack.sender.mention("run uptime", user=ALICE))
    answer = slack.sender.post(body, "application/json", timestamp=int("9" * 400))
    assert answer.status_code == 401 and "Traceback" not in slack.baton.log.read_text()


def test_what_alerting_bots_post_is_read_for_a_summary() -> None:
    """Monitors and deploy bots post attachments, or a header and fields: their messages read as empty
    (``• B0PD: ``) in a thread's summary and in what the model was given."""
    attachments = {"bot_id": "B0PD", "text": "", "attachments": [
        {"color": "danger", "title": "Deploy 42 failed", "text": "web-2: exit 1", "fallback": "Deploy 42 failed"},
        {"fallback": "Runbook: https://x.io/rb"}]}
    assert slack_blocks.shown_text(attachments) == "Deploy 42 failed\nweb-2: exit 1\nRunbook: https://x.io/rb"
    header = {"bot_id": "B0PD", "text": "Incident", "blocks": [
        {"type": "header", "text": {"type": "plain_text", "text": "Incident #7"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": "*Service:* web"}, {"type": "mrkdwn", "text": "*Sev:* 2"}]},
        {"type": "image", "image_url": "https://x.io/graph.png", "alt_text": "graph"}, {"type": "section", "text": None}]}
    assert slack_blocks.shown_text(header) == "Incident #7\n*Service:* web\n*Sev:* 2"


def test_a_webhook_s_messages_are_summarised_under_its_name(slack: Slack, counter: Path) -> None:
    """An incoming webhook's message has no user, only a bot id: the summary said ``B0DATADOG: ...``."""
    event = slack.mention("run uptime")
    slack.fake.said(event)
    slack.reply("did uptime", event["ts"])
    alert = slack.sender.message("CPU above 90% on web-2", user=None, thread_ts=event["ts"], bot_id="B0DATADOG",
                                 subtype="bot_message", username="Datadog")
    slack.fake.said(alert)
    ask = slack.sender.mention("summarize", user=BOB, thread_ts=event["ts"])
    slack.fake.said(ask)
    assert slack.sender.send_event(ask).status_code == 200
    summary = shown_text(slack.reply("Extractive summary of this thread", event["ts"]))
    assert "• Datadog: CPU above 90% on web-2" in summary


def test_a_card_deleted_before_the_decision_is_posted_again_decided(slack, counter):
    """An admin deleted the card while it waited: the decision's edit got 'message_not_found' and was
    dropped as a failed delivery, so the thread never showed who approved, only the result."""
    event = slack.mention("run restart service=web")
    thread = event["ts"]
    card = slack.card(thread)
    slack.fake.delete(GENERAL, card.ts)
    assert slack.sender.click(card, user=BOB).status_code == 200
    slack.reply("did restart web", thread)
    decided = slack.reply(f"Approved by <@{BOB}> at", thread)
    assert decided.ts != card.ts and decided.thread_ts == thread and runs_in(counter) == ["restart web"]


def test_a_token_slack_refuses_while_baton_runs_is_named_by_healthz(slack, counter):
    """Slack refusing Baton's bot token while it runs (revoked, rotated, the app uninstalled) left /healthz at 200:
    requests still ran (events are signed with the signing secret), every reply waited unseen, and only a warning
    in the log said so. Once a message goes out again, /healthz is well again."""
    assert httpx.get(f"{slack.baton.url}/healthz").status_code == 200
    slack.fake.fail("chat.postMessage", 200, error="token_revoked", times=1)
    slack.mention("run uptime")
    wait_for(lambda: (rows := slack.rows("SELECT error FROM outbox")) and rows[0][0]
             and "refused Baton's token" in rows[0][0], what="the reply put off for the refused token")
    health = httpx.get(f"{slack.baton.url}/healthz")
    assert health.status_code == 503, health.json()
    said = health.json()["problems"]["slack"]
    assert "SLACK_BOT_TOKEN" in said and "replies are not posted" in said and "xoxb" not in said, said
    slack.reply("Here is what I can do", slack.mention("help")["ts"])  # the token works again: a reply goes out
    assert httpx.get(f"{slack.baton.url}/healthz").status_code == 200


def test_an_edit_adding_the_mention_to_a_message_in_a_baton_thread_is_a_request(slack, counter):
    """In a Baton thread, "help me out here" without the mention is people talking (no answer); edited by its
    writer to add the mention, Slack sends it as a mention of the same message, and it was dropped as a duplicate
    of itself: the README says such an edit is a request. A request taken, edited, is still not run again."""
    thread = slack.mention("run uptime")["ts"]
    slack.reply("did uptime", thread)
    plain = slack.sender.message("help me out here", user=ALICE, thread_ts=thread)
    assert slack.sender.send_event(plain).status_code == 200
    wait_for(lambda: ("conversation",) in slack.rows("SELECT outcome FROM inbound_events"), what="the talk passed over")
    edited = slack.sender.mention("help", user=ALICE, ts=plain["ts"], thread_ts=thread)
    edited["edited"] = {"user": ALICE, "ts": f"{float(plain['ts']) + 5:.6f}"}
    assert slack.sender.send_event(edited).status_code == 200
    slack.reply("Here is what I can do", thread)
    assert slack.sender.send_event(edited).status_code == 200  # Slack's retry of the edit: a duplicate
    asked = slack.mention("run uptime force", thread_ts=thread)  # a request taken, then edited: not run again
    wait_for(lambda: runs_in(counter) == ["uptime", "uptime"], what="the forced uptime")
    again = slack.sender.mention("run uptime force", user=ALICE, ts=asked["ts"], thread_ts=thread)
    again["edited"] = {"user": ALICE, "ts": f"{float(asked['ts']) + 5:.6f}"}
    assert slack.sender.send_event(again).status_code == 200
    wait_for(lambda: not slack.rows("SELECT 1 FROM inbound_events WHERE status = 'pending'"), what="all handled")
    assert runs_in(counter) == ["uptime", "uptime"]
    assert len(slack.rows("SELECT 1 FROM inbound_events WHERE event_id LIKE '%:mention-added'")) == 1
