"""The Slack adapter against more of what real Slack and slack_sdk do: Block Kit's limit on a context's
text for an image's description, and a Socket Mode WebSocket that cannot be opened at start-up."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from adapters import slack_blocks
from bot.messages import Image, Message, Text
from tests.fake_slack import FakeMessage, check_message, shown_text


def link(channel: str, thread: str) -> str:
    return f"https://x.slack.com/archives/{channel}/p{thread.replace('.', '')}"


@pytest.mark.parametrize("files", [True, False], ids=["posted", "ephemeral"])
def test_a_graph_s_long_image_description_is_split_not_refused(files: bool) -> None:
    """An image's description (``alt``) went into one context element whatever its length: over Slack's
    3,000 characters Slack refuses the whole reply (``invalid_blocks``), and the graph's answer was never shown."""
    alt = "A chart of the error rate per host over the last week. " * 80  # ~4,500 characters
    message = Message(parts=[Text(text="Here is the chart."),
                             Image(alt=alt, data=base64.b64encode(b"<svg/>").decode(), filename="errors.svg")])
    rendered = slack_blocks.render(message, link, files=files)
    for content in rendered.messages:
        assert check_message({"channel": "C1", **content}) == ""
    shown = "".join(shown_text(FakeMessage(channel="C1", ts="1.1", thread_ts=None, text=content["text"],
                                           blocks=content["blocks"])) for content in rendered.messages)
    assert alt.strip() in shown.replace("\n", "")
    assert [upload.filename for upload in rendered.uploads] == (["errors.svg"] if files else [])
