"""The Discord adapter, seventh hunt: what an on-call team meets when Baton reads a thread (``summarize``,
the assistant) and when it is asked in a private thread. Covered here: alerts that monitoring bots and
webhooks post as embeds (titles and fields, no description), a message with words and an embed, a forwarded
message, a request asked as a reply to an alert, Discord's own notices in a history, ``/baton`` in a private
thread Baton is not in, and what the adapter remembers in order to say something once."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, cast

import pytest
from aiohttp import web

import tests.fake_discord as fake_module
from bot import recent
from bot.messages import Location
from tests.fake_discord import (
    ALICE,
    BOB,
    BOT_ID,
    GENERAL,
    GUILD_ID,
    OPS,
    OTHER_BOT,
    FakeMessage,
    shown_text,
    snowflake,
)
from tests.support import runs_in, wait_for
from tests.test_discord import config_path, fake_discord, slash_reply, start_discord  # noqa: F401 (fixtures)
from adapters import discord_adapter
from tests.test_discord_hunt import adapter  # noqa: F401 (a fixture)
from tests.test_discord_hunt2 import StricterDiscord
from tests.test_discord_hunt2 import adapter as guild_adapter  # noqa: F401 (a fixture: with DISCORD_GUILD_ID)

# What Uptime Kuma, Alertmanager's Discord receiver or Sentry post: a rich embed whose title and fields say it all.
ALERT = {"type": "rich", "title": "[FIRING:1] HighLatency api (prod)", "color": 15548997,
         "fields": [{"name": "Service", "value": "api", "inline": True},
                    {"name": "p99", "value": "2.4 s (threshold 1 s)", "inline": True}],
         "footer": {"text": "Alertmanager"}}
ALERT_TEXT = "[FIRING:1] HighLatency api (prod)\nService: api\np99: 2.4 s (threshold 1 s)"  # as Baton reads it
# Discord's own preview of a link in someone's words: it repeats the page, not what they said.
PREVIEW = {"type": "article", "title": "Postmortem template", "description": "How we write postmortems",
           "url": "https://wiki.example/postmortems"}


class Forwarded(FakeMessage):
    """A message someone forwarded into the thread: Discord sends it with no content of its own, and what was
    forwarded in ``message_snapshots``."""

    def __init__(self, *args: Any, snapshot: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.snapshot = snapshot

    def json(self) -> dict[str, Any]:
        forwarded = {"type": 0, "content": "", "embeds": [], "attachments": [], "edited_timestamp": None,
                     "timestamp": "2026-12-06T10:00:00+00:00", "flags": 0, "mentions": [], "mention_roles": [],
                     "components": []}
        return super().json() | {"message_reference": {"type": 1, "message_id": "8999", "channel_id": GENERAL},
                                 "message_snapshots": [{"message": forwarded | self.snapshot}]}


async def test_alerts_posted_as_embeds_are_read_in_a_threads_history(fake_discord, adapter):
    """Monitoring bots and webhooks post their alerts as embeds, often with a title and fields and no
    description: ``summarize`` and the assistant read a thread's history from Discord, where such an alert
    was an empty line (the assistant left it out altogether), so an incident thread's summary lost the
    alert it was about; a message with words and an embed lost the embed, and a forwarded alert was empty
    too. (Baton's Slack adapter reads alerting bots' attachments and fields.) Discord's previews of a
    link in someone's words are not repeated."""
    for message in (
            FakeMessage(id="9001", channel_id=GENERAL, author_id=OTHER_BOT, content="", embeds=[ALERT]),
            FakeMessage(id="9002", channel_id=GENERAL, author_id=OTHER_BOT, content="@here deploy finished",
                        embeds=[{"type": "rich", "description": "api v1.4.2 is live on 3 hosts"}]),
            FakeMessage(id="9003", channel_id=GENERAL, author_id=ALICE, content="see https://wiki.example/postmortems",
                        embeds=[PREVIEW]),
            Forwarded(id="9004", channel_id=GENERAL, author_id=BOB, content="",
                      snapshot={"content": "db-1 disk at 95%", "embeds": [ALERT]})):
        fake_discord._messages[message.id] = message
    adapter.reads_content = True
    seen = await adapter.history(Location(platform="discord", workspace=GUILD_ID, channel=GENERAL, thread=GENERAL), 10)
    assert [entry["text"] for entry in seen or []] == [
        ALERT_TEXT,
        "@here deploy finished\napi v1.4.2 is live on 3 hosts",
        "see https://wiki.example/postmortems",
        f"(forwarded) db-1 disk at 95%\n{ALERT_TEXT}"]


class HuntDiscord(StricterDiscord):
    """The fake, reading one message by id as Discord does (``StricterDiscord``), with a reply's
    ``referenced_message`` (Discord sends the message a reply answers along with it), and private threads:
    only their members see them (``private_thread``), so a message from anyone else is refused (403, 50001
    Missing Access) and so is their joining it (Baton has no Manage Threads); a message mentioning
    someone adds them, as in Discord."""

    def __init__(self) -> None:
        super().__init__()
        self.replies: dict[str, str] = {}  # a reply's id -> the id of the message it answers
        self.thread_members: dict[str, set[str]] = {}  # private threads -> their members

    def private_thread(self, parent: str = GENERAL, owner: str = ALICE) -> str:
        thread = self.unannounced_thread(parent, "a private thread")
        with self._lock:
            self.channels[thread] |= {"type": 12, "owner_id": owner}
            self.thread_members[thread] = {owner}
        return thread

    def say(self, text: str, **options: Any) -> dict[str, Any]:
        payload = super().say(text, **options)
        with self._lock:
            if payload["mentions"] and payload["channel_id"] in self.thread_members:
                self.thread_members[payload["channel_id"]].add(BOT_ID)
        return payload

    def _outside(self, channel: str) -> bool:
        with self._lock:
            return BOT_ID not in self.thread_members.get(channel, {BOT_ID})

    async def _post_message(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if self._outside(request.match_info["channel_id"]):
            return fake_module._error(403, 50001, "Missing Access")
        return await super()._post_message(request, body)

    def reply(self, text: str, to: FakeMessage, **options: Any) -> dict[str, Any]:
        payload = self.say(text, reply_to=to, **options)
        self.replies[payload["id"]] = to.id
        return payload

    async def _unknown(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        joining = re.fullmatch(r"/api/v10/channels/(\d+)/thread-members/@me", request.path)
        if request.method == "PUT" and joining is not None:
            if self._outside(joining[1]):
                return fake_module._error(403, 50001, "Missing Access")
            return web.Response(status=204)
        response = await super()._unknown(request, body)
        answered = self.replies.get(request.path.rsplit("/", 1)[-1])
        if response.status != 200 or answered is None or (replied := self.message(answered)) is None:
            return response
        return fake_module._json(json.loads(cast(bytes, response.body)) | {
            "type": 19, "referenced_message": replied.json(),
            "message_reference": {"message_id": replied.id, "channel_id": replied.channel_id}})


@pytest.fixture
def hunt_discord() -> Iterator[HuntDiscord]:
    fake = HuntDiscord().start()
    yield fake
    fake.stop()


def test_a_request_asked_as_a_reply_to_an_alert_reads_the_alert(hunt_discord, start_baton, sqlite_url, counter):
    """Asked as a reply to an alert in a channel ("@Baton summarize", "@Baton why is this firing?": Discord's
    way of pointing at a message), Baton opened its thread on the reply, and what it read of the thread began
    there: the alert the request was about was not in it, so "summarize" answered that there was nothing to
    summarise, and the assistant answered without it. The message a thread's first message replies to is
    read before it (on Slack, the thread begins with the alert itself)."""
    fake = hunt_discord
    chat = start_discord(start_baton, fake, sqlite_url)
    alert = FakeMessage(id=snowflake(), channel_id=OPS, author_id=OTHER_BOT, content="", embeds=[ALERT])
    fake._messages[alert.id] = alert
    thread = fake.reply("summarize", to=alert, channel=OPS)["id"]
    summary = shown_text(chat.reply("summar", thread))  # a summary, or "nothing to summarise"
    assert "Extractive summary of this thread" in summary, summary
    assert summary.split("\n", 2)[2] == f"• <@{OTHER_BOT}>: {ALERT_TEXT}"


def test_a_slash_request_in_a_private_thread_baton_is_not_in_says_how_to_add_it(
        hunt_discord, start_baton, sqlite_url, counter):
    """``/baton`` is offered in a private thread Baton was never added to, but Discord refuses Baton's messages
    there (403 Missing Access; only a thread's members, or those with Manage Threads, see a private thread):
    the request ran, and its answer, its approval cards and its errors were refused one after another, while
    the person saw only "@you asked: ..." and then nothing. Baton joins the thread first; when it may not,
    nothing is run and the reply says how to add it (a mention adds it, as Discord adds anyone mentioned)."""
    fake = hunt_discord
    chat = start_discord(start_baton, fake, sqlite_url)
    thread = fake.private_thread()
    command = fake.slash("run uptime", channel=thread)
    reply = wait_for(lambda: "⚠️" in (message := slash_reply(fake, command)).content and message, 20, "why not")
    assert reply.content.startswith(f"<@{ALICE}> asked: `/baton run uptime`\n⚠️ ")
    assert "private thread" in reply.content and "Mention @Baton in this thread" in reply.content
    assert runs_in(counter) == [] and chat.stored_events() == []

    fake.say("run uptime", channel=thread)  # a mention adds Baton to the thread
    chat.reply("did uptime", thread)
    again = fake.slash("help", channel=thread, user=BOB)  # now a member: taken, and answered there
    chat.reply("Here is what I can do", thread)
    assert runs_in(counter) == ["uptime"] and chat.stored_events()[-1] == again["id"]


async def test_what_the_adapter_remembers_for_saying_something_once_does_not_grow_for_good(
        fake_discord, guild_adapter, monkeypatch):
    """The threads and people Baton remembers in order to tell (or log) something once (a stranger's DM, a
    thread it cannot read or post in, a Baton thread) were sets that grew by one each for as long as Baton
    ran, and so were membership answers long out of date. They keep the latest ``REMEMBERED`` (the oldest
    is told again, once), and a membership answer is dropped once it would be asked again anyway."""
    remembered = ("_told_strangers", "_baton_threads", "_told_unread", "_told_no_thread_sends", "_told_locked")
    for name in remembered:
        memory = getattr(guild_adapter, name)
        for key in range(recent.REMEMBERED + 5):
            memory.add(key)
        assert len(memory) == recent.REMEMBERED and 4 not in memory and 5 in memory, name
        memory.add(5)  # told again: now the latest
        memory.add(-1)
        assert 5 in memory and 6 not in memory, name

    monkeypatch.setattr(discord_adapter, "MEMBER_CHECK_SECONDS", 0.0)  # every answer out of date at once
    for user in (ALICE, BOB):
        assert await guild_adapter._serves(int(user), "a direct message") is True
    assert list(guild_adapter._members) == [int(BOB)]


class Notice(FakeMessage):
    """A message Discord itself writes in a channel or thread (``type``: 7 someone added to a thread or joined
    the server, 4 a thread renamed, with the new name as its content, 6 a message pinned, 18 a thread
    started, with its name as its content)."""

    def __init__(self, *args: Any, kind: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kind = kind

    def json(self) -> dict[str, Any]:
        return super().json() | {"type": self.kind}


async def test_discords_own_notices_are_not_read_as_what_people_said(fake_discord, adapter):
    """A thread's or channel's history held Discord's own notices, each as something a person said: "bob
    added carol to the thread" or "alice pinned a message" as an empty line (an extractive summary began with
    "• <@bob>: "), a thread renamed "✅ INC-42 resolved" as alice saying so, and each took the place of a
    message that was said. (Slack's adapter reads people's and bots' messages only.) They are left out, and
    as many messages as asked for are still read."""
    said = [FakeMessage(id="9001", channel_id=GENERAL, author_id=ALICE, content="db-1 is down")]
    said += [Notice(id=f"90{n:02d}", channel_id=GENERAL, author_id=BOB, content=content, kind=kind)
             for n, (kind, content) in enumerate(((7, ""), (6, ""), (4, "✅ INC-42 resolved"), (18, "INC-42")), 2)]
    said += [FakeMessage(id=f"91{n:02d}", channel_id=GENERAL, author_id=BOB, content=f"step {n}") for n in range(3)]
    for message in said:
        fake_discord._messages[message.id] = message
    adapter.reads_content = True
    seen = await adapter.history(Location(platform="discord", workspace=GUILD_ID, channel=GENERAL, thread=GENERAL), 4)
    assert [entry["text"] for entry in seen or []] == ["db-1 is down", "step 0", "step 1", "step 2"]


def test_a_mention_while_discord_py_lacks_the_server_is_the_server_s_thread(
        fake_discord: Any, start_baton: Any, sqlite_url: str, counter: Any) -> None:  # noqa: F811
    """A message whose server discord.py has not cached (between a new session's READY and the server's
    GUILD_CREATE) has no ``message.guild``: its request was stored as no server's (workspace ""), though its
    channel names the server (and ``_elsewhere`` read it from there). Once the server was cached again, a reply in
    the thread was the server's, found no Baton thread, and was ignored as chatter."""
    chat = start_discord(start_baton, fake_discord, sqlite_url)
    fake_discord.forget_server()
    asked = fake_discord.say("run uptime", channel=OPS)
    thread = asked["id"]
    chat.reply("did uptime", thread)
    fake_discord.server_back()
    fake_discord.say("help", channel=thread, mention=False, user=BOB)  # no mention needed in a Baton thread
    chat.reply("Here is what I can do", thread)
    assert chat.rows("SELECT workspace, channel, thread FROM thread_records") == [(GUILD_ID, OPS, thread)]
    assert runs_in(counter) == ["uptime"]
