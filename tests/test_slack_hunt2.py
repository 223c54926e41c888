"""The Slack adapter against more of what real Slack and slack_sdk do: Block Kit's limit on a context's
text for an image's description, and a Socket Mode WebSocket that cannot be opened at start-up."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from adapters import slack_blocks
from bot.messages import Image, Message, Text
from tests.fake_slack import FakeMessage, FakeSlack, check_message, shown_text
from tests.support import free_port


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


class _SocketUnreachable(FakeSlack):
    """Slack whose Web API answers, but whose Socket Mode WebSocket cannot be opened (a proxy or a firewall
    that lets HTTPS through and not the WebSocket's host, say): ``apps.connections.open`` names a closed port."""

    def _apps_connections_open(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.closed_port}/socket?ticket=T1CKET5ECRET&app_id=A0BATON000"}


@pytest.fixture
def unreachable_socket() -> Iterator[_SocketUnreachable]:
    fake = _SocketUnreachable()
    fake.closed_port = free_port()
    fake.start()
    yield fake
    fake.stop()


def test_a_socket_mode_websocket_that_cannot_be_opened_stops_the_start_saying_so(
        unreachable_socket: _SocketUnreachable, start_baton, sqlite_url: str) -> None:
    """slack_sdk tries the WebSocket again every 10 s for ever: the start never finished (no /healthz, no
    Slack), and the log had a traceback every 10 s and no word of Socket Mode's address."""
    said = (r"Baton cannot start: Slack's Socket Mode WebSocket at ws://127\.0\.0\.1:\d+/socket cannot be opened "
            r"\(ClientConnectorError")
    with pytest.raises(AssertionError, match=said) as refused:
        start_baton(sqlite_url, name="no-socket", env=unreachable_socket.env(socket_mode=True))
    assert "T1CKET5ECRET" not in str(refused.value)  # a URL to connect with, not to log
