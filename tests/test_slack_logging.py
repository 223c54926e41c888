"""Slack's Bolt names a logger after its app for each request and copies its base logger's level, handlers and
filters onto it. The app was named "baton": every Slack request set the level of the "baton" logger, the parent
of all Baton's loggers, to baton.slack's, so a level given to baton.slack (a test's caplog, an operator quieting
Slack's lines) silenced Baton's other warnings in that process (test_secrets failed after such a test)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from adapters.slack import SlackAdapter
from bot.settings import Settings
from storage.db import DatabaseHealth
from tests.fake_slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack, SlackSender
from tests.test_parity_followups import _signed
from tests.test_slack import ALICE as SLACK_ALICE, fake_slack  # noqa: F401 (a fixture)


@pytest.mark.asyncio
async def test_a_slack_request_leaves_the_level_of_batons_other_loggers_alone(
        fake_slack: FakeSlack, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    class Taking:
        settings = Settings(SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET,  # type: ignore[call-arg]
                            SLACK_API_URL=fake_slack.api_url, BATON_CONFIG=str(tmp_path / "absent.yaml"))
        db = SimpleNamespace(health=DatabaseHealth("sqlite:///absent.db"))

        async def event_received(self, platform: str, event_id: str) -> bool:
            return False

        async def accept_message(self, message: Any) -> Any:
            return SimpleNamespace(status="accepted", reason="")

    baton_logger = logging.getLogger("baton")
    level, handlers = baton_logger.level, list(baton_logger.handlers)
    adapter = SlackAdapter(Taking())
    sender = SlackSender("http://unused")
    body = sender.event_body(sender.mention("run uptime", user=SLACK_ALICE))
    with caplog.at_level(logging.ERROR, logger="baton.slack"):  # baton.slack quieted
        await adapter.bolt.async_dispatch(_signed(adapter, body, "application/json"))
    assert (baton_logger.level, baton_logger.handlers) == (level, handlers)
    assert logging.getLogger("baton.orchestrator").isEnabledFor(logging.WARNING)
