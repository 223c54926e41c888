"""The parity hunt's proposals, decided: a new Discord card notifies who may decide it, a graph name no "Which one?"
card could carry is refused at start, and Slack's log says what becomes of a failed click or command."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import pytest
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from adapters import discord_render
from adapters.slack import SlackAdapter
from bot.messages import Buttons, Message, Text
from bot.registry import GraphError, GraphRegistry
from bot.settings import Settings
from storage.db import DatabaseHealth
from storage.models import new_token
from tests import fake_discord as discord_side
from tests.fake_discord import FakeDiscord
from tests.fake_slack import BOT_TOKEN, SIGNING_SECRET, TEAM_ID, FakeSlack, SlackSender
from tests.support import wait_for, write_config
from tests.test_discord import Discord, chat, fake_discord  # noqa: F401 (fixtures)
from tests.test_graph_modules import GOOD_GRAPH, package  # noqa: F401 (a fixture)
from tests.test_slack import ALICE as SLACK_ALICE, BOB as SLACK_BOB, fake_slack  # noqa: F401 (a fixture)

ALICE, BOB, CAROL = discord_side.ALICE, discord_side.BOB, discord_side.CAROL
MESSAGES = "POST /channels/{channel_id}/messages"
EDITS = "PATCH /channels/{channel_id}/messages/{message_id}"


@pytest.fixture
def config_path(tmp_path: Path, counter: Path) -> Path:
    """Approvers of every kind baton.yaml takes: Slack's (no Discord user), Discord's with and without its prefix,
    a plain name, and alice, who asks (``restart`` is high-risk: she may not approve her own)."""
    return write_config(tmp_path, counter, approvers=["slack:U0BOB00002", f"discord:{BOB}", CAROL, "dave", ALICE])


def test_on_discord_a_new_card_notifies_who_may_decide_it_once_and_its_edit_nobody(
        chat: Discord, fake_discord: FakeDiscord) -> None:  # noqa: F811
    """On Slack a card's "approvers: @bob" is a mention that notifies bob; on Discord a card is an embed, where a
    mention notifies nobody, and every message went with ``allowed_mentions`` none: bob learnt of the card only by
    reading the channel. The new card's line of content names bob and carol (not alice, who asked, not Slack's bob
    nor "dave"), and Discord may notify them and nobody else; the edit after the decision notifies nobody and
    drops that line."""
    thread = fake_discord.say("run restart service=web", user=ALICE)["id"]
    card = chat.card(thread)
    assert card.content == f"<@{BOB}> <@{CAROL}>: this waits for your decision"
    (posted,) = [call for call in fake_discord.calls(MESSAGES) if call.path.endswith(f"/channels/{thread}/messages")
                 and call.body.get("components")]
    mentions = posted.body["allowed_mentions"]
    assert mentions["parse"] == [] and [str(user) for user in mentions["users"]] == [BOB, CAROL], mentions
    assert not mentions.get("roles") and not mentions.get("replied_user")
    assert card.embeds[0]["title"] == "Approval needed"  # the card itself is as it was

    fake_discord.click(card, user=BOB)
    decided = wait_for(lambda: (message := fake_discord.message(card.id)) is not None and message.edits
                       and "Approved by" in discord_side.shown_text(message) and message, what="the card edited")
    assert decided.content == "" and not discord_side.buttons(decided)
    (edit,) = [call for call in fake_discord.calls(EDITS) if call.path.endswith(f"/messages/{card.id}")]
    assert edit.body["content"] is None and edit.body["allowed_mentions"] == {"parse": []}, edit.body
    others = [call for call in fake_discord.calls() if call is not posted and isinstance(call.body, dict)
              and ("content" in call.body or "embeds" in call.body)]
    assert others and all(call.body.get("allowed_mentions", {}).get("parse") == [] and
                          not call.body.get("allowed_mentions", {}).get("users") for call in others), \
        [(call.route, call.body.get("allowed_mentions")) for call in others]


@pytest.mark.parametrize(("risk", "deciders", "pinged"), [
    ("low", ["alice", "slack:U0BOB00002", f"discord:{BOB}", BOB, CAROL, "123"], [BOB, CAROL]),  # each once
    ("high", ["alice", "slack:U0BOB00002"], []),  # nobody Discord can name: no line, nobody pinged
])
def test_on_discord_a_card_pings_only_its_deciders_that_are_discord_users(risk: str, deciders: list[str],
                                                                        pinged: list[str]) -> None:
    card = Message(title="Approval needed", tone="approval", parts=[
        Text(text=f"Restart web ({risk} risk)?"), Buttons(approval_id=new_token(), deciders=deciders)])
    (outgoing,) = discord_render.render(card, discord_side.GUILD_ID)
    assert outgoing.pinged == pinged
    assert outgoing.content == (f"{' '.join(f'<@{user}>' for user in pinged)}: this waits for your decision"
                                if pinged else None)
    decided = Message(title="Approved", tone="success", parts=[Text(text="Restart web?")], people=deciders)
    assert [(o.content, o.pinged) for o in discord_render.render(decided, discord_side.GUILD_ID)] == [(None, [])]


@pytest.mark.parametrize(("module", "refused"), [
    ("a" * 64, False),
    ("a" * 65, True),  # InboundClick.action holds 64 characters, and Slack's click handler drops a longer choice
    ("é" * 28 + "a", False),  # 57 bytes of UTF-8
    ("é" * 29, True),  # 58 bytes: Discord's custom_id cannot carry it
])
def test_a_graph_whose_name_no_which_one_card_can_carry_is_refused_at_start(package, module: str,  # noqa: F811
                                                                           refused: bool) -> None:
    """A "Which one?" card whose options included such a graph was refused whole by the Discord adapter
    (``custom_id()`` raised), and the run waited for a card nobody saw until it expired."""
    name = package({module: GOOD_GRAPH})
    if refused:
        with pytest.raises(GraphError, match=rf"{name}\.{module} \(.*{module}\.py\): a graph's name is what its button "
                                             r"on a \"Which one\?\" card sends back, which holds 64 characters, or 57 "
                                             r"bytes of UTF-8 .*name the module shorter"):
            GraphRegistry.discover(name)
        return
    assert GraphRegistry.discover(name).names() == [module]
    assert discord_render.option_value(discord_render.custom_id(module, new_token()).split(":")[1]) == module


def _signed(adapter: SlackAdapter, body: str, content_type: str) -> AsyncBoltRequest:
    stamp = str(int(time.time()))
    signature = SignatureVerifier(SIGNING_SECRET).generate_signature(timestamp=stamp, body=body)
    return AsyncBoltRequest(body=body, headers={"content-type": content_type, "x-slack-request-timestamp": stamp,
                                                "x-slack-signature": signature})


@pytest.mark.asyncio
async def test_slacks_log_says_a_failed_click_or_command_is_lost_and_only_an_event_comes_again(
        fake_slack: FakeSlack, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """Slack sends an event again until it is acknowledged, but a click (block_actions) and a slash command
    once: the log said "Slack will retry it" of every failure, so whoever read it waited for a click to come
    again that never would."""

    class FailingBaton:
        settings = Settings(SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET,  # type: ignore[call-arg]
                            SLACK_API_URL=fake_slack.api_url, BATON_CONFIG=str(tmp_path / "absent.yaml"))
        db = SimpleNamespace(health=DatabaseHealth("sqlite:///absent.db"))  # a bug, not the database away

        async def accept_message(self, message: Any) -> Any:
            raise RuntimeError("a bug")

        async def accept_click(self, click: Any) -> Any:
            raise RuntimeError("a bug")

        async def event_received(self, platform: str, event_id: str) -> bool:
            raise RuntimeError("a bug")

    adapter = SlackAdapter(FailingBaton())
    sender = SlackSender("http://unused")
    click = {"type": "block_actions", "user": {"id": SLACK_BOB}, "team": {"id": TEAM_ID}, "trigger_id": "1.2",
             "channel": {"id": "C0GENERAL1"}, "container": {"type": "message", "message_ts": "1.1"},
             "message": {"ts": "1.1"}, "actions": [{"action_id": "baton:approve", "value": new_token(),
                                                    "type": "button", "action_ts": "1.3"}]}
    requests = [
        ("a click", urlencode({"payload": json.dumps(click)}), "application/x-www-form-urlencoded",
         "Slack sends a click once, so it is lost: the person sees a warning sign beside the button"),
        ("a slash command", sender.command_body("run uptime", user=SLACK_ALICE), "application/x-www-form-urlencoded",
         "Slack sends a command once, so it is lost: the person is told it failed"),
        ("an event", sender.event_body(sender.mention("run uptime", user=SLACK_ALICE)), "application/json",
         "Slack will retry it"),
    ]
    for what, body, content_type, then in requests:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="baton.slack"):
            response = await adapter.bolt.async_dispatch(_signed(adapter, body, content_type))
        assert response.status == 500
        (logged,) = [record for record in caplog.records if record.name == "baton.slack"]
        assert logged.getMessage().startswith(f"Slack: handling {what} failed; {then}"), logged.getMessage()
        assert ("retry" in logged.getMessage()) == (what == "an event")
