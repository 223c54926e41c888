"""A local fake of Discord for end-to-end tests: the REST API and the gateway, in one aiohttp server.

``FakeDiscord`` serves, in a thread, what discord.py talks to:
* REST under ``/api/v10``: the bot's user and application, ``/gateway/bot``, the bulk overwrite of
  application commands, channel messages (post, edit, multipart files), threads on messages,
  direct-message channels, interaction callbacks and their webhooks (follow-ups, the original
  response). Every call is recorded. It answers like Discord where it matters here: a thread can
  be started on a message once (160004), an interaction is acknowledged once (40060), an expired
  interaction is unknown (10062), a follow-up before the acknowledgement has no webhook (10015), a
  person may refuse direct messages (50007), a message sent to an archived thread opens it again
  but an edit there is refused (50083), a locked thread takes no messages (50013), files over a
  server's upload limit are refused (413), and the next calls of a route can be answered with a 429
  (with ``retry_after`` and the ``Via`` header discord.py looks for, as Discord's edge sends it).
* The gateway WebSocket: HELLO, IDENTIFY -> READY and GUILD_CREATE, heartbeat ACKs, and events
  dispatched on demand (``MESSAGE_CREATE``, ``MESSAGE_UPDATE``, ``INTERACTION_CREATE``, ``THREAD_CREATE``),
  compressed the way the client asks (``zstd-stream`` or ``zlib-stream``), like Discord.

People's side is here too: ``say`` (a message, by default mentioning the bot), ``edit`` (of one), ``click``
(a button on a message the bot posted) and ``slash`` (``/baton``), each returning the payload it dispatched,
so that a test can deliver the very same event again.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import WSMsgType, web

from tests.support import BackgroundServer, Failure, ScriptedFailures

TOKEN = "baton-test-discord-token"
DISCORD_EPOCH_MS = 1_420_070_400_000
GUILD_ID = "1100000000000000001"
APP_ID = "1100000000000000002"
BOT_ID = APP_ID  # Discord gives a bot user the id of its application
OWNER_ID = "1100000000000000003"
BATON_ROLE = "1100000000000000004"  # the role Discord gives a bot in a server it joins (managed, named like it)
GENERAL, OPS = "1100000000000000010", "1100000000000000011"
VOICE = "1100000000000000012"  # a voice channel: people write in its chat, and it has no threads
# A server someone else invited Baton to (``join_other_server``), with one text channel.
OTHER_GUILD, OTHER_CHANNEL = "1200000000000000001", "1200000000000000010"
ALICE, BOB, CAROL = "1100000000000000101", "1100000000000000102", "1100000000000000103"
STRANGER = "1200000000000000101"  # a member of the other server only (``join_other_server``), not of GUILD_ID
OTHER_BOT = "1100000000000000199"
NAMES = {BOT_ID: "baton", ALICE: "alice", BOB: "bob", CAROL: "carol", OTHER_BOT: "otherbot", OWNER_ID: "owner"}
MESSAGE_CONTENT_INTENT = 1 << 15
APP_FLAG_MESSAGE_CONTENT = 1 << 18
EPHEMERAL = 64
LOADING = 128
HAS_THREAD = 32  # a message's flag: a thread was opened on it
CONTENT_CHARS = 2000
EMBED_DESCRIPTION_CHARS = 4096
UPLOAD_LIMIT = 10 * 1024 * 1024  # a server's files per message without boosts (Discord answers 413 above)


_SEQUENCE = itertools.count(1)


def snowflake(at: datetime | None = None) -> str:
    """A Discord id: milliseconds since Discord's epoch, then a counter (so ids order by time)."""
    ms = int((at or datetime.now(UTC)).timestamp() * 1000)
    return str(((ms - DISCORD_EPOCH_MS) << 22) | (next(_SEQUENCE) & 0x3FFFFF))


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def user_json(user_id: str) -> dict[str, Any]:
    name = NAMES.get(user_id, f"user{user_id[-4:]}")
    return {"id": user_id, "username": name, "global_name": name.title(), "discriminator": "0", "avatar": None,
            "bot": user_id in (BOT_ID, OTHER_BOT), "public_flags": 0}


def member_json(user_id: str) -> dict[str, Any]:
    return {"user": user_json(user_id), "roles": [], "joined_at": "2026-01-01T00:00:00+00:00", "deaf": False,
            "mute": False, "flags": 0, "permissions": "2248473465835073"}


@dataclass
class Call:
    route: str  # "POST /channels/{channel_id}/messages"
    path: str
    body: dict[str, Any]
    at: float
    status: int = 200


@dataclass
class FakeMessage:
    id: str
    channel_id: str
    author_id: str
    content: str
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    flags: int = 0
    ephemeral_to: str | None = None  # an ephemeral follow-up: only this person sees it
    interaction_id: str | None = None
    edits: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    edited_timestamp: str | None = None  # a person's last edit (``edit``)

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "channel_id": self.channel_id, "guild_id": GUILD_ID, "author": user_json(self.author_id),
                "content": self.content, "timestamp": now_iso(), "edited_timestamp": self.edited_timestamp,
                "tts": False, "mention_everyone": False, "mentions": [], "mention_roles": [], "pinned": False,
                "type": 0,
                "flags": self.flags, "embeds": self.embeds, "components": self.components,
                "attachments": [{"id": str(index), "filename": name, "size": len(data), "url": f"https://cdn.invalid/{name}",
                                 "proxy_url": f"https://cdn.invalid/{name}"} for index, (name, data) in enumerate(self.files.items())]}


def shown_text(message: FakeMessage) -> str:
    """What a person reads: the content, then the embed's title and description."""
    lines = [message.content] if message.content else []
    for embed in message.embeds:
        lines += [text for text in (embed.get("title"), embed.get("description")) if text]
    return "\n".join(lines)


def buttons(message: FakeMessage) -> list[dict[str, Any]]:
    return [component for row in message.components for component in row.get("components", [])
            if component.get("type") == 2]


class _Connection:
    """One gateway session: its socket, its compression and its sequence numbers."""

    def __init__(self, socket: web.WebSocketResponse, compress: str | None) -> None:
        self.socket = socket
        self.sequence = 0
        self.identified = False
        if compress == "zstd-stream":
            import zstandard

            self._zstd = zstandard.ZstdCompressor().compressobj()
            self._compress = lambda data: self._zstd.compress(data) + self._zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        elif compress == "zlib-stream":
            self._zlib = zlib.compressobj()
            self._compress = lambda data: self._zlib.compress(data) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
        else:
            self._compress = None

    async def send(self, op: int, data: Any, event: str | None = None) -> None:
        if op == 0:
            self.sequence += 1
        text = json.dumps({"op": op, "d": data, "s": self.sequence if op == 0 else None, "t": event})
        if self._compress is None:
            await self.socket.send_str(text)
        else:
            await self.socket.send_bytes(self._compress(text.encode()))


class FakeDiscord(BackgroundServer):
    """Discord's REST API and gateway, locally. Thread-safe to read from the test."""

    def __init__(self, *, message_content_intent: bool = True) -> None:
        super().__init__("fake-discord")
        self.message_content_intent = message_content_intent
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._failures = ScriptedFailures()
        self._messages: dict[str, FakeMessage] = {}
        self._nonced: dict[str, FakeMessage] = {}  # enforce_nonce: a nonce posted again answers its message
        self.channels: dict[str, dict[str, Any]] = {
            GENERAL: self._text_channel(GENERAL, "general", 0), OPS: self._text_channel(OPS, "ops", 1),
            VOICE: self._text_channel(VOICE, "standup", 2) | {"type": 2, "bitrate": 64000, "user_limit": 0,
                                                             "rtc_region": None}}
        self.interactions: dict[str, dict[str, Any]] = {}  # id -> {"payload", "token", "acknowledged", "expired"}
        self.callbacks: list[dict[str, Any]] = []  # interaction callbacks Discord accepted, in order
        self.identifies: list[dict[str, Any]] = []
        self.refuses_direct_messages: set[str] = set()
        # Channels Baton lost access to (removed, its role taken away): posts there and in their threads are refused
        # with 403 Missing Access (50001)
        self.shut_out: set[str] = set()
        self.commands: dict[str, list[dict[str, Any]]] = {}  # "global" or a guild id -> the registered commands
        self._connections: list[_Connection] = []

    # -- life ------------------------------------------------------------------------------------

    async def close_connections(self) -> None:
        for connection in list(self._connections):
            await connection.socket.close()

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        routes = [
            ("GET", "/gateway/bot", self._gateway_bot),
            ("GET", "/users/@me", self._me),
            ("GET", "/oauth2/applications/@me", self._application),
            ("PUT", "/applications/{application_id}/commands", self._overwrite_commands),
            ("GET", "/applications/{application_id}/commands", self._list_commands),
            ("DELETE", "/applications/{application_id}/commands/{command_id}", self._delete_command),
            ("PUT", "/applications/{application_id}/guilds/{guild_id}/commands", self._overwrite_commands),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self._get_member),
            ("GET", "/channels/{channel_id}", self._get_channel),
            ("PATCH", "/channels/{channel_id}", self._edit_channel),
            ("GET", "/channels/{channel_id}/messages", self._channel_history),
            ("POST", "/channels/{channel_id}/messages", self._post_message),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self._edit_message),
            ("POST", "/channels/{channel_id}/messages/{message_id}/threads", self._start_thread),
            ("POST", "/users/@me/channels", self._open_dm),
            ("POST", "/interactions/{interaction_id}/{token}/callback", self._interaction_callback),
            ("POST", "/webhooks/{application_id}/{token}", self._follow_up),
            ("PATCH", "/webhooks/{application_id}/{token}/messages/@original", self._edit_original),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, "/api/v10" + path, self._recorded(f"{method} {path}", handler))
        app.router.add_route("*", "/api/v10/{tail:.*}", self._recorded("unknown", self._unknown))
        app.router.add_get("/gateway", self._gateway)
        return app

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    def env(self, *, gateway: bool = True) -> dict[str, str]:
        """The settings that point a Baton at this fake (without the gateway: found via /gateway/bot)."""
        env = {"DISCORD_TOKEN": TOKEN, "DISCORD_API_URL": self.api_url, "DISCORD_GUILD_ID": GUILD_ID,
               "BATON_ADAPTERS": "discord"}
        if gateway:
            env["DISCORD_GATEWAY_URL"] = self.gateway_url
        return env

    # -- what the test asks ----------------------------------------------------------------------

    def fail(self, route: str, status: int = 429, *, times: int = 1, retry_after: float = 1.0,
             cloudflare: bool = False, after: bool = False) -> None:
        """Answer the next ``times`` calls of ``route`` ("POST /channels/{channel_id}/messages") with ``status``.

        ``cloudflare``: a 429 from Cloudflare in front of Discord (a ban of the address), without
        the ``Via`` header of Discord's own 429s. ``after``: the call is carried out all the same."""
        with self._lock:
            self._failures.add(route, Failure(status, times, retry_after, "cloudflare" if cloudflare else "internal_error",
                                              after))

    def calls(self, route: str | None = None) -> list[Call]:
        with self._lock:
            return [call for call in self._calls if route is None or call.route == route]

    def messages(self, channel: str | None = None, *, by_bot: bool = True) -> list[FakeMessage]:
        """Messages in a channel (a thread is a channel), oldest first; the bot's only, by default."""
        with self._lock:
            return [m for m in self._messages.values() if (channel is None or m.channel_id == channel)
                    and (not by_bot or m.author_id == BOT_ID)]

    def message(self, message_id: str) -> FakeMessage | None:
        with self._lock:
            return self._messages.get(message_id)

    def find(self, contains: str, channel: str | None = None) -> FakeMessage | None:
        return next((m for m in self.messages(channel) if contains in shown_text(m)), None)

    def threads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [c for c in self.channels.values() if c["type"] == 11]

    @property
    def sessions(self) -> int:
        """Gateway connections that identified and are still open."""
        return sum(1 for connection in self._connections if connection.identified and not connection.socket.closed)

    # -- people's side: events through the gateway -----------------------------------------------

    def close_sessions(self, code: int, reason: bytes = b"") -> None:
        """Close every gateway connection with ``code`` (4004: the token is no longer valid, say)."""
        async def close() -> None:
            for connection in list(self._connections):
                await connection.socket.close(code=code, message=reason)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        async def push() -> None:
            for connection in list(self._connections):
                if connection.identified and not connection.socket.closed:
                    await connection.send(0, data, event)

        asyncio.run_coroutine_threadsafe(push(), self._loop).result(10)

    def join_other_server(self) -> None:
        """Someone invites Baton to a server of their own (a public bot can be invited by anyone)."""
        channel = self._text_channel(OTHER_CHANNEL, "elsewhere", 0) | {"guild_id": OTHER_GUILD}
        with self._lock:
            self.channels[OTHER_CHANNEL] = channel
        self.dispatch("GUILD_CREATE", {
            "id": OTHER_GUILD, "name": "Someone Else's", "icon": None, "owner_id": BOB, "unavailable": False,
            "features": [], "emojis": [], "stickers": [], "large": False, "member_count": 2, "verification_level": 0,
            "default_message_notifications": 0, "explicit_content_filter": 0, "mfa_level": 0, "nsfw_level": 0,
            "premium_tier": 0, "preferred_locale": "en-US", "system_channel_id": None, "joined_at": now_iso(),
            "roles": [{"id": OTHER_GUILD, "name": "@everyone", "permissions": "2248473465835073", "position": 0,
                       "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0}],
            "members": [member_json(BOT_ID)], "channels": [channel], "threads": [], "presences": [],
            "voice_states": [], "stage_instances": [], "guild_scheduled_events": []})

    def forget_server(self) -> None:
        """Leave discord.py without Baton's server in its cache, as between a new session's READY and the server's
        GUILD_CREATE: its messages then come with no ``message.guild`` (their channel has the server's id). Done with
        a GUILD_DELETE, which makes discord.py drop the server; ``server_back`` sends it again."""
        self.dispatch("GUILD_DELETE", {"id": GUILD_ID})

    def server_back(self) -> None:
        """GUILD_CREATE for Baton's server again, with its channels and threads as they are now."""
        with self._lock:
            guild_channels = [c for c in self.channels.values() if c["type"] in (0, 2)]
            threads = [c for c in self.channels.values() if c["type"] == 11]
        self.dispatch("GUILD_CREATE", self._guild_create(guild_channels, threads))

    def say(self, text: str, *, user: str = ALICE, channel: str = GENERAL, mention: bool = True,
            message_id: str | None = None, reply_to: FakeMessage | None = None,
            role_mention: bool = False) -> dict[str, Any]:
        """A person writes in a channel or thread (by default ``@baton <text>``); returns MESSAGE_CREATE's data.

        ``reply_to``: Discord's reply to that message, pinging its author (the default in Discord's
        client): its author is in ``mentions`` although the text does not name them.
        ``role_mention``: ``@Baton`` picked as Baton's role (Discord's autocomplete offers both the
        bot and its role, by the same name): the role is in ``mention_roles``, the bot in no ``mentions``."""
        if role_mention:
            mention = False
            text = f"<@&{BATON_ROLE}> {text}"
        content = f"<@{BOT_ID}> {text}" if mention else text
        message = FakeMessage(id=message_id or snowflake(), channel_id=channel, author_id=user, content=content)
        with self._lock:
            self._messages[message.id] = message
            direct = self.channels.get(channel, {}).get("type") == 1
            reads_content = bool(self.identifies and self.identifies[-1].get("intents", 0) & MESSAGE_CONTENT_INTENT)
        payload = message.json()
        pinged = mention or (reply_to is not None and reply_to.author_id == BOT_ID)
        if not (pinged or direct or reads_content):
            payload["content"] = ""  # what Discord sends a bot without the message content intent
        payload["mentions"] = [{**user_json(BOT_ID), "member": member_json(BOT_ID)}] if pinged else []
        payload["mention_roles"] = [BATON_ROLE] if role_mention else []
        if reply_to is not None:
            payload |= {"type": 19, "referenced_message": reply_to.json(),
                        "message_reference": {"message_id": reply_to.id, "channel_id": reply_to.channel_id}}
        if direct:
            del payload["guild_id"]
        elif channel == OTHER_CHANNEL:
            payload["guild_id"] = OTHER_GUILD
            payload["member"] = {k: v for k, v in member_json(user).items() if k != "user"}
        else:
            payload["member"] = {k: v for k, v in member_json(user).items() if k != "user"}
        if user in (BOT_ID, OTHER_BOT):
            payload["author"]["bot"] = True
        self.dispatch("MESSAGE_CREATE", payload)
        return payload

    def edit(self, said: dict[str, Any], text: str, *, mention: bool = True) -> dict[str, Any]:
        """Its writer edits a message ``say`` sent (to ``@baton <text>``, by default); returns MESSAGE_UPDATE's data.

        Discord sends the whole message as edited, with its ``edited_timestamp`` and its flags as they are now
        (``HAS_THREAD`` once a thread was opened on it), and no id of the event's own."""
        with self._lock:
            message = self._messages[said["id"]]
            message.content = f"<@{BOT_ID}> {text}" if mention else text
            message.edited_timestamp = now_iso()
            reads_content = bool(self.identifies and self.identifies[-1].get("intents", 0) & MESSAGE_CONTENT_INTENT)
            direct = self.channels.get(message.channel_id, {}).get("type") == 1
            payload = said | {key: value for key, value in message.json().items()
                              if key in ("content", "edited_timestamp", "flags")}
        if not (mention or direct or reads_content):
            payload["content"] = ""
        payload["mentions"] = [{**user_json(BOT_ID), "member": member_json(BOT_ID)}] if mention else []
        payload["mention_roles"] = []
        self.dispatch("MESSAGE_UPDATE", payload)
        return payload

    def direct_channel(self, user: str) -> str:
        """The DM channel between ``user`` and the bot (the same one the bot's ``POST /users/@me/channels`` gets)."""
        channel_id = str(int(user) + 7)
        with self._lock:
            self.channels.setdefault(channel_id, {"id": channel_id, "type": 1, "last_message_id": None,
                                                  "recipients": [user_json(user)]})
        return channel_id

    def unannounced_thread(self, parent: str = GENERAL, name: str = "a person's thread") -> str:
        """A thread people opened that the gateway never told Baton about (no THREAD_CREATE: opened
        while Baton was away, say); discord.py then knows its messages' channel only by id."""
        thread_id = snowflake()
        with self._lock:
            self.channels[thread_id] = {
                "id": thread_id, "type": 11, "guild_id": GUILD_ID, "parent_id": parent, "owner_id": ALICE, "name": name,
                "last_message_id": None, "message_count": 0, "member_count": 1, "rate_limit_per_user": 0, "flags": 0,
                "total_message_sent": 0, "thread_metadata": {"archived": False, "locked": False,
                                                             "archive_timestamp": now_iso(),
                                                             "auto_archive_duration": 4320,
                                                             "create_timestamp": now_iso()}}
        return thread_id

    def archive(self, thread: str, *, locked: bool = False) -> None:
        """A thread goes quiet for its auto-archive duration, or a moderator closes (and locks) it."""
        with self._lock:
            self.channels[thread]["thread_metadata"] |= {"archived": True, "locked": locked}

    def archived(self, thread: str) -> bool:
        with self._lock:
            return bool(self.channels[thread]["thread_metadata"]["archived"])

    def click(self, message: FakeMessage, *, user: str, value: str = "approve", age: timedelta = timedelta(0)) -> dict[str, Any]:
        """A person presses the button with ``value`` on a message; returns INTERACTION_CREATE's data.

        ``age``: how long ago Discord created the interaction (past 15 minutes, its token is dead)."""
        button = next(b for b in buttons(message) if b["custom_id"].split(":")[1] == value)
        data = {"custom_id": button["custom_id"], "component_type": 2}
        return self._interaction(3, data, channel=message.channel_id, user=user, message=message, age=age)

    def slash(self, text: str, *, user: str = ALICE, channel: str = GENERAL) -> dict[str, Any]:
        """``/baton <text>``; returns INTERACTION_CREATE's data."""
        command = next(c for c in self.commands.get(GUILD_ID, []) if c["name"] == "baton")
        data = {"id": command["id"], "name": "baton", "type": 1, "guild_id": GUILD_ID,
                "options": [{"name": "request", "type": 3, "value": text}]}
        return self._interaction(2, data, channel=channel, user=user)

    def redeliver(self, interaction: dict[str, Any]) -> None:
        """The same interaction again (as after a gateway resume)."""
        self.dispatch("INTERACTION_CREATE", interaction)

    def _interaction(self, kind: int, data: dict[str, Any], *, channel: str, user: str,
                     message: FakeMessage | None = None, age: timedelta = timedelta(0)) -> dict[str, Any]:
        interaction_id = snowflake(datetime.now(UTC) - age)
        token = f"interaction-token-{secrets.token_hex(8)}"
        with self._lock:
            channel_json = self.channels[channel]
        payload: dict[str, Any] = {
            "id": interaction_id, "application_id": APP_ID, "type": kind, "data": data, "guild_id": GUILD_ID,
            "channel_id": channel, "channel": channel_json, "member": member_json(user), "token": token, "version": 1,
            "app_permissions": "2248473465835073", "locale": "en-US", "guild_locale": "en-US", "entitlements": [],
            "authorizing_integration_owners": {"0": GUILD_ID}, "context": 0, "attachment_size_limit": 10485760}
        if message is not None:
            payload["message"] = message.json()
        with self._lock:
            self.interactions[interaction_id] = {"payload": payload, "token": token, "acknowledged": False,
                                                 "expired": age >= timedelta(minutes=15), "user": user}
        self.dispatch("INTERACTION_CREATE", payload)
        return payload

    # -- REST ------------------------------------------------------------------------------------

    def _recorded(self, route: str, handler: Any) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await _body(request)
            with self._lock:
                failure = self._failures.next(route)
                call = Call(route, request.path, body, time.time(), failure.status if failure else 200)
                self._calls.append(call)
            if failure is not None:
                if failure.after:
                    await handler(request, body)
                return _rate_limited(failure) if failure.status == 429 else _error(failure.status, 0, "Server error")
            if not route.startswith(("POST /interactions", "POST /webhooks", "PATCH /webhooks")) \
                    and request.headers.get("Authorization") != f"Bot {TOKEN}":
                call.status = 401
                return _error(401, 0, "401: Unauthorized")
            response = await handler(request, body)
            call.status = response.status
            return response

        return handle

    async def _unknown(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        return _error(404, 0, f"404: Not Found ({request.method} {request.path})")

    async def _gateway_bot(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        return _json({"url": self.gateway_url, "shards": 1, "session_start_limit": {
            "total": 1000, "remaining": 999, "reset_after": 86_400_000, "max_concurrency": 1}})

    async def _me(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        return _json({**user_json(BOT_ID), "bot": True, "verified": True, "mfa_enabled": False, "flags": 0})

    async def _application(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        flags = APP_FLAG_MESSAGE_CONTENT if self.message_content_intent else 0
        return _json({"id": APP_ID, "name": "Baton", "description": "", "icon": None, "bot_public": False,
                                  "bot_require_code_grant": False, "owner": user_json(OWNER_ID), "verify_key": "0" * 64,
                                  "flags": flags, "team": None, "summary": "", "rpc_origins": [],
                                  "interactions_endpoint_url": None})

    async def _overwrite_commands(self, request: web.Request, body: Any) -> web.Response:
        scope = request.match_info.get("guild_id", "global")
        commands = [{**command, "id": snowflake(), "application_id": APP_ID, "version": snowflake(),
                     **({"guild_id": scope} if scope != "global" else {})} for command in body["_list"]]
        with self._lock:
            self.commands[scope] = commands
        return _json(commands)

    async def _list_commands(self, request: web.Request, body: Any) -> web.Response:
        with self._lock:
            return _json(self.commands.get("global", []))

    async def _delete_command(self, request: web.Request, body: Any) -> web.Response:
        with self._lock:
            kept = [c for c in self.commands.get("global", []) if c["id"] != request.match_info["command_id"]]
            if len(kept) == len(self.commands.get("global", [])):
                return _error(404, 10063, "Unknown application command")
            self.commands["global"] = kept
        return web.Response(status=204)

    async def _get_member(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        """Everyone but ``STRANGER`` is a member of GUILD_ID (no intent needed: it is REST)."""
        user, guild = request.match_info["user_id"], request.match_info["guild_id"]
        if guild != GUILD_ID or user == STRANGER:
            return _error(404, 10007, "Unknown Member")
        return _json(member_json(user))

    async def _get_channel(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        with self._lock:
            channel = self.channels.get(request.match_info["channel_id"])
        return _json(channel) if channel else _error(404, 10003, "Unknown Channel")

    async def _edit_channel(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        """Only what Baton does with a channel: open an archived thread again (not a locked one)."""
        channel_id = request.match_info["channel_id"]
        with self._lock:
            channel = self.channels.get(channel_id)
        if channel is None:
            return _error(404, 10003, "Unknown Channel")
        if set(body) != {"archived"} or channel["type"] != 11:
            return _error(400, 50035, f"Invalid Form Body: this fake only unarchives threads ({sorted(body)})")
        if self._is_locked(channel_id):
            return _error(403, 50013, "Missing Permissions")
        with self._lock:
            channel["thread_metadata"]["archived"] = bool(body["archived"])
        return _json(channel)

    def _is_archived(self, channel_id: str) -> bool:
        with self._lock:
            return bool(self.channels.get(channel_id, {}).get("thread_metadata", {}).get("archived"))

    def _is_locked(self, channel_id: str) -> bool:
        with self._lock:
            return bool(self.channels.get(channel_id, {}).get("thread_metadata", {}).get("locked"))

    def _reopen(self, channel_id: str) -> None:
        with self._lock:
            metadata = self.channels.get(channel_id, {}).get("thread_metadata")
            if metadata is not None:
                metadata["archived"] = False

    async def _channel_history(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        """Newest first, at most ``limit`` (1..100), older than ``before`` if given, as Discord pages."""
        channel_id = request.match_info["channel_id"]
        limit = max(1, min(100, int(request.query.get("limit", "50"))))
        before = int(request.query.get("before", str(2**63)))
        with self._lock:
            if channel_id not in self.channels:
                return _error(404, 10003, "Unknown Channel")
            found = [m for m in self._messages.values() if m.channel_id == channel_id and int(m.id) < before]
            page = sorted(found, key=lambda m: int(m.id), reverse=True)[:limit]
            payload = [{**m.json(), "author": {**user_json(m.author_id), "bot": m.author_id in (BOT_ID, OTHER_BOT)}}
                       for m in page]
        return _json(payload)

    async def _post_message(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        channel_id = request.match_info["channel_id"]
        with self._lock:
            channel = self.channels.get(channel_id)
        if channel is None:
            return _error(404, 10003, "Unknown Channel")
        if channel["type"] == 1 and channel["recipients"][0]["id"] in self.refuses_direct_messages:
            return _error(403, 50007, "Cannot send messages to this user")
        if {channel_id, channel.get("parent_id")} & self.shut_out:
            return _error(403, 50001, "Missing Access")
        if self._is_locked(channel_id):  # only people with Manage Threads may write there
            return _error(403, 50013, "Missing Permissions")
        problem = _check_message(body)
        if problem:
            return _error(400, 50035, f"Invalid Form Body: {problem}")
        if (refusal := _too_large(body)) is not None:
            return refusal
        nonce = str(body["nonce"]) if body.get("enforce_nonce") and body.get("nonce") is not None else None
        with self._lock:
            posted = self._nonced.get(nonce) if nonce is not None else None
        if posted is not None:  # Discord: the bot's message with that nonce, not a second one
            return _json(posted.json())
        self._reopen(channel_id)  # a message sent to an archived thread opens it again, as Discord does
        message = self._store(channel_id, body)
        if nonce is not None:
            with self._lock:
                self._nonced[nonce] = message
        return _json(message.json())

    async def _edit_message(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        with self._lock:
            message = self._messages.get(request.match_info["message_id"])
        if message is None or message.channel_id != request.match_info["channel_id"]:
            return _error(404, 10008, "Unknown Message")
        if message.author_id != BOT_ID:
            return _error(403, 50005, "Cannot edit a message authored by another user")
        if self._is_archived(message.channel_id):  # an edit does not open an archived thread
            return _error(400, 50083, "Thread is archived")
        problem = _check_message(body, edit=True)
        if problem:
            return _error(400, 50035, f"Invalid Form Body: {problem}")
        if (refusal := _too_large(body)) is not None:
            return refusal
        self._apply_edit(message, body)
        return _json(message.json())

    async def _start_thread(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        channel_id, message_id = request.match_info["channel_id"], request.match_info["message_id"]
        with self._lock:
            channel = self.channels.get(channel_id)
            message = self._messages.get(message_id)
            if channel is None or message is None or message.channel_id != channel_id:
                return _error(404, 10008, "Unknown Message")
            if channel["type"] != 0:
                return _error(400, 50024, "Cannot execute action on this channel type")
            if message_id in self.channels:
                return _error(400, 160004, "A thread has already been created for this message")
            thread = {"id": message_id, "type": 11, "guild_id": GUILD_ID, "parent_id": channel_id, "owner_id": BOT_ID,
                      "name": body["name"], "last_message_id": None, "message_count": 0, "member_count": 1,
                      "rate_limit_per_user": 0, "flags": 0, "total_message_sent": 0,
                      "thread_metadata": {"archived": False, "locked": False, "archive_timestamp": now_iso(),
                                          "auto_archive_duration": body.get("auto_archive_duration", 4320),
                                          "create_timestamp": now_iso()}}
            self.channels[message_id] = thread
            message.flags |= HAS_THREAD
        asyncio.get_running_loop().create_task(self._push("THREAD_CREATE", {**thread, "newly_created": True}))
        return _json(thread, status=201)

    async def _open_dm(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        channel_id = self.direct_channel(str(body["recipient_id"]))
        with self._lock:
            return _json(self.channels[channel_id])

    async def _interaction_callback(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        interaction_id = request.match_info["interaction_id"]
        with self._lock:
            known = self.interactions.get(interaction_id)
            if known is None or known["expired"] or known["token"] != request.match_info["token"]:
                return _error(404, 10062, "Unknown interaction")
            if known["acknowledged"]:
                return _error(400, 40060, "Interaction has already been acknowledged.")
            known["acknowledged"] = True
            self.callbacks.append({"interaction_id": interaction_id, "type": body["type"], "data": body.get("data"),
                                   "at": time.time()})
            payload = known["payload"]
        response_message = None
        if body["type"] in (4, 5):  # a message now, or "thinking..." to be filled in later
            data = body.get("data") or {}
            message = self._store(payload["channel_id"], {"content": data.get("content", ""),
                                                          "flags": data.get("flags", 0) | (LOADING if body["type"] == 5 else 0)})
            message.interaction_id = interaction_id
            response_message = message.id
        return _json({"interaction": {"id": interaction_id, "type": payload["type"],
                                                  "response_message_id": response_message,
                                                  "response_message_loading": body["type"] == 5,
                                                  "response_message_ephemeral": False},
                                  "resource": {"type": body["type"]}})

    def _token_owner(self, token: str) -> dict[str, Any] | None:
        with self._lock:
            return next((known for known in self.interactions.values() if known["token"] == token), None)

    async def _follow_up(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        known = self._token_owner(request.match_info["token"])
        if known is None or known["expired"]:
            return _error(401, 50027, "Invalid Webhook Token")
        if not known["acknowledged"]:
            return _error(404, 10015, "Unknown Webhook")
        problem = _check_message(body)
        if problem:
            return _error(400, 50035, f"Invalid Form Body: {problem}")
        if (refusal := _too_large(body)) is not None:
            return refusal
        message = self._store(known["payload"]["channel_id"], body)
        message.interaction_id = known["payload"]["id"]
        if message.flags & EPHEMERAL:
            message.ephemeral_to = known["user"]
        return _json(message.json())

    async def _edit_original(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        known = self._token_owner(request.match_info["token"])
        if known is None or known["expired"]:
            return _error(401, 50027, "Invalid Webhook Token")
        problem = _check_message(body, edit=True)  # Discord's limits hold for an interaction's answer too
        if problem:
            return _error(400, 50035, f"Invalid Form Body: {problem}")
        original = next((m for m in self.messages(known["payload"]["channel_id"])
                         if m.interaction_id == known["payload"]["id"]), None)
        if original is None:
            return _error(404, 10008, "Unknown Message")
        self._apply_edit(original, body)
        original.flags &= ~LOADING
        return _json(original.json())

    def _store(self, channel_id: str, body: dict[str, Any]) -> FakeMessage:
        message = FakeMessage(id=snowflake(), channel_id=channel_id, author_id=BOT_ID, content=body.get("content") or "",
                              embeds=body.get("embeds") or [], components=body.get("components") or [],
                              files=dict(body.get("_files", {})), flags=body.get("flags") or 0)
        with self._lock:
            self._messages[message.id] = message
        return message

    def _apply_edit(self, message: FakeMessage, body: dict[str, Any]) -> None:
        with self._lock:
            message.history.append(message.json())
            if "content" in body:
                message.content = body["content"] or ""
            if "embeds" in body:
                message.embeds = body["embeds"] or []
            if "components" in body:
                message.components = body["components"] or []
            if "attachments" in body:
                message.files = dict(body.get("_files", {}))
            message.edits += 1

    async def _push(self, event: str, data: dict[str, Any]) -> None:
        for connection in list(self._connections):
            if connection.identified and not connection.socket.closed:
                await connection.send(0, data, event)

    @staticmethod
    def _text_channel(channel_id: str, name: str, position: int) -> dict[str, Any]:
        return {"id": channel_id, "type": 0, "guild_id": GUILD_ID, "name": name, "position": position,
                "permission_overwrites": [], "nsfw": False, "parent_id": None, "topic": None, "last_message_id": None,
                "rate_limit_per_user": 0, "flags": 0}

    # -- the gateway -----------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(max_msg_size=0)
        await socket.prepare(request)
        connection = _Connection(socket, request.query.get("compress"))
        self._connections.append(connection)
        await connection.send(10, {"heartbeat_interval": 41250})
        try:
            async for frame in socket:
                if frame.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(frame.data)
                if payload["op"] == 1:  # heartbeat
                    await connection.send(11, None)
                elif payload["op"] == 2:
                    await self._identify(connection, payload["d"])
                elif payload["op"] == 6:  # resume: this fake keeps no sessions, so start a new one
                    await connection.send(9, False)
        finally:
            self._connections.remove(connection)
        return socket

    async def _identify(self, connection: _Connection, data: dict[str, Any]) -> None:
        if data.get("token") != TOKEN:
            await connection.socket.close(code=4004, message=b"Authentication failed.")
            return
        if data.get("intents", 0) & MESSAGE_CONTENT_INTENT and not self.message_content_intent:
            await connection.socket.close(code=4014, message=b"Disallowed intent(s).")
            return
        with self._lock:
            self.identifies.append(data)
            guild_channels = [c for c in self.channels.values() if c["type"] in (0, 2)]
            threads = [c for c in self.channels.values() if c["type"] == 11]
        connection.identified = True
        await connection.send(0, {
            "v": 10, "user": {**user_json(BOT_ID), "bot": True, "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": GUILD_ID, "unavailable": True}], "session_id": secrets.token_hex(16),
            "resume_gateway_url": self.gateway_url, "application": {"id": APP_ID, "flags": APP_FLAG_MESSAGE_CONTENT
                                                                    if self.message_content_intent else 0},
            "private_channels": [], "relationships": [], "user_settings": {}, "shard": [0, 1]}, "READY")
        await connection.send(0, self._guild_create(guild_channels, threads), "GUILD_CREATE")

    @staticmethod
    def _guild_create(guild_channels: list[dict[str, Any]], threads: list[dict[str, Any]]) -> dict[str, Any]:
        """GUILD_CREATE's data for Baton's server, with these channels and threads."""
        return {
            "id": GUILD_ID, "name": "Baton Test", "icon": None, "owner_id": OWNER_ID, "unavailable": False,
            "features": [], "emojis": [], "stickers": [], "large": False, "member_count": 5, "verification_level": 0,
            "default_message_notifications": 0, "explicit_content_filter": 0, "mfa_level": 0, "nsfw_level": 0,
            "premium_tier": 0, "preferred_locale": "en-US", "system_channel_id": None, "joined_at": now_iso(),
            "roles": [{"id": GUILD_ID, "name": "@everyone", "permissions": "2248473465835073", "position": 0,
                       "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0},
                      {"id": BATON_ROLE, "name": "Baton", "permissions": "309237763072", "position": 1, "color": 0,
                       "hoist": False, "managed": True, "mentionable": True, "flags": 0,
                       "tags": {"bot_id": BOT_ID}}],
            "members": [member_json(BOT_ID)], "channels": guild_channels, "threads": threads, "presences": [],
            "voice_states": [], "stage_instances": [], "guild_scheduled_events": []}


async def _body(request: web.Request) -> dict[str, Any]:
    """A request's JSON, or a multipart request's ``payload_json`` with its files as ``_files``."""
    if not request.can_read_body:
        return {}
    if request.content_type.startswith("multipart/"):
        form = await request.post()
        body = json.loads(str(form.get("payload_json") or "{}"))
        files = {}
        for name, value in form.items():
            if re.fullmatch(r"files\[\d+\]", name):
                files[value.filename] = value.file.read()  # type: ignore[union-attr]
        body["_files"] = files
        return body
    data = await request.json()
    return data if isinstance(data, dict) else {"_list": data}


def _too_large(body: dict[str, Any]) -> web.Response | None:
    """Discord's 413 for files over what the server takes in one message."""
    if sum(len(data) for data in body.get("_files", {}).values()) > UPLOAD_LIMIT:
        return _error(413, 40005, "Request entity too large")
    return None


def _check_message(body: dict[str, Any], *, edit: bool = False) -> str:
    """Discord's limits on a message ("" when the message is fine)."""
    content = body.get("content") or ""
    if len(content) > CONTENT_CHARS:
        return f"content: Must be {CONTENT_CHARS} or fewer in length."
    embeds = body.get("embeds") or []
    if len(embeds) > 10:
        return "embeds: Must be 10 or fewer in length."
    for embed in embeds:
        if len(embed.get("description") or "") > EMBED_DESCRIPTION_CHARS:
            return f"embeds.description: Must be {EMBED_DESCRIPTION_CHARS} or fewer in length."
        if len(embed.get("title") or "") > 256:
            return "embeds.title: Must be 256 or fewer in length."
    if sum(len(e.get("title") or "") + len(e.get("description") or "") for e in embeds) > 6000:
        return "embeds: Embed size exceeds maximum size of 6000"
    if len(body.get("_files", {})) > 10:
        return "files: Must be 10 or fewer in length."
    for row in body.get("components") or []:
        for component in row.get("components", []):
            if len(component.get("custom_id", "")) > 100 or len(component.get("label", "")) > 80:
                return "components: custom_id or label too long"
    if not edit and not (content or embeds or body.get("_files") or body.get("components")):
        return "Cannot send an empty message"
    return ""


def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with Discord's exact content type (discord.py parses a body only when it is exactly
    ``application/json``; aiohttp's ``json_response`` adds a charset)."""
    return web.Response(body=json.dumps(data).encode(), status=status, headers=headers,
                        content_type="application/json")


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"message": message, "code": code}, status=status)


def _rate_limited(failure: Failure) -> web.Response:
    if failure.error == "cloudflare":
        return _json({"message": "You are being blocked from accessing our API temporarily due to exceeding our "
                                 "rate limits frequently.", "code": 0},
                     status=429, headers={"Retry-After": f"{failure.retry_after:g}"})
    return _json(
        {"message": "You are being rate limited.", "retry_after": failure.retry_after, "global": False, "code": 0},
        status=429, headers={"Retry-After": f"{failure.retry_after:g}", "Via": "1.1 google",
                             "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                             "X-RateLimit-Reset-After": f"{failure.retry_after:g}", "X-RateLimit-Scope": "user",
                             "X-RateLimit-Bucket": "fake-bucket"})
