"""Command output is code, shown verbatim whatever it prints: a ``` in it, a user id, markup.

The runbook graph used to build its reply as text with the output between ``` fences, and the core
split that text on ```: output after a fence of its own became formatted text (on Discord, an id in
it a mention), and a backtick in the shown command broke its inline code. Slack and Discord have no
escape inside a fenced block (its first ``` closes it): a run of backticks in code is broken with
zero-width spaces, which Slack and Discord show as nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters import discord_render, slack_blocks
from bot import replies
from bot.messages import Code, Message, Text, fence_safe
from tests import test_discord
from tests.fake_discord import OPS, FakeDiscord
from tests.fake_slack import FakeSlack, SlackSender
from tests.support import ON_SQLITE_ONLY, runs_in, wait_for, write_config

ZWSP = "\u200b"
SNOWFLAKE = "123456789012345678"
SLACK_USER = "U0ALICE001"
# What the `fence` runbook prints: a fence of its own, an id, markup, a longer fence, a tick.
SCRIPT = ('print("```"); print("*not bold* ' + SNOWFLAKE + " " + SLACK_USER + ' <!channel> & <b>"); '
          'print("````"); print("`tick` done")')
OUTPUT = f"```\n*not bold* {SNOWFLAKE} {SLACK_USER} <!channel> & <b>\n````\n`tick` done"
COMMAND = f"{sys.executable} -c '{SCRIPT}'"  # as the reply shows it (shlex.join)
NASTY = f"before\n```\n{SNOWFLAKE} *b*\n````\n``````\nafter ``` `x`\n```"


@pytest.fixture
def config_path(tmp_path: Path, counter: Path) -> Path:
    """The usual runbooks, plus `fence` (prints OUTPUT) and `fence-risky` (the same, high risk)."""
    path = write_config(tmp_path, counter)
    config = yaml.safe_load(path.read_text())
    command = [sys.executable, "-c", SCRIPT]
    config["runbooks"]["fence"] = {"description": "Prints a fence.", "command": command, "risk": "low", "timeout": 10}
    config["runbooks"]["fence-risky"] = {"description": "Prints a fence, riskily.", "command": command,
                                         "risk": "high", "timeout": 10}
    path.write_text(yaml.safe_dump(config))
    return path


def slack_code(block: dict[str, Any]) -> str:
    """A fenced Slack section's code, as a person reads it."""
    text = block["text"]["text"]
    assert text.startswith("```\n") and text.endswith("\n```"), text
    body = text.removeprefix("```\n").removesuffix("\n```")
    assert "```" not in body, f"a fence inside closes the block early: {body!r}"
    return slack_blocks.unescape(body).replace(ZWSP, "")


def discord_code(content: str) -> list[str]:
    """The code blocks of Discord content, as Discord's parser finds them (the first ``` closes one)."""
    blocks, rest = [], content
    while "```" in rest:
        _before, _open, rest = rest.partition("```\n")
        body, closed, rest = rest.partition("\n```")
        assert closed, content
        blocks.append(body.replace(ZWSP, ""))
        assert "```" not in body
    return blocks


# -- the renderers -------------------------------------------------------------------------------


def test_fence_safe_leaves_no_fence_and_changes_nothing_else():
    for text in ["```", "````", "``````", "a```b````c", NASTY, "``", "`a`"]:
        safe = fence_safe(text)
        assert "```" not in safe and safe.replace(ZWSP, "") == text
    assert fence_safe("`a` `` b") == "`a` `` b"


def test_slack_shows_code_with_fences_inside_verbatim():
    rendered = slack_blocks.render(Message(parts=[Text(text="out:"), Code(text=NASTY)]), lambda c, t: "")
    (message,) = rendered.messages
    text_block, code_block = message["blocks"]
    assert slack_code(code_block) == NASTY
    assert "<@" not in code_block["text"]["text"]  # ids in code are no mentions


def test_slack_splits_code_full_of_backticks_within_a_section():
    """The zero-width spaces count: the pieces were cut before, and a section went over 3,000."""
    text = "\n".join("`" * 60 for _ in range(200))  # 12,200 characters, 16,000 once broken
    rendered = slack_blocks.render(Message(parts=[Code(text=text)]), lambda c, t: "", files=False)
    blocks = [block for message in rendered.messages for block in message["blocks"]]
    assert all(len(block["text"]["text"]) <= 3000 for block in blocks)
    assert "".join(slack_code(block) + "\n" for block in blocks).rstrip("\n") == text


def test_discord_shows_code_with_fences_inside_verbatim():
    (outgoing,) = discord_render.render(Message(parts=[Text(text="out:"), Code(text=NASTY)]), "1")
    assert outgoing.content is not None
    assert discord_code(outgoing.content) == [NASTY]
    assert f"<@{SNOWFLAKE}>" not in outgoing.content


def test_discord_splits_long_code_full_of_backticks_within_messages():
    text = "\n".join("`" * 60 + f" {SNOWFLAKE}" for _ in range(40))  # under the preview's limit
    outgoing = discord_render.render(Message(parts=[Code(text=text)]), "1")
    assert all(o.content is not None and len(o.content) <= discord_render.CONTENT_CHARS for o in outgoing)
    assert "\n".join(block for o in outgoing for block in discord_code(o.content or "")) == text


def test_a_text_reply_with_a_fence_still_splits_into_code():
    """Graphs that reply with text keep their ```fenced``` blocks as code parts."""
    message = replies.result("Here:\n```\nls -l\n```\nDone.", failed=False)
    assert [(p.kind, p.text) for p in message.parts] == [("text", "Here:"), ("code", "ls -l"), ("text", "Done.")]


# -- end to end ------------------------------------------------------------------------------------


@ON_SQLITE_ONLY
def test_runbook_output_with_a_fence_is_one_code_part_in_the_playground(baton, counter):
    pg = baton.client()
    thread = pg.ask("@baton run fence")
    reply = pg.wait_reply(thread, "finished")
    parts = [(part["kind"], part["text"]) for part in reply["content"]["parts"]]
    # The command holds backticks, so it cannot be inline code: it is a code part, verbatim, too.
    assert parts == [("text", "This command finished:"), ("code", COMMAND), ("code", OUTPUT)]
    assert reply["content"]["tone"] == "success"

    plain = pg.ask("@baton run uptime")  # a command inline code can hold stays inline
    done = pg.wait_reply(plain, "did uptime")
    assert done["content"]["parts"][0]["text"].endswith("uptime` finished.")

    risky = pg.ask("@baton run fence-risky")
    pg.wait_reply(risky, "Plan: run the command shown on the card below (timeout 10s)")
    card = pg.wait_card(risky)
    assert ("code", f"command: {COMMAND}\ntimeout: 10s") in [(p["kind"], p.get("text")) for p in card["content"]["parts"]]
    assert runs_in(counter) == ["uptime"]


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()


def test_runbook_output_with_a_fence_is_code_on_slack(fake_slack, start_baton, sqlite_url):
    baton = start_baton(sqlite_url, env=fake_slack.env())
    sender = SlackSender(baton.url)
    event = sender.mention("run fence", user="U0BOB00002")
    assert sender.send_event(event).status_code == 200
    reply = wait_for(lambda: fake_slack.find("finished", thread=event["ts"]), what="the reply")
    text, command, output = reply.blocks
    assert text["text"]["text"] == ":white_check_mark: This command finished:"
    assert slack_code(command) == COMMAND and slack_code(output) == OUTPUT
    assert "<@" not in output["text"]["text"] and "&lt;!channel&gt;" in output["text"]["text"]


@pytest.fixture
def fake_discord() -> Iterator[FakeDiscord]:
    fake = FakeDiscord().start()
    yield fake
    fake.stop()


def test_runbook_output_with_a_fence_is_code_on_discord(fake_discord, start_baton, sqlite_url):
    chat = test_discord.start_discord(start_baton, fake_discord, sqlite_url)
    asked = fake_discord.say("run fence", channel=OPS)
    reply = chat.reply("finished", asked["id"])
    assert reply.content.startswith("✅ This command finished:\n")
    assert discord_code(reply.content) == [COMMAND, OUTPUT]
    assert f"<@{SNOWFLAKE}>" not in reply.content
