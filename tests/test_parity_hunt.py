"""What a team sees in Slack and in Discord against the playground: whom ``status`` names, long listings on Discord."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters import discord_render, slack_blocks
from adapters.contract import DATABASE_AWAY_ANSWER, DATABASE_AWAY_CLICK
from bot.messages import Image, Message, Note, Text, ThreadLink
from tests import fake_discord as discord_side
from tests.fake_discord import FakeDiscord
from tests.fake_slack import FakeSlack, SlackSender, shown_text
from tests.test_discord import Discord, chat, fake_discord  # noqa: F401 (fixtures)
from tests.support import runs_in, wait_for, write_config
from tests.test_database_outage import proxy  # noqa: F401 (a fixture: the database behind a TCP proxy)
from tests.test_slack import ALICE, BOB, GENERAL, Slack, fake_slack, slack  # noqa: F401 (fixtures)

PERSON = "123456789012345678"
APPROVERS = ["223456789012345678", "323456789012345678"]
RUNBOOKS = 30  # as many as help lists with their example


@pytest.fixture
def config_path(tmp_path: Path, counter: Path) -> Path:
    """The usual runbooks, and a team's worth more, each described at the length help shows."""
    path = write_config(tmp_path, counter, approvers=[f"slack:{BOB}", f"discord:{discord_side.BOB}"])
    more = "".join(f"""
  check-{number}:
    description: Checks that the service number {number} answers on every host of every region, then says which
      hosts are slow, which are down, and which were not reached at all, with the time each one took.
    command: ["true"]
    risk: low
""" for number in range(RUNBOOKS))
    path.write_text(path.read_text().replace("runbooks:\n", f"runbooks:{more}", 1))
    return path


def test_on_slack_status_names_who_asked_as_a_mention_after_the_threads_link(slack: Slack) -> None:  # noqa: F811
    """A link's words show an id as the id (Slack's ``<url|label>`` holds no mention): ``status`` listed
    "run restart service=web — waiting for approval (asked by U0ALICE001, 5s)", where the playground says alice."""
    waiting = slack.mention("run restart service=web", user=ALICE)["ts"]
    slack.card(waiting)
    asked = slack.mention("status", user=BOB)["ts"]
    shown = shown_text(slack.reply("waiting for approval", asked))
    assert f"(asked by> <@{ALICE}>, " in shown and f"by {ALICE}" not in shown, shown
    assert f"/p{waiting.replace('.', '')}|run restart service=web — waiting for approval (asked by>" in shown, shown


def test_on_discord_status_names_who_asked_as_a_mention_after_the_threads_link(
        chat: Discord, fake_discord: FakeDiscord) -> None:  # noqa: F811
    waiting = fake_discord.say("run restart service=web", user=discord_side.ALICE)["id"]
    chat.card(waiting)
    asked = fake_discord.say("status", user=discord_side.BOB)["id"]
    shown = discord_side.shown_text(chat.reply("waiting for approval", asked))
    assert f"/{waiting}) <@{discord_side.ALICE}>, " in shown and f"by {discord_side.ALICE}" not in shown, shown
    assert "[run restart service=web — waiting for approval (asked by](https://discord.com/channels/" in shown, shown


def _status(threads: int) -> Message:
    """``status`` as graphs/status.py writes it for a busy channel (it lists 20 at most)."""
    parts: list[object] = []
    for number in range(threads):
        parts += [ThreadLink(label=f"run deploy service=api{number} — waiting for approval (asked by {PERSON}, 2h)",
                             channel="1", thread=str(10**17 + number)),
                  Note(text=f"waiting 2h for {', '.join(APPROVERS)}, expires in 3h: Run `deploy`: Deploys the "
                            "service to production behind a canary, then to every region")]
    parts.append(Note(text="…and 40 more (the 20 that have waited longest are listed)."))
    return Message(title="Status: 60 active threads", parts=parts, people=[PERSON, *APPROVERS])


def test_on_discord_a_long_status_goes_on_in_the_next_embeds_not_into_a_file() -> None:
    """An embed holds 4,096 characters: ``status`` of a busy channel showed 15 of its 20 threads and put the rest in
    ``message.txt``, without links or names, where Slack shows them all. Only a card must stay one message."""
    message = _status(20)
    rendered = discord_render.render(message, discord_side.GUILD_ID)
    assert len(rendered) > 1 and all(not outgoing.files and outgoing.embed is not None for outgoing in rendered)
    titles = [outgoing.embed.title for outgoing in rendered if outgoing.embed is not None]
    assert titles == ["Status: 60 active threads"] + [None] * (len(rendered) - 1)
    descriptions = [outgoing.embed.description or "" for outgoing in rendered]
    assert all(len(description) <= 4096 for description in descriptions)
    shown = "\n".join(descriptions)
    assert all(f"/{10**17 + number})" in shown for number in range(20)) and "message.txt" not in shown
    assert shown.count("```") == 0 and shown.endswith("the 20 that have waited longest are listed).")
    (slack_message,) = slack_blocks.render(message, lambda channel, ts: f"https://x.slack.com/{channel}/{ts}").messages
    assert len(slack_message["blocks"]) == 42  # Slack showed all along: one message


def test_on_discord_a_long_help_keeps_code_blocks_whole_across_embeds() -> None:
    """Where one embed ends and the next begins is between blocks: a code block is never cut in two."""
    code = "```\n" + "\n".join(f"line {number}" for number in range(150)) + "\n```"
    message = Message(title="Baton help", parts=[Text(text="\n".join(f"• `run book{n} host=<...>` — does {n}"
                                                                      for n in range(120))), Text(text=code)])
    rendered = discord_render.render(message, discord_side.GUILD_ID)
    assert len(rendered) > 1
    for outgoing in rendered:
        assert outgoing.embed is not None and (outgoing.embed.description or "").count("```") % 2 == 0


def test_on_discord_a_long_picture_description_or_link_label_is_split_not_refused() -> None:
    """Discord refuses a message over 2,000 characters whole; Slack's renderer splits these two already."""
    picture = base64.b64encode(b"\x89PNG\r\n").decode()
    alt = "Latency by host over the day: " + "web-17 climbs at noon and falls back by two; " * 60
    label = "the thread where " + "we looked at it " * 150
    for message, repeated, times in [
            (Message(parts=[Text(text="The chart:"), Image(alt=alt, data=picture, filename="latency.png")]),
             "web-17 climbs at noon", 60),
            (Message(parts=[ThreadLink(label=label, channel="1", thread="2")]), "we looked at it", 150)]:
        contents = [outgoing.content or "" for outgoing in discord_render.render(message, discord_side.GUILD_ID)]
        assert len(contents) > 1 and all(len(content) <= 2000 for content in contents), [len(c) for c in contents]
        joined = "".join(contents).replace("-# ", "").replace("](https://discord.com/channels/", "](")
        assert joined.replace(f"]({discord_side.GUILD_ID}/2)", "").count(repeated) == times  # nothing lost
    assert contents[0].startswith("[the thread where we looked at it") and "](https://discord.com/" in contents[0]


def test_on_discord_a_picture_description_split_over_messages_stays_small_print() -> None:
    picture = base64.b64encode(b"\x89PNG\r\n").decode()
    alt = "Latency by host over the day: " + "web-17 climbs at noon and falls back by two; " * 60
    rendered = discord_render.render(Message(parts=[Image(alt=alt, data=picture, filename="latency.png")]),
                                     discord_side.GUILD_ID)
    lines = [line for outgoing in rendered for line in (outgoing.content or "").split("\n") if line]
    assert len(rendered) > 1 and all(line.startswith("-# ") for line in lines), lines


def test_a_long_line_is_split_between_words_so_a_list_of_names_keeps_its_code_spans() -> None:
    """``help`` names the runbooks past its first 30 on one line, each as `code`: split at a character count, a
    name was cut in two, and on Slack the next section showed the names as prose and the commas as code."""
    names = [f"`restart-service-{number}`" for number in range(270)]
    message = Message(title="Baton help", parts=[Text(text=f"…and 270 more runbooks: {', '.join(names)}")])
    (slack_message,) = slack_blocks.render(message, lambda channel, ts: "https://x.slack.com/").messages
    sections = [block["text"]["text"] for block in slack_message["blocks"][1:]]
    assert len(sections) > 1 and all(section.count("`") % 2 == 0 for section in sections), sections
    descriptions = [outgoing.embed.description or "" for outgoing in discord_render.render(message, "1")
                    if outgoing.embed is not None]
    shown = [name for description in descriptions for name in description.replace(",", " ").split()]
    assert shown[4:] == names and all(description.count("`") % 2 == 0 for description in descriptions)


def test_on_discord_a_link_label_holding_an_address_or_a_mention_stays_a_link() -> None:
    """Discord shows a masked link whose words hold an address (discord/discord-api-docs#7721) or its own markup
    (a mention, a channel) as its markdown: ``status`` of "run check url=https://..." was "[run check url=https://
    api.example.com — running (asked by](https://discord.com/channels/...)" in the channel."""
    def shown(label: str) -> str:
        message = Message(parts=[ThreadLink(label=label, channel="1", thread="2")], people=[PERSON])
        (outgoing,) = discord_render.render(message, discord_side.GUILD_ID)
        return outgoing.content or ""

    link = f"](https://discord.com/channels/{discord_side.GUILD_ID}/2)"
    assert shown(f"run check url=https://api.example.com — running (asked by {PERSON}, 5m)") == (
        f"[run check url={link}https://api.example.com — running (asked by <@{PERSON}>, 5m)")
    assert shown(f"ask <@{APPROVERS[0]}> in <#{APPROVERS[1]}> — running") == (
        f"[ask{link} <@{APPROVERS[0]}> in <#{APPROVERS[1]}> — running")
    grafana = "https://grafana.example.com/d/1 — running"
    assert shown(grafana) == f"[open{link} {grafana}"


def test_on_discord_help_for_a_team_with_many_runbooks_shows_them_all_in_the_channel(
        chat: Discord, fake_discord: FakeDiscord) -> None:  # noqa: F811
    """``help`` lists a team's runbooks with their description: on Discord the second half of them was cut off
    into ``message.txt``; now it goes on in the next messages' embeds, each within Discord's limits."""
    asked = fake_discord.say("help")["id"]
    chat.reply("Here is what I can do", asked)
    shown = wait_for(lambda: (texts := [discord_side.shown_text(message) for message in fake_discord.messages(asked)])
                     and all(f"run check-{number}`" in "\n".join(texts) for number in range(RUNBOOKS)) and texts,
                     what="every runbook in the thread")
    replies = [message for message in fake_discord.messages(asked) if message.embeds]
    assert len(replies) > 1 and not any(message.files for message in replies)
    assert all(len(message.embeds[0].get("description") or "") <= 4096 for message in replies)
    assert "message.txt" not in "\n".join(shown)


@pytest.mark.postgres
def test_on_slack_a_click_or_a_command_while_the_database_is_away_is_answered_with_why(
        fake_slack: FakeSlack, proxy: Any, start_baton: Any, postgres_url: str, counter: Path) -> None:  # noqa: F811
    """Slack sends an event again, but a click or a slash command once: taken while the database was away, it was
    lost, the log said "Slack will retry it", and the person saw a warning sign beside the button (or "/baton
    failed") and no word of why, where Discord tells them. Now they are told, only them, as on Discord."""
    baton = start_baton(proxy.url(postgres_url), env=fake_slack.env())
    sender = SlackSender(baton.url)
    chat = Slack(baton, fake_slack, sender, Path("unused"))
    thread = chat.mention("run restart service=web", user=ALICE)["ts"]
    card = chat.card(thread)
    proxy.cut()
    assert sender.click(card, user=BOB).status_code == 200
    told = wait_for(lambda: next((m for m in fake_slack.messages(GENERAL, thread) if m.ephemeral_to == BOB), None),
                    30, "bob told why his click was not taken")
    assert told.text == DATABASE_AWAY_CLICK
    answer = sender.command("run uptime", user=ALICE)
    assert answer.status_code == 200 and answer.json() == {"text": DATABASE_AWAY_ANSWER,
                                                           "response_type": "ephemeral"}, answer.text
    proxy.restore()
    wait_for(lambda: httpx.get(f"{baton.url}/readyz", timeout=15).status_code == 200, 30, "the database back")
    assert sender.click(card, user=BOB).status_code == 200  # clicked again, as told
    try:
        chat.reply("did restart web", thread)
    except AssertionError as missing:  # seen once in a loaded full run: say what bob was told and what Baton logged
        told_bob = [m.text for m in fake_slack.messages(GENERAL, thread) if m.ephemeral_to == BOB]
        raise AssertionError(f"{missing}; bob was told {told_bob}; Baton's log ends: "
                             f"{baton.log.read_text()[-3000:]}") from None
    assert runs_in(counter) == ["restart web"]
    log = baton.log.read_text()
    assert "Traceback" not in log and "not taken, Baton's database cannot be used" in log


SUPPRESS_EMBEDS = 1 << 2  # Discord's message flag: no previews of the links in its words


def test_on_discord_a_reply_of_words_shows_no_previews_of_its_links_as_slack_shows_none(
        chat: Discord, fake_discord: FakeDiscord) -> None:  # noqa: F811
    """Slack's posts are made with ``unfurl_links=False``; on Discord every link in a reply's words (a dashboard an
    answer names, a runbook's page in its output's note) was followed by Discord's preview card of that page."""
    thread = fake_discord.say("run uptime")["id"]
    answer = chat.reply("did uptime", thread)
    assert answer.flags & SUPPRESS_EMBEDS and not answer.embeds
    card = chat.card(fake_discord.say("run restart service=web")["id"])
    assert card.embeds and not card.flags & SUPPRESS_EMBEDS  # a card is an embed: never hidden
