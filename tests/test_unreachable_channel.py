"""A channel Baton cannot post in any more (removed from it, deleted, archived, a locked thread): through the fake
Slack and Discord and a real ``baton run``. The platform refuses every message there for good; the operator is told
once a channel, ``/metrics`` counts the messages by reason, ``baton threads`` says what was not delivered, and a run
whose approval card could not be posted ends instead of waiting for a click nobody can give."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest

from tests.support import run_cli, runs_in, wait_for
from tests.test_slack import ALICE, OPS, Slack, config_path, fake_slack, slack  # noqa: F401 (fixtures)

GONE = "C0GONE0001"


def _undeliverable(url: str, platform: str, reason: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(rf'^baton_messages_undeliverable_total{{platform="{platform}",reason="{reason}"}} (\S+)$',
                      text, re.M)
    return float(found.group(1)) if found else -1.0


def _log_lines(path: Path, level: str, contains: str) -> list[str]:
    return [line for line in path.read_text().splitlines() if f" {level} " in line and contains in line]


@pytest.mark.parametrize(("error", "reason"), [("not_in_channel", "removed"), ("channel_not_found", "gone"),
                                               ("is_archived", "archived")])
def test_slack_a_channel_baton_was_removed_from_is_told_once_counted_and_its_card_run_ends(
        slack: Slack, counter: Path, tmp_path: Path, error: str, reason: str) -> None:
    """Before: each refused message was an ERROR line of its own, ``/metrics`` showed only a gauge of failed rows,
    ``baton threads`` said "done" and "waiting", and the run whose card Slack refused waited a day for a click."""
    slack.fake.shut_out(GONE, error)
    slack.mention("run uptime", channel=GONE)
    asked = slack.mention("run restart service=web", channel=GONE)
    wait_for(lambda: slack.rows("SELECT status, error FROM runs WHERE input_text LIKE '%restart%'")[:1] == [(
        "failed", f"its approval card could not be posted (chat.postMessage: {error}), so nobody could decide on it")],
        30, "the run whose card was refused to end")
    assert runs_in(counter) == ["uptime"]
    assert slack.rows("SELECT status FROM approvals") == [("stale",)]  # no longer waiting, nor in `status`
    wait_for(lambda: slack.rows("SELECT DISTINCT status FROM outbox WHERE status != 'failed'") == []
             and len(slack.rows("SELECT id FROM outbox")) >= 4, 20, "every message there given up")
    refused = len(slack.rows("SELECT id FROM outbox"))

    # Logged and counted once the row's failure is committed: a moment after it shows
    told = wait_for(lambda: _log_lines(slack.baton.log, "WARNING", f"channel {GONE} cannot be reached"), 20, "told")
    assert len(told) == 1 and f"chat.postMessage: {error}" in told[0], told
    assert _log_lines(slack.baton.log, "ERROR", "rejected message") == []
    wait_for(lambda: _undeliverable(slack.baton.url, "slack", reason) == refused, 20, "every refusal counted")
    assert _undeliverable(slack.baton.url, "slack", "refused") == 0

    env = {**os.environ, "BATON_DATABASE_URL": slack.baton.database_url, "BATON_CONFIG": str(slack.baton.config)}
    listed = run_cli("threads", cwd=tmp_path, env=env).stdout
    line = next(line for line in listed.splitlines() if asked["ts"] in line)
    assert "failed" in line and f"not delivered (chat.postMessage: {error})" in line, listed

    # Invited back: its messages go, and a later removal is told again.
    slack.fake.let_in(GONE)
    again = slack.mention("run slow seconds=0", channel=GONE)
    slack.reply("slept", again["ts"], channel=GONE)
    slack.fake.shut_out(GONE, error)
    slack.mention("run uptime", channel=GONE)
    wait_for(lambda: len(_log_lines(slack.baton.log, "WARNING", f"channel {GONE} cannot be reached")) == 2, 20,
             "the second removal told")
