"""The Slack adapter against more of what a serious chat-ops user meets: a model's answer quoting a command's
output in a fenced block, posted through the adapter to the fake Slack."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import pytest
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from adapters import slack_blocks
from adapters.slack import SlackAdapter
from bot.messages import Location, Message, Note, Text
from bot.outbox import Delivery
from tests.fake_slack import SIGNING_SECRET, FakeMessage, FakeSlack, SlackSender, check_message
from tests.test_slack import ALICE, GENERAL, fake_slack  # noqa: F401 (a fixture)
from tests.test_slack_hunt3 import _Baton, adapter  # noqa: F401 (a fixture)

FENCE = "```"


async def _post(fake: FakeSlack, tmp_path: Path, message: Message) -> list[FakeMessage]:
    """``message`` posted in a thread by a signed-in adapter, as the outbox hands it over; what Slack shows."""
    adapter = SlackAdapter(_Baton(fake, tmp_path))
    adapter.client.session = aiohttp.ClientSession()
    where = Location(platform="slack", workspace="T1", channel=GENERAL, thread="1.000001")
    try:
        adapter._signed_in(await adapter.client.auth_test())
        assert await adapter.send(Delivery(id=1, kind="post", location=where, message=message, target_user=None,
                                           target_message_id=None, attempts=1)) is not None
    finally:
        await adapter.client.session.close()
    return fake.messages(GENERAL)


def _texts(messages: list[FakeMessage]) -> list[str]:
    """Each section's and note's mrkdwn, in order."""
    return [block["text"]["text"] if block["type"] == "section" else element["text"]
            for message in messages for block in message.blocks if block["type"] in ("section", "context")
            for element in (block.get("elements") or [None])]


@pytest.mark.asyncio
async def test_a_fenced_block_in_a_long_answer_is_code_in_every_section(fake_slack: FakeSlack,  # noqa: F811
                                                                        tmp_path: Path) -> None:
    """The assistant's answer quotes what a runbook printed in a ``` block. A text over one section (2,900
    characters) was split wherever it fitted: the first section opened the block and the next closed it, so
    Slack showed both sections' backticks and the log as prose, its *stars* bold and a host named like a
    user id (WEBPROD01) as a mention of nobody. Each section now opens and closes the fence it holds, the
    code is shown as written, and the prose around it is as before (ids there are still mentions)."""
    log = "".join(f"2026-12-06 10:{n % 60:02d} WEBPROD01 *restart* ok & <done> {n}\n" for n in range(90))
    answer = f"Here is what `df` said:\n{FENCE}bash\n{log}{FENCE}\nThe disk on web-2 is full; ask {ALICE}."
    posted = await _post(fake_slack, tmp_path, Message(tone="success", parts=[
        Text(text=answer), Note(text=f"Run for this answer:\n{FENCE}\ndf -h WEBPROD01\n{FENCE}")], people=[ALICE]))
    assert all(check_message({"channel": GENERAL, "text": m.text, "blocks": m.blocks}) == "" for m in posted)
    texts = _texts(posted)
    assert len(texts) >= 3  # the log takes more than one section
    assert all(text.count(FENCE) % 2 == 0 for text in texts), texts
    code = [match for text in texts for match in re.findall(r"```\n(.*?)\n```", text, re.DOTALL)]
    assert slack_blocks.unescape("\n".join(code[:-1])) + "\n" == log  # whole, in order, as written
    assert code[-1] == "df -h WEBPROD01"
    assert "<@" not in "".join(code) and "bash" not in "".join(texts)  # Slack would show the language as code
    assert texts[0].startswith(":white_check_mark: Here is what `df` said:\n```\n2026-12-06 10:00")
    assert f"The disk on web-2 is full; ask <@{ALICE}>." in texts[-2]


def test_a_short_answer_with_a_fenced_block_is_one_section_with_the_code_as_written() -> None:
    """A host named like a user id in a fenced command was a mention of nobody (``<@WEBPROD01>``), and the
    block's language was shown as its first line."""
    (message,) = slack_blocks.render(Message(parts=[Text(text=(
        f"Restart it with\n{FENCE}sh\nssh WEBPROD01 'systemctl restart app' && echo <ok>\n{FENCE}\nthen tell {ALICE}."))],
        people=[ALICE]), lambda channel, ts: "").messages
    assert [block["text"]["text"] for block in message["blocks"]] == [
        f"Restart it with\n{FENCE}\nssh WEBPROD01 'systemctl restart app' &amp;&amp; echo &lt;ok&gt;\n{FENCE}\n"
        f"then tell <@{ALICE}>."]


@pytest.mark.asyncio
async def test_an_address_holding_something_like_a_user_id_is_a_whole_link(fake_slack: FakeSlack,  # noqa: F811
                                                                           tmp_path: Path) -> None:
    """A dashboard's address whose query names a host like a Slack user id (``?var-host=WEBPROD01``), as a
    graph's answer or a summary quoting someone's message gives it, got ``<@WEBPROD01>`` in the middle of the
    address: Slack's link ended there and the rest showed as text. An address is shown as written, as inline
    code is; an id in the words around it is still a mention."""
    url = "https://grafana.example.com/d/web?var-host=WEBPROD01&from=now-1h"
    (posted,) = await _post(fake_slack, tmp_path, Message(parts=[Text(text=f"Errors rose at 10:02 ({url}); ask {ALICE}."),
                                                                Note(text=f"Source: {url}")], people=[ALICE]))
    shown = url.replace("&", "&amp;")
    assert _texts([posted]) == [f"Errors rose at 10:02 ({shown}); ask <@{ALICE}>.", f"Source: {shown}"]


@pytest.mark.asyncio
async def test_a_command_in_two_other_people_s_direct_message_is_not_told_to_invite_baton(
        fake_slack: FakeSlack, adapter: SlackAdapter) -> None:  # noqa: F811
    """``/baton`` typed in a direct message between two people: Baton is in no such conversation and none can
    invite it, yet the answer was "Invite me to the channel (`/invite @baton`)". It says what can be done."""
    body = dict(parse_qsl(SlackSender.command_body("run uptime", user=ALICE, channel="D0ALICEBOB")))
    fake_slack.fail("chat.postMessage", 200, error="channel_not_found")
    answer = await _dispatch(adapter, urlencode({**body, "channel_name": "directmessage"}))
    assert answer["response_type"] == "ephemeral" and "/invite" not in answer["text"]
    assert "direct message between other people" in answer["text"] and adapter.baton.accepted == []
    fake_slack.fail("chat.postMessage", 200, error="channel_not_found")  # a private channel Baton is not in
    answer = await _dispatch(adapter, urlencode({**body, "channel_id": "C0PRIVATE1", "channel_name": "privategroup"}))
    assert "Invite me to the channel (`/invite @baton`)" in answer["text"]


async def _dispatch(adapter: SlackAdapter, body: str) -> dict[str, Any]:
    """A slash command's request, signed, through Bolt; its answer (the acknowledgement's body)."""
    stamp = str(int(time.time()))
    signature = SignatureVerifier(SIGNING_SECRET).generate_signature(timestamp=stamp, body=body)
    response = await adapter.bolt.async_dispatch(AsyncBoltRequest(body=body, headers={
        "content-type": "application/x-www-form-urlencoded", "x-slack-request-timestamp": stamp,
        "x-slack-signature": signature}))
    assert response.status == 200
    return json.loads(response.body)
