"""The parity hunt's proposals, decided: a new Discord card notifies who may decide it, a graph name no "Which one?"
card could carry is refused at start, and Slack's log says what becomes of a failed click or command."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters import discord_render
from bot.messages import Buttons, Message, Text
from bot.registry import GraphError, GraphRegistry
from storage.models import new_token
from tests import fake_discord as discord_side
from tests.fake_discord import FakeDiscord
from tests.support import wait_for, write_config
from tests.test_discord import Discord, chat, fake_discord  # noqa: F401 (fixtures)
from tests.test_graph_modules import GOOD_GRAPH, package  # noqa: F401 (a fixture)

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
