"""Who is a person in Baton's messages: the core marks the ids it writes as people (``Message.people``), and the
Slack and Discord renderers make mentions of those only. A word merely shaped like an id stays as written: a
Windows host ``WEBPROD01`` or an inventory name ``USEAST1DB02`` was ``<@WEBPROD01>`` on Slack (a mention of
nobody), an order id ``123456789012345678`` was ``<@123...>`` on Discord ("@unknown-user")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from adapters import discord_render, slack_blocks
from bot.messages import Location, Message
from bot.outbox import Outbox
from storage.db import Database
from storage.models import OutboxMessage
from tests import fake_discord as discord_side
from tests.fake_discord import FakeDiscord
from tests.fake_slack import FakeSlack, buttons, shown_text
from tests.support import runs_in, wait_for, write_config
from tests.test_discord import Discord, chat, fake_discord  # noqa: F401 (fixtures)
from tests.test_discord_hunt import adapter, delivery  # noqa: F401 (a fixture)
from tests.test_slack import ALICE, BOB, CAROL, GENERAL, Slack, fake_slack, slack  # noqa: F401 (fixtures)
from tests.test_slack_hunt4 import _post

# A card as a Baton from before ``people`` stored it in the outbox: no ``people`` key.
OLD_CARD = {"title": "Approval needed", "tone": "approval", "parts": [
    {"kind": "text", "text": "Restart IIS on WEBPROD01 (order 123456789012345678)?"},
    {"kind": "note", "text": f"Requested by {ALICE} · risk high · approvers: slack:{BOB}"}]}


@pytest.fixture
def config_path(tmp_path: Path, counter: Path) -> Path:
    """The usual runbooks; approvers named by their Slack and their Discord ids, prefixed and bare."""
    path = write_config(tmp_path, counter, approvers=[f"slack:{BOB}", ALICE,
                                                      f"discord:{discord_side.BOB}", discord_side.ALICE])
    path.write_text(path.read_text().replace("runbooks:\n", f"""runbooks:
  deploy:
    description: Deploys; only Carol approves it.
    command: ["true"]
    risk: high
    approvers: ["{CAROL}"]
    timeout: 10
""", 1))
    return path


def test_on_slack_the_card_mentions_who_asked_and_decided_and_a_host_named_like_an_id_stays_plain(
        slack: Slack, counter: Path) -> None:  # noqa: F811
    thread = slack.mention("run restart service=web")["ts"]  # asked by ALICE
    card = slack.card(thread)
    assert f"Requested by <@{ALICE}>" in shown_text(card)
    assert slack.sender.click(card, user=BOB).status_code == 200
    slack.reply("did restart web", thread)
    edited = wait_for(lambda: (m := slack.fake.message(GENERAL, card.ts)) and m.edits and m, what="the card edit")
    assert not buttons(edited) and f"Approved by <@{BOB}> at" in shown_text(edited)
    assert runs_in(counter) == ["restart web"]

    # Someone says in the thread what they did (naming a host and a colleague); the summary quotes them.
    said = slack.sender.message(f"WEBPROD01 and USEAST1DB02 are back, thanks <@{CAROL}>", user=ALICE, thread_ts=thread)
    slack.fake.said(said)
    ask = slack.sender.mention("summarize", user=BOB, thread_ts=thread)
    slack.fake.said(ask)
    assert slack.sender.send_event(ask).status_code == 200
    summary = shown_text(slack.reply("Extractive summary of this thread", thread))
    # Its writer is a person (Baton read them as the message's author), as is whom they mentioned; the hosts are not.
    assert summary.split("\n")[-1] == f"• <@{ALICE}>: WEBPROD01 and USEAST1DB02 are back, thanks <@{CAROL}>"

    # Who set a digest schedule, and who asked for a digest, are people too.
    made = slack.mention("digest daily 09:00 Europe/Paris", user=CAROL)["ts"]
    slack.reply("Digest scheduled daily", made)
    listed = slack.mention("digest list", user=BOB)["ts"]
    assert f"(set by <@{CAROL}>)" in shown_text(slack.reply("daily at 09:00 Europe/Paris", listed))
    now = slack.mention("digest now", user=BOB)["ts"]
    assert f"Digest asked for by <@{BOB}>." in shown_text(slack.reply("asked for by", now))


def test_on_slack_status_mentions_whom_another_thread_waits_for(slack: Slack) -> None:  # noqa: F811
    """``status`` names the approvers other threads' cards wait for: people, though the graph read them from
    Baton's own records (``channel_activity``), not from a message's author."""
    waiting = slack.mention("run deploy", user=ALICE)["ts"]
    slack.card(waiting)  # waits for CAROL, the runbook's own approver (no approver of status, nor who asks it)
    asked = slack.mention("status", user=BOB)["ts"]
    shown = shown_text(slack.reply("waiting for approval", asked))
    assert f"for <@{CAROL}>" in shown, shown


def test_on_discord_the_card_mentions_who_asked_and_decided_and_an_order_id_stays_a_number(
        chat: Discord, fake_discord: FakeDiscord) -> None:  # noqa: F811
    alice, bob, carol = discord_side.ALICE, discord_side.BOB, discord_side.CAROL
    thread = fake_discord.say("run restart service=web")["id"]  # asked by alice
    card = chat.card(thread)
    assert f"Requested by <@{alice}>" in card.embeds[0]["description"]
    fake_discord.click(card, user=bob)
    chat.reply("did restart web", thread)
    edited = wait_for(lambda: (m := fake_discord.message(card.id)) and m.edits and m, what="the card edit")
    assert f"Approved by <@{bob}> at" in edited.embeds[0]["description"]

    fake_discord.say(f"thanks <@{carol}>, order 123456789012345678 is refunded", user=alice, channel=thread,
                     mention=False)
    fake_discord.say("summarize", user=carol, channel=thread)
    summary = discord_side.shown_text(chat.reply("Extractive summary of this thread", thread))
    assert summary.split("\n")[-1] == f"• <@{alice}>: thanks <@{carol}>, order 123456789012345678 is refunded"


@pytest.mark.asyncio
async def test_a_card_stored_without_people_is_read_and_shown_with_no_id_made_a_mention(
        database: Database, fake_slack: FakeSlack, tmp_path: Path) -> None:  # noqa: F811
    """A row an older Baton stored (or one stored just before an upgrade) has no ``people``: it is read, and its
    ids are shown as written (a host is no mention; ``slack:U...`` names a person whatever the row says)."""
    outbox = Outbox(database, worker="me")
    where = Location(platform="slack", workspace="T1", channel=GENERAL, thread="1.000001")
    async with database.session() as session:
        await outbox.enqueue(session, where, Message(people=[ALICE]))
        await session.exec(update(OutboxMessage).values(payload=json.loads(json.dumps(OLD_CARD))))  # type: ignore[arg-type]
    (claimed,) = await outbox.claim("slack", "me")
    assert claimed.message.people == []
    (posted,) = await _post(fake_slack, tmp_path, claimed.message)
    assert shown_text(posted).split("\n")[1:] == [
        "Restart IIS on WEBPROD01 (order 123456789012345678)?",
        f"Requested by {ALICE} · risk high · approvers: <@{BOB}>"]
    (discord,) = discord_render.render(claimed.message, discord_side.GUILD_ID)
    assert "order 123456789012345678)" in discord.embed.description and "<@" not in discord.embed.description


@pytest.mark.asyncio
async def test_the_people_of_a_message_are_stored_with_it_for_a_later_or_another_replica(database: Database) -> None:
    """Who a card names is in the outbox row, not in the memory of the process that built it: rendered after a
    restart or by another replica, the card still mentions them, and a host in it is still no mention."""
    outbox = Outbox(database, worker="me")
    where = Location(platform="slack", workspace="T1", channel=GENERAL, thread="1.000001")
    card = Message.text(f"Restart IIS on WEBPROD01 for {ALICE}?", tone="approval").naming(ALICE, f"slack:{BOB}", None)
    async with database.session() as session:
        await outbox.enqueue(session, where, card)
    (claimed,) = await Outbox(database, worker="another").claim("slack", "another")
    assert claimed.message.people == [ALICE, f"slack:{BOB}"]
    (rendered,) = slack_blocks.render(claimed.message, lambda channel, ts: "").messages
    assert rendered["blocks"][0]["text"]["text"] == f":raised_hand: Restart IIS on WEBPROD01 for <@{ALICE}>?"


@pytest.mark.asyncio
async def test_on_discord_an_order_id_in_a_reply_stays_a_number_and_the_people_it_names_are_mentions(
        fake_discord: FakeDiscord, adapter: Any) -> None:  # noqa: F811
    alice, bob = discord_side.ALICE, discord_side.BOB
    message = Message.text(f"Order 123456789012345678 refunded for {alice}; approved by discord:{bob}.").naming(alice)
    await adapter.send(delivery(1, message))
    (sent,) = fake_discord.messages(discord_side.GENERAL)
    assert sent.content == f"Order 123456789012345678 refunded for <@{alice}>; approved by <@{bob}>."
