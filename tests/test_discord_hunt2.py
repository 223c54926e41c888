"""The Discord adapter, third hunt: what Discord really does, met with what Baton does and tells people.
Covered here: an HTML error page from Cloudflare in front of Discord, the 2,000 characters of an
interaction's reply, a server with as many active threads as it may have, a message a moderator
deleted, a thread whose starter message stays in its channel, a post whose answer was lost, and
Baton's database away when someone clicks."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import discord
import httpx
import pytest
from aiohttp import web

import tests.fake_discord as fake_module
from adapters import discord_adapter
from adapters.discord_adapter import DiscordAdapter
from bot.messages import Location, Message
from bot.outbox import Delivery
from bot.settings import Settings
from tests.fake_discord import (
    ALICE,
    BOB,
    BOT_ID,
    CAROL,
    EPHEMERAL,
    GENERAL,
    GUILD_ID,
    OPS,
    TOKEN,
    VOICE,
    FakeDiscord,
    shown_text,
)
from tests.support import runs_in, wait_for
from tests.test_database_outage import proxy  # noqa: F401 (a fixture: the database behind a TCP proxy)
from tests.test_discord import LOADING, chat, config_path, slash_reply, start_discord  # noqa: F401 (fixtures)

DATABASE_AWAY_CLICK = ("⚠️ I could not take your click just now: my database cannot be reached, so nothing was "
                       "changed. Please click again in a few minutes.")
MESSAGES = "POST /channels/{channel_id}/messages"
THREADS = "POST /channels/{channel_id}/messages/{message_id}/threads"

# What Cloudflare, in front of Discord's API, answers when Discord's servers are away: an HTML page of
# several kilobytes (discord.py keeps a body that is not JSON as the error's text).
CLOUDFLARE_PAGE = """<!DOCTYPE html>
<!--[if lt IE 7]> <html class="no-js ie6 oldie" lang="en-US"> <![endif]-->
<!--[if gt IE 8]><!--> <html class="no-js" lang="en-US"> <!--<![endif]-->
<head>
<title>discord.com | 503: Service unavailable</title>
<meta charset="UTF-8" />
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
<meta name="robots" content="noindex, nofollow" />
<link rel="stylesheet" id="cf_styles-css" href="/cdn-cgi/styles/main.css" />
</head>
<body>
<div id="cf-wrapper"><div id="cf-error-details" class="p-0">
<header class="mx-auto pt-10 lg:pt-6 lg:px-8 w-240 lg:w-full mb-8">
<h1 class="inline-block sm:block sm:mb-2 font-light text-60 lg:text-4xl text-black-dark leading-tight mr-2">
<span class="inline-block">Service unavailable</span><span class="code-label">Error code 503</span></h1>
</header>
""" + "".join(f'<div class="cf-section cf-row-{n}"><p>Visit cloudflare.com for more information.</p></div>\n'
              for n in range(40)) + "</div></div></body></html>\n"


class StricterDiscord(FakeDiscord):
    """The fake, with Discord's limits on the reply to an interaction too (2,000 characters of content),
    and on a server's active threads (``threads_full``: as many as Discord allows, 160006)."""

    threads_full = False

    async def _unknown(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        """Also one message of a channel, by id (GET /channels/{channel_id}/messages/{message_id})."""
        found = re.fullmatch(r"/api/v10/channels/(\d+)/messages/(\d+)", request.path)
        if request.method != "GET" or found is None:
            return await super()._unknown(request, body)
        message = self.message(found[2])
        if message is None or message.channel_id != found[1]:
            return fake_module._error(404, 10008, "Unknown Message")
        return fake_module._json({**message.json(), "author": fake_module.user_json(message.author_id)})

    def delete(self, message_id: str) -> None:
        """A moderator deletes a message (Baton's too, with Manage Messages)."""
        with self._lock:
            del self._messages[message_id]

    async def _start_thread(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if self.threads_full:
            return fake_module._error(400, 160006, "Maximum number of active threads reached")
        return await super()._start_thread(request, body)

    async def _edit_original(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        problem = fake_module._check_message(body, edit=True)
        if problem:
            return fake_module._error(400, 50035, f"Invalid Form Body: {problem}")
        return await super()._edit_original(request, body)


@pytest.fixture
def fake_discord() -> Iterator[FakeDiscord]:
    fake = StricterDiscord().start()
    yield fake
    fake.stop()


@pytest.fixture
def cloudflare_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake's 5xx come as Cloudflare's HTML page, as Discord's do when its servers are away."""
    json_error = fake_module._error

    def error(status: int, code: int, message: str) -> web.Response:
        if status < 500:
            return json_error(status, code, message)
        return web.Response(body=CLOUDFLARE_PAGE.encode(), status=status, content_type="text/html")

    monkeypatch.setattr(fake_module, "_error", error)


@pytest.fixture
async def adapter(fake_discord: FakeDiscord, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DiscordAdapter]:
    """The adapter signed in to the fake over REST (no gateway: events are handed to it here), with
    Discord's passing troubles tried again at once (not over 15 seconds)."""
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)  # the adapter sets it process-wide
    monkeypatch.setattr(discord_adapter, "TRANSIENT_PAUSES", (0.0, 0.0, 0.0, 0.0))
    settings = Settings(DISCORD_TOKEN=TOKEN, DISCORD_API_URL=fake_discord.api_url,  # type: ignore[call-arg]
                        DISCORD_GUILD_ID=GUILD_ID, BATON_ADAPTERS="discord")
    adapter = DiscordAdapter(SimpleNamespace(settings=settings))  # type: ignore[arg-type]
    await adapter.client.login(TOKEN)
    yield adapter
    await adapter.client.close()


def received(adapter: DiscordAdapter, payload: dict[str, Any]) -> discord.Message:
    """A MESSAGE_CREATE as discord.py hands it to Baton when the channel is not in its cache."""
    guild = int(payload["guild_id"]) if "guild_id" in payload else None  # none in a direct message
    channel = adapter.client.get_partial_messageable(int(payload["channel_id"]), guild_id=guild)
    return discord.Message(state=adapter.client._connection, channel=channel, data=payload)  # type: ignore[arg-type]


async def test_discords_error_page_is_not_pasted_into_what_baton_tells_the_channel(
        fake_discord, cloudflare_pages, adapter):
    """Discord failing to open a thread, its error an HTML page from Cloudflare (a 503 discord.py does
    not retry): Baton put the whole page in its "Discord is having trouble right now (...)" message,
    over Discord's 2,000 characters, so Discord refused it and the person was told nothing at all
    (and a shorter page would have been shown to the channel as HTML)."""
    fake_discord.fail(THREADS, 503, times=5)  # every try Baton makes
    asked = fake_discord.say("run uptime", channel=OPS)
    await adapter.on_message(received(adapter, asked))
    assert [call.status for call in fake_discord.calls(THREADS)] == [503] * 5
    (told,) = fake_discord.messages(OPS)
    assert told.content == ("Discord is having trouble right now (503 Service Unavailable): I could not open a thread "
                            "for your request, so nothing was run. Please ask again in a few minutes.")


async def test_a_member_is_not_told_they_are_a_stranger_when_discord_cannot_say(fake_discord, adapter):
    """With DISCORD_GUILD_ID, a direct message is taken from the server's members only, asked of Discord.
    When Discord failed to answer (a 503 at every try), a member was told "I work for the members of one
    Discord server only, so I can't take requests from you here", as a stranger is (and only once)."""
    fake_discord.fail("GET /guilds/{guild_id}/members/{user_id}", 503, times=5)  # every try Baton makes
    direct = fake_discord.direct_channel(ALICE)
    asked = fake_discord.say("run uptime", channel=direct, mention=False)
    await adapter.on_message(received(adapter, asked))
    (told,) = fake_discord.messages(direct)
    assert told.content.startswith("⚠️ Discord is having trouble right now, so I could not check that you are a member")
    assert "Please ask again in a few minutes." in told.content and "can't take requests from you" not in told.content


async def test_an_edit_of_a_message_someone_deleted_posts_its_new_version(fake_discord, adapter):
    """A moderator deleted Baton's progress message during a run: Discord answered the next edit with
    404 Unknown Message, which refused it for good, and every later step too (each an edit of that
    message): the run's progress was no longer shown anywhere. On Slack, and as the core expects, an
    edit of a message that is gone is posted anew, and the next edit changes that one."""
    here = Location(platform="discord", workspace=GUILD_ID, channel=GENERAL, thread=GENERAL)
    posted = await adapter.send(Delivery(1, "post", here, Message.text("step 1", tone="progress"), None, None, 1))
    fake_discord.delete(posted)
    again = await adapter.send(Delivery(2, "update", here, Message.text("step 1\nstep 2", tone="progress"), None,
                                        posted, 1))
    (shown,) = fake_discord.messages(GENERAL)
    assert shown.id == again != posted and shown.content == "⏳ step 1\nstep 2"
    await adapter.send(Delivery(3, "update", here, Message.text("step 1\nstep 2\nstep 3", tone="progress"), None,
                                again, 1))
    (shown,) = fake_discord.messages(GENERAL)
    assert shown.id == again and shown.edits == 1 and shown.content.endswith("step 3")


@pytest.mark.parametrize("takes_direct_messages", [True, False])
def test_a_private_reply_whose_answer_was_lost_is_not_posted_twice(chat, counter, takes_direct_messages):
    """A refusal of a click past its interaction's 15 minutes goes as a direct message (or, to someone
    who takes none, into the thread with a mention). Posted, but its answer lost on the way (a 503, a
    timeout), it was posted again by the outbox's retry: the person got it twice. Those posts now carry
    the delivery's nonce, as Baton's other posts do, so Discord answers the retry with the first."""
    fake = chat.fake
    thread = fake.say("run restart service=web")["id"]
    card = chat.card(thread)
    wait_for(lambda: chat.rows("SELECT count(*) FROM outbox WHERE status != 'sent'") == [(0,)],
             what="the card to be recorded as sent")
    where = fake.direct_channel(CAROL) if takes_direct_messages else thread
    if not takes_direct_messages:
        fake.refuses_direct_messages.add(CAROL)
        fake.fail(MESSAGES, 403)  # the direct message, refused (as Discord does: the fake's own 403 comes after)
    fake.fail(MESSAGES, 503, after=True)  # the post is made, and Discord's answer lost
    fake.click(card, user=CAROL, age=timedelta(minutes=16))
    wait_for(lambda: chat.rows("SELECT status FROM outbox WHERE kind = 'ephemeral'") == [("sent",)], 30,
             "the refusal to be recorded as sent")
    refusals = [m for m in fake.messages(where) if f"Only <@{BOB}> can approve this" in m.content]
    assert len(refusals) == 1 and refusals[0].content.startswith(f"⚠️ <@{CAROL}>, in reply to you in")
    statuses = [c.status for c in fake.calls(MESSAGES)]
    assert statuses[-2:] == [503, 200] if takes_direct_messages else statuses[-4:] == [403, 503, 403, 200]
    assert runs_in(counter) == []


def test_a_threads_history_begins_with_the_request_it_was_started_on(chat, counter):
    """A thread Baton opens on a mention is started on that message, which stays in the channel:
    Discord's history of the thread does not hold it. Summaries (and the assistant's view of the
    thread) began after the question: "summarize" showed Baton's answer as the thread's first message.
    (On Slack a thread's history begins with its parent.)"""
    fake = chat.fake
    thread = fake.say("run uptime", channel=OPS)["id"]
    chat.reply("did uptime", thread)
    fake.say("summarize", user=CAROL, channel=thread)
    summary = shown_text(chat.reply("Extractive summary of this thread", thread))
    lines = [line for line in summary.split("\n") if line.startswith("• ")]
    assert lines[0] == f"• <@{ALICE}>: @baton run uptime" and lines[-1].startswith(f"• <@{BOT_ID}>: ✅ `")
    assert len(lines) == 2  # the request, and Baton's answer (the "summarize" itself is left out)


def test_a_long_slash_request_without_a_thread_still_says_why(chat, counter):
    """A /baton of 1,800 characters (Discord takes 6,000 in an option) in a voice channel's chat: the
    explanation under the echo took the reply past Discord's 2,000 characters, Discord refused the
    edit, and the person saw their echo and nothing else: no thread, no answer, no reason."""
    fake = chat.fake
    request = "run uptime " + " ".join(f"host{n:04}" for n in range(200))  # ~1,800 characters
    command = fake.slash(request, channel=VOICE)
    wait_for(lambda: "⚠️" in slash_reply(fake, command).content or "could not be edited" in chat.baton.log.read_text(),
             what="the explanation, or Discord refusing it")
    reply = slash_reply(fake, command)
    assert reply.content.startswith(f"<@{ALICE}> asked: `/baton run uptime host0000 host0001")
    assert reply.content.endswith("please ask me in a text channel, or in a thread. Nothing was run.")
    assert len(reply.content) <= 2000 and "…`\n⚠️ Discord has no threads" in reply.content
    assert not reply.flags & LOADING and runs_in(counter) == [] and chat.stored_events() == []


def test_a_server_with_as_many_threads_as_discord_allows_is_not_told_to_grant_permissions(chat, counter):
    """A server has at most 1,000 active threads, and Baton's stay active for a week: once there were
    that many, every mention and /baton in a channel was answered that Baton lacked the thread
    permissions (Discord's 400, 160006), so an admin granted them and nothing changed."""
    fake = chat.fake
    fake.threads_full = True
    fake.say("run uptime", channel=OPS)
    answer = chat.reply("active threads", OPS)
    command = fake.slash("run uptime", channel=OPS)
    reply = wait_for(lambda: (m := slash_reply(fake, command)) and "⚠️" in m.content and m, what="the explanation")
    for told in (answer.content, reply.content):
        assert "as many active threads as Discord allows" in told and "permissions" not in told
        assert "ask me inside a thread" in told
    assert fake.threads() == [] and runs_in(counter) == [] and chat.stored_events() == []


@pytest.mark.postgres
def test_a_click_while_the_database_is_away_is_answered_with_why(
        fake_discord: FakeDiscord, proxy: Any, start_baton: Any, postgres_url: str, counter: Any) -> None:
    """A click on Approve while Baton's database was away could not be stored: it raised out of the
    button's callback (discord.py's "Ignoring exception in dynamic item callback" and a traceback, at
    each click), and Discord showed "This interaction failed" with no word of why or what to do, where
    a mention or a /baton is told. The person is now told, only them, that nothing was changed."""
    chat = start_discord(start_baton, fake_discord, proxy.url(postgres_url))
    fake = chat.fake
    thread = fake.say("run restart service=web")["id"]
    card = chat.card(thread)
    wait_for(lambda: chat.rows("SELECT count(*) FROM outbox WHERE status != 'sent'") == [(0,)],
             what="the card to be recorded as sent")
    proxy.cut()
    click = fake.click(card, user=BOB)
    wait_for(lambda: any(c["interaction_id"] == click["id"] for c in fake.callbacks)
             or "Ignoring exception" in chat.baton.log.read_text(), 30, "the click to be answered, or to fail")
    (answer,) = [c for c in fake.callbacks if c["interaction_id"] == click["id"]]
    assert answer["type"] == 4 and answer["data"]["flags"] & EPHEMERAL  # a message only the person sees
    assert answer["data"]["content"] == DATABASE_AWAY_CLICK

    proxy.restore()
    wait_for(lambda: httpx.get(f"{chat.baton.url}/readyz", timeout=15).status_code == 200, 30, "the database back")
    fake.click(card, user=BOB)  # clicked again, as told
    chat.reply("did restart web", thread)
    assert runs_in(counter) == ["restart web"]
    log = chat.baton.log.read_text()
    assert "Traceback" not in log and f"click {click['id']} not taken, Baton's database cannot be used" in log
