"""The Discord adapter, second hunt: what a Discord team meets beyond the first pass (a long first
progress message, files over Discord's upload limit, cards in archived threads)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from types import SimpleNamespace

import discord
import pytest

from adapters.discord_adapter import DiscordAdapter
from adapters.discord_render import UPLOAD_BYTES
from bot.messages import Code, Image, Location, Message, Text
from bot.outbox import Delivery
from bot.settings import Settings
from tests.fake_discord import ALICE, BOB, GENERAL, GUILD_ID, OPS, OTHER_CHANNEL, STRANGER, TOKEN, VOICE, FakeDiscord
from tests.support import runs_in, wait_for
from tests.test_discord import chat, config_path, fake_discord  # noqa: F401 (fixtures)

HERE = Location(platform="discord", workspace=GUILD_ID, channel=GENERAL, thread=GENERAL)


@pytest.fixture
async def adapter(fake_discord: FakeDiscord, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DiscordAdapter]:
    """The adapter signed in to the fake over REST (no gateway: ``send`` needs none)."""
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)  # the adapter sets it process-wide
    settings = Settings(DISCORD_TOKEN=TOKEN, DISCORD_API_URL=fake_discord.api_url,  # type: ignore[call-arg]
                        BATON_ADAPTERS="discord")
    adapter = DiscordAdapter(SimpleNamespace(settings=settings))  # type: ignore[arg-type]
    await adapter.client.login(TOKEN)
    yield adapter
    await adapter.client.close()


def delivery(number: int, message: Message, kind: str = "post", target: str | None = None) -> Delivery:
    return Delivery(number, kind, HERE, message, None, target, 1)


async def test_a_first_progress_message_too_long_for_one_message_is_edited_whole(fake_discord, adapter):
    """A run's first progress line took more than 2,000 characters: it was posted as two messages,
    and the next step's edit changed only the first, so the second went on showing the old text."""
    first = "step 1: " + "collecting " * 300  # ~3,300 characters
    posted = await adapter.send(delivery(1, Message.text(first, tone="progress")))
    await adapter.send(delivery(2, Message.text(f"{first}\nstep 2: done", tone="progress"), "update", posted))
    (message,) = fake_discord.messages(GENERAL)
    assert message.id == posted and message.edits == 1 and message.content.startswith("⏳ step 1: collecting")
    assert message.files["message.txt"].decode() == f"{first}\nstep 2: done"


async def test_files_over_discords_upload_limit_are_cut_not_refused(fake_discord, adapter):
    """A graph's reply with 12 MB of output (or a 9 MB chart) made Discord answer 413: the reply
    was refused for good and the thread never heard of the result. The attachment now holds the
    first lines that fit in Discord's limit, and says so; a picture too big is named, not sent."""
    lines = [f"line {n}: " + "x" * 90 for n in range(120_000)]  # ~12 MB
    output = "\n".join(lines)
    chart = Image(alt="Latency chart", data=base64.b64encode(b"<svg>" + b" " * (9 * 1024 * 1024)).decode())
    await adapter.send(delivery(1, Message(tone="success", parts=[Text(text="done"), Code(text=output), chart])))
    sent = fake_discord.messages(GENERAL)
    assert all(sum(len(data) for data in m.files.values()) <= UPLOAD_BYTES for m in sent)
    attached = next(m.files["output.txt"] for m in sent if "output.txt" in m.files).decode()
    assert output.startswith(attached) and attached.endswith("\n") and len(attached) > UPLOAD_BYTES - 200
    kept = attached.count("\n")
    text = "\n".join(m.content for m in sent)
    assert f"the first {kept:,} lines of it are attached as `output.txt`" in text
    assert "Latency chart: not attached" in text and "chart.svg" not in [f for m in sent for f in m.files]


def test_a_card_in_a_thread_that_archived_meanwhile_is_still_updated_after_the_decision(chat, counter):
    """A card waited longer than its thread stays open (a person's thread archives after an hour of
    quiet; a moderator may close a forum post): Discord refuses edits in an archived thread (50083),
    so the decision left the card showing "Approval needed" and its buttons for good, while the
    result came below it (a new message opens the thread again, an edit does not)."""
    fake = chat.fake
    thread = fake.say("run restart service=web")["id"]
    card = chat.card(thread)
    fake.archive(thread)
    fake.click(card, user=BOB)
    chat.reply("did restart web", thread)
    edited = wait_for(lambda: (m := fake.message(card.id)) and m.edits and m, what="the card edit")
    assert edited.components == [] and edited.embeds[0]["title"] == "Approved"
    assert runs_in(counter) == ["restart web"] and not fake.archived(thread)
    wait_for(lambda: chat.rows("SELECT count(*) FROM outbox WHERE status != 'sent'") == [(0,)],
             what="every message to be sent")



def test_bidi_controls_in_a_slash_request_do_not_disguise_its_echo_or_thread(chat, counter):
    """The echo "@you asked: `/baton ...`" and the thread's name showed a request's bidi controls as
    they are, so `upt\u202eime` read as "uptemi" there: what the channel saw was not what was asked
    (Baton's own replies quote with ``quoted``, which shows them as U+FFFD). The request itself is
    handed in as it was written."""
    fake = chat.fake
    command = fake.slash("run upt\u202eime\u2066 now", channel=OPS)
    echo = wait_for(lambda: next((m for m in fake.messages(OPS) if m.interaction_id == command["id"]
                                  and m.content), None), what="the echo")
    assert echo.content.endswith("asked: `/baton run upt\ufffdime\ufffd now`")
    (thread,) = wait_for(fake.threads, what="the thread on the echo")  # opened after the echo is filled in
    assert thread["name"] == "run upt\ufffdime\ufffd now"
    chat.reply("I don't know a runbook called", echo.id)


def test_a_mention_of_batons_role_is_a_mention_of_baton(chat, counter):
    """Typing @Baton, Discord offers Baton and its role (named alike, the role Discord gives a bot in
    every server it joins); picking the role sent ``<@&role>``, which Baton took for chatter in the
    channel: no thread, no answer, nothing in the log."""
    fake = chat.fake
    asked = fake.say("run uptime", channel=OPS, role_mention=True)
    reply = chat.reply("did uptime", asked["id"])
    (thread,) = fake.threads()
    assert thread["name"] == "run uptime" and reply.channel_id == asked["id"] and runs_in(counter) == ["uptime"]
    inside = fake.say("help", channel=asked["id"], role_mention=True)  # in the thread: addressed, not chatter
    chat.reply("Here is what I can do", asked["id"])
    assert chat.stored_events() == [asked["id"], inside["id"]]
    assert chat.rows("SELECT text FROM inbound_events ORDER BY id") == [("run uptime",), ("help",)]


def test_a_mention_in_a_voice_channels_chat_says_where_to_ask_not_which_permissions_to_grant(chat, counter):
    """Discord has no threads in a voice channel's chat (400, 50024): Baton answered that it lacked
    the thread permissions, so an admin granted them and nothing changed."""
    fake = chat.fake
    fake.say("run uptime", channel=VOICE)
    answer = chat.reply("no threads in this kind of channel", VOICE)
    assert "please ask me in a text channel, or in a thread" in answer.content and "permissions" not in answer.content
    command = fake.slash("run uptime", channel=VOICE)
    reply = wait_for(lambda: next((m for m in fake.messages(VOICE) if m.interaction_id == command["id"]
                                   and "⚠️" in m.content), None), what="the /baton explanation")
    assert "no threads in this kind of channel" in reply.content and "permissions" not in reply.content
    assert runs_in(counter) == [] and chat.stored_events() == []


def test_a_server_other_than_discord_guild_id_is_not_served(chat, counter):
    """A public bot (the Developer Portal's default) can be invited to anyone's server: its members then
    ran this team's low-risk runbooks, DISCORD_GUILD_ID or not."""
    fake = chat.fake
    fake.join_other_server()
    stranger = fake.say("run uptime", channel=OTHER_CHANNEL)
    asked = fake.say("run uptime", channel=GENERAL)  # the team's own server, after it
    chat.reply("did uptime", asked["id"])
    assert runs_in(counter) == ["uptime"] and chat.stored_events() == [asked["id"]]
    assert not fake.messages(OTHER_CHANNEL) and [t["parent_id"] for t in fake.threads()] == [GENERAL]
    assert stranger["id"] not in chat.stored_events()


def test_with_discord_guild_id_a_direct_message_is_taken_from_its_members_only(chat, counter):
    """Discord lets anyone who shares any server with Baton write to it: a stranger's DM ran this team's
    low-risk runbooks, DISCORD_GUILD_ID or not."""
    fake = chat.fake
    stranger = fake.direct_channel(STRANGER)
    fake.say("run uptime", channel=stranger, user=STRANGER, mention=False)
    chat.reply("I work for the members of one Discord server only", stranger)
    fake.say("run uptime again", channel=stranger, user=STRANGER, mention=False)  # told once, not at each message
    member = fake.direct_channel(ALICE)
    fake.say("run uptime", channel=member, user=ALICE, mention=False)
    chat.reply("did uptime", member)
    assert runs_in(counter) == ["uptime"] and len(fake.messages(stranger)) == 1
    assert chat.rows("SELECT channel FROM inbound_events") == [(member,)]
