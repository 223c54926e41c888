"""The Slack adapter against more of what real Slack and slack_sdk do: Block Kit's limit on a context's
text for an image's description; a Socket Mode WebSocket that cannot be opened at start-up, or again after
Slack closed it (slack_sdk tries again for ever, saying so only in the log)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import aiohttp
import pytest

from adapters import slack, slack_blocks
from adapters.slack import SlackAdapter
from bot.messages import Image, Message, Text
from bot.settings import Settings
from tests.fake_slack import APP_TOKEN, BOT_TOKEN, FakeMessage, FakeSlack, check_message, shown_text
from tests.support import free_port, overrides, until

T = TypeVar("T")


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

    closed_port = 0

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
    # The start gives up after SOCKET_CONNECT_SECONDS (15 s); here 3 s, time enough for the refused connection (at
    # once, on this machine), which slack_sdk logs and the start names, and for nothing more.
    quick = overrides({"adapters.slack.SOCKET_CONNECT_SECONDS": 3.0})
    with pytest.raises(AssertionError, match=said) as refused:
        start_baton(sqlite_url, name="no-socket", env={**unreachable_socket.env(socket_mode=True), **quick})
    assert "T1CKET5ECRET" not in str(refused.value)  # a URL to connect with, not to log


class _RevocableAppToken(FakeSlack):
    """Slack, whose ``apps.connections.open`` refuses the app-level token once ``revoked``."""

    revoked = False

    def _apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": False, "error": "invalid_auth"} if self.revoked else super()._apps_connections_open(args)


@pytest.mark.asyncio
async def test_a_socket_mode_connection_down_for_good_is_named_by_healthz(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    """Slack closed the WebSocket and refuses a new one (the app-level token revoked, Socket Mode turned off
    in the app's settings): slack_sdk tries again every 10 s for ever, logging an error each time, and
    ``/healthz`` said 200, so no supervisor restarted a replica that received nothing (the gateway of
    Discord that ends is named there)."""
    fake = _RevocableAppToken().start()
    settings = Settings(SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN,  # type: ignore[call-arg]
                        SLACK_API_URL=fake.api_url, BATON_CONFIG=str(tmp_path / "absent.yaml"))
    adapter = SlackAdapter(SimpleNamespace(settings=settings))
    adapter.client.session = aiohttp.ClientSession()
    # A minute in Baton: slack_sdk's reconnections take seconds. (raising=False: the old adapter had none.)
    monkeypatch.setattr(slack, "SOCKET_DOWN_SECONDS", 0.5, raising=False)
    try:
        await adapter._connect_socket_mode(APP_TOKEN)
        await until(_async(lambda: fake.socket_connections == 1), "the Socket Mode connection")
        assert adapter.problem() is None
        fake.revoked = True
        asyncio.run_coroutine_threadsafe(fake.close_connections(), fake._loop).result(10)
        problem = await until(_async(adapter.problem), "/healthz to name the connection that is down")
        assert "Socket Mode connection has been down" in problem and "Slack events are not received" in problem
        fake.revoked = False  # a new token, say; slack_sdk's next try (here made at once) connects
        await adapter._socket.client.connect_to_new_endpoint(force=True)
        await until(_async(lambda: adapter.problem() is None), "/healthz to be content again")
    finally:
        if adapter._socket is not None:
            await adapter._socket.close_async()
        await adapter.client.session.close()
        fake.stop()


def _async(condition: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def check() -> T:
        return condition()

    return check


@pytest.mark.parametrize("signature", ["v0=\u00e9", "\u00ff"])
def test_a_signature_that_is_not_ascii_is_refused_not_a_traceback(signature: str) -> None:
    """Anyone may send it (no secret needed): hmac.compare_digest raised TypeError on it, which answered the
    request with a 500 and a traceback in the log instead of the 401 every other bad signature gets."""
    from slack_sdk.signature import SignatureVerifier

    assert slack._signature_problem(SignatureVerifier("secret"), b"{}", str(int(time.time())), signature) == \
        "its signature or timestamp cannot be read"
