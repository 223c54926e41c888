"""The Discord adapter end to end: a real ``baton run`` whose real discord.py talks to a local fake
of Discord's REST API and gateway (``tests/fake_discord.py``); rendering without a process."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord
import httpx
import pytest

from adapters import discord_render
from adapters.contract import DeliveryRejected, RetryLater, split_text
from adapters.discord_adapter import DiscordAdapter, _step, card_view
from bot.messages import ButtonOption, Buttons, Code, Location, Message, Note, Text, ThreadLink
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
    MESSAGE_CONTENT_INTENT,
    OPS,
    OTHER_BOT,
    TOKEN,
    FakeDiscord,
    FakeMessage,
    buttons,
    shown_text,
    snowflake,
)
from tests.support import (
    LONG_LINES,
    BatonProcess,
    long_line,
    overrides,
    quicker_library_pauses,
    runs_in,
    wait_for,
    write_config,
)
from tests.test_database_outage import proxy  # noqa: F401 (a fixture: the database behind a TCP proxy)

MESSAGES = "POST /channels/{channel_id}/messages"
CALLBACK = "POST /interactions/{interaction_id}/{token}/callback"
THREADS = "POST /channels/{channel_id}/messages/{message_id}/threads"
EDIT_REPLY = "PATCH /webhooks/{application_id}/{token}/messages/@original"
LOADING = 128  # the deferred reply's "Baton is thinking..."


@pytest.fixture
def config_path(tmp_path: Path, counter: Path) -> Path:
    """The usual runbooks, with Discord user ids as approvers (one platform-prefixed, one bare;
    quoted: YAML reads a bare snowflake as a number), and a runbook with very long output."""
    return write_config(tmp_path, counter, approvers=[f"discord:{BOB}", ALICE])


# The fakes are fixtures requested before ``start_baton``: pytest then stops Baton first, and a
# fake never has to close a connection that Baton would at once open again.
@pytest.fixture
def fake_discord() -> Iterator[FakeDiscord]:
    fake = FakeDiscord().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_discord_without_content() -> Iterator[FakeDiscord]:
    """An application without the Message Content Intent."""
    fake = FakeDiscord(message_content_intent=False).start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_slack() -> Iterator[Any]:
    from tests.fake_slack import FakeSlack

    fake = FakeSlack().start()
    yield fake
    fake.stop()


def rows(database_url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as connection:
            return connection.execute(query, params).fetchall()
    import psycopg

    with psycopg.connect(database_url) as connection:
        return [tuple(row) for row in connection.execute(query.replace("?", "%s"), params).fetchall()]


@dataclass
class Discord:
    """One Baton with the Discord adapter and the fake Discord it is connected to."""

    baton: BatonProcess
    fake: FakeDiscord
    database_url: str

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        return rows(self.database_url, query, *params)

    def stored_events(self) -> list[str]:
        return [row[0] for row in self.rows("SELECT event_id FROM inbound_events WHERE platform = 'discord' ORDER BY id")]

    def reply(self, contains: str, channel: str, timeout: float = 20) -> FakeMessage:
        return wait_for(lambda: self.fake.find(contains, channel), timeout,
                        f"a Discord message containing {contains!r} in {channel}")

    def card(self, thread: str) -> FakeMessage:
        return wait_for(lambda: next((m for m in self.fake.messages(thread) if buttons(m)), None), 20,
                        f"an approval card in thread {thread}")


# Baton's pauses between its tries of a call Discord fails in passing (TRANSIENT_PAUSES, 1, 2, 4 and 8 s), a tenth
# as long: as many tries, in the same order, and 1.5 s instead of 15 s where a test has Discord fail every one.
# discord.py's own pauses between its tries of a webhook's 5xx (1, 3, 5, 7 and 9 s) too: 2.5 s instead of 25 s.
QUICK_TRIES = {**overrides({"adapters.discord_adapter.TRANSIENT_PAUSES": [0.1, 0.2, 0.4, 0.8]}),
               **quicker_library_pauses({"discord.webhook.async_": 0.1})}


def start_discord(start_baton: Any, fake: FakeDiscord, database_url: str, name: str = "baton",
                  **env: Any) -> Discord:
    baton = start_baton(database_url, name=name, env={**fake.env(**env), **QUICK_TRIES})
    wait_for(lambda: fake.sessions == 1, what="Baton's gateway session")
    return Discord(baton, fake, database_url)


@pytest.fixture
def chat(fake_discord: FakeDiscord, start_baton: Any, sqlite_url: str) -> Discord:
    return start_discord(start_baton, fake_discord, sqlite_url)


def test_mention_opens_a_thread_and_the_thread_is_the_conversation(chat, counter):
    fake = chat.fake
    (identify,) = fake.identifies
    assert identify["intents"] & MESSAGE_CONTENT_INTENT and not identify["intents"] & (1 << 1)  # no members intent
    (command,) = fake.commands[GUILD_ID]  # DISCORD_GUILD_ID: registered in that server, at once
    assert command["name"] == "baton" and [o["name"] for o in command["options"]] == ["request"]

    asked = fake.say("run uptime", channel=OPS)
    thread = asked["id"]  # a thread started on a message has the message's id
    reply = chat.reply("did uptime", thread)
    assert reply.content.startswith("✅ `") and reply.content.endswith("```\ndid uptime\n```")
    (opened,) = fake.threads()
    assert (opened["parent_id"], opened["name"]) == (OPS, "run uptime")
    assert fake.messages(OPS) == [] and runs_in(counter) == ["uptime"]

    fake.dispatch("MESSAGE_CREATE", asked)  # the same message again (a gateway replay): its thread exists
    wait_for(lambda: [c.status for c in fake.calls("POST /channels/{channel_id}/messages/{message_id}/threads")]
             == [201, 400], what="the second attempt to open the thread")
    fake.say("lunch anyone?", channel=OPS, mention=False)  # chatter in a channel
    fake.say("run uptime", user=OTHER_BOT, channel=OPS)  # another bot mentioning Baton
    fake.say("run uptime", user=BOT_ID, channel=thread, mention=False)  # Baton's own words
    follow_up = fake.say("help", channel=thread, mention=False, user=CAROL)  # no mention needed in the thread
    chat.reply("Here is what I can do", thread)
    assert chat.stored_events() == [thread, follow_up["id"]]
    assert runs_in(counter) == ["uptime"] and len(fake.threads()) == 1

    fake.say("digest now", channel=thread)  # the channel's digest (every thread of it), here
    digest = chat.reply("Digest: ", thread)
    (embed,) = digest.embeds
    assert str(OPS) not in embed["title"], embed["title"]  # the channel's id, which Discord showed as written
    assert "requests" in embed["description"] and "`runbook`: 1 done" in embed["description"]
    assert digest.files["digest.svg"].startswith(b"<svg") and "attached as `digest.svg`" in embed["description"]

    direct = fake.direct_channel(ALICE)
    message = fake.say("run uptime", channel=direct, mention=False)  # a DM needs no mention
    chat.reply("did uptime", direct)
    assert chat.stored_events()[-1] == message["id"] and len(fake.threads()) == 1
    # As on Slack: the channel, and the thread in it (a DM is one conversation).
    assert chat.rows("SELECT workspace, channel, thread FROM thread_records ORDER BY id") == [
        (GUILD_ID, OPS, thread), ("", direct, direct)]


def test_a_global_baton_from_before_discord_guild_id_was_set_is_removed(fake_discord, start_baton, sqlite_url):
    """Else the server offers /baton twice (its own and the global one); other global commands stay."""
    everywhere = {key: value for key, value in fake_discord.env().items() if key != "DISCORD_GUILD_ID"}
    start_baton(sqlite_url, name="global", env=everywhere).stop()
    (registered,) = fake_discord.commands["global"]
    assert registered["name"] == "baton" and GUILD_ID not in fake_discord.commands
    fake_discord.commands["global"].append({**registered, "id": snowflake(), "name": "someone-elses"})

    baton = start_baton(sqlite_url, name="one-server", env=fake_discord.env())
    assert [c["name"] for c in fake_discord.commands[GUILD_ID]] == ["baton"]
    assert [c["name"] for c in fake_discord.commands["global"]] == ["someone-elses"]
    assert "removed the global /baton registered before DISCORD_GUILD_ID was set" in baton.log.read_text()


def test_a_high_risk_request_in_a_direct_message_says_it_needs_a_channel(chat, counter):
    """Only the requester sees their DM with the bot, and they may not approve their own high-risk
    request: the card waited there for ever."""
    fake = chat.fake
    direct = fake.direct_channel(ALICE)
    fake.say("run restart service=web", channel=direct, mention=False)
    answer = chat.reply("only you can see this direct message", direct)
    assert "nothing was run" in shown_text(answer)
    assert not any(buttons(message) for message in fake.messages(direct))
    assert chat.rows("SELECT count(*) FROM approvals") == [(0,)] and runs_in(counter) == []
    fake.say("run uptime", channel=direct, mention=False)  # a low-risk one runs there as before
    chat.reply("did uptime", direct)


def test_a_gateway_event_discord_py_cannot_read_does_not_end_the_connection_for_good(chat, counter):
    """A MESSAGE_CREATE without an author made discord.py's ``connect()`` raise: every later event was
    lost while /healthz said all was well. Baton connects again (a new session: the bad event is not
    replayed) and answers the next mention."""
    fake = chat.fake
    broken = fake.say("run uptime", channel=OPS)
    chat.reply("did uptime", broken["id"])
    fake.dispatch("MESSAGE_CREATE", {key: value for key, value in broken.items() if key != "author"} | {"id": snowflake()})
    wait_for(lambda: len(fake.identifies) == 2 and fake.sessions == 1, what="a new gateway session")
    later = fake.say("run uptime", channel=GENERAL)
    chat.reply("did uptime", later["id"])
    assert runs_in(counter) == ["uptime", "uptime"]
    assert "the gateway connection failed (AttributeError" in chat.baton.log.read_text()


def test_a_gateway_that_ends_for_good_makes_healthz_fail(chat):
    """Discord refusing the session (4004: the token was reset) is not retried; the replica must not
    go on saying it is healthy while it receives nothing."""
    assert httpx.get(f"{chat.baton.url}/healthz").json()["problems"] == {}
    chat.fake.close_sessions(4004, b"Authentication failed.")
    health = wait_for(lambda: (r := httpx.get(f"{chat.baton.url}/healthz")).status_code == 503 and r, 20,
                      "/healthz to report the ended gateway")
    assert not health.json()["ok"] and "gateway connection ended" in health.json()["problems"]["discord"]


def test_at_debug_level_no_interaction_token_is_logged(fake_discord, start_baton, sqlite_url):
    """discord.py logs its request URLs at DEBUG, and a click's follow-up URL holds the click's token."""
    baton = start_baton(sqlite_url, env=fake_discord.env() | {"BATON_LOG_LEVEL": "DEBUG"})
    wait_for(lambda: fake_discord.sessions == 1, what="Baton's gateway session")
    chat = Discord(baton, fake_discord, sqlite_url)
    thread = fake_discord.say("run restart service=web", user=ALICE, channel=OPS)["id"]
    click = fake_discord.click(chat.card(thread), user=CAROL)
    chat.reply(f"Only <@{BOB}> can approve this", thread)
    log = chat.baton.log.read_text()
    assert " DEBUG " in log and click["token"] not in log


def test_a_message_in_a_channel_baton_cannot_read_is_ignored_without_a_traceback(chat, counter):
    fake = chat.fake
    asked = fake.say("run uptime", channel=OPS)
    chat.reply("did uptime", asked["id"])
    fake.dispatch("MESSAGE_CREATE", asked | {"id": snowflake(), "channel_id": "1100000000000009999"})  # no such channel
    wait_for(lambda: "cannot be read (404)" in chat.baton.log.read_text(), what="the message to be ignored")
    later = fake.say("run uptime", channel=GENERAL)
    chat.reply("did uptime", later["id"])
    assert runs_in(counter) == ["uptime", "uptime"] and "Traceback" not in chat.baton.log.read_text()


def test_a_mention_deleted_before_baton_got_to_it_is_ignored_without_a_word_in_the_channel(chat, counter):
    """A mention replayed after its author deleted it (a RESUME after an outage replays MESSAGE_CREATE
    before MESSAGE_DELETE): opening its thread is a 404. Baton told the whole channel it lacked the
    thread permissions ("I can't open a thread here (Unknown Message). I need ...")."""
    fake = chat.fake
    asked = fake.say("run uptime", channel=OPS)
    chat.reply("did uptime", asked["id"])
    deleted = asked | {"id": snowflake()}  # Discord no longer has it
    fake.dispatch("MESSAGE_CREATE", deleted)
    wait_for(lambda: "was deleted before a thread could be opened" in chat.baton.log.read_text()
             or fake.messages(OPS), what="the deleted mention to be handled")
    assert [m.content for m in fake.messages(OPS)] == []
    later = fake.say("run uptime", channel=GENERAL)
    chat.reply("did uptime", later["id"])
    assert fake.messages(OPS) == [] and runs_in(counter) == ["uptime", "uptime"]
    assert chat.stored_events() == [asked["id"], later["id"]]


def test_summarize_reads_the_thread_from_discord(chat, counter):
    fake = chat.fake
    thread = fake.say("run uptime", channel=OPS)["id"]
    chat.reply("did uptime", thread)
    # Another bot's message in the thread: Baton ignores its event, but Discord's history has it.
    fake.say("deploy 42 failed on web-2", user=OTHER_BOT, channel=thread, mention=False)
    fake.say("summarize", user=CAROL, channel=thread)
    summary = shown_text(chat.reply("Extractive summary of this thread", thread))
    assert summary.split("\n")[-1] == f"• <@{OTHER_BOT}>: deploy 42 failed on web-2"
    assert [call.status for call in fake.calls("GET /channels/{channel_id}/messages")] == [200]


def test_refusals_are_shown_only_to_the_person_who_clicked(chat, counter):
    fake = chat.fake
    thread = fake.say("run restart service=web")["id"]
    card = chat.card(thread)
    approve, reject = buttons(card)
    ((approval_id,),) = chat.rows("SELECT id FROM approvals")
    assert (approve["custom_id"], approve["style"], approve["label"]) == (f"baton:approve:{approval_id}", 1, "Approve")
    assert (reject["custom_id"], reject["style"], reject["label"]) == (f"baton:reject:{approval_id}", 4, "Reject")
    (embed,) = card.embeds
    assert embed["title"] == "Approval needed"
    assert f"Requested by <@{ALICE}>" in embed["description"] and f"approvers: <@{BOB}> (not <@{ALICE}>, who asked)" in embed["description"]

    # The same request in the same channel, from another thread: a link to the first one, no second card.
    again = fake.say("run restart service=web", user=CAROL)["id"]
    link = chat.reply("The same request is waiting for approval", again)
    assert f"[open that thread](https://discord.com/channels/{GUILD_ID}/{thread})" in link.content
    assert len(chat.rows("SELECT id FROM approvals")) == 1

    carol = fake.click(card, user=CAROL)
    refusal = chat.reply(f"Only <@{BOB}> can approve this", thread)
    assert refusal.ephemeral_to == CAROL and refusal.flags & EPHEMERAL and refusal.interaction_id == carol["id"]
    (deferred,) = [c for c in fake.callbacks if c["interaction_id"] == carol["id"]]
    assert deferred["type"] == 6  # "deferred update": the card stays, nothing is shown to others
    follow_up = next(c for c in fake.calls("POST /webhooks/{application_id}/{token}") if c.path.endswith(carol["token"]))
    assert deferred["at"] <= follow_up.at
    fake.click(card, user=ALICE)
    assert chat.reply("You asked for this high-risk action", thread).ephemeral_to == ALICE

    # The token of a click is good for 15 minutes; older, the refusal comes as a direct message ...
    fake.click(card, user=CAROL, age=timedelta(minutes=16))
    direct = fake.direct_channel(CAROL)
    dm = chat.reply(f"Only <@{BOB}> can approve this", direct)
    assert dm.content.startswith(f"⚠️ <@{CAROL}>, in reply to you in https://discord.com/channels/{GUILD_ID}/{thread}:")
    # ... and to someone who takes no direct messages, in the thread, mentioning them.
    fake.refuses_direct_messages.add(CAROL)
    fake.click(card, user=CAROL, age=timedelta(minutes=16))
    public = wait_for(lambda: next((m for m in fake.messages(thread) if m.content.startswith(f"⚠️ <@{CAROL}>")
                                    and not m.ephemeral_to), None), what="the refusal in the thread")
    post = next(c for c in fake.calls(MESSAGES) if c.path.endswith(f"/channels/{thread}/messages")
                and c.body.get("content") == public.content)
    assert [str(user) for user in post.body["allowed_mentions"]["users"]] == [CAROL]  # pinged: only them
    wait_for(lambda: [c.status for c in fake.calls(CALLBACK)] == [200, 200, 404, 404],
             what="Discord's 404 for the clicks whose tokens were too old")
    assert fake.message(card.id).edits == 0 and runs_in(counter) == []


def test_card_posted_before_a_restart_works_and_a_redelivered_click_decides_once(
        fake_discord, start_baton, database_url, counter):
    first = start_discord(start_baton, fake_discord, database_url)
    thread = fake_discord.say("run restart service=web")["id"]
    card = first.card(thread)
    first.baton.stop()
    wait_for(lambda: fake_discord.sessions == 0, what="the first session to close")

    # The second Baton has no DISCORD_GATEWAY_URL: it asks GET /gateway/bot where to connect.
    second = start_discord(start_baton, fake_discord, database_url, name="second", gateway=False)
    assert len(fake_discord.calls("GET /gateway/bot")) == 1
    click = fake_discord.click(card, user=BOB)
    fake_discord.redeliver(click)
    second.reply("did restart web", thread)
    edited = wait_for(lambda: (m := fake_discord.message(card.id)) and m.edits and m, what="the card edit")
    assert edited.components == [] and edited.embeds[0]["title"] == "Approved"
    assert f"Approved by <@{BOB}> at" in edited.embeds[0]["description"]
    assert runs_in(counter) == ["restart web"] and edited.edits == 1
    wait_for(lambda: [c["type"] for c in fake_discord.callbacks if c["interaction_id"] == click["id"]] == [6],
             what="one deferred update for the click delivered twice")
    assert len(fake_discord.calls(CALLBACK)) == 1  # the redelivery was a duplicate: not answered again
    assert second.rows("SELECT status, decided_by FROM approvals") == [("approved", BOB)]
    assert second.stored_events() == [thread, click["id"]]


def test_slash_command_defers_then_answers_in_a_thread_on_its_reply(chat, counter):
    fake = chat.fake
    command = fake.slash("run uptime", channel=OPS)
    original = wait_for(lambda: next((m for m in fake.messages(OPS) if m.interaction_id == command["id"]
                                      and m.content), None), what="the deferred reply filled in")
    assert original.content == f"<@{ALICE}> asked: `/baton run uptime`" and not original.flags & 128
    reply = chat.reply("did uptime", original.id)  # the thread on the reply has the reply's id
    assert reply.channel_id == original.id and runs_in(counter) == ["uptime"]
    (deferred,) = fake.callbacks
    assert deferred["type"] == 5  # "thinking...", within Discord's 3 seconds, before anything slow
    assert deferred["at"] <= fake.calls("PATCH /webhooks/{application_id}/{token}/messages/@original")[0].at

    fake.redeliver(command)  # the same interaction again: Discord refuses a second answer, nothing runs
    wait_for(lambda: [c.status for c in fake.calls(CALLBACK)] == [200, 400], what="the refused second answer")
    assert chat.stored_events() == [command["id"]] and runs_in(counter) == ["uptime"]

    inside = fake.slash("help", user=BOB, channel=original.id)  # in a thread: answered in that thread
    chat.reply("Here is what I can do", original.id)
    assert len(fake.threads()) == 1 and chat.stored_events() == [command["id"], inside["id"]]


def slash_reply(fake: FakeDiscord, command: dict[str, Any]) -> FakeMessage:
    """The deferred reply of a ``/baton`` (its thread, if any, has its id)."""
    return wait_for(lambda: next((m for m in fake.messages() if m.interaction_id == command["id"]), None),
                    what="the deferred reply")


def assert_no_traceback(chat: Discord) -> None:
    log = chat.baton.log.read_text()
    assert "Traceback" not in log and "Ignoring exception" not in log


def test_a_slash_command_whose_thread_discord_fails_to_open_at_first_is_answered_once(chat, counter):
    """A 503 when opening the thread on the deferred reply (discord.py does not retry a 503) dropped
    the request and told the channel that Baton lacked permissions. It is tried again."""
    fake = chat.fake
    fake.fail(THREADS, 503, times=2)
    command = fake.slash("run uptime", channel=OPS)
    original = slash_reply(fake, command)
    chat.reply("did uptime", original.id)
    assert [call.status for call in fake.calls(THREADS)] == [503, 503, 201]
    assert fake.message(original.id).content == f"<@{ALICE}> asked: `/baton run uptime`"
    assert not fake.message(original.id).flags & LOADING
    assert fake.messages(OPS) == [fake.message(original.id)]  # no word about permissions in the channel
    assert chat.stored_events() == [command["id"]] and runs_in(counter) == ["uptime"]
    assert_no_traceback(chat)


def test_a_slash_command_whose_reply_cannot_be_edited_is_still_taken_and_thinking_ends(chat, counter):
    """Discord failing the edit of the deferred reply (503s until discord.py gives up) dropped the
    request with a traceback, and "Baton is thinking..." stayed for good. The thread is opened on the
    deferred reply all the same, the request is handed in once, and the echo is tried again."""
    fake = chat.fake
    fake.fail(EDIT_REPLY, 503, times=5)  # discord.py tries a webhook five times (over 25 s; 2.5 s with QUICK_TRIES)
    command = fake.slash("run uptime", channel=OPS)
    original = slash_reply(fake, command)
    chat.reply("did uptime", original.id, timeout=60)
    echoed = wait_for(lambda: (m := fake.message(original.id)) and not m.flags & LOADING and m, 30,
                      "the deferred reply to be filled in")
    assert echoed.content == f"<@{ALICE}> asked: `/baton run uptime`"
    assert [call.status for call in fake.calls(EDIT_REPLY)] == [503] * 5 + [200]
    assert chat.stored_events() == [command["id"]] and runs_in(counter) == ["uptime"]
    assert "its reply could not be edited yet (503" in chat.baton.log.read_text()
    assert_no_traceback(chat)


def test_a_slash_command_without_a_thread_says_why_in_its_reply(chat, counter):
    """No thread can be opened (no permission; Discord failing every try): "thinking" ends with what
    happened and what to do, in the reply itself, and nothing is taken or run."""
    fake = chat.fake
    fake.fail(THREADS, 403)
    refused = fake.slash("run uptime", channel=OPS)
    reply = wait_for(lambda: (m := slash_reply(fake, refused)) and "⚠️" in m.content and m, what="the explanation")
    assert reply.content == (f"<@{ALICE}> asked: `/baton run uptime`\n⚠️ I can't open a thread here (Server error). "
                             "I need the *Create Public Threads* and *Send Messages in Threads* permissions in this "
                             "channel.")

    fake.fail(THREADS, 503, times=5)  # longer than Baton keeps trying
    failing = fake.slash("run uptime", channel=OPS)
    reply = wait_for(lambda: (m := slash_reply(fake, failing)) and "⚠️" in m.content and m, 40, "the explanation")
    assert "⚠️ Discord is having trouble right now (503 Server error): I could not open a thread for your " \
           "request, so nothing was run. Please ask again in a few minutes." in reply.content
    assert not reply.flags & LOADING and fake.threads() == []
    assert fake.messages(OPS) == [fake.message(refused_reply.id) for refused_reply in
                                  (slash_reply(fake, refused), reply)]
    assert chat.stored_events() == [] and runs_in(counter) == []
    assert_no_traceback(chat)


def test_a_message_in_a_thread_baton_does_not_know_survives_discord_failing_to_describe_it(chat, counter):
    """discord.py knows such a thread's messages only by channel id, and asks Discord what it is: a
    503 there (not retried by discord.py) dropped the message with a traceback."""
    fake = chat.fake
    thread = fake.unannounced_thread(OPS)
    fake.fail("GET /channels/{channel_id}", 503, times=2)
    asked = fake.say("run uptime", channel=thread)
    chat.reply("did uptime", thread)
    assert chat.stored_events() == [asked["id"]] and runs_in(counter) == ["uptime"]

    fake.fail("GET /channels/{channel_id}", 503, times=5)  # longer than Baton keeps trying: the person is told
    fake.say("run uptime", channel=thread)
    chat.reply("Discord is having trouble right now (503 Server error), so I could not take your request", thread,
               timeout=40)
    assert "not taken: Discord did not say what the channel is (503 Server error, 5 tries)" in chat.baton.log.read_text()
    assert chat.stored_events() == [asked["id"]] and runs_in(counter) == ["uptime"]
    assert_no_traceback(chat)


def test_a_rate_limited_post_is_waited_out_by_discord_py_and_posted_once(chat, counter):
    fake = chat.fake
    fake.fail(MESSAGES, 429, retry_after=1.5)
    thread = fake.say("run uptime")["id"]
    chat.reply("did uptime", thread)
    posts = fake.calls(MESSAGES)
    assert [call.status for call in posts] == [429, 200]
    assert posts[1].at - posts[0].at >= 1.4, "retry_after was not honoured"
    assert len(fake.messages(thread)) == 1
    wait_for(lambda: chat.rows("SELECT status, attempts FROM outbox") == [("sent", 1)],  # discord.py waited,
             what="the outbox row to be sent at its first attempt")                  # not the outbox
    assert "We are being rate limited" in chat.baton.log.read_text()


def test_a_post_whose_answer_was_lost_is_not_posted_again_when_retried(chat, counter):
    """Discord posted the reply but Baton never heard (a 503 on the way back, not retried by discord.py):
    the outbox's retry posted it a second time. Each try of a step carries the same nonce, which Discord
    enforces."""
    fake = chat.fake
    fake.fail(MESSAGES, 503, after=True)
    thread = fake.say("run uptime")["id"]
    wait_for(lambda: chat.rows("SELECT status, attempts FROM outbox") == [("sent", 2)], what="the retried reply")
    assert [call.status for call in fake.calls(MESSAGES)] == [503, 200]
    assert len([m for m in fake.messages(thread) if "did uptime" in m.content]) == 1


def test_a_refused_token_keeps_the_replies_waiting_instead_of_failing_them(chat, counter):
    """A token reset in the portal (401) marked every reply failed for good."""
    fake = chat.fake
    fake.fail(MESSAGES, 401)
    thread = fake.say("run uptime")["id"]
    waiting = wait_for(lambda: (row := chat.rows("SELECT status, error FROM outbox"))
                       and row[0][1] and "refused Baton's token" in row[0][1] and row,
                       what="the refused reply to be put off")
    assert waiting[0][0] == "pending"
    assert "WARNING" in next(line for line in chat.baton.log.read_text().splitlines()
                             if "Discord refused Baton's token (401" in line)
    with sqlite3.connect(chat.database_url.removeprefix("sqlite:///")) as connection:  # the token put right
        connection.execute("UPDATE outbox SET next_attempt_at = '2000-01-01 00:00:00'")
    chat.reply("did uptime", thread)
    assert [call.status for call in fake.calls(MESSAGES)] == [401, 200]
    wait_for(lambda: chat.rows("SELECT status FROM outbox") == [("sent",)], what="the row recorded sent")


def test_a_rate_limit_discord_py_gives_up_on_goes_back_to_the_outbox_not_lost(chat, counter):
    """discord.py gives up after five 429s in a row, and does not wait out Cloudflare's 429 (no Via
    header) at all: both raised an HTTPException, which made the reply a final failure, never posted."""
    fake = chat.fake
    fake.fail(MESSAGES, 429, times=5, retry_after=0.2)
    fake.fail(MESSAGES, 429, retry_after=1, cloudflare=True)
    thread = fake.say("run uptime")["id"]
    chat.reply("did uptime", thread)
    assert [call.status for call in fake.calls(MESSAGES)] == [429] * 6 + [200]
    assert len(fake.messages(thread)) == 1
    wait_for(lambda: chat.rows("SELECT status, attempts FROM outbox") == [("sent", 3)],
             what="the outbox row to be sent at its third attempt")


def test_long_output_is_previewed_and_attached_in_full(chat, counter):
    thread = chat.fake.say("run long")["id"]
    reply = chat.reply("the whole output is attached as `output.txt`", thread, timeout=30)
    expected = "".join(long_line(n) + "\n" for n in range(LONG_LINES)).rstrip("\n")
    assert reply.files["output.txt"].decode() == expected
    assert f"of {LONG_LINES:,} lines" in reply.content and len(reply.content) <= 2000
    assert all(len(m.content) <= 2000 for m in chat.fake.messages(thread))


async def test_an_edited_message_stays_one_message_however_long_it_grows(fake_discord, monkeypatch):
    """A run's progress message is edited at every step. Once its text took more than one Discord
    message, each edit changed the first and posted the rest again as new messages (three edits
    left five stray copies in the thread). An edit stays one message: the beginning, and the whole
    text attached. (In process: no graph of ``graphs/`` writes that much progress.)"""
    fake = fake_discord
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)  # the adapter sets it process-wide
    settings = Settings(DISCORD_TOKEN=TOKEN, DISCORD_API_URL=fake.api_url, BATON_ADAPTERS="discord")  # type: ignore[call-arg]
    adapter = DiscordAdapter(SimpleNamespace(settings=settings))  # type: ignore[arg-type]
    await adapter.client.login(TOKEN)
    try:
        thread = Location(platform="discord", workspace=GUILD_ID, channel=GENERAL, thread=GENERAL)
        posted = await adapter.send(Delivery(1, "post", thread, Message.text("step 0", tone="progress"), None, None, 1))
        for steps in (16, 24, 32):
            lines = "\n".join(f"step {n}: " + "x" * 150 for n in range(steps))
            await adapter.send(Delivery(steps, "update", thread, Message.text(lines, tone="progress"), None, posted, 1))
        (message,) = fake.messages(GENERAL)
        assert message.id == posted and message.edits == 3 and len(message.content) <= 2000
        assert message.content.startswith("⏳ step 0: ") and message.content.endswith("attached as `message.txt`.")
        assert message.files["message.txt"].decode() == lines
    finally:
        await adapter.client.close()


def test_without_the_message_content_intent_follow_ups_need_a_mention(
        fake_discord_without_content, start_baton, sqlite_url, counter):
    fake = fake_discord_without_content
    chat = start_discord(start_baton, fake, sqlite_url)
    assert not fake.identifies[0]["intents"] & MESSAGE_CONTENT_INTENT  # else Discord closes with 4014
    thread = fake.say("run uptime")["id"]
    chat.reply("did uptime", thread)
    fake.say("help", channel=thread, mention=False)  # arrives with empty content
    mentioned = fake.say("help", channel=thread)
    chat.reply("Here is what I can do", thread)
    assert chat.stored_events() == [thread, mentioned["id"]]
    # A reply to Baton's message pings it: Discord sends the text, with Baton in mentions but not in
    # the text. It was dropped as a follow-up without a mention.
    replied = fake.say("help", channel=thread, mention=False, reply_to=fake.find("did uptime", thread))
    wait_for(lambda: [m for m in fake.messages(thread) if "Here is what I can do" in shown_text(m)][1:],
             what="the answer to the reply")
    assert chat.stored_events() == [thread, mentioned["id"], replied["id"]]
    assert "no Message Content Intent" in chat.baton.log.read_text()


def test_slack_and_discord_in_one_process_share_one_database(fake_discord, fake_slack, start_baton, sqlite_url,
                                                              counter):
    from tests.fake_slack import SlackSender

    slack = fake_slack
    env = {**slack.env(), **fake_discord.env(), "BATON_ADAPTERS": "slack,discord"}
    baton = start_baton(sqlite_url, env=env)
    health = httpx.get(f"{baton.url}/healthz").json()
    assert health["adapters"] == ["discord", "slack"]
    assert health["event_loop"] == "asyncio"  # not uvloop: its fork() per runbook command stalls the process
    wait_for(lambda: fake_discord.sessions == 1, what="the gateway session")
    sender = SlackSender(baton.url)
    event = sender.mention("run uptime", user="U0ALICE001")
    assert sender.send_event(event).status_code == 200
    thread = fake_discord.say("run uptime")["id"]
    wait_for(lambda: slack.find("did uptime", thread=event["ts"]), what="the Slack reply")
    wait_for(lambda: fake_discord.find("did uptime", thread), what="the Discord reply")
    assert runs_in(counter) == ["uptime", "uptime"]
    wait_for(lambda: rows(sqlite_url, "SELECT platform, status FROM outbox ORDER BY platform") == [
        ("discord", "sent"), ("slack", "sent")], what="each platform's reply to be marked sent")
    assert sorted(rows(sqlite_url, "SELECT platform, event_id FROM inbound_events")) == sorted(
        [("discord", thread), ("slack", f"{event['channel']}:{event['ts']}")])
    assert len(slack.messages()) == 1 and len(fake_discord.messages()) == 1


# -- rendering and delivery decisions, without a process -------------------------------------------


def test_card_renders_as_one_embed_with_buttons_carrying_only_the_approval_id():
    message = Message(title="Approval needed", tone="approval", parts=[
        Text(text="Restart web for 1100000000000000101? See https://discord.com/channels/1/1100000000000000011"),
        Code(text="requested_by: 1100000000000000101"), Note(text="approvers: discord:1100000000000000102, bob"),
        ThreadLink(label="the [other] thread", channel="1", thread="1100000000000000555"),
        Buttons(approval_id="abc_DEF-123")], people=["1100000000000000101"])
    (outgoing,) = discord_render.render(message, GUILD_ID)
    assert outgoing.content is None and outgoing.approval is not None
    embed = outgoing.embed.to_dict()
    assert embed["title"] == "Approval needed" and embed["color"] == discord_render.TONE_COLOUR["approval"]
    assert embed["description"].split("\n") == [
        "Restart web for <@1100000000000000101>? See https://discord.com/channels/1/1100000000000000011",
        "```", "requested_by: 1100000000000000101", "```",  # ids in code stay as they are
        "-# approvers: <@1100000000000000102>, bob",
        f"[the (other) thread](https://discord.com/channels/{GUILD_ID}/1100000000000000555)"]
    view = card_view(outgoing.approval)
    assert view.timeout is None and view.is_persistent()
    assert [(b.item.custom_id, b.item.label, b.item.style) for b in view.children] == [  # type: ignore[attr-defined]
        ("baton:approve:abc_DEF-123", "Approve", discord.ButtonStyle.primary),
        ("baton:reject:abc_DEF-123", "Reject", discord.ButtonStyle.danger)]


def test_the_cores_single_star_bold_is_bold_on_discord_not_italics():
    message = Message(parts=[Text(text="*Approvals*: 2 granted; `*glob*` and 2 * 3 stay; **already** too"),
                             Note(text="approved by *alice*")])
    (outgoing,) = discord_render.render(message, GUILD_ID)
    assert outgoing.content is not None
    assert outgoing.content.split("\n") == ["**Approvals**: 2 granted; `*glob*` and 2 * 3 stay; **already** too",
                                             "-# approved by **alice**"]


def test_choice_buttons_carry_their_value_and_labels_fit_discord():
    buttons_part = Buttons(approval_id="a1", options=[ButtonOption(value="summarize", label="summarize", style="primary"),
                                                      ButtonOption(value="announce", label="a" * 100)])
    view = card_view(buttons_part)
    first, second = (child.item for child in view.children)  # type: ignore[attr-defined]
    assert [first.custom_id, second.custom_id] == ["baton:summarize:a1", "baton:announce:a1"]
    assert len(second.label) == 80 and second.label.endswith("…") and second.style == discord.ButtonStyle.secondary
    with pytest.raises(ValueError, match="custom_id"):
        discord_render.render(Message(parts=[Buttons(approval_id="x" * 90)]), GUILD_ID)


def test_long_text_is_split_over_messages_within_discord_limits_and_nothing_is_lost():
    text = "\n".join(f"paragraph {n}: " + "word " * 30 for n in range(400))  # ~64,000 characters
    rendered = discord_render.render(Message(parts=[Text(text=text)], tone="success"), GUILD_ID)
    assert len(rendered) > 30 and all(o.embed is None and not o.files for o in rendered)
    assert all(len(o.content or "") <= 2000 for o in rendered)
    assert "\n".join(o.content or "" for o in rendered) == "✅ " + text
    assert split_text("a" * 5000 + "\nb\n", 1900) == ["a" * 1900, "a" * 1900, "a" * 1200 + "\nb\n"]


def test_a_card_too_long_for_an_embed_stays_one_message_and_attaches_the_whole_text():
    summary = "\n".join(f"step {n}: " + "check " * 20 for n in range(100))  # ~13,000 characters
    message = Message(title="Approval needed", tone="approval", parts=[Text(text=summary), Buttons(approval_id="a1")])
    (outgoing,) = discord_render.render(message, GUILD_ID)
    description = outgoing.embed.description
    assert len(description) <= 4096 and description.endswith("all of it is attached as `message.txt`.")
    assert outgoing.approval is not None
    assert [f.filename for f in outgoing.files] == ["message.txt"]
    assert outgoing.files[0].content.decode() == message.plain_text()


async def test_discord_answers_become_retry_decisions():
    async def rate_limited() -> None:
        raise discord.RateLimited(45.0)

    with pytest.raises(RetryLater) as waited:
        await _step(rate_limited)()
    assert waited.value.seconds == 45.0

    class Response:
        status, reason = 403, "Forbidden"

    async def forbidden() -> None:
        raise discord.Forbidden(Response(), {"message": "Missing Permissions", "code": 50013})  # type: ignore[arg-type]

    with pytest.raises(DeliveryRejected, match="403 Missing Permissions"):
        await _step(forbidden)()

    class Unauthorized:
        status, reason = 401, "Unauthorized"

    async def bot_token_reset() -> None:
        raise discord.HTTPException(Unauthorized(), {"message": "401: Unauthorized", "code": 0})  # type: ignore[arg-type]

    async def follow_up_token_expired() -> None:  # an interaction's webhook token, not the bot's
        raise discord.HTTPException(Unauthorized(), {"message": "Invalid Webhook Token", "code": 50027})  # type: ignore[arg-type]

    with pytest.raises(RetryLater, match="refused Baton's token") as kept:
        await _step(bot_token_reset)()
    assert kept.value.warn and kept.value.seconds == 300
    with pytest.raises(DeliveryRejected, match="401 Invalid Webhook Token"):  # not blamed on DISCORD_TOKEN
        await _step(follow_up_token_expired)()


def test_a_refused_token_stops_the_start_in_one_line(fake_discord, start_baton, sqlite_url):
    with pytest.raises(AssertionError, match=r"Baton cannot start: Discord refused DISCORD_TOKEN") as refused:
        start_baton(sqlite_url, name="wrong-token", env=fake_discord.env() | {"DISCORD_TOKEN": "revoked"})
    assert "Traceback" not in str(refused.value) and "revoked" not in str(refused.value)


@pytest.mark.postgres
def test_a_request_made_while_the_database_is_away_is_answered_with_why_not_lost(
        fake_discord: FakeDiscord, proxy: Any, start_baton: Any, postgres_url: str, counter: Path) -> None:
    """Discord sends a gateway event once: a mention or a /baton while Baton's database was away was lost
    without a word to the person (a traceback in the log for each, "something went wrong" for the command)."""
    chat = start_discord(start_baton, fake_discord, proxy.url(postgres_url))
    fake = chat.fake
    proxy.cut()
    asked = fake.say("run uptime", channel=OPS)  # in a channel: a thread is opened on it, and the answer goes there
    chat.reply("my database cannot be reached, so nothing was run", asked["id"])
    command = fake.slash("run uptime", channel=OPS)
    wait_for(lambda: (m := slash_reply(fake, command)) and "my database cannot be reached" in m.content,
             20, "the command's answer")
    fake.say("thanks", channel=asked["id"], mention=False)  # talk in the thread: no answer, as ever

    proxy.restore()
    wait_for(lambda: httpx.get(f"{chat.baton.url}/readyz", timeout=15).status_code == 200, 30, "the database back")
    fake.say("run uptime", channel=asked["id"])  # asked again, as told
    chat.reply("did uptime", asked["id"])
    assert runs_in(counter) == ["uptime"]
    assert [m.content for m in fake.messages(asked["id"])].count(
        "⚠️ I could not take this just now: my database cannot be reached, so nothing was run. Please ask again "
        "in a few minutes.") == 1  # not for "thanks"
    log = chat.baton.log.read_text()
    assert "Traceback" not in log and "not taken, Baton's database cannot be used" in log
