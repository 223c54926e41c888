"""The Discord adapter, sixth hunt: what a Discord operator meets when Baton lacks something in the
Developer Portal or in a server's permissions. Covered here: answers in a Baton thread without a mention
when the application has no Message Content Intent, replies refused in a channel's threads (no Send
Messages in Threads), and a card in a thread a moderator archived and locked."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import web

import tests.fake_discord as fake_module
from adapters import discord_adapter
from adapters.contract import DeliveryRejected
from adapters.discord_adapter import DiscordAdapter
from bot.messages import Accepted, Buttons, InboundMessage, Location, Message, Text
from bot.outbox import Delivery
from tests.fake_discord import BOB, GENERAL, GUILD_ID, MESSAGE_CONTENT_INTENT, OPS, FakeDiscord, shown_text
from tests.support import overrides, quicker_library_pauses, wait_for
from tests.test_discord import Discord, config_path  # noqa: F401 (a fixture)
from tests.test_discord_hunt2 import adapter, received  # noqa: F401 (a fixture: with DISCORD_GUILD_ID)


class StrictDiscord(FakeDiscord):
    """The fake, with channels whose threads Baton may not post in (its role lacks Send Messages in
    Threads there): Discord answers 403, 50013 Missing Permissions, as for a locked thread."""

    def __init__(self) -> None:
        super().__init__()
        self.no_thread_sends: set[str] = set()  # channels (threads' parents)

    async def _post_message(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        with self._lock:
            channel = self.channels.get(request.match_info["channel_id"], {})
        if channel.get("type") == 11 and channel.get("parent_id") in self.no_thread_sends:
            return fake_module._error(403, 50013, "Missing Permissions")
        return await super()._post_message(request, body)


@pytest.fixture
def fake_discord() -> Any:
    fake = StrictDiscord().start()
    yield fake
    fake.stop()


async def _baton_thread(fake: FakeDiscord, adapter: DiscordAdapter, channel: str = GENERAL) -> str:
    """A thread Baton opened on a person's mention (as it does for every request asked in a channel)."""
    asked = fake.say("run restart service=web", channel=channel)
    return await discord_adapter._start_thread(adapter.client.http, int(channel), int(asked["id"]), "run restart")


def _delivery(number: int, thread: str, message: Message, kind: str = "post", target: str | None = None,
              channel: str = GENERAL) -> Delivery:
    return Delivery(number, kind, Location(platform="discord", workspace=GUILD_ID, channel=channel, thread=thread),
                    message, None, target, 1)


async def test_an_answer_without_a_mention_in_a_baton_thread_is_told_once_without_the_content_intent(
        fake_discord, adapter, caplog):
    """Without the Message Content Intent (a privileged intent, off until someone turns it on in the
    Developer Portal), Discord sends a message that does not mention Baton with no text at all: someone
    answering Baton's question in its thread ("yes, go ahead") was dropped without a word, and saw nothing
    happen. A Baton thread (one Baton opened, or one where it took a request) is told once why and what to
    do, and the log says which setting to turn on; people's own threads are not spoken to."""
    assert not adapter.reads_content  # the fake's application has the intent, but this adapter never asked for it
    caplog.set_level(logging.WARNING, "baton.discord")
    thread = await _baton_thread(fake_discord, adapter)
    for text in ("yes, go ahead", "hello?"):  # told once, not at every message
        await adapter.on_message(received(adapter, fake_discord.say(text, channel=thread, mention=False)))
    (told,) = fake_discord.messages(thread)
    assert told.content == discord_adapter.CONTENT_INTENT_OFF
    assert "Message Content Intent" in told.content and "mention @Baton" in told.content

    theirs = fake_discord.unannounced_thread(OPS)  # a person's thread Baton was never asked anything in
    await adapter.on_message(received(adapter, fake_discord.say("lunch?", channel=theirs, mention=False, user=BOB)))
    assert fake_discord.messages(theirs) == []

    taken: list[InboundMessage] = []

    async def accept(message: InboundMessage) -> Accepted:
        taken.append(message)
        return Accepted(status="accepted")

    adapter.baton.accept_message = accept  # a request asked in that thread makes it a Baton thread
    await adapter.on_message(received(adapter, fake_discord.say("run uptime", channel=theirs, user=BOB)))
    await adapter.on_message(received(adapter, fake_discord.say("thanks", channel=theirs, mention=False, user=BOB)))
    assert [message.text for message in taken] == ["run uptime"]
    assert [m.content for m in fake_discord.messages(theirs)] == [discord_adapter.CONTENT_INTENT_OFF]
    warnings = [r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()]
    assert len(warnings) == 1 and "Developer Portal" in warnings[0] and "Message Content Intent" in warnings[0]


async def test_replies_refused_in_a_channels_threads_are_explained_once_in_the_channel(fake_discord, adapter, caplog):
    """Without Send Messages in Threads in a channel, Baton opened its thread and ran the request (Create
    Public Threads is another permission), then every reply in that thread was refused (403), logged as a
    bare "403 Missing Permissions": the person who asked saw nothing at all. The channel is told once why
    (not at every message), the log names the permission, and once a reply gets through (the permission
    granted), a later refusal is told again."""
    caplog.set_level(logging.WARNING, "baton.discord")
    fake_discord.no_thread_sends.add(OPS)
    first, second = await _baton_thread(fake_discord, adapter, OPS), await _baton_thread(fake_discord, adapter, OPS)
    for number, thread in enumerate((first, second, first), 1):
        with pytest.raises(DeliveryRejected, match="lacks the Send Messages in Threads permission in channel"):
            await adapter.send(_delivery(number, thread, Message.text("did uptime", tone="success"), channel=OPS))
    assert [m.content for m in fake_discord.messages(OPS)] == [discord_adapter.NO_THREAD_SENDS]
    assert fake_discord.messages(first) == fake_discord.messages(second) == []
    (warning,) = [r.getMessage() for r in caplog.records if "Send Messages in Threads" in r.getMessage()]
    assert OPS in warning

    fake_discord.no_thread_sends.clear()  # an admin grants it
    await adapter.send(_delivery(4, first, Message.text("did uptime", tone="success"), channel=OPS))
    fake_discord.no_thread_sends.add(OPS)  # and someone takes it away again later
    with pytest.raises(DeliveryRejected):
        await adapter.send(_delivery(5, second, Message.text("did uptime", tone="success"), channel=OPS))
    assert [m.content for m in fake_discord.messages(OPS)] == [discord_adapter.NO_THREAD_SENDS] * 2


@pytest.mark.parametrize("answer", [(403, 50013, "Missing Permissions"), (403, 50083, "Thread is archived"),
                                    (400, 160005, "Thread is locked")])
async def test_a_card_in_a_thread_archived_and_locked_says_why_it_cannot_be_updated(
        fake_discord, adapter, caplog, monkeypatch, answer):
    """A moderator closed and locked a Baton thread while its card waited: the decision's edit of the card
    (and every message after it) was refused as a bare "403 Missing Permissions" (opening a locked thread
    again takes Manage Threads). The log now says the thread is locked and what would let Baton write
    there, and the channel is not told that a permission is missing in all its threads. (Discord has
    been seen to answer there with other codes than the fake's: each is explained alike.)"""
    monkeypatch.setattr(fake_module, "_error", lambda status, code, message, error=fake_module._error:
                        error(*answer) if code == 50013 else error(status, code, message))
    caplog.set_level(logging.INFO, "baton.discord")  # a warning is the core's (the outbox's), once a thread
    thread = await _baton_thread(fake_discord, adapter)
    card = Message(title="Approval needed", tone="approval",
                   parts=[Text(text="restart web"), Buttons(approval_id="a1")])
    posted = await adapter.send(_delivery(1, thread, card))
    fake_discord.archive(thread, locked=True)
    decided = Message(title="Approved", tone="success", parts=[Text(text="approved by bob")])
    with pytest.raises(DeliveryRejected, match=f"thread {thread} is locked") as refused:
        await adapter.send(_delivery(2, thread, decided, "update", posted))
    assert "Manage Threads" in str(refused.value) and refused.value.unreachable == "locked"
    with pytest.raises(DeliveryRejected, match="is locked"):
        await adapter.send(_delivery(3, thread, Message.text("did restart web", tone="success")))
    assert fake_discord.messages(GENERAL) == [] and fake_discord.message(posted).edits == 0
    (warning,) = [r.getMessage() for r in caplog.records if "locked" in r.getMessage()]
    assert thread in warning and "Manage Threads" in warning


def test_the_content_intent_turned_off_while_baton_runs_does_not_end_its_gateway(
        fake_discord, start_baton, sqlite_url, counter):
    """Someone turned the Message Content Intent off in the Developer Portal while Baton ran: Discord
    refused the next gateway session, which asked for it (4014), and Baton received no Discord event
    any more until restarted (only /healthz and a line in the log said so). It connects again without
    the intent, says so in the log, and a Baton thread's answers without a mention are told why."""
    quick = {**overrides({"adapters.discord_adapter.TRANSIENT_PAUSES": [0.1, 0.2, 0.4, 0.8]}),
             # discord.py waits 5 s before identifying again (``before_identify_hook``): 0.1 s here
             **quicker_library_pauses({"discord.webhook.async_": 0.1, "discord.client": 0.02})}
    chat = Discord(start_baton(sqlite_url, env={**fake_discord.env(), **quick}), fake_discord, sqlite_url)
    wait_for(lambda: fake_discord.sessions == 1, what="Baton's gateway session")
    assert fake_discord.identifies[0]["intents"] & MESSAGE_CONTENT_INTENT
    thread = fake_discord.say("run uptime")["id"]
    chat.reply("did uptime", thread)
    fake_discord.message_content_intent = False  # turned off in the portal
    fake_discord.close_sessions(4000)  # Discord drops the session; discord.py resumes, then identifies again
    wait_for(lambda: len(fake_discord.identifies) == 2 and fake_discord.sessions == 1, 20, "a session without it")
    assert not fake_discord.identifies[1]["intents"] & MESSAGE_CONTENT_INTENT
    fake_discord.say("thanks", channel=thread, mention=False)
    chat.reply("I can't read messages that don't mention me", thread)
    fake_discord.say("help", channel=thread)  # a mention is read, and answered
    chat.reply("Here is what I can do", thread)
    assert len([m for m in fake_discord.messages(thread) if "Message Content Intent" in shown_text(m)]) == 1
    assert "Message Content Intent was turned off" in chat.baton.log.read_text()
