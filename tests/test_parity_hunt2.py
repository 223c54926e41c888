"""Today's features on Slack and Discord through the fakes (the second parity hunt): a busy thread's asides, the
cards of LangChain agents' tool reviews and of LangGraph's question dicts, and who a new card pings on Discord.

The defects, both on Discord, where only an interaction's reply can be ephemeral: a reply meant for the writer of a
message alone (a typed ``approve`` at a card, a refused ``cancel``) comes as a direct message, which opened "about
your click in <thread>:" for a click never made; and ``/baton approve`` written in the thread was answered so too,
though its own interaction could carry the answer as an ephemeral follow-up there. The rest worked, and is pinned.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import TypedDict

import discord
import pytest
from langgraph.graph import START, StateGraph
from langgraph.types import interrupt
from sqlmodel import select

from adapters import slack_blocks
from adapters.discord_adapter import DiscordAdapter
from bot.messages import Location, Message
from bot.outbox import Delivery
from bot.registry import GraphSpec
from bot.settings import Settings
from storage.models import OutboxMessage
from tests import fake_discord as discord_side
from tests.fake_discord import ALICE, BOB, CAROL, EPHEMERAL, GENERAL, GUILD_ID, TOKEN, FakeDiscord
from tests.fake_slack import check_message
from tests.support import runs_in, slow_release, wait_for, write_config
from tests.test_discord import Discord, chat, fake_discord  # noqa: F401 (fixtures)
from tests.test_graph_authoring_hunt2 import _waiting_card
from tests.test_graph_modules import _asked
from tests.test_slack import ALICE as SLACK_ALICE, BOB as SLACK_BOB, CAROL as SLACK_CAROL, Slack
from tests.test_slack import fake_slack, slack  # noqa: F401 (fixtures)
from tests.test_tool_review import _agent

MESSAGES = "POST /channels/{channel_id}/messages"
POINTER = "A typed `approve` decides nothing: use the Approve or Reject button on the approval card above"


@pytest.fixture
def config_path(tmp_path: Path, counter: Path) -> Path:
    """alice asks (``restart`` is high-risk), bob approves on both platforms; the graphs of the card tests have
    policies of their own: Discord users with and without the prefix, one of Slack's, a plain name."""
    path = write_config(tmp_path, counter, approvers=[f"discord:{BOB}", ALICE, f"slack:{SLACK_BOB}", SLACK_ALICE])
    path.write_text(path.read_text() + f"""
graphs:
  agent:
    approvers: ["discord:{BOB}", {CAROL}, "slack:{SLACK_BOB}", "dave"]
  ask:
    approvers: [{CAROL}]
    risk: low
""")
    return path


# -- asides in a thread waiting at a card ----------------------------------------------------------------------------

def test_on_discord_the_asides_are_answered_at_a_card_and_a_typed_approve_privately(
        chat: Discord, fake_discord: FakeDiscord, counter: Path) -> None:  # noqa: F811
    """Status and help are answered in the thread while the card waits; a typed ``approve`` (no mention: Discord
    sends its text with the Message Content Intent) and a refused ``cancel`` go to carol alone, as a direct
    message, which said "about your click in <thread>" although carol had clicked nothing."""
    thread = fake_discord.say("run restart service=web", user=ALICE)["id"]
    card = chat.card(thread)
    fake_discord.say("status", user=CAROL, channel=thread)
    status = chat.reply("Status: 1 active thread", thread)
    assert "waiting for approval" in discord_side.shown_text(status)
    fake_discord.say("help", user=CAROL, channel=thread, mention=False)
    chat.reply("Here is what I can do", thread)

    fake_discord.say("approve", user=CAROL, channel=thread, mention=False)
    direct = fake_discord.direct_channel(CAROL)
    told = chat.reply(POINTER, direct)
    link = f"https://discord.com/channels/{GUILD_ID}/{thread}"
    assert told.content.startswith(f"<@{CAROL}>, in reply to you in {link}:\n"), told.content
    assert "It is waiting for <@" in told.content and f"<@{BOB}>" in told.content, told.content
    fake_discord.say("cancel", user=CAROL, channel=thread, mention=False)
    refused = chat.reply("can cancel this run. It goes on.", direct)
    assert refused.content.startswith(f"⚠️ <@{CAROL}>, in reply to you in {link}:\n"), refused.content
    assert not any("click" in message.content for message in fake_discord.messages(direct))
    shown = [discord_side.shown_text(message) for message in fake_discord.messages(thread)]
    assert not any(POINTER in text or "can cancel this run" in text for text in shown), shown  # carol's alone
    assert discord_side.buttons(fake_discord.message(card.id)) and runs_in(counter) == []  # typed text decided nothing
    wait_for(lambda: chat.rows("SELECT count(*) FROM inbound_events WHERE status = 'pending'") == [(0,)],
             what="every event handled")


def test_on_discord_a_slash_approve_in_the_thread_is_answered_ephemerally_as_on_slack(
        chat: Discord, fake_discord: FakeDiscord) -> None:  # noqa: F811
    """``/baton approve`` written in the thread: the pointer went as a direct message beside the public "@carol
    asked" echo, though the command's own interaction could carry it as an ephemeral follow-up, as a click's
    refusal goes (and as Slack shows it: an ephemeral message in the thread)."""
    thread = fake_discord.say("run restart service=web", user=ALICE)["id"]
    chat.card(thread)
    asked = fake_discord.slash("approve", user=CAROL, channel=thread)
    told = chat.reply(POINTER, thread)
    assert told.ephemeral_to == CAROL and told.flags & EPHEMERAL and told.interaction_id == asked["id"], told
    assert not fake_discord.messages(fake_discord.direct_channel(CAROL))
    assert chat.reply(f"<@{CAROL}> asked: `/baton approve`", thread).ephemeral_to is None


def test_on_slack_the_asides_are_answered_at_a_card_and_a_typed_approve_ephemerally(
        slack: Slack, counter: Path) -> None:  # noqa: F811
    """Pinned: messages in a thread without a mention reach Baton (``message`` events), and what is for carol
    alone is an ephemeral message in the thread."""
    thread = slack.mention("run restart service=web", user=SLACK_ALICE)["ts"]
    card = slack.card(thread)
    slack.mention("status", user=SLACK_CAROL, thread_ts=thread)
    assert slack.reply("Status: 1 active thread", thread).ephemeral_to is None
    for text in ("help", "approve", "cancel"):
        assert slack.sender.send_event(slack.sender.message(text, user=SLACK_CAROL, thread_ts=thread)).status_code \
            == 200
    assert slack.reply("Here is what I can do", thread).ephemeral_to is None
    told = slack.reply(POINTER, thread)
    assert told.ephemeral_to == SLACK_CAROL and told.thread_ts == thread
    assert f"<@{SLACK_BOB}>" in told.text, told.text
    assert slack.reply("can cancel this run. It goes on.", thread).ephemeral_to == SLACK_CAROL
    assert runs_in(counter) == [] and slack.fake.message(card.channel, card.ts).blocks[-1]["type"] == "actions"



# -- asides beside a running run -------------------------------------------------------------------------------------

NOTHING_WAITS = "Nothing in this thread waits for a decision now, so a typed `approve` changes nothing."


def test_on_slack_the_asides_beside_a_running_run_are_answered_at_once_a_typed_approve_ephemerally(
        slack: Slack, counter: Path) -> None:  # noqa: F811
    """While a command runs, ``status`` is answered in the thread and a typed ``approve`` to carol alone, at once
    (they waited for the command's end, told "Queued: ..."); the run goes on to its end."""
    thread = slack.mention("run slow seconds=9.9", user=SLACK_ALICE)["ts"]
    wait_for(lambda: slack.rows("SELECT status FROM runs") == [("running",)], what="the command to run")
    slack.mention("status", user=SLACK_CAROL, thread_ts=thread)
    status = slack.reply("Status: 1 active thread", thread)
    assert status.ephemeral_to is None and "running (asked by" in json.dumps(status.blocks), status.blocks
    assert slack.sender.send_event(slack.sender.message("approve", user=SLACK_CAROL, thread_ts=thread)).status_code \
        == 200
    told = slack.reply(NOTHING_WAITS, thread)
    assert told.ephemeral_to == SLACK_CAROL and told.thread_ts == thread
    assert slack.rows("SELECT status FROM runs") == [("running",)]  # answered beside it
    slow_release(counter).touch()
    slack.reply("slept", thread)
    assert not any("Queued" in message.text for message in slack.fake.messages(thread=thread))


def test_on_discord_the_asides_beside_a_running_run_are_answered_at_once_a_typed_approve_privately(
        chat: Discord, fake_discord: FakeDiscord, counter: Path) -> None:  # noqa: F811
    thread = fake_discord.say("run slow seconds=9.9", user=ALICE)["id"]
    wait_for(lambda: chat.rows("SELECT status FROM runs") == [("running",)], what="the command to run")
    fake_discord.say("status", user=CAROL, channel=thread)
    assert "running" in discord_side.shown_text(chat.reply("Status: 1 active thread", thread))
    fake_discord.say("approve", user=CAROL, channel=thread, mention=False)
    chat.reply(NOTHING_WAITS, fake_discord.direct_channel(CAROL))  # a message's private reply: a direct message
    assert chat.rows("SELECT status FROM runs") == [("running",)]
    slow_release(counter).touch()
    chat.reply("slept", thread)
    shown = [discord_side.shown_text(message) for message in fake_discord.messages(thread)]
    assert not any("Queued" in text or NOTHING_WAITS in text for text in shown), shown


# -- the cards of tool reviews and question dicts, on both platforms -------------------------------------------------

LOUD = "web @here <!channel> @everyone\n<@&1100000000000000004> <@1100000000000000101> x"


class _State(TypedDict, total=False):
    text: str
    reply: str


def _asking() -> StateGraph:
    def ask(_state: _State) -> _State:
        said = interrupt({"question": "Deploy <!here> @everyone?", "release": {"web": 42, "by": "@everyone"},
                          "note": LOUD})
        return {"reply": str(said)}

    graph = StateGraph(_State)
    graph.add_node("ask", ask)
    graph.add_edge(START, "ask")
    return graph


async def _card_message(tmp_path: Path, config_path: Path, kind: str) -> Message:
    """The card the core posts for the ``agent`` graph's tool review or the ``ask`` graph's question dict."""
    graph = (_agent(tmp_path, [{"name": "restart", "args": {"service": LOUD, "count": 2}, "id": "c1"}], [],
                    interrupt_on={"restart": True}) if kind == "agent" else _asking())
    async with _asked(tmp_path, config_path, GraphSpec(name=kind, graph=graph), f"{kind} restart web") as baton:
        await _waiting_card(baton, 1)
        async with baton.db.read() as session:
            rows = (await session.exec(select(OutboxMessage))).all()
    (card,) = [Message.model_validate(row.payload) for row in rows if row.payload.get("title") == "Approval needed"]
    return card


@pytest.mark.parametrize(("kind", "pinged", "details"), [
    ("agent", [BOB, CAROL], ["service: web @here <!channel> @everyone", "count: 2"]),
    ("ask", [CAROL], ['release: {"web": 42, "by": "@everyone"}', "note: web @here <!channel> @everyone"]),
])
async def test_review_and_question_cards_ping_the_graphs_approvers_and_nobody_their_arguments_name(
        tmp_path: Path, config_path: Path, fake_discord: FakeDiscord, monkeypatch: pytest.MonkeyPatch, kind: str,
        pinged: list[str], details: list[str]) -> None:  # noqa: F811
    """Pinned: the card's details are one argument a line in a code block; on Discord the line above the embed
    pings the graph's approvers that are Discord users (baton.yaml's ``graphs.<name>``) and Discord may notify
    them alone; on Slack every ``<`` of an argument is escaped, so ``<!channel>`` is text, and the blocks are
    within Slack's limits."""
    card = await _card_message(tmp_path, config_path, kind)
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)  # the adapter sets it process-wide
    adapter = DiscordAdapter(SimpleNamespace(settings=Settings(  # type: ignore[arg-type,call-arg]
        DISCORD_TOKEN=TOKEN, DISCORD_API_URL=fake_discord.api_url, BATON_ADAPTERS="discord")))
    await adapter.client.login(TOKEN)
    try:
        here = Location(platform="discord", workspace=GUILD_ID, channel=GENERAL, thread=GENERAL)
        await adapter.send(Delivery(1, "post", here, card, None, None, 1))
    finally:
        await adapter.client.close()
    (posted,) = fake_discord.messages(GENERAL)
    assert posted.content == f"{' '.join(f'<@{user}>' for user in pinged)}: this waits for your decision"
    (call,) = fake_discord.calls(MESSAGES)
    assert call.body["allowed_mentions"] == {"parse": [], "users": [int(user) for user in pinged]}, call.body
    description = posted.embeds[0]["description"]
    code = description.split("```\n", 1)[1].split("\n```", 1)[0].split("\n")
    assert all(line in code for line in details), code

    for sent in slack_blocks.render(card, lambda channel, ts: f"https://slack.example/{channel}/{ts}").messages:
        assert check_message({"channel": "C0GENERAL1", "blocks": json.dumps(sent["blocks"]), "text": sent["text"]}) \
            == ""
        texts = [json.dumps(block) for block in sent["blocks"]] + [sent["text"]]
        assert not any("<!" in text or "<@&" in text for text in texts), texts
        fenced = next(block["text"]["text"] for block in sent["blocks"] if block["text"]["text"].startswith("```"))
        assert "@here &lt;!channel&gt; @everyone" in fenced, fenced
