"""Secrets read from a file or a Kubernetes secret end in a line break (``echo token > file``, a secret made
``--from-file``). Kept, Slack's signing secret failed every signature and the metrics token every scrape."""

from __future__ import annotations

import httpx

from bot.settings import Settings
from tests.fake_slack import BOT_TOKEN, SIGNING_SECRET, SlackSender
from tests.test_slack import GENERAL, config_path, fake_slack  # noqa: F401 (fixtures)
from tests.support import runs_in, wait_for


def test_secrets_are_read_without_the_line_break_a_file_leaves() -> None:
    settings = Settings(_env_file=None, SLACK_BOT_TOKEN=BOT_TOKEN + "\n", SLACK_SIGNING_SECRET=f" {SIGNING_SECRET}\r\n",
                        SLACK_APP_TOKEN="xapp-1\n", DISCORD_TOKEN="discord-token\n",
                        BATON_METRICS_TOKEN="s3cret\n")  # type: ignore[call-arg]
    secrets = (settings.slack_bot_token, settings.slack_signing_secret, settings.slack_app_token,
               settings.discord_token, settings.metrics_token)
    assert [secret.get_secret_value() for secret in secrets] == [  # type: ignore[union-attr]
        BOT_TOKEN, SIGNING_SECRET, "xapp-1", "discord-token", "s3cret"]


def test_slack_and_the_scraper_are_let_in_with_secrets_that_end_in_a_line_break(
        fake_slack, start_baton, sqlite_url, counter) -> None:  # noqa: F811
    env = {**fake_slack.env(), "SLACK_BOT_TOKEN": BOT_TOKEN + "\n", "SLACK_SIGNING_SECRET": SIGNING_SECRET + "\n",
           "BATON_METRICS_TOKEN": "s3cret\n"}
    baton = start_baton(sqlite_url, env=env)
    sender = SlackSender(baton.url)
    event = sender.mention("run uptime", user="U0ALICE001", channel=GENERAL)
    answer = sender.send_event(event)
    assert answer.status_code == 200, answer.text  # the signature made with the secret itself is good
    wait_for(lambda: fake_slack.find("did uptime", channel=GENERAL, thread=event["ts"]),
             what="the reply, posted with the bot token")
    assert runs_in(counter) == ["uptime"]
    with httpx.Client(base_url=baton.url, timeout=15) as http:
        assert http.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
