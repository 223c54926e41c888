"""The Slack adapter against more of what Slack sends: files shared in a thread that summarize reads, and
events of a channel shared with another organisation (Slack Connect)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from adapters import slack_blocks
from adapters.slack import SlackAdapter
from bot.messages import Image, Location, Message, Text
from bot.settings import Settings
from storage.db import DatabaseHealth
from tests.fake_slack import BOT_TOKEN, SIGNING_SECRET, TEAM_ID, FakeMessage, FakeSlack, SlackSender, shown_text
from tests.test_slack import ALICE, BOB, GENERAL, fake_slack  # noqa: F401 (a fixture)


class _Baton:
    """What the adapter asks of Baton; the messages and clicks it hands in are kept."""

    def __init__(self, fake: FakeSlack, tmp_path: Path) -> None:
        self.settings = Settings(SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET,  # type: ignore[call-arg]
                                 SLACK_API_URL=fake.api_url, BATON_CONFIG=str(tmp_path / "absent.yaml"))
        self.db = SimpleNamespace(health=DatabaseHealth("sqlite:///absent.db"))
        self.accepted: list[Any] = []

    async def accept_message(self, message: Any) -> Any:
        self.accepted.append(message)
        return SimpleNamespace(status="accepted")

    async def accept_click(self, click: Any) -> Any:
        self.accepted.append(click)
        return SimpleNamespace(status="accepted")

    async def event_received(self, platform: str, event_id: str) -> bool:
        return False


@pytest.fixture
async def adapter(fake_slack: FakeSlack, tmp_path: Path) -> AsyncIterator[SlackAdapter]:  # noqa: F811
    """A Slack adapter signed in to the fake, without a Baton process (its Baton keeps what it is handed)."""
    adapter = SlackAdapter(_Baton(fake_slack, tmp_path))
    adapter.client.session = aiohttp.ClientSession()
    adapter._signed_in(await adapter.client.auth_test())
    try:
        yield adapter
    finally:
        await adapter.client.session.close()


async def _deliver(adapter: SlackAdapter, body: str, content_type: str = "application/json") -> int:
    """Slack's request, signed, through Bolt as the endpoint hands it over; the status of the answer."""
    stamp = str(int(time.time()))
    signature = SignatureVerifier(SIGNING_SECRET).generate_signature(timestamp=stamp, body=body)
    response = await adapter.bolt.async_dispatch(AsyncBoltRequest(body=body, headers={
        "content-type": content_type, "x-slack-request-timestamp": stamp, "x-slack-signature": signature}))
    return response.status


@pytest.mark.asyncio
async def test_a_file_shared_in_a_thread_is_named_in_its_history(fake_slack: FakeSlack,  # noqa: F811
                                                                adapter: SlackAdapter) -> None:
    """A log or a screenshot dropped in a thread with no words was an empty line ('alice: ') in what summarize
    and the assistant read of the thread: the file is named, after the words when there are some."""
    sender = SlackSender("http://unused")
    root = sender.mention("run deploy", user=ALICE)
    fake_slack.said(root)
    log = {"id": "F0LOG00001", "name": "deploy.log", "title": "deploy.log", "mimetype": "text/plain"}
    shot = {"id": "F0SHOT0001", "name": "Screenshot 2026-12-06.png", "title": "the error page"}
    gone = {"id": "F0GONE0001", "mode": "tombstone"}  # a file deleted since: Slack keeps its place, not its name
    for text, files in (("", [log]), ("this is what I see", [shot]), ("", [gone])):
        fake_slack.said(sender.message(text, user=BOB, thread_ts=root["ts"], subtype="file_share", files=files))
    history = await adapter.history(Location(platform="slack", channel=GENERAL, thread=root["ts"]), 10)
    assert [(entry["user"], entry["text"]) for entry in history] == [
        (ALICE, "@baton run deploy"),
        (BOB, "(attached: deploy.log)"),
        (BOB, "this is what I see\n(attached: Screenshot 2026-12-06.png)"),
        (BOB, "(attached: a file no longer shared)"),
    ]


PARTNER = "T0PARTNER1"  # the other organisation's workspace, where the shared channel was made


@pytest.mark.asyncio
async def test_a_channel_shared_with_another_organisation_keeps_one_thread_per_slack_thread(
        adapter: SlackAdapter) -> None:
    """In a channel shared with another organisation (Slack Connect) and made there, Slack's events carry that
    organisation's team_id (Bolt reads ``authorizations`` first for that reason), while ``/baton`` carries
    Baton's: a follow-up in the thread ``/baton`` made, or a mention there, was taken for another workspace's
    thread, so the follow-up was ignored as chatter and a mention started a second thread beside the first.
    Every request reaching this Baton is for its one installation: all are its workspace's."""
    sender = SlackSender("http://unused")
    shared = "C0SHARED01"
    command_body = sender.command_body("run uptime", user=ALICE, channel=shared)
    assert await _deliver(adapter, command_body, "application/x-www-form-urlencoded") == 200
    (command,) = adapter.baton.accepted
    follow_up = sender.message("run disk", user=ALICE, channel=shared, thread_ts=command.thread)
    mention = sender.mention("status", user=BOB, channel=shared, thread_ts=command.thread)
    for event in (follow_up, mention):
        event["team"] = event["user_team"] = PARTNER if event is mention else TEAM_ID
        body = json.loads(sender.event_body(event))
        body["team_id"] = PARTNER  # the channel's home; ``authorizations`` names Baton's installation
        assert await _deliver(adapter, json.dumps(body)) == 200
    assert [(message.workspace, message.channel, message.thread) for message in adapter.baton.accepted] == [
        (TEAM_ID, shared, command.thread)] * 3



@pytest.mark.parametrize("data", ['<svg xmlns="http://www.w3.org/2000/svg"/>', "data:image/svg+xml;base64,PHN2Zy8+"],
                         ids=["the-svg-itself", "a-data-url"])
def test_a_picture_whose_data_is_not_base64_costs_the_reply_nothing_else(data: str) -> None:
    """A graph that hands over its picture as the SVG itself, or as a data URL, lost its whole reply: the
    data URL raised in rendering (the reply was tried again for twenty minutes and never shown, its words
    too), and the SVG itself was attached as bytes no viewer opens. The words are shown, and the picture is
    said to be unreadable; base64 as ``base64.encodebytes`` wraps it (lines of 76) is read as before. (A
    graph's reply with such a picture now fails its run saying why, ``test_image_data``; the renderer still
    copes with one built without that check.)"""
    unchecked = Image.model_construct(kind="image", alt="Error rate", mime="image/svg+xml", data=data,
                                      filename="chart.svg")
    message = Message(parts=[Text(text="Errors per host this week."), unchecked])
    (content,) = (rendered := slack_blocks.render(message, lambda channel, ts: "")).messages
    shown = shown_text(FakeMessage(channel=GENERAL, ts="1.1", thread_ts=None, text="", blocks=content["blocks"]))
    assert "Errors per host this week." in shown
    assert "Error rate: the picture's data could not be read, so it is not attached" in shown
    assert rendered.uploads == []
    wrapped = base64.encodebytes(b"<svg>" + b" " * 200 + b"</svg>").decode()
    rendered = slack_blocks.render(Message(parts=[Image(alt="Wide", data=wrapped)]), lambda channel, ts: "")
    assert [upload.content for upload in rendered.uploads] == [b"<svg>" + b" " * 200 + b"</svg>"]
