"""The Discord adapter, fifth hunt: what a Discord server admin meets with cards and clicks. Covered
here: a click taken while Baton's database is slower than Discord's 3 seconds for an answer, a
"which one?" card offering a graph whose name is not plain ASCII, and /baton in a private channel
Baton cannot see, and a direct message once Baton was removed from its server."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace
from typing import Any

import discord
import pytest
from aiohttp import web

import tests.fake_discord as fake_module
from adapters import discord_adapter
from adapters.discord_adapter import ChoiceButton, DiscordAdapter
from adapters.discord_render import CUSTOM_ID_TEMPLATE
from bot.messages import Accepted, ButtonOption, Buttons, InboundClick, Message, Text
from tests.fake_discord import ALICE, BOB, GENERAL, OPS, FakeDiscord, buttons
from tests.test_discord import config_path  # noqa: F401 (a fixture)
from tests.test_discord_hunt import delivery
from tests.test_discord_hunt2 import adapter, received  # noqa: F401 (a fixture: with DISCORD_GUILD_ID)


class PatientDiscord(FakeDiscord):
    """The fake, with Discord's 3 seconds to answer an interaction: ``too_late`` makes an interaction
    not answered yet unknown (10062), as Discord does once its 3 seconds are over."""

    def too_late(self, interaction_id: str) -> None:
        with self._lock:
            known = self.interactions[interaction_id]
            if not known["acknowledged"]:
                known["expired"] = True

    hidden: set[str] = set()  # channels Baton cannot see (private ones its role was not added to)

    async def _start_thread(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if request.match_info["channel_id"] in self.hidden:
            return fake_module._error(403, 50001, "Missing Access")
        return await super()._start_thread(request, body)

    removed = False  # Baton was removed from DISCORD_GUILD_ID's server (kicked, say)

    async def _get_member(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if self.removed:  # Discord's answer about a server its asker is not in (50001 Missing Access before 2023)
            return fake_module._error(404, 10004, "Unknown Guild")
        return await super()._get_member(request, body)

    def answered(self, interaction_id: str) -> bool:
        with self._lock:
            return any(callback["interaction_id"] == interaction_id for callback in self.callbacks)


@pytest.fixture
def fake_discord() -> Any:
    fake = PatientDiscord().start()
    yield fake
    fake.stop()


async def _card(fake: FakeDiscord, adapter: DiscordAdapter) -> Any:
    card = Message(title="Approval needed", tone="approval", parts=[Text(text="restart web"), Buttons(approval_id="a1")])
    await adapter.send(delivery(1, card))
    (posted,) = fake.messages(GENERAL)
    return posted


def _interaction(adapter: DiscordAdapter, payload: dict[str, Any]) -> discord.Interaction:
    """An INTERACTION_CREATE as discord.py hands it to the button's callback."""
    return discord.Interaction(data=payload, state=adapter.client._connection)  # type: ignore[arg-type]


async def test_a_click_is_answered_in_time_while_the_database_is_slow(fake_discord, adapter, monkeypatch):
    """A click was stored before it was answered: with Baton's database slower than Discord's 3 seconds
    (a busy SQLite writer, a PostgreSQL under load), the answer came too late (10062 Unknown interaction)
    and Discord showed the person "This interaction failed" for a click Baton took and acted on. The
    click is now answered (deferred) when storing it takes long, and stored all the same."""
    monkeypatch.setattr(discord_adapter, "STORE_BEFORE_DEFER_SECONDS", 0.05)
    card = await _card(fake_discord, adapter)
    payload = fake_discord.click(card, user=BOB)
    stored: list[InboundClick] = []

    async def slow_database(click: InboundClick) -> Accepted:
        for _ in range(100):  # storing takes longer than Discord waits for an answer
            if fake_discord.answered(payload["id"]):
                break
            await asyncio.sleep(0.02)
        fake_discord.too_late(payload["id"])
        stored.append(click)
        return Accepted(status="accepted")

    adapter.baton.accept_click = slow_database
    await adapter.on_click(_interaction(adapter, payload), "approve", "a1")
    assert [click.action for click in stored] == ["approve"]
    assert [c["type"] for c in fake_discord.callbacks if c["interaction_id"] == payload["id"]] == [6]


async def test_a_click_the_slow_database_then_fails_is_told_after_its_answer(fake_discord, adapter, monkeypatch):
    """The same slow click whose database then fails: Discord had its answer already (the defer), so
    the person is told that nothing was changed in a follow-up only they see."""
    monkeypatch.setattr(discord_adapter, "STORE_BEFORE_DEFER_SECONDS", 0.05)
    card = await _card(fake_discord, adapter)
    payload = fake_discord.click(card, user=BOB)

    async def failing_database(click: InboundClick) -> Accepted:
        for _ in range(100):
            if fake_discord.answered(payload["id"]):
                break
            await asyncio.sleep(0.02)
        raise ConnectionRefusedError("the database is away")

    adapter.baton.accept_click = failing_database
    adapter.baton.db = SimpleNamespace(health=SimpleNamespace(unusable=lambda exc: "connection refused"))
    await adapter.on_click(_interaction(adapter, payload), "approve", "a1")
    (told,) = [m for m in fake_discord.messages(GENERAL) if m.interaction_id == payload["id"]]
    assert told.ephemeral_to == BOB and told.content.startswith("⚠️ I could not take your click just now")


async def test_a_which_one_card_offers_a_graph_whose_name_is_not_plain_ascii(fake_discord, adapter):
    """A graph is its module's name, and Python takes ``graphs/mise_à_jour.py``: a "which one?" card
    offering it could not be shown on Discord (a button's custom_id takes ASCII letters, digits, '_'
    and '-'), so the card was refused for good and the person who asked saw nothing to pick. Such a
    value is carried encoded in its custom_id, and a click on it gives the graph's name back."""
    options = [ButtonOption(value="mise_à_jour", label="mise_à_jour", style="primary"),
               ButtonOption(value="status", label="status")]
    card = Message(title="Which one?", tone="approval", parts=[Text(text="Which of these?"),
                                                               Buttons(approval_id="a1", options=options)])
    await adapter.send(delivery(1, card))
    (posted,) = fake_discord.messages(GENERAL)
    clicked = []
    for button in buttons(posted):
        match = re.fullmatch(CUSTOM_ID_TEMPLATE, button["custom_id"])
        assert match is not None and len(button["custom_id"]) <= 100
        clicked.append((await ChoiceButton.from_custom_id(None, None, match)).action)  # type: ignore[arg-type]
    assert clicked == ["mise_à_jour", "status"]
    assert [button["custom_id"] for button in buttons(posted)][1] == "baton:status:a1"  # plain ones as before


async def test_a_slash_request_in_a_channel_baton_cannot_see_says_so(fake_discord, adapter):
    """/baton is offered in every channel, private ones included, where Baton's role may not be added:
    Discord takes the command (the interaction needs no access to the channel), then refuses the thread
    (403, 50001 Missing Access). Baton answered that it needed the Create Public Threads and Send
    Messages in Threads permissions, so an admin granted those and nothing changed: it cannot see the
    channel. It now says so, and what to do."""
    fake_discord.hidden.add(OPS)
    data = {"id": "1", "name": "baton", "type": 1, "options": [{"name": "request", "type": 3, "value": "run uptime"}]}
    payload = fake_discord._interaction(2, data, channel=OPS, user=ALICE)
    await adapter.on_command(_interaction(adapter, payload), "run uptime")
    (reply,) = [m for m in fake_discord.messages(OPS) if m.interaction_id == payload["id"]]
    told = reply.content.split("\n", 1)[1]
    assert told.startswith("⚠️ I can't see this channel") and "View Channel" in told and "Nothing was run" in told
    assert "I need the *Create Public Threads*" not in told


@pytest.mark.parametrize("answer", [(404, 10004, "Unknown Guild"), (403, 50001, "Missing Access")])
async def test_a_member_is_not_told_they_are_a_stranger_once_baton_was_removed_from_its_server(
        fake_discord, adapter, monkeypatch, answer):
    """With DISCORD_GUILD_ID, a direct message is taken from that server's members, asked of Discord. Once
    Baton was removed from the server (kicked by a moderator), Discord answers that question with Unknown
    Guild (or, as it did before 2023, Missing Access), and every member who wrote to Baton was told "I work
    for the members of one Discord server only, so I can't take requests from you here", as a stranger is,
    with nothing said to the operator but a line per person. They are told Baton is not in its server, and
    the log says what to do."""
    fake_discord.removed = True
    monkeypatch.setattr(fake_module, "_error", lambda status, code, message, error=fake_module._error:
                        error(*answer) if code == 10004 else error(status, code, message))
    direct = fake_discord.direct_channel(ALICE)
    asked = fake_discord.say("run uptime", channel=direct, mention=False)
    await adapter.on_message(received(adapter, asked))
    (told,) = fake_discord.messages(direct)
    assert "can't take requests from you" not in told.content
    assert told.content.startswith("⚠️ I am not in the Discord server I work for any more") and "nothing was run" in told.content
