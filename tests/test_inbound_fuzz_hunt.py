"""What Slack and Discord send Baton, in odd but possible shapes, through the real adapters (slack-bolt, discord.py)
and the local fakes: a request is taken once, as what it is (a direct message as private), or answered; anything
else is ignored in one log line, never a traceback, a 4xx/5xx or "The application did not respond"."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import aiohttp
import discord
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from adapters import discord_adapter
from adapters.discord_adapter import DiscordAdapter
from adapters.slack import SlackAdapter
from bot.messages import Accepted, Buttons, Location, Message, Text
from bot.outbox import Delivery
from bot.settings import Settings
from storage.db import DatabaseHealth
from tests.fake_discord import ALICE as DISCORD_ALICE
from tests.fake_discord import EPHEMERAL, GUILD_ID, STRANGER, TOKEN, FakeDiscord, user_json
from tests.fake_discord import GENERAL as DISCORD_GENERAL
from tests.fake_slack import BOT_ID, BOT_USER_ID, SIGNING_SECRET, FakeSlack, SlackSender, buttons, shown_text
from tests.support import runs_in
from tests.test_slack import ALICE, BOB, DM, GENERAL, Slack, config_path, fake_slack, slack  # noqa: F401 (fixtures)
from tests.test_slack_hunt3 import _Baton

# -- Slack --------------------------------------------------------------------------------------------------------


def test_a_mention_in_a_direct_message_is_private_whichever_of_its_two_events_comes_first(slack: Slack,  # noqa: F811
                                                                                        counter: Path) -> None:
    """Mentioning @baton in a direct message with it, Slack sends the message twice: as ``message.im`` (with
    ``channel_type: im``) and as ``app_mention`` (with no ``channel_type``), in either order, and the first one
    stored is the request. Taken from the ``app_mention``, the request was not private: a high-risk one got an
    approval card in the DM, which only its requester sees and may not decide, and it waited there for ever."""
    mention = slack.sender.mention("run restart service=web", user=ALICE, channel=DM)
    assert slack.sender.send_event(mention).status_code == 200
    as_message = slack.sender.message(mention["text"], user=ALICE, channel=DM, channel_type="im")
    as_message["ts"] = as_message["event_ts"] = mention["ts"]
    assert slack.sender.send_event(as_message).status_code == 200
    answer = slack.reply("only you can see this direct message", mention["ts"], channel=DM)
    assert f"This needs <@{BOB}> to approve it" in shown_text(answer)
    assert not any(buttons(message) for message in slack.fake.messages(DM))
    assert slack.rows("SELECT count(*) FROM approvals") == [(0,)]
    assert slack.stored_events() == [f"{DM}:{mention['ts']}"] and runs_in(counter) == []


def test_slacks_unsigned_check_of_the_certificate_is_answered_and_nothing_else(slack: Slack,  # noqa: F811
                                                                              counter: Path) -> None:
    """Slack checks the certificate at a slash command's URL now and then with ``ssl_check=1``, unsigned (no
    X-Slack-Signature, as Bolt's maintainers found): Baton answered 401 and logged that unsigned requests were being
    refused, every minute one came. It is answered 200, and nothing else: a payload sent along with it is not read
    (bolt-js was found running one), and any other unsigned request is still a 401."""
    url, form = slack.sender.url, {"Content-Type": "application/x-www-form-urlencoded"}
    assert slack.sender.http.post(url, content=b"ssl_check=1&token=legacy-verification-token", headers=form
                                  ).status_code == 200
    event = SlackSender.event_body(slack.sender.mention("run uptime", user=ALICE))
    smuggled = urlencode({"ssl_check": "1", "payload": event}).encode()
    assert slack.sender.http.post(url, content=smuggled, headers=form).status_code == 200
    assert slack.sender.http.post(url, content=b"ssl_check=0&token=x", headers=form).status_code == 401
    good = slack.mention("run uptime")  # what comes after is handled as before
    slack.reply("did uptime", good["ts"])
    assert slack.stored_events() == [f"{GENERAL}:{good['ts']}"] and runs_in(counter) == ["uptime"]
    refused = [line for line in slack.baton.log.read_text().splitlines() if "refused (401)" in line]
    assert len(refused) == 1 and "not signed" in refused[0]  # the ssl_check=0 alone


PERSON_SUBTYPES = (None, "thread_broadcast", "file_share")
OTHER_SUBTYPES = ("message_changed", "message_deleted", "bot_message", "me_message", "channel_join", "channel_topic",
                  "message_replied", "pinned_item", "huddle_thread", "tombstone")
CHANNELS = {"C0GENERAL1": "channel", DM: "im", "G0PRIVATE1": "group", "C0MPIM0001": "mpim"}
ABSENT = object()  # a field Slack left out


@st.composite
def slack_events(draw: st.DrawFn) -> dict[str, Any]:
    """A message event as Slack may send it: either kind, any conversation, a subtype or none, each optional field
    there, null or left out, and text with Slack's markup and mentions of Baton, of others, or none."""
    kind = draw(st.sampled_from(["message", "app_mention"]))
    channel = draw(st.sampled_from(sorted(CHANNELS)))
    ts = f"{1_790_000_000 + draw(st.integers(0, 10**6))}.{draw(st.integers(0, 999_999)):06d}"
    event: dict[str, Any] = {"type": kind, "channel": channel, "ts": ts, "event_ts": ts}
    if kind == "message":  # an app_mention has no channel_type
        event["channel_type"] = CHANNELS[channel]
    words = draw(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40))
    mention = draw(st.sampled_from(["", f"<@{BOT_USER_ID}> ", f"<@{BOT_USER_ID}|baton>: ", "<@U0BOB00002|bob> "]))
    markup = draw(st.sampled_from(["", " &amp; &lt;x&gt;", " <#C0OPS00001|ops>", " <!subteam^S01|@oncall>",
                                   " <https://x.example|label>", " <!here>"]))
    optional = {
        "user": st.sampled_from([ALICE, BOT_USER_ID, None, ""]),
        "text": st.sampled_from([mention + words + markup, None]),
        "subtype": st.sampled_from(PERSON_SUBTYPES[1:] + OTHER_SUBTYPES),
        "thread_ts": st.sampled_from([None, "1789999999.000100"]),
        "bot_id": st.sampled_from([BOT_ID, "B0OTHERBOT", None]),
        "edited": st.just({"user": ALICE, "ts": ts}),
        "blocks": st.just([{"type": "rich_text", "elements": []}]),
        "files": st.just([{"id": "F0LOG00001", "name": "deploy.log"}]),
    }
    for field, values in optional.items():
        if draw(st.booleans()):
            event[field] = draw(values)
    return event


def _expected(event: dict[str, Any]) -> tuple[str, bool, bool] | None:
    """What Baton takes of ``event``: (thread, addressed, private), or ``None`` for no request."""
    user, text = event.get("user"), event.get("text") or ""
    if not (isinstance(user, str) and user and user != BOT_USER_ID) or event.get("bot_id") \
            or event.get("subtype") not in PERSON_SUBTYPES:
        return None
    direct = event["channel"].startswith("D")
    addressed = event["type"] == "app_mention" or f"<@{BOT_USER_ID}" in text or direct
    return event.get("thread_ts") or event["ts"], addressed, direct


def test_every_message_event_is_taken_as_what_it_is_or_ignored_never_refused(fake_slack: FakeSlack,  # noqa: F811
                                                                               tmp_path: Path) -> None:
    """Property: a message event of any shape Slack may send is acknowledged (200: a 4xx or a 5xx makes Slack
    send it again, three times), logs no error, and is taken once when it is a person's message (its thread, whether
    it is addressed to Baton, whether it is private) and not at all otherwise (edits, joins, bots, Baton itself).
    It found a mention in a direct message taken as not private (see the end-to-end test above)."""
    loop = asyncio.new_event_loop()
    adapter = SlackAdapter(_Baton(fake_slack, tmp_path))
    errors: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append  # type: ignore[method-assign]
    logging.getLogger("baton").addHandler(handler)

    async def sign_in() -> None:
        adapter.client.session = aiohttp.ClientSession()
        adapter._signed_in(await adapter.client.auth_test())

    async def dispatch(body: str) -> int:
        stamp = str(int(time.time()))
        signature = SignatureVerifier(SIGNING_SECRET).generate_signature(timestamp=stamp, body=body)
        response = await adapter.bolt.async_dispatch(AsyncBoltRequest(body=body, headers={
            "content-type": "application/json", "x-slack-request-timestamp": stamp, "x-slack-signature": signature}))
        return response.status

    @settings(max_examples=150)
    @given(slack_events())
    def check(event: dict[str, Any]) -> None:
        before = len(adapter.baton.accepted)
        assert loop.run_until_complete(dispatch(SlackSender.event_body(event))) == 200
        taken = [(m.thread, m.addressed, m.private) for m in adapter.baton.accepted[before:]]
        expected = _expected(event)
        assert taken == ([] if expected is None else [expected]), event
        assert errors == []

    try:
        loop.run_until_complete(sign_in())
        check()
    finally:
        logging.getLogger("baton").removeHandler(handler)
        loop.run_until_complete(adapter.client.session.close())
        loop.close()


# -- Discord ------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_discord() -> Any:
    fake = FakeDiscord().start()
    yield fake
    fake.stop()


@pytest.fixture
async def discord_baton(fake_discord: FakeDiscord, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The adapter signed in to the fake over REST with ``/baton`` registered, and interactions handed to
    discord.py as the gateway hands them (``ConnectionState.parse_interaction_create``); its Baton keeps what it
    is handed."""
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)  # the adapter sets it process-wide
    settings = Settings(DISCORD_TOKEN=TOKEN, DISCORD_API_URL=fake_discord.api_url,  # type: ignore[call-arg]
                        DISCORD_GUILD_ID=GUILD_ID, BATON_ADAPTERS="discord")
    taken: list[Any] = []

    async def accept(inbound: Any) -> Accepted:
        taken.append(inbound)
        return Accepted(status="accepted")

    adapter = DiscordAdapter(SimpleNamespace(  # type: ignore[arg-type]
        settings=settings, accept_message=accept, accept_click=accept,
        db=SimpleNamespace(health=DatabaseHealth("sqlite:///absent.db")), taken=taken))
    await adapter.client.login(TOKEN)
    await adapter._sync_commands()
    yield adapter
    await adapter.client.close()


def _baton_command(fake: FakeDiscord, **data: Any) -> dict[str, Any]:
    command = next(c for c in fake.commands[GUILD_ID] if c["name"] == "baton")
    return {"id": command["id"], "name": "baton", "type": 1, "guild_id": GUILD_ID, **data}


async def _answers(fake: FakeDiscord, adapter: DiscordAdapter, kind: int, data: dict[str, Any]) -> list[dict[str, Any]]:
    """The interaction's callbacks, once discord.py's tasks for it are done."""
    payload = fake._interaction(kind, data, channel=DISCORD_GENERAL, user=DISCORD_ALICE)
    before = set(asyncio.all_tasks())
    adapter.client._connection.parse_interaction_create(payload)
    await asyncio.gather(*(set(asyncio.all_tasks()) - before))
    with fake._lock:
        return [callback for callback in fake.callbacks if callback["interaction_id"] == payload["id"]]


OUT_OF_DATE = {
    "no request": {"options": []},
    "no options at all": {},
    "another option": {"options": [{"name": "text", "type": 3, "value": "run uptime"}]},
    "a number": {"options": [{"name": "request", "type": 4, "value": 5}]},
}


@pytest.mark.parametrize("options", list(OUT_OF_DATE.values()), ids=list(OUT_OF_DATE))
async def test_a_baton_command_discord_sends_in_an_older_shape_is_answered_not_a_traceback(
        fake_discord: FakeDiscord, discord_baton: DiscordAdapter, caplog: pytest.LogCaptureFixture,
        options: dict[str, Any]) -> None:
    """Discord's copy of ``/baton`` (a person's client keeps one) may not be the command Baton registered: without
    its ``request``, or with an option of another name or type. discord.py raised in its command tree and logged
    "Ignoring exception in command 'baton'" with a traceback (a number reached Baton and failed there, with its own
    traceback); nothing answered, so the person saw "The application did not respond". They are told, to them
    alone, that nothing was run and what to do; one log line says why."""
    caplog.set_level(logging.INFO)
    (answer,) = await _answers(fake_discord, discord_baton, 2, _baton_command(fake_discord, **options))
    assert answer["type"] == 4 and answer["data"]["flags"] & EPHEMERAL
    assert answer["data"]["content"] == discord_adapter.COMMAND_OUT_OF_DATE
    assert "nothing was run" in answer["data"]["content"] and discord_baton.baton.taken == []
    assert not [record for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR]
    assert any("is out of date" in record.getMessage() for record in caplog.records)


async def test_an_autocomplete_or_a_command_not_batons_is_answered_or_left_alone_in_one_line(
        fake_discord: FakeDiscord, discord_baton: DiscordAdapter, caplog: pytest.LogCaptureFixture) -> None:
    """``/baton`` asks for no suggestions, but a copy of it out of date may: discord.py logged each keystroke's
    autocomplete with a traceback, and the person's list of suggestions stayed "Loading options failed". It is an
    empty list. A command of the application that is not Baton's (a context menu or a slash command another program
    serves on the same bot) got a traceback in Baton's log each time it was used: it is left to that program, in one
    line. A well-formed ``/baton`` is taken as before."""
    caplog.set_level(logging.INFO)
    typing = _baton_command(fake_discord, options=[{"name": "request", "type": 3, "value": "ru", "focused": True}])
    assert [(a["type"], a["data"]) for a in await _answers(fake_discord, discord_baton, 4, typing)] == [
        (8, {"choices": []})]
    theirs = [{"id": "9", "name": "deploy", "type": 1, "guild_id": GUILD_ID, "options": []},
              {"id": "8", "name": "Ask Baton", "type": 3, "guild_id": GUILD_ID, "target_id": "1", "resolved": {}}]
    for command in theirs:
        assert await _answers(fake_discord, discord_baton, 2, command) == []
    assert not [record for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR]
    assert [r.getMessage().split(" ignored")[0].split(" for ")[1] for r in caplog.records if "not Baton's" in
            r.getMessage()] == ["the command 'deploy'", "the command 'Ask Baton'"]
    fine = _baton_command(fake_discord, options=[{"name": "request", "type": 3, "value": "help"}])
    assert [answer["type"] for answer in await _answers(fake_discord, discord_baton, 2, fine)] == [5]
    assert [message.text for message in discord_baton.baton.taken] == ["help"]


async def test_a_card_in_a_direct_message_takes_clicks_from_members_of_the_server_only(
        fake_discord: FakeDiscord, discord_baton: DiscordAdapter, caplog: pytest.LogCaptureFixture) -> None:
    """With DISCORD_GUILD_ID, a direct message is taken from that server's members only, but a click on a card in
    one was taken from anyone: someone removed from the server kept the card of a request they had asked (one
    they may approve themselves) and approved it, and it ran. Such a click is answered, to them alone, that nothing
    was changed, and not stored; a member's click is taken as before."""
    caplog.set_level(logging.INFO)
    cards = {}
    approval = {STRANGER: "card-of-a-stranger", DISCORD_ALICE: "card-of-alice"}
    for person in (STRANGER, DISCORD_ALICE):
        direct = fake_discord.direct_channel(person)
        where = Location(platform="discord", workspace="", channel=direct, thread=direct)
        card = Message(title="Approval needed", tone="approval", parts=[Text(text="restart web"),
                                                                         Buttons(approval_id=approval[person])])
        await discord_baton.send(Delivery(len(cards) + 1, "post", where, card, None, None, 1))
        (cards[person],) = fake_discord.messages(direct)
    for person, card in cards.items():
        payload = fake_discord.click(card, user=person)
        del payload["guild_id"], payload["member"]  # as Discord sends a click in a direct message
        payload |= {"user": user_json(person), "context": 1}
        await discord_baton.on_click(discord.Interaction(data=payload, state=discord_baton.client._connection),
                                     "approve", approval[person])
        with fake_discord._lock:
            answers = [c for c in fake_discord.callbacks if c["interaction_id"] == payload["id"]]
        if person == STRANGER:
            assert [(a["type"], a["data"]["content"], a["data"]["flags"] & EPHEMERAL) for a in answers] == [
                (4, discord_adapter.STRANGER_CLICK, EPHEMERAL)]
        else:
            assert [a["type"] for a in answers] == [6]  # deferred: the card is edited once decided
    taken = [(click.user, click.approval_id) for click in discord_baton.baton.taken]
    assert taken == [(DISCORD_ALICE, "card-of-alice")]
    assert any("a click from" in r.getMessage() and "not a member" in r.getMessage() for r in caplog.records)
