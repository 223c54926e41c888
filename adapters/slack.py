"""Slack through slack-bolt: HTTP events (``POST /slack/events``) and/or Socket Mode.

Inbound, the Bolt app runs with ``process_before_response=True`` and every listener only hands
the event to ``Baton.accept_*`` before returning: Slack's acknowledgement goes out after the
event is stored (a crash never loses an acknowledged request) and is only as slow as that insert.
A slash command, whose thread Baton posts before storing it, is the exception: it is answered within
``COMMAND_ACK_SECONDS`` however slow that post is, and taken in full after the answer (``_on_command``).
Signatures are verified before Bolt reads the body (a bad or stale one gets a 401; Slack's check of the
certificate of a slash command's URL, ``ssl_check=1``, comes unsigned and gets a 200 and nothing else); a signed body
of a shape Slack never sends gets a 400, Baton's own failure a 500 (Slack retries an event; a click or a
command it sends once). Bolt has no dedupe, so Slack's retries (``X-Slack-Retry-Num``) and Socket Mode
redeliveries are stopped by the core's unique event id. slack_sdk opens Socket Mode's WebSocket again and
again for as long as it fails: a start that cannot open it stops, saying so, and a connection down for a
minute is named by ``/healthz`` (``problem``), so that a replica receiving nothing is restarted.

The event id of a message is ``<channel>:<ts>``, the message's own identity, not the Slack
``event_id``: a mention in a channel arrives twice, as ``app_mention`` and as ``message``, with
two different ``event_id`` values, and both must become one request. Clicks use the click's
``trigger_id``; slash commands theirs.

Whether a message is for Baton is the core's decision: a mention or a DM is ``addressed``; any
other message is handed in too, and the core keeps it only inside a Baton thread (follow-ups).
Messages from bots, including Baton's own, and edits or joins (message subtypes) are ignored here.
The text is handed in as the person typed it: Slack's markup undone (``slack_blocks.typed_text``), so
that an address Slack made a link reaches a runbook's argument as typed.

Outbound, ``send`` renders core messages as Block Kit (``adapters.slack_blocks``) and always
posts in the thread. A 429 becomes ``RetryLater`` (Retry-After honoured by the shared outbox
loop), a 5xx or a connection error is retried with backoff, and any other Slack error is final.

Slack has no idempotency key for ``chat.postMessage``, so each post carries message metadata naming
its outbox row and step (``slack_blocks.delivery_metadata``). A try that follows one whose post may
have reached Slack unheard (a 5xx, a broken connection, a timeout; or an earlier try this process
did not make: a takeover after a crash or a stop) first looks for the delivery's messages in the
thread (``conversations.replies``, or ``conversations.history`` at the top of a channel, with
``include_all_metadata``) and takes what it finds as posted. A first try never looks. slack_sdk's own
retry of a broken connection is off for these posts: it posted again without looking.
Ephemeral messages are not found that way (Slack keeps them nowhere to read back), and edits
(``chat.update``, ``chat.delete``) are the same however often they are made: both are sent as before.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import SecretStr, ValidationError
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.error import BoltUnhandledRequestError
from slack_bolt.middleware.authorization.async_single_team_authorization import AsyncSingleTeamAuthorization
from slack_bolt.request.payload_utils import is_action, is_event, is_slash_command
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse
from slack_sdk.webhook.async_client import AsyncWebhookClient

from adapters.contract import (
    DATABASE_AWAY_ANSWER,
    DATABASE_AWAY_CLICK,
    STOP_GRACE_SECONDS,
    Adapter,
    DeliveryRejected,
    RetryLater,
    StartFailed,
    Step,
)
from adapters.slack_blocks import (
    BUTTON_ACTION_PREFIX,
    Upload,
    delivery_metadata,
    delivery_step,
    escape,
    render,
    shown_text,
    typed_text,
)
from bot.messages import InboundClick, InboundMessage, Location, Message, quoted_code
from bot.outbox import Delivery, Unreachable
from bot.recent import REMEMBERED, forget_oldest
from bot.settings import Settings

log = logging.getLogger("baton.slack")
socket_log = logging.getLogger("baton.slack.socket")  # slack_sdk's Socket Mode client's
webhook_log = logging.getLogger("baton.slack.webhook")  # slack_sdk's client of a command's response_url
EVENTS_PATH = "/slack/events"
PLATFORM = "slack"
HTTP_TIMEOUT_SECONDS = 30
START_RATE_LIMIT_SECONDS = 120  # how long a start waits out Slack's 429s before giving up
SIGNATURE_WINDOW_SECONDS = 300  # Slack's: a request signed longer ago (or ahead) is refused
REFUSAL_LOG_SECONDS = 60
SSL_CHECK_BYTES = 1024  # Slack's certificate check is "ssl_check=1&token=..."; a longer body is no such check
# Slack shows "/baton failed with the error operation_timeout" when a slash command is not answered within 3 s: Baton
# answers by then however long posting the command's thread takes (and says the rest through its response_url).
COMMAND_ACK_SECONDS = 2.5
COMMAND_FAILED = ("⚠️ I could not take this request: something went wrong on my side (my log says what). "
                  "Please ask again in a moment.")
ECHO_CHARS = 4000  # of a slash command's request, as "@you asked: `...`" shows it (the request is handed in whole)
SOCKET_CONNECT_SECONDS = 15.0  # how long a start tries to open the Socket Mode WebSocket (slack_sdk: every 10 s)
# Socket Mode down this long is named by /healthz: slack_sdk notices a closed connection within 10 s and opens a new
# one in a second or two, but one Slack refuses (a revoked app-level token) it tries again every 10 s for ever.
SOCKET_DOWN_SECONDS = 60.0
# Message subtypes that are a person writing; every other subtype (edits, deletions, joins,
# bot_message, ...) is not a request.
PERSON_SUBTYPES = {None, "thread_broadcast", "file_share"}
HISTORY_PAGES = 10  # at 200 messages a page
# Where a later try looks for a post an earlier one may have made: the thread's (or the channel's) messages
# from shortly before its row was stored (a delivery that does not say when: the last week's), at most this
# many pages of 200.
LOOKUP_PAGES = 5
LOOKUP_WINDOW_SECONDS = 7 * 24 * 3600
LOOKUP_MARGIN_SECONDS = 600  # looked for from this long before the row was stored: Slack's clock and ours differ
# Deliveries whose clean failure (a 429: nothing posted) is kept for their next try, the oldest forgotten first: one
# whose next try another replica made is never settled here. Forgotten, its next try here only looks before posting.
TRIES_KEPT = REMEMBERED
TRANSIENT_ERRORS = {"internal_error", "fatal_error", "service_unavailable", "request_timeout", "ratelimited"}
# Slack refuses the token itself (revoked, rotated, the app uninstalled): RetryLater.token_refused
AUTH_ERRORS = {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"}


def _secret(value: SecretStr | None) -> str | None:
    text = value.get_secret_value().strip() if value is not None else ""
    return text or None


def _refuse_swapped_tokens(bot_token: str, app_token: str | None) -> None:
    """Say so before anything starts when Slack's two tokens went into each other's variables (both are long strings
    copied from the app's pages): found by ``auth.test`` only after baton.db was made and migrated."""
    if bot_token.startswith("xapp-"):
        raise ValueError("SLACK_BOT_TOKEN holds an app-level token (xapp-...), which belongs in SLACK_APP_TOKEN; "
                         "SLACK_BOT_TOKEN is the Bot User OAuth Token (xoxb-...) of OAuth & Permissions")
    if app_token is not None and app_token.startswith("xox"):
        raise ValueError(f"SLACK_APP_TOKEN holds an OAuth token ({app_token[:4]}-...), which is not an app-level "
                         "token: SLACK_APP_TOKEN is the xapp-... token of Basic Information, App-Level Tokens "
                         "(scope connections:write)")


class SlackAdapter(Adapter):
    name = PLATFORM
    channel_pace_seconds = 1.0  # Slack allows about one message per second per channel

    @classmethod
    def is_configured(cls, settings: Settings) -> bool:
        # A bot token alone counts: the constructor then says clearly what else is missing,
        # instead of Baton quietly serving the playground.
        return _secret(settings.slack_bot_token) is not None

    def __init__(self, baton: Any) -> None:
        super().__init__(baton)
        settings: Settings = baton.settings
        token = _secret(settings.slack_bot_token)
        self._signing_secret = _secret(settings.slack_signing_secret)
        self._app_token = _secret(settings.slack_app_token)
        if token is None:
            raise ValueError("the Slack adapter needs SLACK_BOT_TOKEN (the bot token, xoxb-...)")
        _refuse_swapped_tokens(token, self._app_token)
        if self._signing_secret is None and self._app_token is None:
            raise ValueError("SLACK_BOT_TOKEN is set, but neither SLACK_SIGNING_SECRET (HTTP events) "
                             "nor SLACK_APP_TOKEN (Socket Mode, xapp-...) is")
        # Bolt gives each request a logger named after the app and sets its level, handlers and filters to its base
        # logger's: named "baton", that was the parent of all Baton's loggers (a level set on baton.slack then
        # silenced every one of them). Under baton.slack, its loggers are Baton's Slack logging's own.
        self.bolt = AsyncApp(name=log.name + ".bolt", token=token, signing_secret=self._signing_secret or "",
                             process_before_response=True, raise_error_for_unhandled_request=True, logger=log)
        # Bolt's own client (its user agent, the token), pointed at SLACK_API_URL. Handing Bolt a
        # client instead works too, but then Bolt also finds SLACK_BOT_TOKEN in the environment
        # and warns at every start that the token "will be unused".
        self.client: AsyncWebClient = self.bolt.client
        self.client.base_url = settings.slack_api_url.rstrip("/") + "/"
        self.bolt.event("app_mention")(_retried_on_failure(self._on_mention))
        self.bolt.event("message")(_retried_on_failure(self._on_message))
        self.bolt.action(re.compile(rf"^{re.escape(BUTTON_ACTION_PREFIX)}"))(_retried_on_failure(self._on_click))
        self.bolt.command(re.compile(r"^/"))(_retried_on_failure(self._on_command))  # /baton, or what the app calls it
        self.bolt.error(self._on_bolt_error)
        # slack_sdk retries a call whose connection broke once, at once: for an outbox post, which may have
        # been posted, that is left to the outbox, whose next try looks for it first.
        self.client.retry_handlers = [_RetryBrokenConnections()]
        # delivery id -> the try that failed leaving nothing unknown in Slack (its posts answered, or refused)
        self._clean_failures: dict[int, int] = {}
        self._lookup_problems_told: set[str] = set()
        self._socket: AsyncSocketModeHandler | None = None
        self._commands: set[asyncio.Task[dict[str, str]]] = set()  # slash commands being taken (``_on_command``)
        self._socket_down_since: float | None = None  # when /healthz first found the Socket Mode connection down
        self.bot_user_id = ""
        self.team_url = ""
        self.team_id = ""  # the one workspace Baton is installed in ("" for an install across an Enterprise Grid org)
        self._mention = re.compile(r"(?!)")
        # At DEBUG, slack_sdk's Socket Mode client logs each envelope whole: people's messages and DMs, and the
        # response_url of a command or click (which posts in the channel, and replaces Baton's card, for 30 min)
        socket_log.setLevel(max(logging.INFO, socket_log.getEffectiveLevel()))
        webhook_log.setLevel(max(logging.INFO, webhook_log.getEffectiveLevel()))  # at DEBUG it logs the URL

    # -- lifecycle -------------------------------------------------------------------------------

    def mount(self, app: FastAPI) -> None:
        if self._signing_secret is None:
            return  # Socket Mode only: without the signing secret nothing could be verified
        handler = AsyncSlackRequestHandler(self.bolt)
        verifier = SignatureVerifier(self._signing_secret)
        refusals = _Refusals()

        async def slack_events(request: Request) -> Response:
            # Checked before Bolt sees the request: Bolt parses the body and the timestamp first, so
            # an unsigned body that is not JSON, or a timestamp that is not a number, was a 500 with a
            # traceback, and a bad signature logged the whole body (any size, any line breaks).
            body = await request.body()  # kept by the request: Bolt reads the same bytes
            if _is_ssl_check(body, request.headers.get("content-type")):
                return Response(status_code=200)
            problem = _signature_problem(verifier, body, request.headers.get("x-slack-request-timestamp"),
                                         request.headers.get("x-slack-signature"))
            if problem is not None:
                refusals.tell(problem)
                return JSONResponse({"error": "invalid or missing request signature"}, status_code=401)
            try:
                return await handler.handle(request)
            except Exception as exc:  # Bolt's parsing: JSON it cannot read, or a body that is not an object
                # (what Bolt's matchers and the listeners raise goes to ``_on_bolt_error``)
                log.warning("Slack: a signed request that could not be read was refused (%s)", type(exc).__name__)
                return JSONResponse({"error": "the request body could not be read"}, status_code=400)

        app.add_api_route(EVENTS_PATH, slack_events, methods=["POST"], include_in_schema=False)

    async def start(self) -> None:
        self.client.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_SECONDS))
        try:
            auth = await _waiting_out_rate_limits("auth.test", self.client.auth_test)
        except SlackApiError as exc:
            raise _start_refused("auth.test", "SLACK_BOT_TOKEN", exc) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise StartFailed(f"Slack's API at {self.client.base_url} cannot be reached ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from exc
        if not auth.get("bot_id"):
            raise StartFailed(f"SLACK_BOT_TOKEN is not a bot token (it signs in as the person {auth.get('user')}): "
                              "use the Bot User OAuth Token (xoxb-...) from the app's OAuth & Permissions page")
        self._signed_in(auth)
        log.info("Slack: signed in as %s (%s) in %s", auth.get("user"), self.bot_user_id, auth.get("team"))
        await super().start()
        if self._app_token is not None:
            await self._connect_socket_mode(self._app_token)

    def _signed_in(self, auth: AsyncSlackResponse) -> None:
        """What ``auth.test`` said of Baton: its user (to see itself mentioned), the workspace's address."""
        self._share_sign_in(auth)
        self.bot_user_id = auth["user_id"]
        self.team_url = str(auth.get("url") or "https://slack.com/")
        if not self.team_url.endswith("/"):
            self.team_url += "/"
        self._mention = re.compile(rf"<@{re.escape(self.bot_user_id)}(?:\|[^>]*)?>[:,]?")
        installed_in = auth.get("team_id")
        self.team_id = installed_in if isinstance(installed_in, str) and not auth.get("is_enterprise_install") else ""

    def _workspace(self, sent: object) -> str:
        """The workspace of a request: the one Baton is installed in. In a channel shared with another organisation
        (Slack Connect) and made there, Slack's events carry that organisation's team_id and ``/baton`` Baton's own
        (Bolt reads ``authorizations`` first for that reason), and one Slack thread was two of Baton's. An install
        across an Enterprise Grid org serves several workspaces: there, the request's own (``sent``)."""
        return self.team_id or (sent if isinstance(sent, str) else "")

    def _share_sign_in(self, auth: AsyncSlackResponse) -> None:
        """Hand Bolt the ``auth.test`` answer of the start. Bolt otherwise asks again at the first request,
        and when Slack fails that call, it acknowledges an event without handling it and tells a slash
        command's user to reinstall the app."""
        for middleware in self.bolt._async_middleware_list:  # no public way to give it to Bolt
            if isinstance(middleware, AsyncSingleTeamAuthorization):
                middleware.auth_test_result = auth

    async def _connect_socket_mode(self, app_token: str) -> None:
        self._socket = AsyncSocketModeHandler(self.bolt, app_token=app_token, web_client=self.client, logger=socket_log)
        try:  # ask once ourselves, so that a wrong app token stops the start with a clear message
            opened = await _waiting_out_rate_limits(
                "apps.connections.open", functools.partial(self.client.apps_connections_open, app_token=app_token))
        except SlackApiError as exc:
            raise _start_refused("apps.connections.open", "SLACK_APP_TOKEN", exc) from exc
        self._socket.client.wss_uri = opened["url"]
        # slack_sdk tries a WebSocket it cannot open again every 10 s for ever (with the same URL): the start
        # never ended. A start that cannot open it within SOCKET_CONNECT_SECONDS stops, saying so.
        failures = _LastFailure()
        socket_log.addFilter(failures)
        try:
            await asyncio.wait_for(self._socket.connect_async(), SOCKET_CONNECT_SECONDS)
        except TimeoutError as exc:
            await self._socket.close_async()
            self._socket = None
            address = urlsplit(str(opened["url"]))._replace(query="", fragment="").geturl()  # not its ticket
            why = f" ({type(failures.error).__name__}: {str(failures.error)[:200]})" if failures.error else ""
            raise StartFailed(f"Slack's Socket Mode WebSocket at {address} cannot be opened{why}; check that this "
                              "machine may open WebSockets to it (a proxy or a firewall may refuse them)") from exc
        finally:
            socket_log.removeFilter(failures)
        log.info("Slack: Socket Mode connected")

    def problem(self) -> str | None:
        """Socket Mode's connection down for ``SOCKET_DOWN_SECONDS`` (as ``/healthz`` found it): no event arrives,
        and slack_sdk, which tries again for ever, says so only in the log; a restart starts afresh, or says why not."""
        if self._socket is not None:
            client = self._socket.client
            session = client.current_session
            now = time.monotonic()
            if session is not None and not session.closed and not client.stale:
                self._socket_down_since = None
            elif self._socket_down_since is None:
                self._socket_down_since = now
            elif now - self._socket_down_since >= SOCKET_DOWN_SECONDS:
                return (f"the Socket Mode connection has been down for {now - self._socket_down_since:.0f} s (see the "
                        "log); Slack events are not received")
        return super().problem()

    async def stop(self) -> None:
        if self._commands:  # answered already: cut off, a request Slack was told nothing about would be lost
            _done, running = await asyncio.wait(set(self._commands), timeout=STOP_GRACE_SECONDS)
            for task in running:
                log.warning("Slack: %s was still being taken %g s into the stop; it is cut off (the person may have "
                            "to ask again)", task.get_name().removeprefix("slack-"), STOP_GRACE_SECONDS)
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        if self._socket is not None:
            await self._socket.close_async()
        await super().stop()
        if self.client.session is not None:
            await self.client.session.close()

    # -- inbound: listeners only hand the event to the core ------------------------------------

    async def _on_bolt_error(self, error: Exception, body: dict[str, Any],
                             response: BoltResponse | None) -> BoltResponse | None:
        """Every error Bolt catches. Reading a signed request of a shape Slack does not send (``"event":
        null``, a click without actions, ...) fails in Bolt's matchers or in ``bot.messages``: a 400
        with a reason, and no traceback. Anything else (Baton's own work, Bolt's call to Slack) stays a
        500, and Slack delivers the event again later. A request no listener takes (an event the app
        was subscribed to by hand, ``app_rate_limited``) is acknowledged: Bolt's 404 made Slack retry
        it, count it as a failed delivery, and log a page of suggested code each time. A failure is logged as
        what becomes of the request (``_lost_or_retried``): "Slack will retry it" is true of an event only."""
        if isinstance(error, BoltUnhandledRequestError):
            return _acknowledge_unhandled(error.body)
        if isinstance(error, HandlingFailed) or not isinstance(error, UNREADABLE):
            cause = error.__cause__ if isinstance(error, HandlingFailed) else error
            what, then = _lost_or_retried(body)
            if (reason := self.baton.db.health.unusable(cause)) is not None:  # a PostgreSQL outage: logged once
                log.warning("Slack: %s was not taken, Baton's database being away (%s); %s", what, reason, then)
            else:
                log.error("Slack: handling %s failed; %s", what, then, exc_info=cause)
            return None
        log.warning("Slack: a signed request that could not be read was refused (%s)", type(error).__name__)
        if response is None:  # already acknowledged
            return None
        return BoltResponse(status=400, body=json.dumps({"error": "the request body could not be read"}),
                            headers={"content-type": "application/json"})

    async def _on_mention(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        await self._accept_message(body, event, mentioned=True)

    async def _on_message(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        await self._accept_message(body, event, mentioned=False)

    async def _accept_message(self, body: dict[str, Any], event: dict[str, Any], *, mentioned: bool) -> None:
        user, channel, ts = event.get("user"), event.get("channel"), event.get("ts")
        if (not _all_text(user, channel, ts) or user == self.bot_user_id or event.get("bot_id")
                or event.get("subtype") not in PERSON_SUBTYPES):
            return  # not a person's message (or not one Slack would send: nothing to answer, nowhere)
        raw = event.get("text") if isinstance(event.get("text"), str) else ""
        mentioned = mentioned or bool(self._mention.search(raw))
        # An app_mention carries no channel_type: a mention in a direct message with Baton arrives as one and as a
        # message.im, in either order, and the first one stored is the request. A DM's id begins with "D".
        direct = event.get("channel_type") == "im" or (event.get("channel_type") is None and channel.startswith("D"))
        accepted = await self.baton.accept_message(InboundMessage(
            platform=PLATFORM, workspace=self._workspace(body.get("team_id")), channel=channel,
            thread=event.get("thread_ts") or ts, user=user, text=typed_text(self._mention.sub("", raw)).strip(),
            addressed=mentioned or direct, private=direct, event_id=f"{channel}:{ts}",
            mention_added=mentioned and isinstance(event.get("edited"), dict)))
        log.debug("Slack %s %s:%s -> %s", event.get("type"), channel, ts, accepted.status)

    async def _on_click(self, ack: Callable[..., Awaitable[Any]], body: dict[str, Any], action: dict[str, Any]) -> None:
        message = body.get("message") or {}
        container = body.get("container") or {}
        channel = (body.get("channel") or {}).get("id") or container.get("channel_id") or ""
        thread = (message.get("thread_ts") or container.get("thread_ts") or message.get("ts")
                  or container.get("message_ts") or "")
        user = (body.get("user") or {}).get("id")
        choice = str(action.get("action_id") or "").removeprefix(BUTTON_ACTION_PREFIX)
        if not (_all_text(user, channel, thread) and 0 < len(choice) <= 64):
            log.warning("Slack: a click without a user, channel or button was ignored")
            return await ack()
        event_id = f"click:{body.get('trigger_id') or action.get('action_ts')}"
        try:
            await self.baton.accept_click(InboundClick(
                platform=PLATFORM, workspace=self._workspace((body.get("team") or {}).get("id")), channel=channel,
                thread=thread,
                user=user, approval_id=str(action.get("value") or ""), action=choice, event_id=event_id))
        except Exception as exc:
            # Slack sends a click once (only events come again): unacknowledged, it was lost, and the person saw a
            # warning sign beside the button and no word of why, where Discord tells them.
            if (reason := self.baton.db.health.unusable(exc)) is None:
                raise
            log.warning("Slack: %s not taken, Baton's database cannot be used (%s); they are told", event_id, reason)
            await ack()
            await self._tell_privately(channel, user, thread, DATABASE_AWAY_CLICK)
            return
        await ack()

    async def _tell_privately(self, channel: str, user: str, thread: str, text: str) -> None:
        """A message only ``user`` sees, outside the outbox (which lives in the database): said if Slack takes it."""
        try:
            await self.client.chat_postEphemeral(channel=channel, user=user, thread_ts=thread, text=text)
        except (SlackApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("Slack: could not tell %s in %s either (%s)", user, channel,
                        _error_code(exc) if isinstance(exc, SlackApiError) else type(exc).__name__)

    async def _on_command(self, ack: Callable[..., Awaitable[Any]], body: dict[str, Any]) -> None:
        """A slash command has no message to reply to: post one (in the channel) and use it as the thread.

        Slack waits 3 s for the answer and sends a command once; the answer goes out when this listener returns
        (``process_before_response``, in Socket Mode too). Posting the thread can take longer (a slow Slack API,
        slack_sdk's retry of a broken connection), so the post and storing run in a task of their own: not done
        within ``COMMAND_ACK_SECONDS``, Slack is answered with nothing, and the task goes on, telling the person
        through the command's ``response_url`` what the answer would have told them."""
        channel, user, trigger = body.get("channel_id"), body.get("user_id"), body.get("trigger_id")
        if not (channel and user and trigger):
            await ack()  # not a command Slack sends: nothing to answer, nowhere to answer it
            return
        late = asyncio.Event()  # set once Slack has had its answer without this task's
        work = asyncio.create_task(self._command(body, channel, user, f"command:{trigger}", late),
                                   name=f"slack-command:{trigger}")
        self._commands.add(work)
        work.add_done_callback(self._commands.discard)
        try:
            await asyncio.wait({work}, timeout=COMMAND_ACK_SECONDS)  # never cancels the work
        finally:
            if not work.done():  # the deadline, or this listener cancelled: the work answers by itself
                late.set()
        if not work.done():
            log.info("Slack: command:%s is taking over %g s (posting its thread); Slack is answered meanwhile",
                     trigger, COMMAND_ACK_SECONDS)
            await ack()
            return
        await ack(**work.result())  # its failure, raised here, is Bolt's (``_on_bolt_error``), as before

    async def _command(self, body: dict[str, Any], channel: str, user: str, event_id: str,
                       late: asyncio.Event) -> dict[str, str]:
        """Take a command: what to answer Slack with, or, once it is ``late``, what is said through its
        ``response_url`` (a failure too: Slack says nothing of one after its answer)."""
        try:
            answer = await self._take_command(body, channel, user, event_id)
        except Exception as exc:  # sent once, as a click is: unacknowledged, Slack said only that /baton failed
            if (reason := self.baton.db.health.unusable(exc)) is not None:
                log.warning("Slack: %s not taken, Baton's database cannot be used (%s); they are told", event_id,
                            reason)
                answer = {"text": DATABASE_AWAY_ANSWER, "response_type": "ephemeral"}
            elif not late.is_set():
                raise
            else:
                log.error("Slack: handling a slash command failed after Slack was answered (%s); they are told",
                          event_id, exc_info=exc)
                answer = {"text": COMMAND_FAILED, "response_type": "ephemeral"}
        if late.is_set() and answer:
            await _respond(body.get("response_url"), answer, event_id)
        return answer

    async def _take_command(self, body: dict[str, Any], channel: str, user: str, event_id: str) -> dict[str, str]:
        """Post the command's thread and store the request; what to answer Slack with (``{}``: nothing)."""
        if await self.baton.event_received(PLATFORM, event_id):  # a redelivery: its thread was made already
            return {}
        text = typed_text(body.get("text") or "").strip()
        # In Baton's name, in the channel: one line, in one code span (a backtick or a line break of the request's
        # own began text of Baton's: "done\n:white_check_mark: *Approved by bob*"), bidi controls shown
        shown = quoted_code(f"{body.get('command', '/baton')} {text}".strip(), ECHO_CHARS)
        try:
            anchor = await self.client.chat_postMessage(
                channel=channel, text=f"<@{user}> asked: `{escape(shown)}`", unfurl_links=False, unfurl_media=False)
        except SlackApiError as exc:
            return {"text": _command_refusal(exc, body.get("channel_name")), "response_type": "ephemeral"}
        await self.baton.accept_message(InboundMessage(
            platform=PLATFORM, workspace=self._workspace(body.get("team_id")), channel=channel, thread=anchor["ts"],
            user=user,
            text=text, addressed=True, private=body.get("channel_name") == "directmessage", event_id=event_id))
        return {}

    # -- outbound --------------------------------------------------------------------------------

    def permalink(self, channel: str, ts: str) -> str:
        return f"{self.team_url}archives/{channel}/p{ts.replace('.', '')}"

    async def send(self, delivery: Delivery) -> str | None:
        """Post (or edit) one core message; returns the ts of each Slack message it became, space-separated.

        A message too long for one Slack message is several, and an edit replaces each of them (the last
        of a card held its buttons). Files were attached when the message was posted: an edit keeps them.
        """
        ephemeral = delivery.kind == "ephemeral"
        editing = (delivery.target_message_id or "").split() if delivery.kind == "update" else []
        rendered = render(delivery.message, self.permalink, files=not ephemeral)
        channel, thread = delivery.location.channel, delivery.location.thread or None
        attempt = self._attempt(delivery)
        steps: list[Step] = []
        for index, content in enumerate(rendered.messages):
            if index < len(editing):
                steps.append(self._editor(attempt, len(steps), channel, thread, editing[index], content))
            elif ephemeral:
                steps.append(self._caller("chat.postEphemeral", self.client.chat_postEphemeral, "message_ts",
                                          channel=channel, user=delivery.target_user, thread_ts=thread, **content))
            else:  # a post, the rest of a longer edit, or an edit whose original never made it to Slack
                steps.append(self._poster(attempt, len(steps), "ts", channel=channel, thread_ts=thread,
                                          unfurl_links=False, unfurl_media=False, **content))
        for ts in editing[len(rendered.messages):]:  # the edit is shorter than what it replaces
            steps.append(self._remover(channel, ts))
        for upload in [] if editing else rendered.uploads:
            steps.append(self._uploader(attempt, len(steps), channel, thread, upload))
        try:
            done = await self.send_steps(delivery, steps)
        except BaseException:
            self._attempt_failed(attempt)
            raise
        return " ".join(str(ts) for ts in done[:len(rendered.messages)])

    # -- a post whose answer was lost is not posted again ----------------------------------------

    def _attempt(self, delivery: Delivery) -> _Attempt:
        """This try of ``delivery``: whether a post of an earlier try may be in Slack unrecorded.

        Not on a first try (the hot path looks for nothing), nor after a try of this process that failed
        with every post answered (a 429, a refusal: Slack said it posted nothing). After any other, or a
        try this process did not make (a takeover, a restart), the earlier posts are looked for first."""
        clean = self._clean_failures.pop(delivery.id, None) == delivery.attempts - 1
        return _Attempt(delivery, unsure=delivery.attempts > 1 and not clean)

    def settled(self, delivery_id: int) -> None:
        super().settled(delivery_id)
        self._clean_failures.pop(delivery_id, None)  # a refusal for good (not_in_channel) is a clean failure too

    def _attempt_failed(self, attempt: _Attempt) -> None:
        if not attempt.unanswered and (not attempt.unsure or attempt.found is not None):
            self._clean_failures[attempt.delivery.id] = attempt.delivery.attempts
            forget_oldest(self._clean_failures, TRIES_KEPT)

    def _poster(self, attempt: _Attempt, step: int, result_key: str | None, **kwargs: Any) -> Step:
        async def call() -> str | None:
            return await self._post(attempt, step, result_key, **kwargs)

        return call

    async def _post(self, attempt: _Attempt, step: int, result_key: str | None, **kwargs: Any) -> str | None:
        """``chat.postMessage`` as step ``step`` of the delivery, unless an earlier try's post of it is found."""
        if attempt.unsure and not attempt.blind:
            if attempt.found is None:
                attempt.found = await self._earlier_posts(attempt.delivery)
                attempt.blind = attempt.found is None
            if attempt.found is not None and step in attempt.found:
                log.info("Slack: message %s (step %d) was posted by an earlier try (ts %s); not posted again",
                         attempt.delivery.id, step, attempt.found[step])
                return attempt.found[step] if result_key else None
        posting = _POSTING_DELIVERY.set(True)
        try:
            response = await self.client.chat_postMessage(
                metadata=delivery_metadata(attempt.delivery.id, step, attempt.delivery.created_at), **kwargs)
        except SlackApiError as exc:
            error = _delivery_error("chat.postMessage", exc)
            if not isinstance(error, RetryLater | DeliveryRejected):  # a 5xx: Slack may have posted it
                attempt.unanswered = True
            raise error from exc
        except BaseException:  # no answer at all (a broken connection, a timeout, a stop): it may be posted
            attempt.unanswered = True
            raise
        finally:
            _POSTING_DELIVERY.reset(posting)
        return str(response[result_key]) if result_key else None

    async def _earlier_posts(self, delivery: Delivery) -> dict[int, str] | None:
        """The steps of ``delivery`` Slack shows already (step -> ts); ``None`` when they cannot be looked for.

        A lookup Slack rate-limits waits as Retry-After says (``RetryLater``, nothing posted meanwhile), one
        that fails for a while (a 5xx, no connection) is made again at the delivery's next try, and its last
        try posts without looking; one Slack refuses (a missing scope, say) is said in the log, and the post
        is made without looking: a message that may show twice is better than one never shown."""
        method = "conversations.replies" if delivery.location.thread else "conversations.history"
        try:
            return await self._find_posts(delivery)
        except SlackApiError as exc:
            error = _delivery_error(method, exc)
            if isinstance(error, RetryLater) or (error is exc and delivery.failures < self.max_attempts):
                raise error from exc
            problem = _error_code(exc)
            needed = exc.response.data.get("needed") if isinstance(exc.response.data, dict) else None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if delivery.failures < self.max_attempts:
                raise
            problem, needed = type(exc).__name__, None
        hint = (f" (the app needs the `{needed}` scope: reinstall it from slack/manifest.yaml)"
                if problem == "missing_scope" and isinstance(needed, str) else "")
        level = logging.INFO if problem in self._lookup_problems_told else logging.WARNING
        self._lookup_problems_told.add(problem)
        log.log(level, "Slack: message %s may have been posted by an earlier try, and looking for it in %s failed "
                "(%s: %s)%s; it is posted without looking, and may show twice", delivery.id,
                delivery.location.channel, method, problem, hint)
        return None

    async def _find_posts(self, delivery: Delivery) -> dict[int, str]:
        channel, thread = delivery.location.channel, delivery.location.thread
        # From a little before the row was stored (clocks differ): a long thread is read from there, not from
        # its start; without the time, the last week's.
        stored = delivery.created_at
        since = stored.timestamp() - LOOKUP_MARGIN_SECONDS if stored else time.time() - LOOKUP_WINDOW_SECONDS
        window = {"include_all_metadata": True, "limit": 200, "oldest": f"{since:.6f}"}
        found: dict[int, str] = {}
        cursor = None
        for _ in range(LOOKUP_PAGES):
            if thread:
                response = await self.client.conversations_replies(channel=channel, ts=thread, cursor=cursor, **window)
            else:  # newest first
                response = await self.client.conversations_history(channel=channel, cursor=cursor, **window)
            for message in response.get("messages") or []:
                step = delivery_step(message, delivery.id, stored)
                if step is not None and message.get("ts") and (
                        not self.bot_user_id or message.get("user") == self.bot_user_id):
                    found.setdefault(step, str(message["ts"]))
            cursor = (response.get("response_metadata") or {}).get("next_cursor")
            if not response.get("has_more") or not cursor:
                break
        return found

    def _uploader(self, attempt: _Attempt, step: int, channel: str, thread: str | None, upload: Upload) -> Step:
        """Attach ``upload``; where Slack takes no file from Baton, say so in the thread instead (the
        message above promised it)."""
        attach = self._caller("files.upload", self.client.files_upload_v2, None, channel=channel, thread_ts=thread,
                              content=upload.content, filename=upload.filename, title=upload.title)

        async def call() -> str | None:
            try:
                return await attach()
            except DeliveryRejected as exc:
                error = str(exc).removeprefix("files.upload: ")
                log.warning("Slack did not take the file %s: %s", upload.filename, error)
                hint = " The app needs the `files:write` scope: reinstall it from `slack/manifest.yaml`." \
                    if error == "missing_scope" else ""
                note = Message.text(f"I could not attach `{upload.filename}` here (Slack said `{error}`).{hint}",
                                    tone="warning")
                (content,) = render(note, self.permalink).messages
                return await self._post(attempt, step, None, channel=channel, thread_ts=thread, **content)

        return call

    def _editor(self, attempt: _Attempt, step: int, channel: str, thread: str | None, ts: str,
                content: dict[str, Any]) -> Step:
        """Edit the message ``ts``; one that is gone (deleted by someone) is posted anew in the thread, so that a
        decision or a run's progress is still shown, not lost with a 'message_not_found' in the log."""
        edit = self._caller("chat.update", self.client.chat_update, "ts", channel=channel, ts=ts, **content)

        async def call() -> str | None:
            try:
                return await edit()
            except DeliveryRejected as exc:
                if str(exc) != "chat.update: message_not_found":
                    raise
            log.info("Slack: message %s in %s is gone (deleted?); its new version is posted in the thread", ts, channel)
            return await self._post(attempt, step, "ts", channel=channel, thread_ts=thread, unfurl_links=False,
                                    unfurl_media=False, **content)

        return call

    def _remover(self, channel: str, ts: str) -> Step:
        async def call() -> None:
            try:
                await self.client.chat_delete(channel=channel, ts=ts)
            except SlackApiError as exc:
                if _error_code(exc) != "message_not_found":  # gone already: what the step is for
                    raise _delivery_error("chat.delete", exc) from exc
            return None

        return call

    async def history(self, location: Location, limit: int) -> list[dict[str, Any]] | None:
        """The thread (``conversations.replies``) or the channel's top level (``conversations.history``),
        oldest first; ``None`` (the core then uses what Baton saw) when Slack does not allow it."""
        try:
            if location.thread:
                messages = await self._thread_messages(location.channel, location.thread, limit)
            else:
                response = await self.client.conversations_history(channel=location.channel, limit=min(limit, 999))
                messages = list(reversed(response.get("messages") or []))
        except SlackApiError as exc:
            log.warning("Slack history of %s is not available (%s)", location.channel, _error_code(exc))
            return None
        return [self._as_history(message) for message in messages[-limit:]
                if message.get("subtype") in PERSON_SUBTYPES | {"bot_message"}]

    async def _thread_messages(self, channel: str, thread: str, limit: int) -> list[dict[str, Any]]:
        """A thread's messages, oldest first; Slack pages from the oldest, and we want the latest."""
        messages: list[dict[str, Any]] = []
        cursor = None
        for _ in range(HISTORY_PAGES):
            response = await self.client.conversations_replies(channel=channel, ts=thread, limit=200, cursor=cursor)
            messages = (messages + list(response.get("messages") or []))[-limit:]
            cursor = (response.get("response_metadata") or {}).get("next_cursor")
            if not response.get("has_more") or not cursor:
                break
        return messages

    def _as_history(self, message: dict[str, Any]) -> dict[str, Any]:
        is_bot = bool(message.get("bot_id")) or message.get("user") == self.bot_user_id
        text = shown_text(message) if is_bot else message.get("text") or ""
        text = typed_text(self._mention.sub("@baton", text)).strip()
        if files := _file_names(message):  # a file alone (a log, a screenshot) was an empty line
            text = f"{text}\n(attached: {files})" if text else f"(attached: {files})"
        return {"user": message.get("user") or _bot_name(message), "is_bot": is_bot, "text": text}

    @staticmethod
    def _caller(method: str, function: Callable[..., Awaitable[Any]], result_key: str | None,
                **kwargs: Any) -> Step:
        async def call() -> str | None:
            try:
                response = await function(**kwargs)
            except SlackApiError as exc:
                raise _delivery_error(method, exc) from exc
            return str(response[result_key]) if result_key else None

        return call


@dataclass
class _Attempt:
    """One try of a delivery, as far as its posts go."""

    delivery: Delivery
    unsure: bool  # a post of an earlier try may be in Slack, not among the steps done: look before posting
    found: dict[int, str] | None = None  # the steps Slack shows already (step -> ts), once looked for
    blind: bool = False  # looking failed: this try posts without looking (the next one looks again)
    unanswered: bool = False  # a post of this try got no answer, or a 5xx: Slack may show it


# Set while an outbox post is in flight: slack_sdk then does not retry it on its own (see ``_RetryBrokenConnections``).
_POSTING_DELIVERY: ContextVar[bool] = ContextVar("baton_slack_posting_delivery", default=False)


class _RetryBrokenConnections(AsyncConnectionErrorRetryHandler):
    """slack_sdk's default: a call whose connection broke is made once more. Not an outbox post: Slack may
    have posted it before the connection broke, and the outbox's next try looks for it before posting."""

    async def _can_retry_async(self, *, state: RetryState, request: HttpRequest, response: HttpResponse | None = None,
                               error: Exception | None = None) -> bool:
        if _POSTING_DELIVERY.get():
            return False
        return await super()._can_retry_async(state=state, request=request, response=response, error=error)


def _is_ssl_check(body: bytes, content_type: str | None) -> bool:
    """Whether a request is Slack's check of the certificate at a slash command's URL (``ssl_check=1``), which Slack
    sends unsigned: it got a 401, and the log a warning that unsigned requests were being refused. It is answered
    200 and nothing else (Bolt answers it the same way before checking signatures); nothing in it is read further."""
    if not (content_type or "").startswith("application/x-www-form-urlencoded") or len(body) > SSL_CHECK_BYTES:
        return False
    return parse_qs(body.decode("utf-8", "replace")).get("ssl_check") == ["1"]


def _signature_problem(verifier: SignatureVerifier, body: bytes, timestamp: str | None,
                       signature: str | None) -> str | None:
    """Why a request is not Slack's, for the log (``None``: it is): a wrong signing secret or a clock off
    by more than Slack's 5 minutes refuses every request, and the operator has to be told which."""
    if not timestamp or not signature:
        return "it is not signed (no X-Slack-Signature or X-Slack-Request-Timestamp)"
    try:
        skew = time.time() - int(timestamp)
        if verifier.is_valid(body, timestamp, signature):
            return None
    except (ValueError, OverflowError, TypeError):  # a timestamp that is not a number (or not a time), a body
        # not UTF-8, a signature that is not ASCII (hmac.compare_digest refuses to compare it: a 500 it was)
        return "its signature or timestamp cannot be read"
    if abs(skew) > SIGNATURE_WINDOW_SECONDS:
        side = "before" if skew > 0 else "after"
        return f"it was signed {int(abs(skew))} s {side} this machine's clock (over 5 minutes: check the clock)"
    return "its signature does not match SLACK_SIGNING_SECRET"


class _LastFailure(logging.Filter):
    """Keeps the error of the last record logged with one (slack_sdk's "Failed to connect"), to name it."""

    def __init__(self) -> None:
        super().__init__()
        self.error: BaseException | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            self.error = record.exc_info[1]
        return True


class _Refusals:
    """One log line per kind of refusal a minute: a flood of forged requests is not a flood of lines."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def tell(self, problem: str) -> None:
        kind = problem.split(" s ", 1)[-1]  # the clock's lines differ only by their number of seconds
        now = time.monotonic()
        if now - self._last.get(kind, -REFUSAL_LOG_SECONDS) >= REFUSAL_LOG_SECONDS:
            self._last[kind] = now
            log.warning("Slack: a request was refused (401): %s", problem)


# What reading a body of an unexpected shape raises (pydantic's ValidationError is a ValueError).
def _acknowledge_unhandled(body: Any) -> BoltResponse:
    kind = body.get("type") if isinstance(body, dict) else None
    if kind == "app_rate_limited":
        log.warning("Slack is rate-limiting this app's events: those of this minute are not delivered")
    else:
        inner = body.get("event") if isinstance(body, dict) else None
        what = inner.get("type") if isinstance(inner, dict) else kind
        log.info("Slack: acknowledged a request Baton does not handle (%s)", str(what)[:80])
    return BoltResponse(status=200, body="")


UNREADABLE = (AttributeError, TypeError, KeyError, IndexError, ValueError)


def _lost_or_retried(body: Any) -> tuple[str, str]:
    """What a request whose handling failed was, and what becomes of it: Slack sends an event again (it was not
    acknowledged), but a click or a slash command once: the log said "Slack will retry it" of those too."""
    body = body if isinstance(body, dict) else {}
    if is_action(body):
        return "a click", ("Slack sends a click once, so it is lost: the person sees a warning sign beside the button "
                           "and may click again")
    if is_slash_command(body):
        return "a slash command", ("Slack sends a command once, so it is lost: the person is told it failed and may "
                                   "ask again")
    if is_event(body):
        return "an event", "Slack will retry it"
    return "a request", "Slack may not send it again"


class HandlingFailed(RuntimeError):
    """A listener's own work failed (the database, say), not the request's shape: Slack should retry."""


Listener = Callable[..., Awaitable[None]]


def _retried_on_failure(listener: Listener) -> Listener:
    """``listener``, its failures told apart from requests it cannot read (``SlackAdapter._on_bolt_error``).

    A field of a shape Slack never sends fails validation in ``bot.messages``: that is the request's fault.
    """
    @functools.wraps(listener)  # Bolt reads the wrapped listener's parameters to know what to pass
    async def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            await listener(*args, **kwargs)
        except ValidationError:  # the request's fault: a 400
            raise
        except Exception as exc:
            raise HandlingFailed(str(exc)) from exc

    return guarded


async def _waiting_out_rate_limits(method: str, call: Callable[[], Awaitable[Any]]) -> Any:
    """``call()``, again after each 429 as long as Retry-After says, for up to ``START_RATE_LIMIT_SECONDS``.

    At start-up a 429 is not a refused token: ``apps.connections.open`` allows about one call a minute,
    so a Socket Mode Baton restarted twice in a minute meets one."""
    waited = 0.0
    while True:
        try:
            return await call()
        except SlackApiError as exc:
            if exc.response.status_code != 429 and _error_code(exc) != "ratelimited":
                raise
            seconds = max(_retry_after(exc), 1.0)  # "Retry-After: 0" again and again must not spin
            if waited + seconds > START_RATE_LIMIT_SECONDS:
                raise StartFailed(f"Slack kept rate-limiting {method} for {waited:.0f} s; try again in a "
                                  "minute or two") from exc
            log.warning("Slack is rate-limiting %s; trying again in %g s", method, seconds)
            await asyncio.sleep(seconds)
            waited += seconds


def _start_refused(method: str, token: str, exc: SlackApiError) -> StartFailed:
    if exc.response.status_code >= 500:
        return StartFailed(f"Slack's API failed at {method} (HTTP {exc.response.status_code}); try again in a moment")
    return StartFailed(f"Slack refused {token} ({method}: {_error_code(exc)})")


def _retry_after(exc: SlackApiError) -> float:
    try:
        return max(float(exc.response.headers.get("Retry-After", "1")), 0.0)
    except ValueError:
        return 1.0


def _bot_name(message: dict[str, Any]) -> str:
    """Who posted a message without a user (an incoming webhook, a legacy bot): its name, else its id."""
    profile = message.get("bot_profile") if isinstance(message.get("bot_profile"), dict) else {}
    names = (profile.get("name"), message.get("username"), message.get("bot_id"))
    return next((name for name in names if isinstance(name, str) and name), "")


def _file_names(message: dict[str, Any]) -> str:
    """The files a message shares, by name; one deleted since (Slack keeps a tombstone) or hidden has none."""
    files = message.get("files") if isinstance(message.get("files"), list) else []
    names = [next((name for name in (item.get("name"), item.get("title")) if isinstance(name, str) and name),
                  "a file no longer shared") for item in files if isinstance(item, dict)]
    return ", ".join(names)


def _all_text(*values: object) -> bool:
    return all(isinstance(value, str) and value for value in values)


# Slack's refusals that are the channel's, not the message's, in the contract's words: every message there is refused.
UNREACHABLE_ERRORS: dict[str, Unreachable] = {"not_in_channel": "removed", "channel_not_found": "gone",
                                              "is_archived": "archived"}


def _error_code(exc: SlackApiError) -> str:
    data = exc.response.data
    return str(data.get("error", "unknown_error")) if isinstance(data, dict) else f"HTTP {exc.response.status_code}"


def _delivery_error(method: str, exc: SlackApiError) -> Exception:
    """429 -> wait as told; 5xx and transient errors -> retried with backoff; anything else -> final."""
    status, error = exc.response.status_code, _error_code(exc)
    if status == 429 or error == "ratelimited":
        return RetryLater(_retry_after(exc), f"Slack rate limit on {method}")
    if status >= 500 or error in TRANSIENT_ERRORS:
        return exc
    if error in AUTH_ERRORS:
        return RetryLater.token_refused(f"Slack refused Baton's token on {method} ({error})", "SLACK_BOT_TOKEN")
    return DeliveryRejected(f"{method}: {error}", unreachable=UNREACHABLE_ERRORS.get(error))


async def _respond(response_url: object, answer: dict[str, str], event_id: str) -> None:
    """Say ``answer`` to the person who typed a command through its ``response_url``, after Slack had its answer
    (only they see it, as they saw the answer). Said if Slack takes it. The URL is never logged: whoever reads it
    may post in the channel for half an hour."""
    if not isinstance(response_url, str) or not response_url.startswith(("https://", "http://")):
        log.warning("Slack: %s came without a response_url; the person could not be told: %s", event_id,
                    answer.get("text"))
        return
    client = AsyncWebhookClient(url=response_url, timeout=HTTP_TIMEOUT_SECONDS, logger=webhook_log)
    try:
        response = await client.send_dict(answer)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        log.warning("Slack: could not tell the person who typed %s (%s)", event_id, type(exc).__name__)
        return
    if response.status != 200:
        log.warning("Slack: could not tell the person who typed %s (response_url: HTTP %s)", event_id, response.status)


def _command_refusal(exc: SlackApiError, channel_name: object = None) -> str:
    error = _error_code(exc)
    if error in ("not_in_channel", "channel_not_found") and channel_name == "directmessage":
        # a direct message between two people, which no app can join: "/invite" is no help there
        return ("I can't post in a direct message between other people. Send me a direct message "
                "(no mention needed), or ask in a channel I'm in.")
    if error in ("not_in_channel", "channel_not_found"):
        return ("I can't post in this conversation. Invite me to the channel (`/invite @baton`), "
                "or send me a direct message.")
    if isinstance(_delivery_error("chat.postMessage", exc), (RetryLater, SlackApiError)):  # busy, or failing
        return f"Slack did not let me post here (`{error}`); please try again in a moment."
    return f"Slack does not let me post in this conversation (`{error}`), so I can't answer this here."
