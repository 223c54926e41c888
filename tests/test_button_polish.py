"""Two defects of buttons found by the fuzz hunts. A Discord click whose custom_id has Baton's shape but a value that
cannot be read (broken base64: only a tampered or foreign id) raised inside discord.py's dispatch: a traceback in
the log, no answer, and the person saw "This interaction failed". And a message could hold two buttons of one value,
which Slack and Discord both refuse whole (a shared action_id, custom_id): a graph's reply with such buttons was
never delivered, and its author never told why."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import discord
import pytest
from pydantic import ValidationError

from adapters import discord_adapter, discord_render, slack_blocks
from adapters.discord_adapter import ChoiceButton, DiscordAdapter
from bot import replies
from bot.messages import ButtonOption, Buttons, Location, Message, Text
from bot.outbox import Delivery
from bot.registry import GraphSpec
from tests.fake_discord import ALICE, EPHEMERAL, FakeDiscord, FakeMessage, buttons
from tests.fake_discord import GENERAL as DISCORD_GENERAL
from tests.test_graph_modules import _asked, _one_node, _reply
from tests.test_inbound_fuzz_hunt import discord_baton, fake_discord  # noqa: F401 (fixtures)

# -- a Discord custom_id whose value cannot be read -------------------------------------------------------------

BROKEN = {"broken base64": "~A", "no UTF-8": "~_w", "base64 one character too long": "~bWlzZV_DoF9qb3VyA"}


@pytest.mark.parametrize("carried", list(BROKEN.values()), ids=list(BROKEN))
def test_a_broken_value_is_no_value_of_batons(carried: str) -> None:
    with pytest.raises(ValueError, match="is not a button value Baton encoded"):
        discord_render.option_value(carried)


def test_a_value_baton_encoded_is_read_back() -> None:
    for value in ("approve", "mise_à_jour", "ünïcödé graph"):
        assert discord_render.option_value(discord_render.custom_id(value, "abc").split(":")[1]) == value


async def _post_card(fake: FakeDiscord, adapter: DiscordAdapter) -> FakeMessage:
    where = Location(platform="discord", workspace="", channel=DISCORD_GENERAL, thread=DISCORD_GENERAL)
    card = Message(title="Which one?", tone="approval", parts=[Text(text="Which graph?"), Buttons(
        approval_id="card-1", options=[ButtonOption(value="mise_à_jour", label="mise_à_jour"),
                                       ButtonOption(value="deploy", label="deploy")])])
    await adapter.send(Delivery(1, "post", where, card, None, None, 1))
    (posted,) = fake.messages(DISCORD_GENERAL)
    return posted


async def _click(fake: FakeDiscord, adapter: DiscordAdapter, card: FakeMessage, custom_id: str) -> list[dict[str, Any]]:
    """A click on the card's first button, its custom_id made ``custom_id`` (on the card as in the click, as a
    tampered or foreign card has it); the interaction's callbacks once discord.py's tasks for it are done."""
    rows = [dict(row, components=[dict(component) for component in row["components"]]) for row in card.components]
    rows[0]["components"][0]["custom_id"] = custom_id
    tampered = dataclasses.replace(card, components=rows)
    payload = fake._interaction(3, {"custom_id": custom_id, "component_type": 2}, channel=card.channel_id,
                                user=ALICE, message=tampered)
    before = set(asyncio.all_tasks())
    adapter.client._connection.parse_interaction_create(payload)
    while pending := set(asyncio.all_tasks()) - before - {asyncio.current_task()}:
        await asyncio.gather(*pending)
        before |= pending
    with fake._lock:
        return [callback for callback in fake.callbacks if callback["interaction_id"] == payload["id"]]


@pytest.mark.parametrize("carried", list(BROKEN.values()), ids=list(BROKEN))
async def test_a_click_on_batons_button_with_an_unreadable_value_is_answered_privately_and_changes_nothing(
        fake_discord: FakeDiscord, discord_baton: DiscordAdapter,  # noqa: F811
        caplog: pytest.LogCaptureFixture, carried: str) -> None:
    caplog.set_level(logging.INFO)
    discord_baton.client.add_dynamic_items(ChoiceButton)  # as start() does
    card = await _post_card(fake_discord, discord_baton)
    assert buttons(card)[0]["custom_id"].startswith("baton:~")  # the value is carried encoded
    answers = await _click(fake_discord, discord_baton, card, f"baton:{carried}:card-1")
    assert not [record for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR]
    assert discord_baton.baton.taken == []
    assert [(a["type"], (a["data"] or {}).get("flags", 0) & EPHEMERAL) for a in answers] == [(4, EPHEMERAL)]
    assert answers[0]["data"]["content"] == discord_adapter.UNREADABLE_CLICK
    assert "nothing was changed" in answers[0]["data"]["content"]
    assert any("cannot be read" in record.getMessage() for record in caplog.records)


async def test_a_foreign_button_is_left_alone_and_batons_own_still_work(
        fake_discord: FakeDiscord, discord_baton: DiscordAdapter,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    discord_baton.client.add_dynamic_items(ChoiceButton)
    card = await _post_card(fake_discord, discord_baton)
    assert await _click(fake_discord, discord_baton, card, "another-program:do-it") == []  # its own to answer
    encoded = buttons(card)[0]["custom_id"]
    assert [a["type"] for a in await _click(fake_discord, discord_baton, card, encoded)] == [6]  # deferred
    assert [(click.action, click.approval_id) for click in discord_baton.baton.taken] == [("mise_à_jour", "card-1")]
    assert not [record for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR]


# -- two buttons of one value -----------------------------------------------------------------------------------

TWICE = {"parts": [{"kind": "text", "text": "Roll out?"}, {"kind": "buttons", "approval_id": "a1", "options": [
    {"value": "approve", "label": "Yes"}, {"value": "reject", "label": "No"}, {"value": "approve", "label": "Sure"}]}]}


def test_buttons_of_one_value_cannot_be_built() -> None:
    """Nothing with them can reach the outbox or an adapter: both platforms would refuse the whole message."""
    with pytest.raises(ValidationError, match="two buttons have the value 'approve'"):
        Message.model_validate(TWICE)
    with pytest.raises(ValidationError, match="two buttons have the value 'go'"):
        Buttons(approval_id="a1", options=[ButtonOption(value="go", label="Go"), ButtonOption(value="go", label="Go!")])


def test_a_reply_with_buttons_of_one_value_fails_its_run_naming_the_value() -> None:
    with pytest.raises(replies.ReplyNotShown, match=r"parts\.1\.buttons\.options: two buttons have the value "
                                                    r"'approve': a click names its button by value"):
        replies.result(TWICE, failed=False)


def test_buttons_of_distinct_values_render_on_both_platforms_with_distinct_ids() -> None:
    message = Message(parts=[Buttons(approval_id="a1", options=[
        ButtonOption(value="approve", label="Yes"), ButtonOption(value="Approve", label="Yes too"),
        ButtonOption(value="mise_à_jour", label="Update")])])
    slack = [element["action_id"] for out in slack_blocks.render(message, lambda c, t: "").messages
             for block in out["blocks"] if block["type"] == "actions" for element in block["elements"]]
    assert len(slack) == len(set(slack)) == 3
    (out,) = discord_render.render(message, "G1")
    assert out.approval is not None
    ids = [discord_render.custom_id(option.value, out.approval.approval_id) for option in out.approval.options]
    assert len(ids) == len(set(ids)) == 3


async def test_a_graph_replying_with_buttons_of_one_value_tells_its_thread_why_its_run_failed(
        tmp_path: Any, config_path: Any) -> None:
    """Through the outbox: the thread is shown the failure (it had no answer at all: the reply was refused)."""
    def act(_state: dict[str, Any]) -> dict[str, Any]:
        return {"reply": TWICE}

    async with _asked(tmp_path, config_path, GraphSpec(name="rollout", graph=_one_node(act)), "rollout") as baton:
        shown = await _reply(baton, "1")
    assert shown.startswith("*Run failed*\n`rollout` failed:\n```\nReplyNotShown: its reply is not a message: "
                            "parts.1.buttons.options: two buttons have the value 'approve'"), shown
