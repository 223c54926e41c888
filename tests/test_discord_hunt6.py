"""The Discord adapter, seventh hunt: what an on-call team meets when Baton reads a thread (``summarize``, the
assistant). Covered here: alerts that monitoring bots and webhooks post as embeds (titles and fields, no
description), a message with words and an embed, a forwarded message, and a request asked as a reply to an
alert."""

from __future__ import annotations

from typing import Any

from bot.messages import Location
from tests.fake_discord import ALICE, BOB, GENERAL, GUILD_ID, OTHER_BOT, FakeMessage
from tests.test_discord import fake_discord  # noqa: F401 (a fixture)
from tests.test_discord_hunt import adapter  # noqa: F401 (a fixture)

# What Uptime Kuma, Alertmanager's Discord receiver or Sentry post: a rich embed whose title and fields say it all.
ALERT = {"type": "rich", "title": "[FIRING:1] HighLatency api (prod)", "color": 15548997,
         "fields": [{"name": "Service", "value": "api", "inline": True},
                    {"name": "p99", "value": "2.4 s (threshold 1 s)", "inline": True}],
         "footer": {"text": "Alertmanager"}}
# Discord's own preview of a link in someone's words: it repeats the page, not what they said.
PREVIEW = {"type": "article", "title": "Postmortem template", "description": "How we write postmortems",
           "url": "https://wiki.example/postmortems"}


class Forwarded(FakeMessage):
    """A message someone forwarded into the thread: Discord sends it with no content of its own, and what was
    forwarded in ``message_snapshots``."""

    def __init__(self, *args: Any, snapshot: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.snapshot = snapshot

    def json(self) -> dict[str, Any]:
        forwarded = {"type": 0, "content": "", "embeds": [], "attachments": [], "timestamp": "2026-12-06T10:00:00+00:00",
                     "edited_timestamp": None, "flags": 0, "mentions": [], "mention_roles": [], "components": []}
        return super().json() | {"message_reference": {"type": 1, "message_id": "8999", "channel_id": GENERAL},
                                 "message_snapshots": [{"message": forwarded | self.snapshot}]}


async def test_alerts_posted_as_embeds_are_read_in_a_threads_history(fake_discord, adapter):
    """Monitoring bots and webhooks post their alerts as embeds, often with a title and fields and no
    description: ``summarize`` and the assistant read a thread's history from Discord, where such an alert
    was an empty line (the assistant left it out altogether), so an incident thread's summary lost the
    alert it was about; a message with words and an embed lost the embed, and a forwarded alert was empty
    too. (Baton's Slack adapter reads alerting bots' attachments and fields.) Discord's previews of a
    link in someone's words are not repeated."""
    for message in (
            FakeMessage(id="9001", channel_id=GENERAL, author_id=OTHER_BOT, content="", embeds=[ALERT]),
            FakeMessage(id="9002", channel_id=GENERAL, author_id=OTHER_BOT, content="@here deploy finished",
                        embeds=[{"type": "rich", "description": "api v1.4.2 is live on 3 hosts"}]),
            FakeMessage(id="9003", channel_id=GENERAL, author_id=ALICE, content="see https://wiki.example/postmortems",
                        embeds=[PREVIEW]),
            Forwarded(id="9004", channel_id=GENERAL, author_id=BOB, content="",
                      snapshot={"content": "db-1 disk at 95%", "embeds": [ALERT]})):
        fake_discord._messages[message.id] = message
    adapter.reads_content = True
    seen = await adapter.history(Location(platform="discord", workspace=GUILD_ID, channel=GENERAL, thread=GENERAL), 10)
    alert = "[FIRING:1] HighLatency api (prod)\nService: api\np99: 2.4 s (threshold 1 s)"
    assert [entry["text"] for entry in seen or []] == [
        alert,
        "@here deploy finished\napi v1.4.2 is live on 3 hosts",
        "see https://wiki.example/postmortems",
        f"(forwarded) db-1 disk at 95%\n{alert}"]
