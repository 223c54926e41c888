"""The Discord adapter, fourth hunt: what a Discord server team meets with long answers and busy
servers. Covered here: a reply whose markdown holds a code block longer than one message, ids and
stars inside a code block or a link's address, three backticks before a long line, blank lines
around a block, a message with only a file in a thread's history, @here/@everyone/role mentions in
output (no ping), and mentions in a thread's name (a member's nickname, not a raw ``<@id>``)."""

from __future__ import annotations

import re
import time

import pytest

from bot.messages import Location, Message, Text
from bot.outbox import Delivery
from tests.fake_discord import (ALICE, BOB, BOT_ID, GENERAL, GUILD_ID, OPS, STRANGER, FakeMessage, member_json,
                                snowflake, user_json)
from tests.support import wait_for
from tests.test_discord import chat, config_path, fake_discord  # noqa: F401 (fixtures)
from tests.test_discord_hunt import HERE, adapter, delivery  # noqa: F401 (fixtures)

FENCE = re.compile(r"^```[^\n]*\n(.*?)\n```$", re.S | re.M)


async def test_a_code_block_longer_than_a_message_is_split_into_closed_blocks_nothing_lost(fake_discord, adapter):
    """A graph's answer with a 3,500-character code block was split at a line inside the block: the
    first message opened it and never closed it, the second showed the code as markdown (ids as
    mentions, stars as bold) and the third closed a block it had not opened, swallowing what followed.
    Each message now closes the block it opens and the next opens it again, with its language."""
    code = "\n".join(f"line {n}: *value* {n:018d}" + " x" * 20 for n in range(60))
    await adapter.send(delivery(1, Message(tone="success", parts=[Text(text=f"Here:\n```python\n{code}\n```\nafter")])))
    sent = [message.content for message in fake_discord.messages(GENERAL)]
    assert len(sent) > 1 and all(len(content) <= 2000 for content in sent)
    assert all(content.count("```") % 2 == 0 for content in sent), sent
    assert all("```python\n" in content for content in sent)
    assert sent[0].startswith("✅ Here:\n```python\n") and sent[-1].endswith("\n```\nafter")
    shown = "\n".join(block for content in sent for block in FENCE.findall(content))
    assert shown == code  # as written, in order, nothing lost: no <@...>, no **bold** inside code


async def test_ids_and_stars_inside_a_code_block_of_a_reply_are_shown_as_written(fake_discord, adapter):
    """Inside a fenced block of a reply, a user id became ``<@id>`` and ``f(*a*)`` became ``f(**a**)``
    (Discord shows code literally, so the log read differently from what the command printed)."""
    text = "Ran by 123456789012345678:\n```\nuser 123456789012345678 called f(*a*)\n```\n*done*"
    await adapter.send(delivery(1, Message(tone="info", parts=[Text(text=text)], people=["123456789012345678"])))
    (message,) = fake_discord.messages(GENERAL)
    assert message.content == ("Ran by <@123456789012345678>:\n```\nuser 123456789012345678 called f(*a*)\n```\n"
                               "**done**")


async def test_a_message_with_only_a_file_is_not_an_empty_line_in_a_threads_history(fake_discord, adapter):
    """Someone posted a log file with no text in the thread: ``summarize`` and the assistant read the
    thread's history, where that message was an empty line (``alice: ``). It now names its files."""
    for message_id, content, files in (("9001", "here is the log", {}), ("9002", "", {"deploy.log": b"boom"}),
                                       ("9003", "and a screenshot", {"screen.png": b"png"})):
        fake_discord._messages[message_id] = FakeMessage(id=message_id, channel_id=GENERAL, author_id=ALICE,
                                                        content=content, files=files)
    adapter.reads_content = True
    seen = await adapter.history(Location(platform="discord", workspace=GUILD_ID, channel=GENERAL, thread=GENERAL), 10)
    assert [entry["text"] for entry in seen or []] == [
        "here is the log", "(attached: deploy.log)", "and a screenshot\n(attached: screen.png)"]


async def test_here_everyone_and_role_mentions_in_output_ping_no_one(fake_discord, adapter):
    """A runbook's output (or a graph's answer) holding ``@here``, ``@everyone`` or a role mention must
    not ping the server, whether posted, edited in (a run's progress), or in a private reply that falls
    back to the thread with a mention of the person who clicked (who alone may be pinged)."""
    loud = "deploy done @here @everyone <@&123456789012345678>"
    posted = await adapter.send(delivery(1, Message(tone="progress", parts=[Text(text=loud)])))
    await adapter.send(delivery(2, Message(tone="progress", parts=[Text(text=loud + " again")]), "update", posted))
    private = Delivery(3, "ephemeral", HERE, Message(tone="info", parts=[Text(text=loud)]), ALICE, None, 1)
    await adapter.send(private)
    calls = [call for call in fake_discord.calls() if call.route.startswith(("POST /channels", "PATCH /channels"))
             and "content" in call.body]
    assert len(calls) >= 3
    for call in calls:
        mentions = call.body.get("allowed_mentions")
        assert mentions is not None and mentions.get("parse") == [] and not mentions.get("roles"), call
        assert set(mentions.get("users", [])) <= {int(ALICE), ALICE}, call


def test_a_long_line_after_three_backticks_is_prose_and_every_message_fits():
    """Three backticks followed by a long sentence (no language) open no block with a long "language":
    the text is split as before, every message within Discord's 2,000 characters."""
    from adapters.discord_render import render

    text = "```" + "word " * 800 + "\nmore\n```\n```py" + " " * 3000 + "\nend"
    sent = render(Message(tone="info", parts=[Text(text=text)]), GUILD_ID)
    assert sent and all(len(outgoing.content or "") <= 2000 for outgoing in sent)
    assert "".join(outgoing.content or "" for outgoing in sent).replace("\n", "") == text.replace("\n", "")


def test_a_threads_name_shows_people_by_their_nickname_not_as_a_raw_mention(chat, counter):
    """``@Baton run uptime for @Bob`` opened a thread named "run uptime for <@2222...>": a thread's
    name shows no markdown. It is named with Bob's nickname in the server, as Discord shows him."""
    fake = chat.fake
    message_id = snowflake()
    content = f"<@{BOT_ID}> run uptime for <@{BOB}>"
    fake._messages[message_id] = FakeMessage(id=message_id, channel_id=OPS, author_id=ALICE, content=content)
    bob = {**user_json(BOB), "member": {**{k: v for k, v in member_json(BOB).items() if k != "user"}, "nick": "Bobby"}}
    fake.dispatch("MESSAGE_CREATE", {
        **fake._messages[message_id].json(), "mention_roles": [],
        "mentions": [{**user_json(BOT_ID), "member": member_json(BOT_ID)}, bob],
        "member": {k: v for k, v in member_json(ALICE).items() if k != "user"}})
    wait_for(lambda: any(thread["id"] == message_id for thread in fake.threads()), what="the thread")
    (named,) = [thread["name"] for thread in fake.threads() if thread["id"] == message_id]
    assert named == "run uptime for @Bobby"


def test_blank_lines_around_a_code_block_are_kept():
    from adapters.discord_render import render

    text = "Here:\n\n```sh\nuptime\n```\n\nafter\n\n\nend"
    (sent,) = render(Message(tone="info", parts=[Text(text=text)]), GUILD_ID)
    assert sent.content == text


async def test_an_id_in_a_links_address_is_not_made_a_mention(fake_discord, adapter):
    """A graph's answer linking a trace (``...?trace=1234567890123456789&q=*errors*``) had the id in the
    address turned into ``<@1234567890123456789>`` and the stars into bold: the link led nowhere. A link's
    address is shown as written; an id in the prose around it is still a mention."""
    link = "https://grafana.example.com/explore?trace=1234567890123456789&q=*errors*"
    text = f"Slow request by 123456789012345678: {link} and [the same]({link})"
    await adapter.send(delivery(1, Message(tone="info", parts=[Text(text=text)], people=["123456789012345678"])))
    (message,) = fake_discord.messages(GENERAL)
    assert message.content == f"Slow request by <@123456789012345678>: {link} and [the same]({link})"


def test_a_code_block_whose_closing_line_is_long_is_split_and_nothing_is_lost() -> None:
    """A block closed at the end of a long line (`...last line```, as a runbook's output or a pasted log may
    end) took that whole line for the closing fence: no room was left for the code in a message, and the split
    never ended, which would have held Baton's event loop for good."""
    import threading

    from adapters.contract import split_text
    from adapters.discord_render import _text_blocks

    text = "```\nfirst line\n" + "x" * 2500 + "```"
    blocks: list[list[str]] = []
    worker = threading.Thread(target=lambda: blocks.append(_text_blocks(text)), daemon=True)
    worker.start()
    worker.join(10)
    assert blocks, "the split did not end"
    [pieces] = blocks
    assert all(len(piece) <= 2000 and piece.startswith("```") and piece.endswith("```") for piece in pieces), pieces
    shown = "".join(piece.removeprefix("```\n").removesuffix("\n```") for piece in pieces)
    assert shown.replace("\n", "") == "first line" + "x" * 2500  # every character, in its order
    with pytest.raises(ValueError):
        split_text("abc", 0)  # no piece could hold a character: refused, not an endless loop


def test_a_slash_commands_thread_shows_the_people_and_channels_it_names_as_people_read_them(chat, counter):
    """``/baton run uptime for @Bob`` opened a thread named "run uptime for <@2222...>": a slash command's text
    comes with its mentions unresolved. Bob is asked of Discord; a channel is read from the server; someone
    Discord cannot name (not a member) stays as written."""
    fake = chat.fake
    command = fake.slash(f"run uptime for <@!{BOB}> in <#{OPS}>, cc <@{STRANGER}> and <@{BOB}>", channel=OPS)
    thread = wait_for(lambda: next((thread for thread in fake.threads()
                                    if (reply := fake.message(thread["id"])) and reply.interaction_id == command["id"]),
                                   None), what="the /baton's thread")
    assert thread["name"] == f"run uptime for @Bob in #ops, cc <@{STRANGER}> and @Bob"
    chat.reply("Nothing was run", thread["id"])  # uptime takes no arguments: the request is answered in it
    members = [call.path for call in fake.calls("GET /guilds/{guild_id}/members/{user_id}")]
    assert sum(path.endswith(f"/members/{BOB}") for path in members) == 1  # named twice, asked once


def test_a_long_rate_limit_on_one_thread_does_not_silence_the_other_threads_of_its_channel(chat, counter):
    """On Discord a thread is a channel of its own (its own id, its own rate limits), yet a long 429 on one thread's
    message (one discord.py does not wait out) held every thread of the parent channel for as long: another
    request's answer in a sibling thread waited out a rate limit that was never its own."""
    fake = chat.fake
    fake.fail("POST /channels/{channel_id}/messages", 429, retry_after=35)  # longer than discord.py waits (30 s)
    first = fake.say("run uptime")["id"]
    wait_for(lambda: any(call.status == 429 for call in fake.calls("POST /channels/{channel_id}/messages")),
             what="the first reply's 429")
    asked = time.monotonic()
    second = fake.say("help")["id"]  # another request, another thread of the same channel
    chat.reply("Here is what I can do", second, timeout=33)
    waited = time.monotonic() - asked
    assert waited < 10, f"the sibling thread's answer waited {waited:.0f} s for thread {first}'s rate limit"
