"""A slash command is answered within Slack's 3 seconds however slow Slack is to post its thread.

Slack waits 3 s for the answer to a slash command, sends it once, and past them shows "/baton failed with the error
operation_timeout" while the request goes on (the person may type it again). Baton posts the command's thread
("@you asked: ...") before storing it: a slow ``chat.postMessage`` (2-3 s, or slack_sdk's retry of a broken
connection) took the answer past the 3 s. The tests shorten Baton's deadline (``COMMAND_ACK_SECONDS``, 2.5 s) to
0.3 s and make the fake's post take seconds.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from adapters import slack as slack_module
from adapters.contract import DATABASE_AWAY_ANSWER
from adapters.slack import SlackAdapter
from bot.settings import Settings
from tests.fake_slack import BOT_TOKEN, QUICK_PACE, SIGNING_SECRET, FakeSlack, SlackSender
from tests.support import overrides, runs_in, until, wait_for
from tests.test_slack import ALICE, OPS, fake_slack  # noqa: F401 (a fixture)

DEADLINE = 0.3  # Baton's answer to Slack is due this long after a command arrives (2.5 s in production)
SLOW_POST = 2.0  # how long the fake's chat.postMessage of the command's thread takes


def _quick_deadline(fake: FakeSlack, *, socket_mode: bool = False) -> dict[str, str]:
    return {**fake.env(socket_mode=socket_mode),
            **overrides({**QUICK_PACE, "adapters.slack.COMMAND_ACK_SECONDS": DEADLINE})}


def _asked(fake: FakeSlack) -> list[Any]:
    return [call for call in fake.calls("chat.postMessage") if "asked:" in str(call.args.get("text"))]


def _stored(database: Path) -> list[str]:
    with sqlite3.connect(database) as connection:
        return [row[0] for row in connection.execute("SELECT event_id FROM inbound_events ORDER BY id")]


def test_a_command_is_answered_by_the_deadline_while_slack_is_slow_to_post_its_thread(
        fake_slack: FakeSlack, start_baton: Any, sqlite_url: str, tmp_path: Path, counter: Path) -> None:  # noqa: F811
    """The answer waited for the thread's post and for storing the request: with the post taking 2 s, Slack
    heard from Baton after 2 s (past 3 s in production, where Slack shows the person that /baton failed)."""
    baton = start_baton(sqlite_url, env=_quick_deadline(fake_slack))
    fake_slack.slow("chat.postMessage", SLOW_POST)
    sender = SlackSender(baton.url)
    began = time.monotonic()
    answer = sender.command("run uptime", user=ALICE, channel=OPS, trigger_id="41.abc",
                            response_url=fake_slack.response_url)
    answered_after = time.monotonic() - began
    still_posting = fake_slack.holding
    assert (answer.status_code, answer.text) == (200, "")
    assert still_posting == 1, f"Slack was answered {answered_after:.1f} s after the command, once its post was done"
    anchor = wait_for(lambda: fake_slack.find(f"<@{ALICE}> asked: `/baton run uptime`", channel=OPS),
                      what="the command's thread")
    wait_for(lambda: fake_slack.find("did uptime", channel=OPS, thread=anchor.ts), what="the answer in its thread")
    assert runs_in(counter) == ["uptime"] and len(_asked(fake_slack)) == 1
    assert _stored(tmp_path / "baton.db") == ["command:41.abc"]
    assert fake_slack.responses == []  # nothing more to tell the person: the thread says it all


def test_over_socket_mode_a_command_is_acknowledged_by_the_deadline_too(
        fake_slack: FakeSlack, start_baton: Any, sqlite_url: str, counter: Path) -> None:  # noqa: F811
    """Socket Mode's acknowledgement of the envelope went out as late (Bolt answers once the listener returns)."""
    start_baton(sqlite_url, env=_quick_deadline(fake_slack, socket_mode=True))
    wait_for(lambda: fake_slack.socket_connections == 1, what="Baton's Socket Mode connection")
    fake_slack.slow("chat.postMessage", SLOW_POST)
    command = dict(parse_qsl(SlackSender.command_body("run uptime", user=ALICE, channel=OPS, trigger_id="42.abc",
                                                      response_url=fake_slack.response_url)))
    envelope = fake_slack.send_envelope(command, kind="slash_commands")
    wait_for(lambda: any(ack.get("envelope_id") == envelope for ack in fake_slack.socket_acks), 10,
             "the envelope's acknowledgement")
    assert fake_slack.holding == 1, "the envelope was acknowledged once the thread's post was done"
    anchor = wait_for(lambda: fake_slack.find(f"<@{ALICE}> asked: `/baton run uptime`", channel=OPS),
                      what="the command's thread")
    wait_for(lambda: fake_slack.find("did uptime", channel=OPS, thread=anchor.ts), what="the answer in its thread")
    assert runs_in(counter) == ["uptime"] and len(_asked(fake_slack)) == 1


def test_a_refusal_that_comes_after_the_answer_is_told_through_the_response_url(
        fake_slack: FakeSlack, start_baton: Any, sqlite_url: str, tmp_path: Path) -> None:  # noqa: F811
    """Where Baton may not post (a channel it is not in), Slack's slow refusal comes after Slack was answered: the
    person is told then, only them, as the answer would have told them."""
    baton = start_baton(sqlite_url, env=_quick_deadline(fake_slack))
    fake_slack.slow("chat.postMessage", SLOW_POST)
    fake_slack.fail("chat.postMessage", 200, error="not_in_channel")
    answer = SlackSender(baton.url).command("run uptime", user=ALICE, channel="C0NOTJOINED",
                                            response_url=fake_slack.response_url)
    assert (answer.status_code, answer.text) == (200, "")
    (told,) = wait_for(lambda: fake_slack.responses, what="the refusal told through response_url")
    assert told["response_type"] == "ephemeral" and "Invite me to the channel" in told["text"]
    assert _stored(tmp_path / "baton.db") == []


def test_a_command_answered_before_its_thread_is_posted_is_not_lost_when_baton_stops(
        fake_slack: FakeSlack, start_baton: Any, sqlite_url: str, tmp_path: Path, counter: Path) -> None:  # noqa: F811
    """Slack has its answer, the thread's post is still on its way, and Baton is stopped (a deploy): the post and
    storing the request are let finish, and the next Baton runs it."""
    baton = start_baton(sqlite_url, env=_quick_deadline(fake_slack))
    fake_slack.slow("chat.postMessage", SLOW_POST)
    answer = SlackSender(baton.url).command("run uptime", user=ALICE, channel=OPS, trigger_id="43.abc",
                                            response_url=fake_slack.response_url)
    assert answer.status_code == 200 and fake_slack.holding == 1
    baton.stop()
    assert _stored(tmp_path / "baton.db") == ["command:43.abc"]
    anchor = fake_slack.find(f"<@{ALICE}> asked: `/baton run uptime`", channel=OPS)
    assert anchor is not None
    start_baton(sqlite_url, name="again", env=_quick_deadline(fake_slack))
    wait_for(lambda: fake_slack.find("did uptime", channel=OPS, thread=anchor.ts), 30, "the answer in its thread")
    assert runs_in(counter) == ["uptime"] and len(_asked(fake_slack)) == 1


class _DatabaseAway(Exception):
    """What storing the request meets while the database is away (``_Health`` says so)."""


class _Health:
    def unusable(self, exc: BaseException | None) -> str | None:
        return "connection refused" if isinstance(exc, _DatabaseAway) else None


class _Baton:
    """What the adapter asks of Baton, storing a command failing with ``failure``."""

    def __init__(self, fake: FakeSlack, tmp_path: Path, failure: Exception) -> None:
        self.settings = Settings(  # type: ignore[call-arg]
            SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET, SLACK_API_URL=fake.api_url,
            BATON_CONFIG=str(tmp_path / "absent.yaml"))
        self.db = SimpleNamespace(health=_Health())
        self.failure = failure

    async def accept_message(self, message: Any) -> Any:
        raise self.failure

    async def event_received(self, platform: str, event_id: str) -> bool:
        return False


@pytest.fixture
def failure(request: pytest.FixtureRequest) -> Exception:
    return request.param


@pytest.fixture
async def adapter(fake_slack: FakeSlack, tmp_path: Path, failure: Exception,  # noqa: F811
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SlackAdapter]:
    monkeypatch.setattr(slack_module, "COMMAND_ACK_SECONDS", DEADLINE)
    adapter = SlackAdapter(_Baton(fake_slack, tmp_path, failure))
    adapter.client.session = aiohttp.ClientSession()
    adapter._signed_in(await adapter.client.auth_test())
    try:
        yield adapter
    finally:
        await adapter.client.session.close()


async def _deliver(adapter: SlackAdapter, body: str) -> tuple[int, str]:
    """A signed slash command through Bolt as the endpoint hands it over: the answer's status and body."""
    stamp = str(int(time.time()))
    signature = SignatureVerifier(SIGNING_SECRET).generate_signature(timestamp=stamp, body=body)
    response = await adapter.bolt.async_dispatch(AsyncBoltRequest(body=body, headers={
        "content-type": "application/x-www-form-urlencoded", "x-slack-request-timestamp": stamp,
        "x-slack-signature": signature}))
    return response.status, response.body


@pytest.mark.asyncio
@pytest.mark.parametrize(("failure", "told", "logged"), [
    (_DatabaseAway("connection refused"), DATABASE_AWAY_ANSWER, "not taken, Baton's database cannot be used"),
    (RuntimeError("a bug"), "I could not take this request", "handling a slash command failed"),
], ids=["database-away", "a-bug"], indirect=["failure"])
async def test_a_failure_to_store_a_command_after_its_answer_is_told_through_the_response_url(
        fake_slack: FakeSlack, adapter: SlackAdapter, told: str, logged: str,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    """Storing the request fails once Slack has had its answer: Slack tells the person nothing (it did for an answer
    that never came), so Baton does, through the command's response_url, and the log says what happened."""
    fake_slack.slow("chat.postMessage", 1.0)
    body = SlackSender.command_body("run uptime", user=ALICE, channel=OPS, response_url=fake_slack.response_url)
    with caplog.at_level(logging.INFO, logger="baton.slack"):
        assert await _deliver(adapter, body) == (200, "")
        assert fake_slack.holding == 1
        await until(lambda: fake_slack.responses, "the person told through response_url")
    (response,) = fake_slack.responses
    assert response["response_type"] == "ephemeral" and told in response["text"]
    assert any(logged in record.getMessage() for record in caplog.records), [r.getMessage() for r in caplog.records]
    assert fake_slack.response_url not in caplog.text

