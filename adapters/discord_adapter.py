"""Discord through discord.py: the gateway for messages, interactions for ``/baton`` and buttons.

(This module is not called ``discord.py``: it would shadow the library.)

Inbound
* A mention in a channel opens a thread on that message, and the conversation lives there. As on
  Slack, a request's channel is the channel and its thread the thread (a Discord thread belongs to
  its parent channel), so "the same request in this channel", ``status`` and digests see every
  thread of a channel. A mention inside a thread uses that thread; a direct message needs no
  mention, and a DM channel is one conversation (its id is both the channel and the thread).
* Other messages in threads are handed in unaddressed, and the core keeps the follow-ups in Baton
  threads; chatter in channels (not in a thread, no mention) can never be for Baton and is dropped
  here. Messages from bots, Baton's own included, and system messages are ignored. Without the
  Message Content Intent (a privileged intent, turned on in the Developer Portal) Discord sends those
  follow-ups with no text: a Baton thread is told so once, and the log says which setting to turn on.
* ``/baton <request>`` is deferred at once ("Baton is thinking..."), then the deferred reply
  becomes "@you asked: ..." and a thread is opened on it, like a mention; the request is handed in
  once its thread exists. Whatever goes wrong after the defer, "thinking" ends: in the answer, or in
  a short note of what happened and what to do (no thread, nothing run: ask again). A failed echo
  does not stop the request: the thread is opened on the deferred reply (its id came with the defer),
  and the echo is tried again afterwards, while the interaction's token lives. In a private thread Baton
  is not in (Discord offers ``/baton`` there, and refuses Baton's messages), Baton joins it first, or,
  not allowed to, runs nothing and says how to add it. A ``/baton`` Discord sends in a shape other than the one
  registered (a person's client keeps an out-of-date copy) is answered, to its writer only, that nothing was run;
  an autocomplete gets no suggestions; a command of the bot that is not Baton's is left to whoever serves it.
* Discord's passing troubles (a 5xx, a 429 discord.py gave up on, the network) met while taking a
  request in (reading an unknown channel, opening a thread, the echo) are retried a few times
  (``TRANSIENT_PAUSES``); discord.py itself retries only 500, 502, 504 and 524, not a 503. A request
  that cannot be taken in all the same is said so to its author where possible, and logged in one line.
* Buttons are ``DynamicItem``s: a click is matched by its custom_id (``baton:<value>:<approval>``)
  alone, so a card posted before a restart, or by another replica, still works. A click is stored,
  then deferred; a redelivered interaction is a duplicate and is not answered twice. A click the
  database is slow to store is deferred meanwhile (Discord takes an answer within 3 seconds). A click that
  cannot be stored (the database away) is answered, to that person only, that nothing was changed. With
  DISCORD_GUILD_ID, a click on a card in a direct message is taken from that server's members only, as a message is.
  A custom_id of Baton's shape whose value cannot be read (tampered) is answered, to that person only, that nothing
  was changed; any other custom_id is left to whoever made it.
* A message edited to add a mention of Baton is a request, as if it had been sent with it: in a channel Baton
  opens its thread on it, in a thread (a Baton thread too, where it was passed over as people talking) it is a
  request there. ``on_raw_message_edit``, not ``on_message_edit``, which discord.py fires only for a message in
  its cache (the last 1,000 it saw, since it started). The core takes an edit once (``mention_added``): another
  edit, the same one delivered again, or an edit of a message taken as a request already, is nothing new.
* Event ids are the message or interaction ids (snowflakes are unique across Discord); an edit's is its message's.

Outbound, ``send`` renders core messages with ``adapters.discord_render`` over REST (no gateway
cache needed). discord.py waits out 429s itself (up to ``RATE_LIMIT_WAIT_SECONDS``; a longer wait,
a fifth 429 in a row, after which discord.py gives up, and Cloudflare's 429, which it does not wait
out, become ``RetryLater``) and retries 5xx; 403/404/400 are final (``DeliveryRejected``). A refusal
in a thread says why in the log (a locked thread, or no Send Messages in Threads in its channel, which
the channel is told once).

A refusal of a click is shown only to the person who clicked: it goes through that click's
interaction follow-up webhook, which Discord accepts for 15 minutes. Interactions are kept in this
process only (``ClickReplies``). When the follow-up is not possible (the token expired, Baton was
restarted since the click, another replica received it, or the defer failed), the reply goes to
the person as a direct message, and if they do not accept DMs, into the thread with a mention.
A reply meant for the writer of a plain message alone (a refused ``cancel``, a typed ``approve``)
goes the same way: Discord has no ephemeral message but an interaction's.

Settings: ``DISCORD_API_URL`` and ``DISCORD_GATEWAY_URL`` point discord.py elsewhere (tests,
proxies). discord.py has no per-client option for either: every REST URL, the interaction
webhooks' included, is built from the class attribute ``discord.http.Route.BASE``, and the gateway
is ``DiscordWebSocket.DEFAULT_GATEWAY`` (also after Discord invalidates a session). Both are set for
the process, which is fine because one process runs one Discord bot. Without
``DISCORD_GATEWAY_URL`` the gateway is the one ``GET /gateway/bot`` names, as Discord recommends, so
a REST proxy can bring its gateway along.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar, cast

import aiohttp
import discord
import yarl
from discord import app_commands

from adapters.contract import (
    DATABASE_AWAY_ANSWER,
    DATABASE_AWAY_CLICK,
    Adapter,
    DeliveryRejected,
    RetryLater,
    StartFailed,
    Step,
    shortened,
)
from adapters.discord_render import (
    BUTTON_LABEL_CHARS,
    BUTTON_STYLE,
    CONTENT_CHARS,
    CUSTOM_ID_TEMPLATE,
    Outgoing,
    custom_id,
    jump_url,
    option_value,
    render,
)
from bot.messages import Buttons, InboundClick, InboundMessage, Location, Message, Text, quoted, quoted_code
from bot.outbox import Delivery, Unreachable
from bot.recent import Recent
from bot.settings import Settings

log = logging.getLogger("baton.discord")
PLATFORM = "discord"
RATE_LIMIT_WAIT_SECONDS = 30.0  # discord.py waits out a 429 up to this (its minimum); longer -> RetryLater
RATE_LIMIT_UNSAID_SECONDS = 5.0  # a 429 discord.py gave up on that says nothing about how long to wait
RECONNECT_FIRST_PAUSE, RECONNECT_LONGEST_PAUSE = 1.0, 60.0  # after an error discord.py does not handle
CONNECT_TIMEOUT_SECONDS = 30.0
TOKEN_LOGGERS = ("discord.http", "discord.webhook.async_", "discord.gateway")  # INFO or above, whatever the level
FOLLOW_UP_MARGIN = timedelta(seconds=60)  # do not start a follow-up this close to the token's expiry
STORE_BEFORE_DEFER_SECONDS = 1.5  # a click not stored by then is deferred meanwhile (Discord waits 3 s)
DEFER_WAIT_SECONDS = 5.0  # a refusal waits at most this long for its click's defer to finish
THREAD_NAME_CHARS = 100
MEMBER_NAME_SECONDS = 2.0
THREAD_NAME_MENTIONS = 5  # of a /baton request, looked up for its thread's name (no more fit in its 100 characters)
MENTION = re.compile(r"<@!?(\d{15,21})>|<@&(\d{15,21})>|<#(\d{15,21})>")  # a person, a role, a channel
ECHO_CHARS = 1800  # "@you asked: `/baton ...`" stays one message
SAID_CHARS = 200  # what Discord said about an error, as Baton repeats it (to people and in the log)
MEMBER_CHECK_SECONDS = 600.0  # how long a DISCORD_GUILD_ID membership answer is taken as it is
STRANGER_ANSWER = "I work for the members of one Discord server only, so I can't take requests from you here."
UNREADABLE_CLICK = "I could not read this button of the card (it is not one I made), so nothing was changed."
STRANGER_CLICK = "I work for the members of one Discord server only, so I can't take your click; nothing was changed."
MEMBERSHIP_UNKNOWN = ("⚠️ Discord is having trouble right now, so I could not check that you are a member of the "
                      "server I work for, and nothing was run. Please ask again in a few minutes.")
NOT_IN_SERVER = ("⚠️ I am not in the Discord server I work for any more (removed from it?), so I cannot check that you "
                 "are one of its members, and nothing was run. Please tell whoever runs Baton.")
UNKNOWN_MEMBER = 10007  # Discord's error code: not a member of that server
THREAD_ARCHIVE_MINUTES = 10080  # the longest: a card may wait days for its approver
THREAD_ALREADY_CREATED = 160004  # Discord's error code: this message already has a thread
UNKNOWN_MESSAGE = 10008  # Discord's error code: no such message (any more)
THREAD_ARCHIVED = 50083  # Discord's error code: an edit in an archived thread
THREAD_LOCKED = 160005  # Discord's error code: a locked thread
INVALID_WEBHOOK_TOKEN = 50027  # Discord's error code: an interaction's follow-up token, not the bot's
MISSING_ACCESS = 50001  # Discord's error code: Baton cannot see the channel (a private one it was not added to)
UNKNOWN_CHANNEL = 10003  # Discord's error code: the channel was deleted (or was never one Baton could see)
# Discord's refusals that are the channel's, not the message's, in the contract's words: every message there is refused.
UNREACHABLE_CODES: dict[int, Unreachable] = {MISSING_ACCESS: "removed", UNKNOWN_CHANNEL: "gone"}
MISSING_PERMISSIONS = 50013  # Discord's error code: e.g. a post in a thread without Send Messages in Threads
NO_THREADS_HERE = 50024  # Discord's error code: not in this kind of channel (a thread on a voice channel's chat)
THREADS_FULL = (160006, 160007)  # Discord's error codes: as many active (announcement) threads as a server may have
NOTICES_SKIPPED = 100  # Discord's own notices a history reads past (one more page of Discord's)
LINK_PREVIEWS = frozenset({"link", "article", "image", "video", "gifv"})  # embeds Discord makes of a link in the text
PERSON_MESSAGE_TYPES = (discord.MessageType.default, discord.MessageType.reply)
TRANSIENT_PAUSES = (1.0, 2.0, 4.0, 8.0)  # between tries of a call that meets a passing trouble of Discord's
ANSWER_MARGIN = timedelta(seconds=30)  # do not retry an interaction's reply this close to its token's expiry
NO_PERMISSION_TO_THREAD = ("I need the *Create Public Threads* and *Send Messages in Threads* permissions in "
                           "this channel.")
NOT_IN_PRIVATE_THREAD = ("I am not in this private thread, so Discord would not show my answers here, and nothing was "
                         "run. Mention @Baton in this thread to add me (or have someone add me), then ask again.")
CONTENT_INTENT_OFF = ("I can't read messages that don't mention me: my *Message Content Intent* is off in Discord's "
                      "Developer Portal. Please mention @Baton (or reply to one of my messages), or ask whoever runs "
                      "Baton to turn that intent on.")
CONTENT_INTENT_SETTING = ("Developer Portal -> your application -> Bot -> Privileged Gateway Intents -> Message "
                          "Content Intent, then restart Baton")
COMMAND_OUT_OF_DATE = ("I could not read this /baton: Discord's copy of the command is out of date, so nothing was "
                       "run. Reloading Discord (Ctrl+R) usually brings the new one; or mention @Baton with your "
                       "request.")
NO_THREAD_SENDS = ("⚠️ I can't post in the threads of this channel, so requests asked here run but their answers and "
                   "approval cards are never shown: I need the *Send Messages in Threads* permission here. Please ask "
                   "an admin to grant it to Baton.")

T = TypeVar("T")


def _secret(settings: Settings) -> str | None:
    token = settings.discord_token.get_secret_value().strip() if settings.discord_token is not None else ""
    return token or None


def conversation(channel: Any) -> tuple[str, str]:
    """A request's (channel, thread): a thread belongs to its parent channel; a DM is one conversation."""
    if isinstance(channel, discord.Thread):
        return str(channel.parent_id), str(channel.id)
    return str(channel.id), str(channel.id)


def intents(message_content: bool) -> discord.Intents:
    """Guilds (channels and threads), guild and DM messages; the message text of messages that do
    not mention Baton (follow-ups in a thread) only when the application has that intent."""
    wanted = discord.Intents.none()
    wanted.guilds = wanted.guild_messages = wanted.dm_messages = True
    wanted.message_content = message_content
    return wanted


class BatonClient(discord.Client):
    """discord.py's client, with the ``/baton`` command and a way back to the adapter."""

    def __init__(self, adapter: DiscordAdapter) -> None:
        super().__init__(intents=intents(message_content=False), allowed_mentions=discord.AllowedMentions.none(),
                         max_ratelimit_timeout=RATE_LIMIT_WAIT_SECONDS)
        self.adapter = adapter
        self.connected = asyncio.Event()
        self.tree = BatonTree(self)
        self.tree.add_command(baton_command)

    async def on_connect(self) -> None:
        self.connected.set()

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_message(message)

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        await self.adapter.on_message_edit(payload.message)

    def allow_message_content(self, allowed: bool) -> None:
        """Request the message content intent or not; called after login, before the gateway connects.

        Whether the application has the intent is only known after login, and discord.py takes
        intents in its constructor only; the identify payload is built from the state's intents,
        so that is where they are changed.
        """
        self._connection._intents.message_content = allowed


class BatonTree(app_commands.CommandTree):
    """discord.py's command tree, with what Discord may send that does not fit ``/baton`` answered or ignored in
    one log line. discord.py logged each with a traceback ("Ignoring exception in command tree") and answered
    nothing, so the person saw "The application did not respond": a command of the application that is not
    Baton's (another program's, on the same bot), a ``/baton`` Discord's copy of which is out of date (no
    ``request``, or another option), and an autocomplete, which ``/baton`` never asks for."""

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if interaction.type is not discord.InteractionType.autocomplete:
            return True
        try:
            await interaction.response.autocomplete([])  # no suggestions: the person types on
        except discord.HTTPException as exc:
            log.info("Discord: autocomplete interaction %s could not be answered: %s", interaction.id, _describe(exc))
        return False

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError, /) -> None:
        name = str((interaction.data or {}).get("name", ""))[:100]
        if isinstance(error, app_commands.CommandNotFound):  # whoever registered it answers it
            log.info("Discord: interaction %s for the command %r ignored: it is not Baton's", interaction.id, name)
            return
        if isinstance(error, app_commands.CommandSignatureMismatch):
            log.warning("Discord: /%s interaction %s ignored: its options are not those Baton registered (Discord's "
                        "copy of the command is out of date); they are told", name, interaction.id)
            await _say_privately(interaction, COMMAND_OUT_OF_DATE)
            return
        await super().on_error(interaction, error)


@app_commands.command(name="baton", description="Ask Baton: run a runbook, start a graph, or `help`.")
@app_commands.describe(request="What to do, e.g. `run uptime` or `help`")
async def baton_command(interaction: discord.Interaction, request: str) -> None:
    if not isinstance(request, str):  # Discord's copy of /baton gives the option another type: out of date too
        raise app_commands.CommandSignatureMismatch(baton_command)
    await cast(BatonClient, interaction.client).adapter.on_command(interaction, request)


class ChoiceButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=CUSTOM_ID_TEMPLATE):
    """A card's button, recognised by its custom_id alone: it works after any restart, with no view
    kept per message (a view of dynamic items only is never stored by message id).

    ``action`` ``None``: a custom_id of Baton's shape whose value cannot be read (``unread``, its part as it came:
    broken base64, which only a tampered or foreign id has). Raising in ``from_custom_id`` left a traceback in the
    log and the click unanswered ("This interaction failed"); the person is told, to them alone, that nothing was
    changed."""

    def __init__(self, action: str | None, approval_id: str, label: str | None = None,
                 style: discord.ButtonStyle = discord.ButtonStyle.secondary, *, unread: str = "") -> None:
        shown = custom_id(action, approval_id) if action is not None else f"baton:{unread}:{approval_id}"
        super().__init__(discord.ui.Button(label=label or action or "?", style=style, custom_id=shown))
        self.action = action
        self.approval_id = approval_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> ChoiceButton:
        try:
            return cls(option_value(match["action"]), match["approval_id"])
        except ValueError:
            return cls(None, match["approval_id"], unread=match["action"])

    async def callback(self, interaction: discord.Interaction) -> None:
        if self.action is None:
            log.info("Discord: click %s on a button whose custom_id cannot be read (%r) ignored; they are told",
                     interaction.id, str((interaction.data or {}).get("custom_id", ""))[:100])
            await _say_privately(interaction, UNREADABLE_CLICK)
            return
        await cast(BatonClient, interaction.client).adapter.on_click(interaction, self.action, self.approval_id)


def card_view(buttons: Buttons) -> discord.ui.View:
    """The card's buttons (a label is shortened to Discord's 80 characters; the value is intact)."""
    view = discord.ui.View(timeout=None)
    for option in buttons.options:
        label = shortened(option.label, BUTTON_LABEL_CHARS)
        view.add_item(ChoiceButton(option.value, buttons.approval_id, label, BUTTON_STYLE[option.style]))
    return view


@dataclass
class _Click:
    interaction: discord.Interaction
    deferred: asyncio.Future[bool]


class ClickReplies:
    """The interactions of recent clicks, and of ``/baton`` written in a thread, by (thread, person): where a private
    reply can go (an ephemeral follow-up shows in the interaction's own channel: the thread)."""

    def __init__(self) -> None:
        self._clicks: dict[tuple[str, str], _Click] = {}

    def expect(self, thread: str, user: str, interaction: discord.Interaction) -> asyncio.Future[bool]:
        """Remember a click; the caller sets the returned future to whether deferring it worked."""
        now = discord.utils.utcnow()
        self._clicks = {key: click for key, click in self._clicks.items() if click.interaction.expires_at > now}
        click = _Click(interaction, asyncio.get_running_loop().create_future())
        self._clicks[(thread, user)] = click
        return click.deferred

    async def follow_up(self, thread: str, user: str) -> discord.Webhook | None:
        """The follow-up webhook of this person's latest click here, if it can still be used."""
        click = self._clicks.get((thread, user))
        if click is None or click.interaction.expires_at - discord.utils.utcnow() < FOLLOW_UP_MARGIN:
            return None
        try:  # the click's defer may still be on its way, and a follow-up before it would fail
            deferred = await asyncio.wait_for(asyncio.shield(click.deferred), DEFER_WAIT_SECONDS)
        except TimeoutError:
            return None
        return click.interaction.followup if deferred else None


class DiscordAdapter(Adapter):
    name = PLATFORM

    @classmethod
    def is_configured(cls, settings: Settings) -> bool:
        return _secret(settings) is not None

    def __init__(self, baton: Any) -> None:
        super().__init__(baton)
        settings: Settings = baton.settings
        token = _secret(settings)
        if token is None:
            raise ValueError("the Discord adapter needs DISCORD_TOKEN (the bot token from the Developer Portal)")
        self._token = token
        self._gateway_url = settings.discord_gateway_url
        self._guild_id = settings.discord_guild_id
        self._ignored_guilds: set[int] = set()  # servers other than DISCORD_GUILD_ID's whose events were ignored
        self._members: dict[int, tuple[bool, float]] = {}  # user -> (member of DISCORD_GUILD_ID?, when asked)
        self._told_strangers: Recent[int] = Recent()  # non-members answered once in their DM
        if settings.discord_api_url:
            discord.http.Route.BASE = settings.discord_api_url.rstrip("/")
        self.client = BatonClient(self)
        self.clicks = ClickReplies()
        for name in TOKEN_LOGGERS:  # at DEBUG they log URLs and gateway events, which hold interactions' tokens
            logger = logging.getLogger(name)
            logger.setLevel(max(logging.INFO, logger.getEffectiveLevel()))
        self.reads_content = False  # whether Discord sends the text of messages that do not mention Baton
        self._baton_threads: Recent[int] = Recent()  # threads where a request was taken, this process
        self._told_unread: Recent[int] = Recent()  # threads told once that Baton cannot read them (no content intent)
        self._told_no_thread_sends: Recent[str] = Recent()  # channels told once Baton may not post in their threads
        self._told_locked: Recent[str] = Recent()  # locked threads whose refusals were explained in the log
        self._gateway: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.client.login(self._token)
        except discord.LoginFailure as exc:
            await self.client.close()
            raise StartFailed("Discord refused DISCORD_TOKEN (GET /users/@me: 401 Unauthorized)") from exc
        except (aiohttp.ClientError, OSError, TimeoutError, discord.HTTPException) as exc:
            await self.client.close()
            raise StartFailed(f"Discord's API cannot be reached or failed ({type(exc).__name__}: {str(exc)[:200]})") \
                from exc
        # Whether Baton may read messages that do not mention it is decided here, once, from the application's
        # flags (``application_info()``, read by ``login``): GATEWAY_MESSAGE_CONTENT_LIMITED is the portal's
        # toggle for an application in under 100 servers, GATEWAY_MESSAGE_CONTENT a verified one's approval.
        # The intent is requested only then, since Discord closes a gateway asking for it otherwise (4014,
        # ``PrivilegedIntentsRequired``). So ``reads_content`` is exactly whether Discord sends those messages'
        # text. Guessing from a message instead (empty content, no attachments nor embeds, no mention) would
        # be wrong both ways: without the intent Discord blanks all of those at once, and with it a sticker, a
        # poll or a forwarded message comes just as empty.
        flags = self.client.application_flags
        self.reads_content = flags.gateway_message_content or flags.gateway_message_content_limited
        self.client.allow_message_content(self.reads_content)
        if not self.reads_content:
            log.warning("Discord: the application has no Message Content Intent, so Baton cannot read messages in its "
                        "threads that do not mention it (each such thread is told once); to turn it on: %s",
                        CONTENT_INTENT_SETTING)
        self.client.add_dynamic_items(ChoiceButton)
        await self._sync_commands()
        await self._choose_gateway()
        self._gateway = asyncio.create_task(self._run_gateway(), name="discord-gateway")
        self._gateway.add_done_callback(_gateway_ended)
        await self._wait_connected()
        log.info("Discord: signed in as %s", self.client.user)
        await super().start()

    async def _sync_commands(self) -> None:
        """Register ``/baton``: in one server, at once (``DISCORD_GUILD_ID``), else globally."""
        tree = self.client.tree
        if self._guild_id is None:
            await tree.sync()
            return
        guild = discord.Object(self._guild_id)
        tree.copy_global_to(guild=guild)
        tree.clear_commands(guild=None)
        try:
            await tree.sync(guild=guild)
        except discord.Forbidden as exc:
            raise StartFailed(f"Discord did not let Baton register /baton in DISCORD_GUILD_ID={self._guild_id} "
                               f"({_said(exc)}): is the bot in that server, invited with the applications.commands "
                               "scope?") from exc
        await self._remove_global_command()

    async def _remove_global_command(self) -> None:
        """A ``/baton`` registered globally before ``DISCORD_GUILD_ID`` was set would be offered beside the
        server's own: that one alone is deleted (another global command of the application is not Baton's)."""
        try:
            stale = [command for command in await self.client.tree.fetch_commands() if command.name == "baton"]
            for command in stale:
                await command.delete()
        except discord.HTTPException as exc:
            log.warning("Discord: the global /baton from before DISCORD_GUILD_ID was set could not be removed (%s); "
                        "the server may show /baton twice until it is", _describe(exc))
            return
        if stale:
            log.info("Discord: removed the global /baton registered before DISCORD_GUILD_ID was set")

    async def _choose_gateway(self) -> None:
        if self._gateway_url:
            url = self._gateway_url
        else:
            _, url, limits = await self.client.http.get_bot_gateway()
            log.info("Discord: gateway %s (%s of %s session starts left today)", url,
                     limits.get("remaining"), limits.get("total"))
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)

    def problem(self) -> str | None:
        if self._gateway is not None and self._gateway.done():
            return "the gateway connection ended (see the log); Discord events are not received"
        return super().problem()

    async def _run_gateway(self) -> None:
        """``client.connect()``, connected again after an error discord.py does not handle itself.

        discord.py reconnects after network errors; any other exception (a gateway event its parser
        cannot read, say) ended ``connect()`` and with it every Discord event, while the process went
        on looking healthy. The new session identifies afresh rather than resuming, so the event that
        broke the old one is not replayed to it.

        The Message Content Intent turned off in the Developer Portal while Baton runs: Discord refuses
        the next session that asks for it (4014, ``PrivilegedIntentsRequired``), which ended every Discord
        event until a restart. Baton connects again without it, as it would have started.
        """
        pause = RECONNECT_FIRST_PAUSE
        while True:
            started = asyncio.get_running_loop().time()
            try:
                await self.client.connect()
                return
            except discord.PrivilegedIntentsRequired:
                if not self.reads_content:
                    raise
                self.reads_content = False
                self.client.allow_message_content(False)
                log.warning("Discord: the application's Message Content Intent was turned off in the Developer Portal "
                            "(Discord refused the gateway session asking for it); connecting again without it: Baton "
                            "no longer reads messages in its threads that do not mention it. To turn it on again: %s",
                            CONTENT_INTENT_SETTING)
                continue
            except (discord.ConnectionClosed, discord.LoginFailure):
                raise  # Discord refused us: connecting again would not change that
            except Exception as exc:
                if self.client.is_closed():
                    raise
                if asyncio.get_running_loop().time() - started > RECONNECT_LONGEST_PAUSE:
                    pause = RECONNECT_FIRST_PAUSE  # it had been working: not a failure in a row
                log.error("Discord: the gateway connection failed (%r); connecting again in %.0fs", exc, pause)
                old = self.client.ws
                if old is not None and old.open:  # nobody reads that socket any more
                    await old.close(code=4000)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RECONNECT_LONGEST_PAUSE)

    async def _wait_connected(self) -> None:
        """Until Discord accepted the identify (READY); a gateway that refuses us stops the start."""
        assert self._gateway is not None
        connected = asyncio.create_task(self.client.connected.wait())
        done, _ = await asyncio.wait({connected, self._gateway}, timeout=CONNECT_TIMEOUT_SECONDS,
                                     return_when=asyncio.FIRST_COMPLETED)
        connected.cancel()
        if self._gateway in done:
            error = None if self._gateway.cancelled() else self._gateway.exception()
            raise RuntimeError(f"the Discord gateway closed the connection: {error!r}")
        if not done:
            log.warning("Discord: no answer from the gateway after %.0fs; still trying", CONNECT_TIMEOUT_SECONDS)

    async def stop(self) -> None:
        await super().stop()
        await self.client.close()
        if self._gateway is not None:
            await asyncio.gather(self._gateway, return_exceptions=True)

    # -- inbound ---------------------------------------------------------------------------------

    def _elsewhere(self, guild_id: int | None, what: str) -> bool:
        """Whether an event comes from a server other than DISCORD_GUILD_ID's, and is ignored: a public bot can
        be invited to any server, whose members would run this team's runbooks (logged once a server)."""
        if self._guild_id is None or guild_id is None or guild_id == self._guild_id:
            return False
        if guild_id not in self._ignored_guilds:
            self._ignored_guilds.add(guild_id)
            log.warning("Discord: %s from server %s ignored: Baton serves DISCORD_GUILD_ID=%s only (turn off "
                        "'Public Bot' in the Developer Portal, and remove Baton from that server)", what, guild_id,
                        self._guild_id)
        return True

    async def _serves(self, user_id: int, what: str) -> bool | str:
        """Whether Baton takes a direct message or click of ``user_id``: with DISCORD_GUILD_ID, only its
        members' (Discord lets anyone who shares any server with Baton write to it). Asked over REST (no
        members intent), remembered ``MEMBER_CHECK_SECONDS``. When Discord cannot say (its passing trouble,
        or Baton is not in that server any more), what to tell them instead: refused for now, and not as a
        stranger."""
        if self._guild_id is None:
            return True
        now = asyncio.get_running_loop().time()
        known = self._members.get(user_id)
        if known is not None and now - known[1] < MEMBER_CHECK_SECONDS:
            return known[0]
        try:
            await _retrying(partial(self.client.http.get_member, self._guild_id, user_id),
                            f"checking that {user_id} is a member of {self._guild_id}")
            member = True
        except discord.NotFound as exc:
            if exc.code != UNKNOWN_MEMBER:  # Unknown Guild: Discord's answer about a server Baton is not in
                return self._not_in_server(what, user_id, exc)
            member = False
        except Exception as exc:
            if not _transient(exc) and not isinstance(exc, discord.HTTPException):
                raise
            if isinstance(exc, discord.Forbidden) and exc.code == MISSING_ACCESS:  # as Discord said it before 2023
                return self._not_in_server(what, user_id, exc)
            log.warning("Discord: %s from %s not taken: Discord could not say whether they are a member of "
                        "DISCORD_GUILD_ID=%s (%s)", what, user_id, self._guild_id, _describe(exc))
            return MEMBERSHIP_UNKNOWN if _transient(exc) else False
        self._members = {user: known for user, known in self._members.items() if now - known[1] < MEMBER_CHECK_SECONDS}
        self._members[user_id] = (member, now)
        if not member:
            log.warning("Discord: %s from %s ignored: not a member of DISCORD_GUILD_ID=%s", what, user_id,
                        self._guild_id)
        return member

    async def _readable_request(self, interaction: discord.Interaction, request: str) -> str:
        """A ``/baton`` request with its mentions as people read them, for its thread's name (``_readable`` does it
        for a message): a slash command's text comes with none of its mentions resolved, and "/baton run uptime for
        @Bob" opened a thread named "run uptime for <@2222...>". A role or channel is read from the server as
        Discord sent it; a person is asked of Discord (no members intent), once, without retries: a mention
        Discord cannot name stays as written. Only those within the name's length are looked up."""
        guild, names, people = interaction.guild, dict[str, str | None](), dict[str, str | None]()
        if guild is None:
            return request
        for found in list(MENTION.finditer(request[:THREAD_NAME_CHARS * 2]))[:THREAD_NAME_MENTIONS]:
            person, role, channel = found.groups()
            if person is not None:
                if person not in people:  # <@id> and <@!id> are the same person
                    people[person] = await self._member_name(guild.id, int(person))
                names[found[0]] = people[person]
            elif role is not None and (known := guild.get_role(int(role))) is not None:
                names[found[0]] = f"@{known.name}"
            elif channel is not None and (place := guild.get_channel_or_thread(int(channel))) is not None:
                names[found[0]] = f"#{place.name}"
        return MENTION.sub(lambda found: names.get(found[0]) or found[0], request)

    async def _member_name(self, guild_id: int, user_id: int) -> str | None:
        """``@nickname`` of ``user_id`` in the server, as Discord shows them there; ``None`` if Discord cannot say."""
        try:
            async with asyncio.timeout(MEMBER_NAME_SECONDS):  # the thread waits for it: a name is not worth more
                member = await self.client.http.get_member(guild_id, user_id)
        except Exception as exc:
            if not _transient(exc) and not isinstance(exc, discord.HTTPException):
                raise
            log.info("Discord: the name of %s, mentioned in a /baton request, is not known (%s)", user_id,
                     _describe(exc))
            return None
        user = member.get("user") or {}
        name = member.get("nick") or user.get("global_name") or user.get("username")
        return f"@{name}" if name else None

    def _not_in_server(self, what: str, user_id: int, exc: discord.HTTPException) -> str:
        log.error("Discord: %s from %s not taken: Baton is not in the server DISCORD_GUILD_ID=%s (%s): invite it "
                  "there again, or set DISCORD_GUILD_ID to the server it serves", what, user_id, self._guild_id,
                  _describe(exc))
        return NOT_IN_SERVER

    async def on_message(self, message: discord.Message) -> None:
        await self._take(message, edited=False)

    async def on_message_edit(self, message: discord.Message) -> None:
        """A message edited: a request if the edit mentions Baton, as the message would have been had it been sent
        with the mention (``InboundMessage.mention_added``: the core takes the message once, however often it is
        edited or the edit delivered). Discord's ``MESSAGE_UPDATE`` carries the whole message, as edited, but no
        id of its own: the message's id is the event's. Any other update is nothing new: an edit without the
        mention, one in a direct message (no mention needed there: it was a request already), and what Discord
        changes itself, with no ``edited_timestamp`` of the person's (a thread opened on it, a link's preview)."""
        me = self.client.user
        if (me is not None and message.edited_at is not None and _mentions(message, me.id)
                and not isinstance(message.channel, discord.DMChannel)):
            await self._take(message, edited=True)

    async def _take(self, message: discord.Message, *, edited: bool) -> None:
        me = self.client.user
        if (me is None or message.author.bot or message.webhook_id is not None
                or message.type not in PERSON_MESSAGE_TYPES):
            return
        # A server discord.py has not cached (a new session's GUILD_CREATE still to come) leaves no message.guild;
        # the message's channel still names it
        guild = message.guild.id if message.guild is not None else getattr(message.channel, "guild_id", None)
        if self._elsewhere(guild, "a message"):
            return
        channel: Any = message.channel
        if isinstance(channel, discord.PartialMessageable):  # not in the cache (yet): is it a thread?
            try:
                channel = await _retrying(partial(self.client.fetch_channel, channel.id), f"reading channel {channel.id}")
            except (discord.NotFound, discord.Forbidden) as exc:  # gone, or not visible to Baton: nowhere to answer
                log.warning("Discord: message %s in channel %s ignored: the channel cannot be read (%s)",
                            message.id, channel.id, exc.status)
                return
            except Exception as exc:
                if not _transient(exc):
                    raise
                log.warning("Discord: message %s in channel %s not taken: Discord did not say what the channel is "
                            "(%s, %d tries)", message.id, channel.id, _describe(exc), len(TRANSIENT_PAUSES) + 1)
                if _mentions(message, me.id):
                    await _say_best_effort(message.channel, _trouble(exc))
                return
        direct = isinstance(channel, discord.DMChannel)
        served = await self._serves(message.author.id, "a direct message") if direct else True
        if isinstance(served, str):  # Discord could not say: they are not told they are a stranger
            await _say_best_effort(channel, served)
            return
        if not served:
            if message.author.id not in self._told_strangers:
                self._told_strangers.add(message.author.id)
                await _say_best_effort(channel, STRANGER_ANSWER)
            return
        addressed = direct or _mentions(message, me.id)
        text = _without_mentions_of(message, me.id)
        if not addressed and (not self.reads_content or not text):
            if not self.reads_content and isinstance(channel, discord.Thread):
                await self._cannot_read(channel, me.id)
            return  # without the intent Discord sends no text; an empty message (a picture) is no request
        answer_in: Any = channel
        if direct or isinstance(channel, discord.Thread):
            where, thread = conversation(channel)
        elif not addressed:
            return  # chatter in a channel: Baton's conversations there are always threads
        else:  # a message edited after a thread was opened on it (Baton's, or people's) has it under its own id
            opened = str(message.id) if message.flags.has_thread else await self._open_thread(message, text)
            if opened is None:
                return
            where, thread = str(channel.id), opened
            answer_in = self.client.get_partial_messageable(int(opened))
        try:
            accepted = await self.baton.accept_message(InboundMessage(
                platform=PLATFORM, workspace=str(guild) if guild is not None else "", channel=where,
                thread=thread, user=str(message.author.id), text=text, addressed=addressed, private=direct,
                event_id=str(message.id), mention_added=edited))
        except Exception as exc:
            # Discord does not send a gateway event again: without a word the request would be lost unseen
            # (and a traceback logged for each), so the person is told to ask again.
            if (reason := self.baton.db.health.unusable(exc)) is None:
                raise
            log.warning("Discord: message %s not taken, Baton's database cannot be used (%s); they are told",
                        message.id, reason)
            if addressed:
                await _say_best_effort(answer_in, DATABASE_AWAY_ANSWER)
            return
        if addressed and thread != where:
            self._baton_threads.add(int(thread))
        log.debug("Discord message %s%s in %s/%s -> %s", message.id, " (edited)" if edited else "", where, thread,
                  accepted.status)

    async def _cannot_read(self, thread: discord.Thread, me: int) -> None:
        """A message in a thread that does not mention Baton, without the Message Content Intent: Discord
        sent it with no text, and it was dropped without a word, so the person who answered a question of
        Baton's there saw nothing happen. A Baton thread (one Baton opened, or one where it took a request)
        is told once why, and the log says what to turn on. Other threads are people's own: not a word."""
        if thread.id in self._told_unread or (thread.owner_id != me and thread.id not in self._baton_threads):
            return
        if not self._told_unread:
            log.warning("Discord: a message without a mention of Baton in its thread %s could not be read: the "
                        "application has no Message Content Intent (%s); each Baton thread is told so once",
                        thread.id, CONTENT_INTENT_SETTING)
        self._told_unread.add(thread.id)
        await _say_best_effort(thread, CONTENT_INTENT_OFF)

    async def _open_thread(self, message: discord.Message, text: str) -> str | None:
        """The thread for a mention in a channel, started on the message; ``None`` if that is not possible
        (said in the channel when it is a lack of permissions or Discord's trouble)."""
        try:
            return await _start_thread(self.client.http, message.channel.id, message.id, _readable(message, text))
        except discord.HTTPException as exc:
            if exc.code == UNKNOWN_MESSAGE:  # deleted before Baton got to it (a replay, say): no request any more
                log.info("Discord: message %s in %s was deleted before a thread could be opened on it; ignored",
                         message.id, message.channel.id)
                return None
            failure = exc
        except Exception as exc:
            if not _transient(exc):
                raise
            failure = exc
        log.warning("Discord: message %s in %s not taken: no thread could be opened on it (%s)",
                    message.id, message.channel.id, _describe(failure))
        await _say_best_effort(message.channel, _no_thread(failure))
        return None

    async def on_command(self, interaction: discord.Interaction, request: str) -> None:
        """``/baton``: defer, turn the deferred reply into the thread's first message, hand the request in.

        After the defer, "thinking" always ends: with the echo (then the answer comes in the thread),
        or with what went wrong. The request is handed in exactly once, when it has its thread; what
        fails after that (the echo, say) is only told, never a reason to drop or repeat it.
        """
        if self._elsewhere(interaction.guild_id, "/baton"):
            await _say_privately(interaction, "This Baton serves another Discord server only; nothing was run.")
            return
        try:
            deferred = await interaction.response.defer(thinking=True)
        except discord.HTTPException as exc:
            log.info("Discord: /baton interaction %s was not deferred (answered already, or too late): %s",
                     interaction.id, exc)
            return
        # After the defer: asking Discord whether they are a member may take longer than its 3 seconds.
        served = await self._serves(interaction.user.id, "/baton") if interaction.guild_id is None else True
        if served is not True:  # a direct message: only they see it
            await self._answer(interaction, STRANGER_ANSWER if served is False else served)
            return
        asked = partial(_asked, interaction.user, request)
        handed_in = False
        try:
            echoed = await self._echo(interaction, asked())
            channel = interaction.channel
            if isinstance(channel, discord.Thread | discord.DMChannel) or interaction.guild_id is None:
                if isinstance(channel, discord.Thread) and (outside := await self._not_joined(channel)) is not None:
                    await self._answer(interaction, asked(f"⚠️ {outside}"))
                    return
                where, thread = conversation(channel or discord.Object(interaction.channel_id or 0))
                if thread != where:
                    self._baton_threads.add(int(thread))
                # A reply for them alone (``/baton approve`` at a card: use its buttons) is its ephemeral follow-up,
                # as Slack's is an ephemeral message in the thread; it was a direct message beside the public echo.
                self.clicks.expect(thread, str(interaction.user.id), interaction).set_result(True)
            else:
                anchor_id = echoed.id if echoed is not None else deferred.message_id if deferred is not None else None
                if anchor_id is None:
                    anchor_id = (await _retrying(interaction.original_response, "finding the deferred reply")).id
                try:
                    thread = await _start_thread(self.client.http, interaction.channel_id or 0, anchor_id,
                                                 await self._readable_request(interaction, request))
                except Exception as exc:
                    if not isinstance(exc, discord.HTTPException) and not _transient(exc):
                        raise
                    log.warning("Discord: /baton interaction %s not taken: no thread could be opened on its reply "
                                "(%s)", interaction.id, _describe(exc))
                    await self._answer(interaction, asked(f"⚠️ {_no_thread(exc)}"))
                    return
                where = str(interaction.channel_id)
            await self.baton.accept_message(InboundMessage(
                platform=PLATFORM, workspace=str(interaction.guild_id or ""), channel=where, thread=thread,
                user=str(interaction.user.id), text=request.strip(), addressed=True,
                private=isinstance(interaction.channel, discord.DMChannel), event_id=str(interaction.id)))
            handed_in = True
        except Exception as exc:  # not an expected failure: its traceback, and the person is not left "thinking"
            if not handed_in and (reason := self.baton.db.health.unusable(exc)) is not None:
                log.warning("Discord: /baton interaction %s not taken, Baton's database cannot be used (%s)",
                            interaction.id, reason)
                await self._answer(interaction, asked(DATABASE_AWAY_ANSWER))
                return
            log.exception("Discord: /baton interaction %s failed %s being handed in", interaction.id,
                          "after" if handed_in else "before")
            if not handed_in:
                await self._answer(interaction, asked("⚠️ Something went wrong on my side and your request was not "
                                                      "taken; nothing was run. Please try again."))
            return
        if echoed is None:
            await self._answer(interaction, asked())

    async def _not_joined(self, thread: discord.Thread) -> str | None:
        """Why Baton cannot answer in a thread a ``/baton`` came from (``None``: it can). ``/baton`` is offered in
        a private thread Baton was never added to, where Discord refuses its messages (only members, and those
        with Manage Threads, see a private thread): the request ran and every answer of it was refused, the
        person seeing nothing after "@you asked". Baton joins it first (nothing changes for a member), as it
        may with Manage Threads; otherwise a mention adds it, as Discord adds anyone mentioned there."""
        if thread.type != discord.ChannelType.private_thread:
            return None
        try:
            await _retrying(partial(self.client.http.join_thread, thread.id), f"joining private thread {thread.id}")
        except (discord.Forbidden, discord.NotFound) as exc:
            log.info("Discord: /baton in private thread %s not taken: Baton is not in it (%s)", thread.id,
                     _describe(exc))
            return NOT_IN_PRIVATE_THREAD
        except Exception as exc:
            if not _transient(exc):  # another refusal (an archived thread, say): the request goes on as before
                if not isinstance(exc, discord.HTTPException):
                    raise
                log.info("Discord: private thread %s could not be joined (%s); going on", thread.id, _describe(exc))
                return None
            return _trouble(exc)
        return None

    async def _echo(self, interaction: discord.Interaction, asked: str) -> discord.InteractionMessage | None:
        """The deferred reply becomes "@you asked: ..." (one try: discord.py retries a 5xx there itself)."""
        try:
            return await interaction.edit_original_response(content=asked)
        except Exception as exc:
            if not isinstance(exc, discord.HTTPException) and not _transient(exc):
                raise
            log.warning("Discord: /baton interaction %s: its reply could not be edited yet (%s); going on",
                        interaction.id, _describe(exc))
            return None

    async def _answer(self, interaction: discord.Interaction, content: str) -> None:
        """End "thinking" with ``content``, through Discord's passing troubles while the token lives."""
        try:
            await _retrying(partial(interaction.edit_original_response, content=content),
                            f"the reply to /baton interaction {interaction.id}",
                            until=interaction.expires_at - ANSWER_MARGIN)
        except Exception as exc:
            if not isinstance(exc, discord.HTTPException) and not _transient(exc):
                raise
            log.warning("Discord: the reply to /baton interaction %s could not be edited (%s); Discord shows it "
                        "as still thinking until its token expires", interaction.id, _describe(exc))

    async def on_click(self, interaction: discord.Interaction, action: str, approval_id: str) -> None:
        """Store the click, then defer it (a redelivery is a duplicate: the first one was answered).

        Discord takes an answer within 3 seconds of the click: a database slower than that (a busy
        SQLite writer, a PostgreSQL under load) made the defer come too late, and the person saw "This
        interaction failed" for a click Baton took. A click not stored within
        ``STORE_BEFORE_DEFER_SECONDS`` is deferred meanwhile, and stored all the same."""
        if self._elsewhere(interaction.guild_id, "a click"):
            await _say_privately(interaction, "This Baton serves another Discord server only; nothing was changed.")
            return
        answer_by = asyncio.get_running_loop().time() + STORE_BEFORE_DEFER_SECONDS
        deferring: asyncio.Task[bool] | None = None
        if interaction.guild_id is None:
            # A card in a direct message (one its requester may decide): with DISCORD_GUILD_ID, a click there is taken
            # from its members only, as a direct message is; someone removed from the server still had the card.
            checking = asyncio.ensure_future(self._serves(interaction.user.id, "a click"))
            deferring = await _answered_meanwhile(interaction, checking, answer_by, "checking its membership")
            served = await checking
            if served is not True:
                if deferring is not None:
                    await deferring
                await _say_privately(interaction, STRANGER_CLICK if served is False else served)
                return
        where, thread = conversation(interaction.channel or discord.Object(interaction.channel_id or 0))
        user = str(interaction.user.id)
        storing = asyncio.ensure_future(self.baton.accept_click(InboundClick(
            platform=PLATFORM, workspace=str(interaction.guild_id or ""), channel=where, thread=thread, user=user,
            approval_id=approval_id, action=action, event_id=str(interaction.id))))
        if deferring is None:  # the database is slow: answer Discord now, before its 3 seconds are over
            deferring = await _answered_meanwhile(interaction, storing, answer_by, "storing it")
        try:
            accepted = await storing
        except Exception as exc:  # as for a message: told, not a traceback and "This interaction failed"
            if (reason := self.baton.db.health.unusable(exc)) is None:
                raise
            log.warning("Discord: click %s not taken, Baton's database cannot be used (%s); they are told",
                        interaction.id, reason)
            if deferring is not None:
                await deferring
            await _say_privately(interaction, DATABASE_AWAY_CLICK)
            return
        if accepted.status != "accepted":
            log.info("Discord: click %s was %s", interaction.id, accepted.status)
            if deferring is not None:  # its defer's failure (answered already) is logged, not left unread
                await deferring
            return
        deferred = self.clicks.expect(thread, user, interaction)  # before any await: a refusal may follow soon
        done_deferring = False
        try:
            done_deferring = await (deferring if deferring is not None else _defer(interaction))
        finally:
            deferred.set_result(done_deferring)

    # -- history ---------------------------------------------------------------------------------

    async def history(self, location: Location, limit: int) -> list[dict[str, Any]] | None:
        """The thread's messages (a Discord thread is a channel) or the channel's, oldest first.

        A thread started on a message (a mention, a /baton's reply) begins with that message, as a
        Slack thread begins with its parent: it stays in the channel, and Discord's history of the thread
        does not hold it, so it is read from the channel (its id is the thread's). When that message is a
        reply ("@Baton summarize" or "@Baton why is this firing?" answering an alert), the message it answers
        comes first: it is what the request is about, as a Slack thread's alert is its parent.

        ``None`` (the core then uses what Baton saw) without the message content intent, since
        Discord then blanks other people's messages, or when Discord refuses (no Read Message
        History permission there).
        """
        if not self.reads_content:
            return None
        channel = self.client.get_partial_messageable(int(location.thread or location.channel))
        try:
            messages = await _latest_said(channel, limit)
        except discord.HTTPException as exc:
            log.warning("Discord history of %s is not available (%s)", channel.id, _describe(exc))
            return None
        messages.reverse()
        started_on = int(location.thread) if location.thread and location.thread != location.channel else None
        if started_on is not None and len(messages) < limit and all(message.id != started_on for message in messages):
            starter = await self._message(int(location.channel), started_on)
            if starter is not None:
                answered = _replied_to(starter)[:limit - len(messages) - 1]
                messages = [*answered, starter, *messages]
        me = self.client.user.id if self.client.user else None
        return [_as_history(message, me) for message in messages]

    async def _message(self, channel_id: int, message_id: int) -> discord.Message | None:
        """A message of a channel; ``None`` when there is none (a thread not started on a message: a private
        thread; deleted since) or Discord does not show it."""
        try:
            return await self.client.get_partial_messageable(channel_id).fetch_message(message_id)
        except discord.HTTPException as exc:
            if exc.code != UNKNOWN_MESSAGE:
                log.info("Discord: message %s of %s could not be read (%s)", message_id, channel_id, _describe(exc))
            return None

    # -- outbound --------------------------------------------------------------------------------

    async def send(self, delivery: Delivery) -> str | None:
        location = delivery.location
        channel = self.client.get_partial_messageable(int(location.thread or location.channel))
        if delivery.kind == "ephemeral" and delivery.target_user:
            steps = await self._private_steps(delivery)
        elif delivery.kind == "update" and delivery.target_message_id:
            message = channel.get_partial_message(int(delivery.target_message_id))
            first, *rest = _render(delivery.message, location.workspace, one_message=True)  # rest: files only
            steps = [_step(partial(self._edit, message, first, _nonce(delivery, 0)))]
            steps += [_post(channel.send, outgoing, nonce=_nonce(delivery, step)) for step, outgoing in enumerate(rest, 1)]
        else:
            rendered = _render(delivery.message, location.workspace, one_message=_edited_later(delivery.message))
            steps = [_post(channel.send, outgoing, nonce=_nonce(delivery, step)) for step, outgoing in enumerate(rendered)]
        try:
            sent = await self.send_steps(delivery, steps)
        except DeliveryRejected as exc:
            refusal = await self._refused_in_thread(location, exc.__cause__)
            if refusal is None and not (exc.unreachable and _in_thread(location)):
                raise
            why, unreachable = refusal or (None, exc.unreachable)
            # A thread is a channel of Discord's: one Baton cannot reach (deleted, private and Baton removed) may be
            # the thread alone
            raise DeliveryRejected(f"{exc}: {why}" if why else str(exc), unreachable=unreachable or exc.unreachable,
                                   thread_only=True) from exc.__cause__
        if _in_thread(location):  # it works (again) there: a later refusal is told again
            self._told_no_thread_sends.discard(location.channel)
        return sent[0]

    async def _refused_in_thread(self, location: Location, error: BaseException | None
                                 ) -> tuple[str, Unreachable | None] | None:
        """Why Discord refuses Baton's messages in a thread, for the log, and whether the thread cannot be reached
        at all (``"locked"``); ``None`` when it is not a refusal explained here.

        A locked thread (a moderator closed it) takes messages only from those with Manage Threads: that
        is the moderator's choice, so only the log says it. Discord has been seen to refuse there with
        Missing Permissions, "Thread is archived" or "Thread is locked", so the thread itself is asked.
        Otherwise a 403 Missing Permissions means Baton lacks Send Messages in Threads in the thread's
        channel: a request asked there ran, and every reply of it was refused, each one logged as a bare
        "403 Missing Permissions" while the person who asked saw nothing happen. The channel is told once
        (until a message in one of its threads gets through again)."""
        if not (isinstance(error, discord.HTTPException) and _in_thread(location)
                and error.code in (MISSING_PERMISSIONS, THREAD_ARCHIVED, THREAD_LOCKED)):
            return None
        try:
            thread: Any = await self.client.fetch_channel(int(location.thread))
        except Exception as exc:
            if not isinstance(exc, discord.HTTPException) and not _transient(exc):
                raise
            thread = None
        if isinstance(thread, discord.Thread) and thread.locked:
            if location.thread not in self._told_locked:
                self._told_locked.add(location.thread)
                log.info("Discord: thread %s of channel %s is locked (a moderator closed it): only members with "
                         "Manage Threads may write there, so Baton's messages for it are not shown (grant Baton "
                         "Manage Threads there, or unlock the thread)", location.thread, location.channel)
            return (f"thread {location.thread} is locked, and Baton lacks the Manage Threads permission that writing "
                    "in a locked thread takes", "locked")
        if not (isinstance(error, discord.Forbidden) and error.code == MISSING_PERMISSIONS):
            return None
        why = f"Baton lacks the Send Messages in Threads permission in channel {location.channel}"
        if location.channel not in self._told_no_thread_sends:
            self._told_no_thread_sends.add(location.channel)
            log.warning("Discord: %s: requests asked there run, but none of their replies can be shown; the channel "
                        "is told once. Grant Baton Send Messages in Threads there (Server Settings -> Roles, or the "
                        "channel's Permissions)", why)
            await _say_best_effort(self.client.get_partial_messageable(int(location.channel)), NO_THREAD_SENDS)
        return why, None

    async def _edit(self, message: discord.PartialMessage, outgoing: Outgoing, nonce: str) -> discord.Message:
        """Edit a message (a card after its decision, a run's progress). Discord refuses an edit in an
        archived thread (a new message there opens it again): the thread is opened again, then edited."""
        try:
            return await _edit_or_post(message, outgoing, nonce)
        except discord.HTTPException as exc:
            if exc.code != THREAD_ARCHIVED:
                raise
        log.info("Discord: thread %s is archived; opening it again to edit message %s", message.channel.id,
                 message.id)
        await self.client.http.edit_channel(message.channel.id, archived=False)
        return await _edit_or_post(message, outgoing, nonce)

    async def _private_steps(self, delivery: Delivery) -> list[Step]:
        """Only for the person who clicked or wrote: their click's follow-up; else a DM; else the thread, with a
        mention. The DM opens with a link to the thread it answers (not "your click": a refused ``cancel`` and a
        typed ``approve`` are messages, and their writer was told "about your click" of a click never made)."""
        user, location = str(delivery.target_user), delivery.location
        if not user.isdigit():
            raise DeliveryRejected(f"{user!r} is not a Discord user id")
        webhook = await self.clicks.follow_up(location.thread, user)
        if webhook is not None:
            return [_post(webhook.send, outgoing, ephemeral=True, wait=True)
                    for outgoing in _render(delivery.message, location.workspace)]
        where = location.thread or location.channel
        log.info("Discord: no usable interaction for a private reply to %s in %s: sending it as a direct message",
                 user, where)
        intro = Text(text=f"<@{user}>, in reply to you in {jump_url(location.workspace, where)}:")
        message = delivery.message.model_copy(update={"parts": [intro, *delivery.message.parts]})
        return [_step(partial(self._direct_or_mention, int(user), location, outgoing, _nonce(delivery, step)))
                for step, outgoing in enumerate(_render(message, location.workspace))]

    async def _direct_or_mention(self, user: int, location: Location, outgoing: Outgoing,
                                 nonce: str) -> discord.Message:
        """A direct message, else the thread; with the step's nonce either way, so that a try after one whose
        answer was lost gets the message posted then (``_nonce``), not a second one."""
        try:
            channel: Any = await self.client.create_dm(discord.Object(user))
            return await channel.send(**_payload(outgoing), nonce=nonce)
        except discord.Forbidden as exc:  # 50007: they do not accept direct messages from this server's members
            log.info("Discord: %s takes no direct messages (%s); answering in the thread", user, _said(exc))
        channel = self.client.get_partial_messageable(int(location.thread or location.channel))
        return await channel.send(**{**_payload(outgoing), "allowed_mentions": discord.AllowedMentions(
            users=[discord.Object(user)])}, nonce=nonce)


async def _start_thread(http: discord.http.HTTPClient, channel_id: int, message_id: int, text: str) -> str:
    """Open the thread on a message (retried through passing troubles); its id. A message that has its
    thread already (a redelivery) has it under its own id. Straight through REST: neither the message
    nor its server need to be known to discord.py (a ``/baton`` reply may be known by its id only)."""
    name = _shown(text)[:THREAD_NAME_CHARS] or "Baton"
    try:
        thread = await _retrying(partial(http.start_thread_with_message, channel_id, message_id, name=name,
                                         auto_archive_duration=THREAD_ARCHIVE_MINUTES),
                                 f"opening a thread on message {message_id}")
    except discord.HTTPException as exc:
        if exc.code == THREAD_ALREADY_CREATED:
            return str(message_id)
        raise
    return str(thread["id"])


def _asked(user: discord.abc.User, request: str, note: str = "") -> str:
    """"@you asked: `/baton ...`", with a note under it (what went wrong), in one message: Discord refuses
    a reply over 2,000 characters, and a request may have 6,000. Only the quoted request is shortened
    (the request is handed in whole)."""
    head, tail = f"{user.mention} asked: `", "`" + (f"\n{note}" if note else "")
    room = min(ECHO_CHARS, CONTENT_CHARS - len(head) - len(tail))
    shown = quoted_code(f"/baton {request}", room + 1)
    if len(shown) > room:
        shown = shown[:room - 1] + "…"
    return head + shown + tail


def _shown(request: str) -> str:
    """A request as the channel sees it quoted (the echo, the thread's name): on one line, its bidi
    controls as U+FFFD (``quoted``), so that it cannot be made to read as another request."""
    text = " ".join(request.split())
    return quoted(text, len(text))


def _in_thread(location: Location) -> bool:
    """Whether a location is a thread of a channel (not a channel itself, nor a direct message)."""
    return bool(location.thread) and location.thread != location.channel


def _mentions(message: discord.Message, me: int) -> bool:
    """Whether the message is addressed to Baton: a reply pinging Baton mentions it (Discord sends its
    text without the intent) with no <@id> in it; and typing @Baton, Discord offers Baton's role (the
    one it gives a bot in every server) beside Baton, so a mention of that role is one of Baton."""
    role = _own_role(message)
    return (me in message.raw_mentions or any(user.id == me for user in message.mentions)
            or (role is not None and (role.id in message.raw_role_mentions or role in message.role_mentions)))


def _own_role(message: discord.Message) -> discord.Role | None:
    return message.guild.self_role if message.guild is not None else None


def _without_mentions_of(message: discord.Message, me: int) -> str:
    """The message's text without its mentions of Baton (of its user or of its role)."""
    role = _own_role(message)
    addressing = rf"<@!?{me}>" if role is None else rf"(?:<@!?{me}>|<@&{role.id}>)"
    return re.sub(rf"{addressing}[:,]?", "", message.content).strip()


def _readable(message: discord.Message, text: str) -> str:
    """``text`` with its mentions as people read them (``@nickname``, ``@role``, ``#channel``): a thread's
    name shows no markdown, and "<@123456789012345678> please approve" named the thread."""
    for user in message.mentions:
        text = re.sub(rf"<@!?{user.id}>", lambda _, name=user.display_name: f"@{name}", text)
    for role in message.role_mentions:
        text = text.replace(f"<@&{role.id}>", f"@{role.name}")
    for channel in message.channel_mentions:
        text = text.replace(f"<#{channel.id}>", f"#{channel.name}")
    return text


async def _answered_meanwhile(interaction: discord.Interaction, work: asyncio.Future[Any], answer_by: float,
                              what: str) -> asyncio.Task[bool] | None:
    """A defer of ``interaction`` started when ``work`` is not done by ``answer_by`` (loop time; Discord waits 3 s
    for an answer); ``None`` when it is."""
    done, _ = await asyncio.wait({work}, timeout=max(answer_by - asyncio.get_running_loop().time(), 0.0))
    if done:
        return None
    log.info("Discord: click %s is taking long (%s); answering Discord meanwhile", interaction.id, what)
    return asyncio.create_task(_defer(interaction))


async def _defer(interaction: discord.Interaction) -> bool:
    """Answer a click for now (the card is edited later); whether Discord took it."""
    try:
        await interaction.response.defer()
        return True
    except discord.HTTPException as exc:  # e.g. 10062: older than Discord's 3 seconds, or its token expired
        log.warning("Discord: click %s could not be deferred: %s", interaction.id, exc)
        return False


async def _say_privately(interaction: discord.Interaction, text: str) -> None:
    """A message only this person sees: the answer to their interaction, or its follow-up once it has one."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as exc:
        log.info("Discord: interaction %s could not be answered: %s", interaction.id, _describe(exc))


def _transient(exc: BaseException) -> bool:
    """Discord's or the network's passing trouble: worth another try (a 4xx is not)."""
    if isinstance(exc, discord.DiscordServerError | discord.RateLimited):
        return True
    if isinstance(exc, discord.HTTPException):
        return exc.status == 429  # five in a row, or Cloudflare's: discord.py gave up
    return isinstance(exc, aiohttp.ClientError | OSError | TimeoutError)


def _said(exc: discord.HTTPException) -> str:
    """What Discord said about an error, on one short line. An answer that is not Discord's JSON (an
    HTML page of several kilobytes from Cloudflare in front of it, when Discord's servers are away) is
    named by its status's reason: repeated whole, it made what Baton tells people longer than Discord
    takes, so they were told nothing."""
    text = " ".join(exc.text.split())
    if text.startswith("<"):
        return str(getattr(exc.response, "reason", None) or "")
    return text if len(text) <= SAID_CHARS else text[:SAID_CHARS - 1] + "…"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, discord.HTTPException):
        return f"{exc.status} {_said(exc)}".strip()
    return f"{type(exc).__name__}: {str(exc)[:200]}".rstrip(": ")


async def _retrying(call: Callable[[], Awaitable[T]], what: str, *, until: datetime | None = None) -> T:
    """``call()``, tried again after ``TRANSIENT_PAUSES`` while it meets a passing trouble (and, with
    ``until``, while that time is not reached); the last error is raised."""
    pauses = iter(TRANSIENT_PAUSES)
    while True:
        try:
            return await call()
        except Exception as exc:
            pause = next(pauses, None)
            if pause is None or not _transient(exc) or (until is not None and discord.utils.utcnow() >= until):
                raise
            if isinstance(exc, discord.RateLimited):
                pause = max(pause, exc.retry_after)
            log.info("Discord: %s failed (%s); trying again in %gs", what, _describe(exc), pause)
            await asyncio.sleep(pause)


def _trouble(exc: BaseException) -> str:
    return (f"Discord is having trouble right now ({_describe(exc)}), so I could not take your request and nothing "
            "was run. Please ask again in a few minutes.")


def _no_thread(exc: BaseException) -> str:
    """Why there is no thread, for the person who asked."""
    if _transient(exc):
        return (f"Discord is having trouble right now ({_describe(exc)}): I could not open a thread for your request, "
                "so nothing was run. Please ask again in a few minutes.")
    if isinstance(exc, discord.HTTPException) and exc.code == NO_THREADS_HERE:
        return ("Discord has no threads in this kind of channel (a voice channel's chat, say), and I answer in "
                "threads: please ask me in a text channel, or in a thread. Nothing was run.")
    if isinstance(exc, discord.HTTPException) and exc.code == MISSING_ACCESS:  # /baton is offered where Baton is not
        return ("I can't see this channel (a private one I was not added to, say), so I could not open a thread for "
                "your request. Nothing was run. Ask an admin to add me to it (View Channel, Send Messages, Create "
                "Public Threads, Send Messages in Threads, Read Message History), or ask me in a channel I can see.")
    if isinstance(exc, discord.HTTPException) and exc.code in THREADS_FULL:
        return ("This server has as many active threads as Discord allows, so I could not open one for your request "
                "and nothing was run: ask me inside a thread (one of mine that is done, say), or have a moderator "
                "archive threads that are finished.")
    if isinstance(exc, discord.HTTPException):
        return f"I can't open a thread here ({_said(exc) or exc.status}). {NO_PERMISSION_TO_THREAD}"
    return f"I could not open a thread for your request ({_describe(exc)}), so nothing was run."


async def _say_best_effort(channel: Any, text: str) -> None:
    try:
        await channel.send(text)
    except Exception as exc:
        if not isinstance(exc, discord.HTTPException) and not _transient(exc):
            raise
        log.warning("Discord: could not tell them in %s either (%s)", getattr(channel, "id", "?"), _describe(exc))


def _as_history(message: discord.Message, me: int | None) -> dict[str, Any]:
    is_bot = message.author.bot or message.author.id == me
    text = "\n".join([_shown_in(message), *(f"(forwarded) {_shown_in(forwarded)}".rstrip()
                                           for forwarded in message.message_snapshots)])
    if me is not None:
        text = text.replace(f"<@{me}>", "@baton").replace(f"<@!{me}>", "@baton")
    return {"user": str(message.author.id), "is_bot": is_bot, "text": text.strip()}


async def _latest_said(channel: discord.PartialMessageable, limit: int) -> list[discord.Message]:
    """The latest ``limit`` messages people and bots wrote in a channel or thread, newest first. Discord's own
    notices there (someone added to a thread or joined, a pin, a thread started or renamed, with its name as the
    notice's text) are nobody's words: read as such, they were empty lines, or the new name said by whoever
    renamed the thread, each in the place of a message that was said. Up to ``NOTICES_SKIPPED`` more messages
    are read to make up for them. (A thread's starter notice only points to the message it was started on.)"""
    said: list[discord.Message] = []
    async for message in channel.history(limit=limit + NOTICES_SKIPPED):
        if not message.is_system() and message.type != discord.MessageType.thread_starter_message:
            said.append(message)
            if len(said) == limit:
                break
    return said


def _replied_to(message: discord.Message) -> list[discord.Message]:
    """The message ``message`` replies to, which Discord sends along with a reply (none when it was deleted)."""
    answered = message.reference.resolved if message.reference is not None else None
    return [answered] if message.type == discord.MessageType.reply and isinstance(answered, discord.Message) else []


def _shown_in(message: discord.Message | discord.MessageSnapshot) -> str:
    """What a message shows, as text: its words, then what its embeds say (alerting bots and webhooks post an
    alert as an embed, often as a title and fields with no description: it was an empty line in a summary, and
    the assistant left it out), then the names of its files (a log alone was an empty line too). Discord's
    previews of a link in the words are left out: they repeat the page, not what was said."""
    lines = [message.content]
    for embed in message.embeds:
        if embed.type in LINK_PREVIEWS:
            continue
        lines += [embed.author.name or "", embed.title or "", embed.description or ""]
        lines += [f"{field.name}: {field.value}" for field in embed.fields]
    if message.attachments:
        lines.append(f"(attached: {', '.join(attachment.filename for attachment in message.attachments)})")
    return "\n".join(line for line in lines if line.strip())


def _edited_later(message: Message) -> bool:
    """A run's progress message is edited at every step, and an edit changes one Discord message: it
    is posted as one from the start (a first step of 3,000 characters left its second half behind)."""
    return message.tone == "progress"


def _render(message: Message, guild: str, *, one_message: bool = False) -> list[Outgoing]:
    try:
        return render(message, guild, one_message=one_message)
    except ValueError as exc:
        raise DeliveryRejected(f"cannot show this message on Discord: {exc}") from exc


def _payload(outgoing: Outgoing, *, pinging: bool = True) -> dict[str, Any]:
    """``send`` keyword arguments (discord.py wants no ``files``/``view`` at all rather than empty ones). A message
    of words is sent without Discord's previews of the links in it, as Slack's posts are (``unfurl_links=False``): a
    graph's answer naming a dashboard or three runbooks' pages was followed by as many page-sized cards in the
    thread. (A card is an embed itself, which that flag would hide: not there.) An edit keeps the flag.

    A new card notifies those who may decide it (``Outgoing.pinged``), and nobody else (not everyone, no role,
    not whom its text names); ``pinging=False`` (a card posted again in place of a deleted one) notifies nobody."""
    payload: dict[str, Any] = {"content": outgoing.content, "embed": outgoing.embed}
    if outgoing.pinged and pinging:
        payload["allowed_mentions"] = discord.AllowedMentions(
            everyone=False, roles=False, replied_user=False,
            users=[discord.Object(int(user)) for user in outgoing.pinged])
    if outgoing.embed is None and outgoing.content:
        payload["suppress_embeds"] = True
    if outgoing.files:
        payload["files"] = _files(outgoing)
    view = _view(outgoing)
    if view is not None:
        payload["view"] = view
    return payload


async def _edit_or_post(message: discord.PartialMessage, outgoing: Outgoing, nonce: str) -> discord.Message:
    """The edit; a message that is gone (a moderator deleted it) is posted anew where it was, as its new
    version, so that a run's progress or a decision is still shown (the core edits that one next), not lost
    with a 404 in the log, as on Slack."""
    try:
        return await _edit_to(message, outgoing)
    except discord.NotFound as exc:
        if exc.code != UNKNOWN_MESSAGE:
            raise
    log.info("Discord: message %s in %s is gone (deleted?); its new version is posted there", message.id,
             message.channel.id)
    return await message.channel.send(**_payload(outgoing, pinging=False), nonce=nonce)


async def _edit_to(message: discord.PartialMessage, outgoing: Outgoing) -> discord.Message:
    """``outgoing`` in place of the message (its buttons and files too: none means none any more); an edit pings
    nobody (a decided card's content, the line that called its deciders, is gone: ``None`` removes it)."""
    return await message.edit(content=outgoing.content, embed=outgoing.embed, view=_view(outgoing),
                              attachments=_files(outgoing), allowed_mentions=discord.AllowedMentions.none())


def _post(send: Callable[..., Awaitable[Any]], outgoing: Outgoing, **options: Any) -> Step:
    return _step(lambda: send(**_payload(outgoing), **options))


def _nonce(delivery: Delivery, step: int) -> str:
    """The same for every try of this step of this delivery, by any replica: discord.py sends it with
    ``enforce_nonce``, so Discord answers a try made after one whose answer was lost (a timeout, Baton
    stopped mid-send) with the message it posted then, not a second one (for a few minutes). The
    channel is in it for two Batons (two databases) sharing one bot: their ids alone would meet."""
    key = f"{delivery.location.channel}:{delivery.location.thread}:{delivery.id}:{step}"
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()  # 24 characters; Discord allows 25


def _step(call: Callable[[], Awaitable[Any]]) -> Step:
    """One REST call; Discord's answers become the contract's retry decisions."""

    async def step() -> str | None:
        try:
            sent = await call()
        except discord.RateLimited as exc:
            # Only this row waits (and its thread's rows after it): Discord's limit is a route's, of one channel, and
            # a thread is a channel of its own. Holding the parent channel silenced every other thread of it for as
            # long (discord.py keeps each bucket's state: another row of this one waits there, asking nothing).
            raise RetryLater(exc.retry_after, "Discord rate limit, longer than discord.py waits",
                             hold_channel=False) from exc
        except discord.DiscordServerError:
            raise  # 5xx after discord.py's own retries: the outbox retries with backoff
        except discord.HTTPException as exc:
            if exc.status == 429:  # discord.py gave up: five 429s in a row, or Cloudflare's (no Via header)
                raise RetryLater(_retry_after(exc), f"Discord: {_describe(exc)}") from exc
            if exc.status == 401 and exc.code != INVALID_WEBHOOK_TOKEN:  # the bot's token (reset in the portal)
                raise RetryLater.token_refused(f"Discord refused Baton's token ({_describe(exc)})", "DISCORD_TOKEN") from exc
            # 400 (invalid form), 403 (no permission), 404 (unknown channel)
            raise DeliveryRejected(f"Discord: {_describe(exc)}", unreachable=UNREACHABLE_CODES.get(exc.code)) from exc
        return str(sent.id) if sent is not None else None

    return step


def _retry_after(exc: discord.HTTPException) -> float:
    """The seconds a 429 asks for (its Retry-After header), at least one; a few when it names none."""
    headers = getattr(exc.response, "headers", None) or {}
    try:
        return max(float(headers.get("Retry-After", RATE_LIMIT_UNSAID_SECONDS)), 1.0)
    except ValueError:
        return RATE_LIMIT_UNSAID_SECONDS


def _view(outgoing: Outgoing) -> discord.ui.View | None:
    return card_view(outgoing.approval) if outgoing.approval is not None else None


def _files(outgoing: Outgoing) -> list[discord.File]:
    """Fresh ``discord.File`` objects for each call (a file is read when it is sent)."""
    return [discord.File(io.BytesIO(attachment.content), filename=attachment.filename) for attachment in outgoing.files]


def _gateway_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("Discord: the gateway connection ended: %r", task.exception())

