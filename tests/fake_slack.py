"""A local fake of Slack for end-to-end tests and the ack benchmark.

``FakeSlack`` is the Web API (``/api/<method>``), the file upload URLs and the Socket Mode
WebSocket, served by aiohttp in a thread. It records every call, keeps the messages it was sent
(with their message metadata, returned by ``conversations.*`` when ``include_all_metadata`` asks for it,
as Slack does), checks Slack's Block Kit limits the way Slack does, and can be told to answer the next
calls of a method with a 429 (and Retry-After), a 500 or another error, to carry a call out and then
fail its answer or drop the connection without one ("Slack posted, Baton did not hear"), to hold
its answer back until released (Baton stopped while Slack answers), or to answer it slowly (a slow Slack API).
It keeps what Baton sends to a command's ``response_url`` (``responses``).

``SlackSender`` is Slack calling Baton: Events API, interactivity and slash-command requests,
signed with the signing secret like Slack signs them (``slack_sdk.signature``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
from aiohttp import WSMsgType, web
from slack_sdk.signature import SignatureVerifier

from tests.support import BackgroundServer, Failure, ScriptedFailures, overrides

QUICK_PACE = {"adapters.slack.SlackAdapter.channel_pace_seconds": 0.1}  # merge into a test's own overrides

BOT_TOKEN = "xoxb-baton-test-token"
APP_TOKEN = "xapp-baton-test-token"
USER_TOKEN = "xoxp-baton-test-user-token"  # the User OAuth Token, shown beside the bot's on Slack's page
SIGNING_SECRET = "baton-test-signing-secret"
TEAM_ID = "T0TEAM0001"
BOT_USER_ID = "U0BATON000"
BOT_ID = "B0BATON000"
_ts_lock = threading.Lock()
_last_ts = [0]


def new_ts() -> str:
    """A message ts as Slack makes them (seconds.microseconds), increasing and unique in this process:
    the fake's messages and the people's messages sort in the order they were made."""
    with _ts_lock:
        _last_ts[0] = max(_last_ts[0] + 1, time.time_ns() // 1000)
        return f"{_last_ts[0] // 1_000_000}.{_last_ts[0] % 1_000_000:06d}"


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    at: float
    status: int = 200


@dataclass
class FakeMessage:
    channel: str
    ts: str
    thread_ts: str | None
    text: str
    blocks: list[dict[str, Any]]
    user: str = BOT_USER_ID
    bot_id: str | None = BOT_ID
    ephemeral_to: str | None = None
    edits: int = 0
    history: list[list[dict[str, Any]]] = field(default_factory=list)
    username: str | None = None  # an incoming webhook's or a legacy bot's name
    metadata: dict[str, Any] | None = None  # chat.postMessage's ``metadata`` (event_type, event_payload)
    files: list[dict[str, Any]] | None = None  # files shared with the message (a person's upload), as Slack lists them


class FakeSlack(BackgroundServer):
    """Slack's Web API and Socket Mode, locally. Thread-safe to read from the test."""

    def __init__(self) -> None:
        super().__init__("fake-slack")
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._failures = ScriptedFailures()
        self._messages: list[FakeMessage] = []
        self.files: dict[str, dict[str, Any]] = {}
        self._sockets: list[web.WebSocketResponse] = []
        self.socket_acks: list[dict[str, Any]] = []
        self._holds: dict[str, int] = {}
        self._slow: dict[str, list[float]] = {}  # method -> how long each of its next calls takes to answer
        self.responses: list[dict[str, Any]] = []  # what was sent to ``response_url``, in order
        self._released: asyncio.Event | None = None  # made in the server's loop
        self.holding = 0  # calls carried out whose answer is held back now
        self.refusing: dict[str, str] = {}  # channel -> Slack's error for every write there (``shut_out``)

    # -- life ------------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/socket", self._socket)
        app.router.add_post("/respond", self._respond)
        return app

    async def close_connections(self) -> None:
        if self._released is not None:
            self._released.set()
        for socket in list(self._sockets):
            await socket.close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base}/api/"

    @property
    def response_url(self) -> str:
        """A command's ``response_url`` that reaches this fake (Slack's is ``hooks.slack.com/commands/...``)."""
        return f"{self.base}/respond"

    @property
    def team_url(self) -> str:
        return "https://baton-test.slack.com/"

    def env(self, *, socket_mode: bool = False) -> dict[str, str]:
        """The settings that point a Baton at this fake; its pace between two messages in a channel a tenth as
        long (0.1 s, not Slack's 1 s: the same order, the test does not wait a second for each reply)."""
        env = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_API_URL": self.api_url, "BATON_ADAPTERS": "slack",
               **overrides(QUICK_PACE)}
        if socket_mode:
            env["SLACK_APP_TOKEN"] = APP_TOKEN
        else:
            env["SLACK_SIGNING_SECRET"] = SIGNING_SECRET
        return env

    # -- what the test asks ----------------------------------------------------------------------

    def fail(self, method: str, status: int, *, times: int = 1, retry_after: float | None = None,
             error: str = "internal_error", after: bool = False) -> None:
        """Answer the next ``times`` calls of ``method`` with ``status`` (429: with Retry-After) and ``error``
        (``fail("conversations.replies", 200, error="missing_scope")`` is Slack's refusal of a scope).
        ``after``: the call is carried out (the message posted), then answered with the error."""
        with self._lock:
            self._failures.add(method, Failure(status, times, retry_after, error, after))

    def drop(self, method: str, *, times: int = 1, after: bool = True) -> None:
        """Close the connection of the next ``times`` calls of ``method`` without an answer (recorded with
        status 0); ``after``: once the call is carried out (the message posted)."""
        with self._lock:
            self._failures.add(method, Failure(DROPPED, times, after=after))

    def hold(self, method: str, *, times: int = 1) -> None:
        """Carry out the next ``times`` calls of ``method``, and hold their answers back until ``release``."""
        with self._lock:
            self._holds[method] = self._holds.get(method, 0) + times

    def slow(self, method: str, seconds: float, *, times: int = 1) -> None:
        """Carry out the next ``times`` calls of ``method`` at once, and answer each ``seconds`` later (counted in
        ``holding`` meanwhile): a slow Slack API, or a connection that takes that long."""
        with self._lock:
            self._slow.setdefault(method, []).extend([seconds] * times)

    def release(self) -> None:
        """Send the answers held back (and every later one of a ``hold`` at once)."""
        self._loop.call_soon_threadsafe(self._release_now)

    def _release_now(self) -> None:
        if self._released is None:
            self._released = asyncio.Event()
        self._released.set()

    def shut_out(self, channel: str, error: str = "not_in_channel") -> None:
        """Baton removed from ``channel`` (``not_in_channel``), the channel deleted (``channel_not_found``) or
        archived (``is_archived``): every post, ephemeral or edit there is refused with ``error`` from now on."""
        with self._lock:
            self.refusing[channel] = error

    def let_in(self, channel: str) -> None:
        """Baton invited back to ``channel``."""
        with self._lock:
            self.refusing.pop(channel, None)

    def calls(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [call for call in self._calls if method is None or call.method == method]

    def messages(self, channel: str | None = None, thread: str | None = None) -> list[FakeMessage]:
        """Messages the bot posted (ephemeral ones included), oldest first."""
        with self._lock:
            return [m for m in self._messages if (channel is None or m.channel == channel)
                    and (thread is None or m.thread_ts == thread or m.ts == thread)]

    def message(self, channel: str, ts: str) -> FakeMessage | None:
        return next((m for m in self.messages(channel) if m.ts == ts), None)

    def find(self, contains: str, *, channel: str | None = None, thread: str | None = None) -> FakeMessage | None:
        return next((m for m in self.messages(channel, thread) if contains in shown_text(m)), None)

    def said(self, event: dict[str, Any]) -> None:
        """Keep a person's message (an event sent to Baton) the way Slack keeps it, for conversations.*."""
        message = FakeMessage(channel=event["channel"], ts=event["ts"], thread_ts=event.get("thread_ts"),
                              text=event.get("text", ""), blocks=[], user=event.get("user", ""),
                              bot_id=event.get("bot_id"), username=event.get("username"), files=event.get("files"))
        with self._lock:
            self._messages.append(message)

    def send_envelope(self, payload: dict[str, Any], kind: str = "events_api", retry_attempt: int = 0) -> str:
        """Push an envelope over every open Socket Mode connection; returns its envelope id."""
        envelope_id = uuid.uuid4().hex
        envelope = {"envelope_id": envelope_id, "type": kind, "payload": payload, "accepts_response_payload": False,
                    "retry_attempt": retry_attempt, "retry_reason": "timeout" if retry_attempt else ""}

        async def push() -> None:
            for socket in list(self._sockets):
                await socket.send_str(json.dumps(envelope))

        asyncio.run_coroutine_threadsafe(push(), self._loop).result(10)
        return envelope_id

    @property
    def socket_connections(self) -> int:
        return len(self._sockets)

    # -- the Web API -----------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                args.update(await request.json())
            else:
                args.update(dict(await request.post()))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        with self._lock:
            failure = self._failures.next(method)
            self._calls.append(Call(method, args, time.time(), failure.status if failure else 200))
            held = self._holds.get(method, 0) > 0 and failure is None
            if held:
                self._holds[method] -= 1
            delay = self._slow[method].pop(0) if self._slow.get(method) else 0.0
        answer, status = self._answer(method, args, token) if failure is None or failure.after else ({}, 0)
        if delay:
            with self._lock:
                self.holding += 1
            try:
                await asyncio.sleep(delay)
            finally:
                with self._lock:
                    self.holding -= 1
        if failure is not None:
            if failure.status == DROPPED:
                request.transport.close()  # type: ignore[union-attr]  # the client sees ServerDisconnectedError
                return web.Response()
            headers = {"Retry-After": f"{failure.retry_after:g}"} if failure.retry_after is not None else {}
            error = "ratelimited" if failure.status == 429 else failure.error
            return web.json_response({"ok": False, "error": error}, status=failure.status, headers=headers)
        if held:
            if self._released is None:
                self._released = asyncio.Event()
            with self._lock:
                self.holding += 1
            try:
                await self._released.wait()
            finally:
                with self._lock:
                    self.holding -= 1
        return web.json_response(answer, status=status)

    def _answer(self, method: str, args: dict[str, Any], token: str) -> tuple[dict[str, Any], int]:
        """Carry the call out: Slack's answer, and its HTTP status."""
        if method == "auth.test" and token == USER_TOKEN:  # a person's token: valid, but no bot's
            return {"ok": True, "url": self.team_url, "team": "Baton Test", "user": "alice",
                    "team_id": TEAM_ID, "user_id": "U0ALICE001", "is_enterprise_install": False}, 200
        wanted = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != wanted:
            return {"ok": False, "error": "invalid_auth"}, 200
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return {"ok": False, "error": "unknown_method"}, 404
        return handler(args), 200

    async def _respond(self, request: web.Request) -> web.Response:
        """A command's ``response_url``: what Baton tells the person who typed it (Slack answers a bare "ok")."""
        payload = await request.json()
        with self._lock:
            self.responses.append(payload)
        return web.Response(text="ok")

    def _auth_test(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": self.team_url, "team": "Baton Test", "user": "baton", "team_id": TEAM_ID,
                "user_id": BOT_USER_ID, "bot_id": BOT_ID, "is_enterprise_install": False}

    def _apps_connections_open(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/socket"}

    def _refusal(self, args: dict[str, Any]) -> str:
        with self._lock:
            return self.refusing.get(str(args.get("channel", "")), "")

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        problem = check_message(args) or self._refusal(args)
        if problem:
            return {"ok": False, "error": problem}
        metadata = args.get("metadata")
        if isinstance(metadata, str):  # form-encoded: JSON in a field
            metadata = json.loads(metadata)
        if metadata is not None and not (isinstance(metadata, dict) and isinstance(metadata.get("event_type"), str)
                                         and isinstance(metadata.get("event_payload"), dict)):
            return {"ok": False, "error": "invalid_metadata_format"}
        message = FakeMessage(channel=args["channel"], ts=new_ts(), thread_ts=args.get("thread_ts") or None,
                              text=args.get("text", ""), blocks=_blocks(args), metadata=metadata)
        with self._lock:
            self._messages.append(message)
        return {"ok": True, "channel": message.channel, "ts": message.ts,
                "message": {"text": message.text, "blocks": message.blocks, "ts": message.ts}}

    def _chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        problem = check_message(args) or self._refusal(args) or ("" if args.get("user") else "user_not_found")
        if problem:
            return {"ok": False, "error": problem}
        message = FakeMessage(channel=args["channel"], ts=new_ts(), thread_ts=args.get("thread_ts") or None,
                              text=args.get("text", ""), blocks=_blocks(args), ephemeral_to=args["user"])
        with self._lock:
            self._messages.append(message)
        return {"ok": True, "message_ts": message.ts}

    def delete(self, channel: str, ts: str) -> None:
        """Someone (a workspace admin) deletes a message."""
        with self._lock:
            self._messages = [m for m in self._messages if not (m.channel == channel and m.ts == ts)]

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        problem = check_message(args) or self._refusal(args)
        if problem:
            return {"ok": False, "error": problem}
        with self._lock:
            target = next((m for m in self._messages if m.channel == args["channel"] and m.ts == args.get("ts")
                           and m.ephemeral_to is None), None)
            if target is None:
                return {"ok": False, "error": "message_not_found"}
            target.history.append(target.blocks)
            target.blocks, target.text = _blocks(args), args.get("text", "")
            target.edits += 1
        return {"ok": True, "channel": target.channel, "ts": target.ts, "text": target.text}

    def _chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            target = next((m for m in self._messages if m.channel == args.get("channel") and m.ts == args.get("ts")
                           and m.ephemeral_to is None), None)
            if target is None:
                return {"ok": False, "error": "message_not_found"}
            self._messages.remove(target)
        return {"ok": True, "channel": target.channel, "ts": target.ts}

    def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        """One page (``limit``, ``cursor`` = offset) of a thread, oldest first, the parent included; the
        replies between ``oldest`` and ``latest`` when given."""
        with self._lock:
            thread = sorted((m for m in self._messages if m.channel == args.get("channel") and m.ephemeral_to is None
                             and (m.ts == args.get("ts") or m.thread_ts == args.get("ts"))), key=lambda m: m.ts)
        if not thread:
            return {"ok": False, "error": "thread_not_found"}
        thread = [m for m in thread if m.ts == args.get("ts") or _within(m, args)]
        start, limit = int(args.get("cursor") or 0), int(args.get("limit") or 1000)
        page = thread[start:start + limit]
        more = start + limit < len(thread)
        return {"ok": True, "messages": [self._as_slack(m, _wanted(args)) for m in page], "has_more": more,
                "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    def _conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        """One page (``limit``, ``cursor`` = offset) of the channel's top-level messages between ``oldest`` and
        ``latest``, newest first."""
        with self._lock:
            top = sorted((m for m in self._messages if m.channel == args.get("channel") and m.ephemeral_to is None
                          and m.thread_ts in (None, m.ts) and _within(m, args)), key=lambda m: m.ts, reverse=True)
        start, limit = int(args.get("cursor") or 0), int(args.get("limit") or 100)
        more = start + limit < len(top)
        return {"ok": True, "messages": [self._as_slack(m, _wanted(args)) for m in top[start:start + limit]],
                "has_more": more, "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    @staticmethod
    def _as_slack(message: FakeMessage, metadata: bool = False) -> dict[str, Any]:
        shown: dict[str, Any] = {"type": "message", "ts": message.ts, "text": message.text}
        if metadata and message.metadata is not None:
            shown["metadata"] = message.metadata
        if message.user:
            shown["user"] = message.user
        if message.bot_id:
            shown.update(bot_id=message.bot_id, blocks=message.blocks)
        if message.username:
            shown["username"] = message.username
        if message.thread_ts:
            shown["thread_ts"] = message.thread_ts
        if message.files:
            shown["files"] = message.files
        return shown

    def _files_getUploadURLExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        file_id = f"F{uuid.uuid4().hex[:10].upper()}"
        with self._lock:
            self.files[file_id] = {"filename": args.get("filename"), "length": int(args.get("length", 0)),
                                   "content": None, "shared": None}
        return {"ok": True, "upload_url": f"{self.base}/upload/{file_id}", "file_id": file_id}

    async def _upload(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        data = await request.read()
        with self._lock:
            if file_id not in self.files:
                return web.Response(status=404, text="no such upload")
            self.files[file_id]["content"] = data
        return web.Response(text=f"OK - {len(data)}")

    def _files_completeUploadExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        files = args["files"] if isinstance(args["files"], list) else json.loads(args["files"])
        with self._lock:
            for item in files:
                stored = self.files.get(item["id"])
                if stored is None or stored["content"] is None:
                    return {"ok": False, "error": "file_not_found"}
                stored["shared"] = {"channel": args.get("channel_id"), "thread_ts": args.get("thread_ts"),
                                    "title": item.get("title")}
        return {"ok": True, "files": [{"id": item["id"], "title": item.get("title")} for item in files]}

    # -- Socket Mode -----------------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        self._sockets.append(socket)
        await socket.send_str(json.dumps({"type": "hello", "num_connections": len(self._sockets),
                                          "connection_info": {"app_id": "A0BATON000"}}))
        try:
            async for frame in socket:
                if frame.type == WSMsgType.TEXT:
                    with self._lock:
                        self.socket_acks.append(json.loads(frame.data))
        finally:
            self._sockets.remove(socket)
        return socket


DROPPED = 0  # a failure's status: the connection is closed without an answer


def _wanted(args: dict[str, Any]) -> bool:
    """Whether ``include_all_metadata`` asks for the messages' metadata (``1`` or ``true``, as sent)."""
    return str(args.get("include_all_metadata", "")).lower() in ("1", "true")


def _within(message: FakeMessage, args: dict[str, Any]) -> bool:
    """Whether ``message`` is between ``oldest`` and ``latest`` (exclusive, as Slack's default)."""
    ts = float(message.ts)
    return float(args.get("oldest") or 0) < ts and (not args.get("latest") or ts < float(args["latest"]))


def _blocks(args: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = args.get("blocks") or []
    return json.loads(blocks) if isinstance(blocks, str) else list(blocks)


def check_message(args: dict[str, Any]) -> str:
    """Slack's limits on a message, as error codes ("" when the message is fine)."""
    if not args.get("channel"):
        return "channel_not_found"
    blocks = _blocks(args)
    if not blocks and not args.get("text"):
        return "no_text"
    if len(blocks) > 50:
        return "invalid_blocks"
    total = 0
    for block in blocks:
        texts = [block["text"]["text"]] if block["type"] == "section" else \
            [element["text"] for element in block.get("elements", []) if "text" in element and block["type"] == "context"]
        if any(len(text) > 3000 for text in texts):  # a section's text, and each of a context's elements
            return "invalid_blocks"
        if block["type"] == "actions":
            if len(block["elements"]) > 25:
                return "invalid_blocks"
            for element in block["elements"]:
                if len(element.get("value", "")) > 2000 or len(element["text"]["text"]) > 75:
                    return "invalid_blocks"
        total += sum(len(text) for text in texts)
    if total > 13_000:
        return "msg_blocks_too_long"
    return ""


def shown_text(message: FakeMessage) -> str:
    """What a person sees: the blocks' texts (sections, notes, button labels), else the fallback text."""
    if not message.blocks:
        return message.text
    lines: list[str] = []
    for block in message.blocks:
        if block["type"] == "section":
            lines.append(block["text"]["text"])
        elif block["type"] == "context":
            lines += [element["text"] for element in block["elements"]]
        elif block["type"] == "actions":
            lines.append(" ".join(f"[{element['text']['text']}]" for element in block["elements"]))
    return "\n".join(lines)


def buttons(message: FakeMessage) -> list[dict[str, Any]]:
    return [element for block in message.blocks if block["type"] == "actions" for element in block["elements"]]


class SlackSender:
    """Slack's requests to Baton's ``/slack/events``, signed (or deliberately mis-signed)."""

    def __init__(self, baton_url: str, signing_secret: str = SIGNING_SECRET) -> None:
        self.url = baton_url.rstrip("/") + "/slack/events"
        self.verifier = SignatureVerifier(signing_secret)
        self.http = httpx.Client(timeout=15)

    def signed_headers(self, body: str, content_type: str, *, timestamp: int | None = None,
                       signature: str | None = None, retry_num: int | None = None) -> dict[str, str]:
        stamp = str(timestamp if timestamp is not None else int(time.time()))
        headers = {"Content-Type": content_type, "X-Slack-Request-Timestamp": stamp,
                   "X-Slack-Signature": signature or str(self.verifier.generate_signature(timestamp=stamp, body=body))}
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        return headers

    def post(self, body: str, content_type: str, **signing: Any) -> httpx.Response:
        return self.http.post(self.url, content=body.encode(),
                              headers=self.signed_headers(body, content_type, **signing))

    # -- bodies ----------------------------------------------------------------------------------

    @staticmethod
    def event_body(event: dict[str, Any], event_id: str | None = None) -> str:
        return json.dumps({
            "token": "legacy-verification-token", "team_id": TEAM_ID, "api_app_id": "A0BATON000",
            "event": event, "type": "event_callback", "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
            "event_time": int(time.time()), "authorizations": [
                {"team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True, "is_enterprise_install": False}],
        })

    def mention(self, text: str, *, user: str, channel: str = "C0GENERAL1", thread_ts: str | None = None,
                ts: str | None = None) -> dict[str, Any]:
        """An ``app_mention`` event: ``text`` is what follows ``@baton``."""
        ts = ts or new_ts()
        event = {"type": "app_mention", "user": user, "text": f"<@{BOT_USER_ID}> {text}", "ts": ts, "event_ts": ts,
                 "channel": channel, "team": TEAM_ID}
        if thread_ts:
            event["thread_ts"] = thread_ts
        return event

    def message(self, text: str, *, user: str | None, channel: str = "C0GENERAL1", thread_ts: str | None = None,
                channel_type: str = "channel", **extra: Any) -> dict[str, Any]:
        ts = new_ts()
        event = {"type": "message", "text": text, "ts": ts, "event_ts": ts, "channel": channel,
                 "channel_type": channel_type, "team": TEAM_ID, **extra}
        if user is not None:
            event["user"] = user
        if thread_ts:
            event["thread_ts"] = thread_ts
        return event

    def send_event(self, event: dict[str, Any], *, event_id: str | None = None, **signing: Any) -> httpx.Response:
        return self.post(self.event_body(event, event_id), "application/json", **signing)

    def click(self, card: FakeMessage, *, user: str, action: str = "approve",
              trigger_id: str | None = None) -> httpx.Response:
        """Press Approve or Reject on a card the bot posted (the payload Slack sends for it)."""
        button = next(b for b in buttons(card) if b["action_id"] == f"baton:{action}")
        message: dict[str, Any] = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": card.ts,
                                   "text": card.text, "blocks": card.blocks}
        container: dict[str, Any] = {"type": "message", "message_ts": card.ts, "channel_id": card.channel,
                                     "is_ephemeral": False}
        if card.thread_ts:
            message["thread_ts"] = container["thread_ts"] = card.thread_ts
        payload = {
            "type": "block_actions", "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
            "api_app_id": "A0BATON000", "token": "legacy-verification-token", "container": container,
            "trigger_id": trigger_id or f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:12]}",
            "team": {"id": TEAM_ID, "domain": "baton-test"}, "channel": {"id": card.channel, "name": "general"},
            "message": message, "response_url": "https://hooks.slack.invalid/actions/x",
            "actions": [{"action_id": button["action_id"], "block_id": "baton_buttons", "value": button["value"],
                         "type": "button", "style": button.get("style"), "action_ts": str(time.time()),
                         "text": button["text"]}],
        }
        return self.post(urlencode({"payload": json.dumps(payload)}), "application/x-www-form-urlencoded")

    def command(self, text: str, *, user: str, channel: str = "C0GENERAL1", command: str = "/baton",
                trigger_id: str | None = None, response_url: str | None = None) -> httpx.Response:
        return self.post(self.command_body(text, user=user, channel=channel, command=command, trigger_id=trigger_id,
                                           response_url=response_url), "application/x-www-form-urlencoded")

    @staticmethod
    def command_body(text: str, *, user: str, channel: str = "C0GENERAL1", command: str = "/baton",
                     trigger_id: str | None = None, response_url: str | None = None) -> str:
        """A slash command's body, form-encoded, as Slack posts it."""
        return urlencode({
            "token": "legacy-verification-token", "team_id": TEAM_ID, "team_domain": "baton-test",
            "channel_id": channel, "channel_name": "general", "user_id": user, "user_name": user.lower(),
            "command": command, "text": text, "api_app_id": "A0BATON000", "is_enterprise_install": "false",
            "response_url": response_url or "https://hooks.slack.invalid/commands/x",
            "trigger_id": trigger_id or f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:12]}",
        })
