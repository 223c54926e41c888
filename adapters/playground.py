"""The playground: a local web chat that is its own platform (channels, threads, buttons, live updates).

It is what ``baton run`` serves with no tokens. The page and the tests use its JSON API:
``POST /api/messages``, ``POST /api/clicks``, ``GET /api/channels/{id}/messages``,
``GET /api/threads/{id}/messages`` (each the newest messages, and older ones page by page with ``before``)
and the server-sent events stream ``GET /api/events``.
The playground trusts the user name it is given: it is for trying Baton locally, never for
deciding real approvals.

A posted message is stored, then handed to the bot (``accept_message``), in two transactions: a
process that dies between the two leaves a message the bot never got. Every replica looks for such
messages now and then (``hand_over_stranded``) and hands them over with their own event id, so a
message handed over twice is a duplicate the bot drops.
"""

from __future__ import annotations

import asyncio
import email.message
import functools
import ipaddress
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path as FilePath
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator
from sqlalchemy import BigInteger, bindparam, exists, func, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import select

from adapters.contract import Adapter
from bot.messages import InboundClick, InboundMessage, Location, Message, quoted, storable
from bot.outbox import Delivery
from storage.db import prepared
from storage.models import InboundEvent, PlaygroundMessage, ThreadRecord

log = logging.getLogger("baton.adapters.playground")

PAGE = FilePath(__file__).parent / "playground_page"
PLATFORM = "playground"
BOT_NAME = "baton"
CHANNELS = [
    {"id": "general", "name": "#general", "kind": "channel"},
    {"id": "ops", "name": "#ops", "kind": "channel"},
    {"id": "random", "name": "#random", "kind": "channel"},
    {"id": "dm-baton", "name": "baton", "kind": "dm"},
]
CHANNEL_KINDS = {channel["id"]: channel["kind"] for channel in CHANNELS}
USERS = ["alice", "bob", "carol", "dave"]
# "@baton" as a word of its own: not inside an address (ops@baton.io) or a longer name (@baton-dev).
MENTION = re.compile(rf"(?<![\w.@-])@{BOT_NAME}(?![\w@-]|\.\w)[:,]?", re.IGNORECASE)
# The mention with the spaces around it, taken out of what the bot is given: "hey @baton run uptime" is
# "hey run uptime" (it was "hey  run uptime", quoted so by the help answer).
_SPACED_MENTION = re.compile(rf"(?P<before>[ \t]*){MENTION.pattern}(?P<after>[ \t]*)", re.IGNORECASE)
MAX_HTTP_TEXT = 100_000
MAX_ID = 2**31 - 1  # the largest message id: an integer column on PostgreSQL (a larger one was a 500 there)
CLICK_EVENT_PREFIX = "click:"  # a click's event id, beside the messages' (clicks have ids of their own)
USER_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
# Empty (``?viewer=``, as the README writes the routes) is no viewer, as on any web form: it was a 422.
VIEWER = Query(None, pattern=r"^[A-Za-z0-9_.-]{0,64}$", description="whose private (ephemeral) messages to include")
PAGE_SIZE = 100  # how many of a channel's (or a thread's) newest messages a read returns, unless told
MAX_PAGE_SIZE = 500


def _blank_is(default: int | None) -> BeforeValidator:
    """An empty query parameter (``?limit=&before=``, as the README writes the routes and a web form sends them) is
    one not given, as ``viewer``'s is: it was a 422, 'unable to parse string as an integer'."""
    return BeforeValidator(lambda value: default if value == "" else value)


_BLANK = {"type": "string", "maxLength": 0}
Limit = Annotated[int, Query(description="how many of the newest messages to return"), _blank_is(PAGE_SIZE),
                  Field(ge=1, le=MAX_PAGE_SIZE), WithJsonSchema({"anyOf": [
                      {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE}, _BLANK], "default": PAGE_SIZE})]
Before = Annotated[Annotated[int, Field(ge=1, le=MAX_ID)] | None, Query(
                       description="only messages older than this message id: the page before the first message "
                                   "shown"), _blank_is(None), WithJsonSchema({"anyOf": [
                       {"type": "integer", "minimum": 1, "maximum": MAX_ID}, _BLANK]})]
# What the API refuses in every text field (a 422), said in the schema: a NUL, which no database stores. (An
# unpaired surrogate neither, which a JSON Schema pattern cannot name.)
_NO_NUL = r"^[^\x00]*$"
_SPACES = r"\t\n\v\f\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"  # what str.isspace() is
CHANNEL = Path(description="one of the playground's channels", json_schema_extra={"enum": list(CHANNEL_KINDS)})
EVENT_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
STREAM_RETRY_SECONDS = 1.0  # how often a live stream looks again while the database cannot be reached
RESUME_WINDOW = timedelta(hours=1)  # how far back a live stream resumes for a client that lost it (Last-Event-ID)
LOOK_BACK = timedelta(seconds=5)  # what changed this long before a new live stream began is sent first
_SCHEME_PORTS = {"http": 80, "https": 443}  # the ports browsers leave out of Host and Origin
# The page may not be framed by another site (a hidden frame over a button of its own would turn a click
# into Approve), and runs only its own script.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",  # see _Revalidated
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'none'; object-src 'none'",
}

_EARLIER = aliased(PlaygroundMessage, name="earlier")
# A reply in a thread the bot had taken an earlier message of: the bot takes it without a mention.
# (Message ids, not clocks: a reply posted before the thread became Baton's was ignored then, and must
# not become a request now.) Every step is an index lookup.
_FOLLOW_UP = exists().where(
    ThreadRecord.platform == PLATFORM, ThreadRecord.workspace == "", ThreadRecord.channel == PlaygroundMessage.channel,
    ThreadRecord.thread == PlaygroundMessage.thread_id, InboundEvent.thread_record_id == ThreadRecord.id,
    InboundEvent.kind == "message", _EARLIER.event_id == InboundEvent.event_id, _EARLIER.id < PlaygroundMessage.id)
_STRANDED = prepared(select(
    PlaygroundMessage.id, PlaygroundMessage.event_id, PlaygroundMessage.channel, PlaygroundMessage.thread_id,
    PlaygroundMessage.user, PlaygroundMessage.text, _FOLLOW_UP.label("follow_up"),
).where(
    PlaygroundMessage.is_bot.is_(False), PlaygroundMessage.event_id.is_not(None),  # type: ignore[attr-defined,union-attr]
    PlaygroundMessage.id > bindparam("after"), PlaygroundMessage.id <= bindparam("up_to"),
    ~exists().where(InboundEvent.platform == PLATFORM, InboundEvent.event_id == PlaygroundMessage.event_id),
    or_(_FOLLOW_UP, func.lower(PlaygroundMessage.text).contains(f"@{BOT_NAME}"),
        *(PlaygroundMessage.channel == channel for channel, kind in CHANNEL_KINDS.items() if kind == "dm")),
).order_by(PlaygroundMessage.id))  # type: ignore[arg-type]
_NEWEST = prepared(select(func.max(PlaygroundMessage.id)))


class _next_change(FunctionElement[int]):  # noqa: N801 (used like a SQL function)
    """The ``change`` a write gives the rows it stores: what live streams follow. Not a time: replicas' clocks
    differ, and a stream that followed the times they stamped missed every message of a replica whose clock
    was behind, and, once it had sent one of a replica ahead, every other replica's. On PostgreSQL the writing
    transaction's id; on SQLite one more than the highest so far (its writers take turns, so they also commit
    in that order)."""

    type = BigInteger()
    inherit_cache = True


class _settled_below(FunctionElement[int]):  # noqa: N801
    """Read in the statement that reads the rows: no change below it can still appear, in a later read, among
    rows this one did not see. On PostgreSQL the oldest transaction still running when the statement began
    (its snapshot's ``xmin``): a transaction that began before another commits after it, so a change number
    read does not say that every lower one was read (the rows of a slow transaction, committed after a
    stream had read a later one, were never sent). On SQLite one more than the highest change: nothing writes
    while another write is in flight."""

    type = BigInteger()
    inherit_cache = True


@compiles(_next_change, "postgresql")
def _next_change_postgresql(_element: Any, _compiler: Any, **_kw: Any) -> str:
    return "CAST(CAST(pg_current_xact_id() AS text) AS bigint)"


@compiles(_next_change, "sqlite")
def _next_change_sqlite(_element: Any, _compiler: Any, **_kw: Any) -> str:
    return f"(SELECT coalesce(max(change), 0) + 1 FROM {PlaygroundMessage.__tablename__})"


@compiles(_settled_below, "postgresql")
def _settled_below_postgresql(_element: Any, _compiler: Any, **_kw: Any) -> str:
    return "CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS text) AS bigint)"


@compiles(_settled_below, "sqlite")
def _settled_below_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return _next_change_sqlite(element, compiler, **kw)


_MESSAGES = PlaygroundMessage.__table__  # type: ignore[attr-defined]
# The bot's message, and an edit of one: one statement each (an edit read the row first, then wrote it).
_STORE = prepared(_MESSAGES.insert().values(change=_next_change()).returning(_MESSAGES.c.id))
_EDIT = prepared(update(_MESSAGES).where(_MESSAGES.c.id == bindparam("target")).values(
    content=bindparam("new_content", type_=_MESSAGES.c.content.type),
    text=bindparam("new_text", type_=_MESSAGES.c.text.type),
    updated_at=bindparam("at", type_=_MESSAGES.c.updated_at.type),
    revision=_MESSAGES.c.revision + 1, change=_next_change()).returning(_MESSAGES.c.id))


@functools.cache
def _post_once(dialect: str) -> Any:
    """A user's message, stored unless its event id is (a redelivery)."""
    insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
    return prepared(insert(_MESSAGES).values(change=_next_change()).on_conflict_do_nothing(index_elements=["event_id"]))


class _Revalidated(StaticFiles):
    """The page's script and style, asked again (a 304 when unchanged) at every load. Served with only a
    Last-Modified, a browser kept them fresh for a tenth of their age by itself: a page reloaded after
    Baton was upgraded (or app.js edited) ran the old script against the new server.

    Each with the page's headers: the page itself is one of these files (``/static/index.html``, a whole
    working playground), which another site could frame without them."""

    async def get_response(self, path: str, scope: Any) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


class _Body(BaseModel):
    # A field the API does not take is refused, not dropped: "eventId" lost the redelivery guard without a
    # word (a retry ran again), "thread" posted a reply as a new request at the top of the channel.
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _storable(cls, value: object) -> object:
        if isinstance(value, str) and storable(value) != value:
            raise ValueError("must not contain NUL characters or unpaired surrogates")
        return value


def _a_person(value: str) -> str:
    """A sender the page tells from the bot: `{"user": "baton"}` was posted as the bot's name, its avatar and
    all (only the APP badge was missing), the bot answering "baton" as anyone else."""
    if value.lower() == BOT_NAME:
        raise ValueError(f"'{value}' is the bot's own name: write as a person")
    return value


class PostMessage(_Body):
    # One of the playground's channels (any other is a 404 naming them): said in the schema, a client or a fuzzer
    # generated from it posts where it can
    channel: str = Field(max_length=80, json_schema_extra={"enum": list(CHANNEL_KINDS)})
    user: str = Field(pattern=USER_NAME)
    # Not empty, nor only spaces (a 400): Python's (str.strip's), which are not JSON Schema's \s
    text: str = Field(max_length=MAX_HTTP_TEXT, json_schema_extra={"pattern": f"^[^\\x00]*[^\\x00{_SPACES}][^\\x00]*$"})
    thread_id: str | None = Field(None, max_length=40, description="the thread's root message id (a number, as text "
                                  "or as a JSON number)", json_schema_extra={"anyOf": [
                                      {"type": "string", "maxLength": 40, "pattern": _NO_NUL}, {"type": "integer"},
                                      {"type": "null"}]})
    event_id: str | None = Field(None, max_length=200, description="Set it to simulate a platform redelivery.",
                                 json_schema_extra={"anyOf": [{"type": "string", "maxLength": 200, "pattern": (
                                     rf"^(?!{CLICK_EVENT_PREFIX})[^\x00]*$")}, {"type": "null"}]})

    @field_validator("thread_id", mode="before")
    @classmethod
    def _id_given_as_number(cls, value: object) -> object:
        if isinstance(value, float) and value.is_integer():  # 7.0, as JSON Schema's integers include it
            value = int(value)
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    _user_a_person = field_validator("user")(_a_person)

    @field_validator("event_id")
    @classmethod
    def _not_a_clicks(cls, value: str | None) -> str | None:
        # A click's event id is stored as "click:<its id>" beside the messages' own: a message given one was
        # answered "duplicate" after that click and never reached the bot.
        if value is not None and value.startswith(CLICK_EVENT_PREFIX):
            raise ValueError(f"must not start with '{CLICK_EVENT_PREFIX}', which names clicks")
        return value


class PostClick(_Body):
    message_id: int = Field(ge=1, le=MAX_ID)
    approval_id: str = Field(max_length=200, json_schema_extra={"pattern": _NO_NUL})
    # Any of the card's own buttons' values (checked against them): a "Which one?" card's are graph names, which
    # may be any lower-case module name (graphs/déploiement.py), not only [a-z0-9_-]
    action: str = Field(min_length=1, max_length=200, json_schema_extra={"pattern": _NO_NUL})
    user: str = Field(pattern=USER_NAME)
    event_id: str | None = Field(None, max_length=200, json_schema_extra={"anyOf": [
        {"type": "string", "maxLength": 200, "pattern": _NO_NUL}, {"type": "null"}]})

    _user_a_person = field_validator("user")(_a_person)

    @field_validator("message_id", mode="before")
    @classmethod
    def _a_number(cls, value: object) -> object:
        # `true` is not message 1, nor is "1". A number written 7.0 is 7 (JSON Schema's integers include it, and
        # Python's json.dumps writes an id held as a float so): it was a 422, as `true` is
        if isinstance(value, (bool, str)):
            raise ValueError("must be a message id: a number")
        return value


class Refusal(BaseModel):
    """Why a request was refused, in words (a 422's ``detail`` lists the fields instead)."""

    detail: str


def _refusals(reasons: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """The refusals a route answers, in the API's schema with ``Refusal``'s body: it named a 422 alone, and a client
    made from it took a 404 or a 400 for an answer the API never gives."""
    return {status: {"model": Refusal, "description": reason} for status, reason in reasons.items()}


_FOREIGN = ("a request addressed to another name than localhost, an IP address or BATON_PUBLIC_URL's, or a post "
            "from another site's page")
_AWAY = "Baton's database cannot be reached (or written) just now: try again after Retry-After's seconds"
_UNREADABLE = "a body that is not UTF-8 or is nested too deeply"
_BODY_REFUSALS = _refusals({403: _FOREIGN, 413: "a body over 1,300,000 bytes",
                            415: "a body sent compressed (Content-Encoding)", 503: _AWAY})
READ_REFUSALS = _refusals({403: _FOREIGN})
# The stream's refusal is JSON, as every other (``model`` would give it the route's text/event-stream); the other
# routes put ``Refusal`` among the schema's components
STREAM_REFUSALS: dict[int | str, dict[str, Any]] = {403: {"description": _FOREIGN, "content": {
    "application/json": {"schema": {"$ref": f"#/components/schemas/{Refusal.__name__}"}}}}}
CHANNEL_REFUSALS = _refusals({403: _FOREIGN, 404: "no such channel", 503: _AWAY})
THREAD_REFUSALS = _refusals({403: _FOREIGN, 404: "no such thread (or the id of a reply, not of its thread)",
                             503: _AWAY})
# Where a posted message is read back (OpenAPI links: a client, or a fuzzer, follows them to the thread it made)
_POSTED: dict[int | str, dict[str, Any]] = {201: {"description": "Posted", "links": {
    "GetThread": {"operationRef": "#/paths/~1api~1threads~1{thread_id}~1messages/get",
                  "parameters": {"thread_id": "$response.body#/thread_id", "viewer": "$request.body#/user"}},
    "GetChannel": {"operationRef": "#/paths/~1api~1channels~1{channel}~1messages/get",
                   "parameters": {"channel": "$response.body#/message/channel"}}}}}
MESSAGE_REFUSALS = {**_POSTED, **_BODY_REFUSALS, **_refusals({
    400: f"empty text, a thread of another channel, or {_UNREADABLE}", 404: "no such channel or thread"})}
CLICK_REFUSALS = {**_BODY_REFUSALS, **_refusals({
    400: f"the message has no buttons of that approval (any more), or none with that action; or {_UNREADABLE}",
    404: "no such message"})}


class EventStream(StreamingResponse):
    """Server-sent events (named so in the API's schema, which said JSON)."""

    media_type = "text/event-stream"


async def _json_as_the_api_takes_it(request: Request) -> None:
    """Refuse a JSON body in another encoding than UTF-8 (400: json.loads reads UTF-16 too), or one that gives a
    field twice (422, naming it). JSON's decoder keeps the last value without a word: ``{"event_id": "retry-1",
    ..., "event_id": null}`` lost the redelivery guard, as a misspelled field did before it was refused, and
    ``"text"`` twice posted whichever came last."""
    if not _sent_as_json(request.headers.get("content-type", "")):
        return  # not read as JSON: FastAPI's validation says so
    body = await request.body()
    encoding = json.detect_encoding(body)  # what json.loads, FastAPI's decoder, would read it as
    if encoding not in ("utf-8", "utf-8-sig"):
        raise HTTPException(400, f"the request body cannot be read: it is {encoding.upper()} text (JSON is UTF-8 "
                                 "text)")

    given_twice: dict[str, None] = {}  # of the object read last: the body's own, read after those inside it

    def object_of(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        taken = dict(pairs)
        given_twice.clear()
        if len(taken) < len(pairs):  # (a body may hold 100,000 fields: no list scans)
            seen: set[str] = set()
            for key, _value in pairs:
                if key in seen:
                    given_twice[key] = None
                seen.add(key)
        return taken

    try:
        body = json.loads(body, object_pairs_hook=object_of)
    except (ValueError, RecursionError):
        return  # FastAPI read it (it got here), so this cannot fail but at the edge of the recursion limit
    if isinstance(body, dict) and given_twice:  # (twice inside a field's value: no field takes an object)
        raise RequestValidationError([{"loc": ("body", key), "msg": "is given more than once: give each field once",
                                       "type": "duplicate_field"} for key in given_twice])


def _sent_as_json(content_type: str) -> bool:
    """True when FastAPI reads a body of this Content-Type as JSON: ``application/json``, ``application/*+json``, or
    none at all."""
    if not content_type:
        return True
    header = email.message.Message()
    header["content-type"] = content_type
    subtype = header.get_content_subtype()
    return header.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


class PlaygroundAdapter(Adapter):
    name = PLATFORM
    send_records_delivery = True  # its messages are rows in Baton's database
    known_channels = tuple(CHANNEL_KINDS)
    stranded_poll_seconds: ClassVar[float] = 10.0  # how often ``hand_over_stranded`` looks

    def __init__(self, baton: Any) -> None:
        super().__init__(baton)
        # Set, then replaced, at each change: a live stream waits on the one it took before it read.
        # Not an asyncio.Condition: on Python 3.11 a stream cancelled inside ``wait_for(condition.wait())``
        # (its client went away) could leave the condition's lock broken, and every later notify hung.
        self._changed = asyncio.Event()
        self._stranded_loop: asyncio.Task[None] | None = None
        self._looked_through = 0  # the messages up to this id were looked at by a look that ended
        self._newest_at_last_look: int | None = None

    def mount(self, app: FastAPI) -> None:
        router = APIRouter(prefix="/api", tags=["playground"], dependencies=[Depends(self._from_this_site)])
        for path, endpoint, refusals in [
                ("/channels", self.channels, READ_REFUSALS),
                ("/channels/{channel}/messages", self.channel_messages, CHANNEL_REFUSALS),
                ("/threads/{thread_id}/messages", self.thread_messages, THREAD_REFUSALS),
                ("/events", self.events, STREAM_REFUSALS)]:
            stream = endpoint == self.events
            router.add_api_route(path, endpoint, methods=["GET"], responses=refusals,
                                 response_class=EventStream if stream else JSONResponse)
            # HEAD answers as GET does, without the body (uptime checks, link checkers, curl -I). A route of
            # its own, left out of the schema: one route for both, and the schema names two operations alike.
            router.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)
        as_json = [Depends(_json_as_the_api_takes_it)]
        router.add_api_route("/messages", self.post_message, methods=["POST"], status_code=201,
                             responses=MESSAGE_REFUSALS, dependencies=as_json)
        router.add_api_route("/clicks", self.post_click, methods=["POST"], status_code=202, responses=CLICK_REFUSALS,
                             dependencies=as_json)
        app.include_router(router)
        app.mount("/static", _Revalidated(directory=PAGE), name="playground-static")
        app.add_api_route("/", lambda: FileResponse(PAGE / "index.html", headers=PAGE_HEADERS), methods=["GET", "HEAD"],
                          include_in_schema=False)

    async def start(self) -> None:
        await super().start()
        if not self._loopback_only:
            log.warning("the playground listens on %s (BATON_HOST): anyone who can reach this port can post as any "
                        "user and approve as any approver, running the runbooks of baton.yaml (it answers when reached "
                        "by an IP address, localhost or BATON_PUBLIC_URL's name); it is meant for 127.0.0.1 "
                        "(BATON_ADAPTERS without playground keeps it off)", self.baton.settings.host)
        self._stranded_loop = asyncio.create_task(self._hand_over_stranded_forever(), name="playground-stranded")

    async def stop(self) -> None:
        if self._stranded_loop is not None:
            self._stranded_loop.cancel()
            await asyncio.gather(self._stranded_loop, return_exceptions=True)
        await super().stop()

    # -- the HTTP API ----------------------------------------------------------------------------

    @property
    def _loopback_only(self) -> bool:
        return _is_loopback(self.baton.settings.host)

    async def _from_this_site(self, request: Request) -> None:  # async: FastAPI runs a plain def in a thread
        """Refuse what another web site's page sends. The API trusts the user name it is given, so a page
        that reaches it can act as anyone: a page of another origin (its ``Origin`` header), or one whose
        name its DNS pointed at this machine after it loaded (DNS rebinding: the browser then counts the
        playground as that page's own origin, and only the ``Host`` header tells them apart). Wherever it
        listens: in a container it listens on 0.0.0.0, and its port published to 127.0.0.1 is as local."""
        host = request.headers.get("host")
        public = _netloc(self.baton.settings.public_url or "")
        if host and not _answers_as(host, public):
            raise HTTPException(403, f"the playground answers only as localhost or an IP address, not as "
                                     f"'{quoted(host, 80)}'; set BATON_PUBLIC_URL to the address you use")
        origin = request.headers.get("origin")
        if origin is not None and request.method not in ("GET", "HEAD") and \
                origin.partition("://")[2] not in (host, public or None):
            raise HTTPException(403, f"a request from another site ('{quoted(origin, 80)}') is refused: the "
                                     f"playground takes posts and clicks only from its own page (BATON_PUBLIC_URL)")

    async def channels(self) -> dict[str, Any]:
        return {"channels": CHANNELS, "users": USERS, "bot": BOT_NAME}

    async def channel_messages(self, channel: str = CHANNEL, viewer: str | None = VIEWER, limit: Limit = PAGE_SIZE,
                               before: Before = None) -> dict[str, Any]:
        self._known_channel(channel)
        async with self.baton.db.read() as session:
            query = self._visible(viewer).where(PlaygroundMessage.channel == channel,
                                                PlaygroundMessage.thread_id.is_(None))  # type: ignore[union-attr]
            rows, more = await self._newest(session, query, limit, before)
            counts = await self._reply_counts(session, channel, [row.id for row in rows], viewer)  # type: ignore[misc]
        return {"messages": [self._json(row, *counts.get(str(row.id), (0, None))) for row in rows], "has_more": more}

    async def thread_messages(self, thread_id: str, viewer: str | None = VIEWER, limit: Limit = PAGE_SIZE,
                              before: Before = None) -> dict[str, Any]:
        async with self.baton.db.read() as session:
            root = await self._root(session, thread_id)
            # A reply is in its root's channel, after it: the channel's index finds them, from the newest.
            replies, more = await self._newest(session, self._visible(viewer).where(
                PlaygroundMessage.channel == root.channel, PlaygroundMessage.thread_id == str(root.id),
                PlaygroundMessage.id > root.id), limit, before)  # type: ignore[operator]
            count, last = (await self._reply_counts(session, root.channel, [root.id], viewer)).get(  # type: ignore[list-item]
                str(root.id), (0, None))
        return {"root": self._json(root, count, last), "replies": [self._json(row) for row in replies],
                "has_more": more}

    @staticmethod
    async def _newest(session: Any, query: Any, limit: int, before: int | None) -> tuple[list[PlaygroundMessage], bool]:
        """The newest ``limit`` messages of ``query`` older than message ``before`` (oldest first), and whether
        older ones remain. (The whole history, every time, made a long-lived channel slower to open each week.)"""
        if before is not None:
            query = query.where(PlaygroundMessage.id < before)
        rows = (await session.exec(query.order_by(PlaygroundMessage.id.desc()).limit(limit + 1))).all()  # type: ignore[union-attr]
        return rows[:limit][::-1], len(rows) > limit

    @staticmethod
    async def _reply_counts(session: Any, channel: str, roots: list[int], viewer: str | None) -> dict[str, tuple[int, int]]:
        """How many replies each of these roots has, and its newest reply's id (by the root's id as a string)."""
        if not roots:
            return {}
        return {thread: (count, last) for thread, count, last in (await session.exec(
            select(PlaygroundMessage.thread_id, func.count(), func.max(PlaygroundMessage.id)).where(
                PlaygroundMessage.channel == channel, PlaygroundMessage.id > min(roots),  # type: ignore[operator]
                PlaygroundMessage.thread_id.in_([str(root) for root in roots]),  # type: ignore[union-attr]
                or_(PlaygroundMessage.visible_to.is_(None), PlaygroundMessage.visible_to == viewer))  # type: ignore[union-attr]
            .group_by(PlaygroundMessage.thread_id))).all()}

    async def post_message(self, body: PostMessage) -> dict[str, Any]:
        self._known_channel(body.channel)
        if not body.text.strip():
            raise HTTPException(400, "text must not be empty")
        event_id = body.event_id or f"msg-{uuid.uuid4().hex}"
        thread_id = None
        async with self.baton.db.session() as session:
            if body.thread_id is not None:
                root = await self._root(session, body.thread_id)
                if root.channel != body.channel:
                    raise HTTPException(400, f"thread {body.thread_id} is in #{root.channel}, not #{body.channel}")
                thread_id = str(root.id)  # "0538" is thread 538: one thread, one queue
            now = self.baton.db.now()  # the replicas' shared clock: a message's time is not its replica's
            await session.exec(_post_once(session.bind.dialect.name), params={  # type: ignore[call-overload,union-attr]
                "event_id": event_id, "channel": body.channel, "thread_id": thread_id, "user": body.user,
                "text": body.text, "content": {"parts": [{"kind": "text", "text": body.text}]}, "is_bot": False,
                "visible_to": None, "created_at": now, "updated_at": now, "revision": 1})
            stored = (await session.exec(select(PlaygroundMessage).where(PlaygroundMessage.event_id == event_id))).one()
        self._notify()
        # Stored: from here on, a crash before the bot has it leaves it to ``hand_over_stranded``.
        try:
            delivery = await self._hand_over(stored.id, event_id, stored.channel, stored.thread_id,  # type: ignore[arg-type]
                                             stored.user, stored.text)
        except Exception as exc:
            # Posted, as a platform would have it, and left to ``hand_over_stranded``: a 503 asked the client
            # to post it again, which stored it twice when it gave no event_id of its own.
            if (reason := self.baton.db.health.unusable(exc)) is None:
                raise
            log.warning("message %s is stored, and handed to the bot once its database answers (%s)", stored.id,
                        reason)
            delivery = "pending"
        return {"message": self._json(stored), "thread_id": stored.thread_id or str(stored.id), "delivery": delivery}

    async def post_click(self, body: PostClick) -> dict[str, Any]:
        async with self.baton.db.read() as session:
            card = await session.get(PlaygroundMessage, body.message_id)
        if card is None:
            raise HTTPException(404, f"there is no message {body.message_id}")
        buttons = next((part for part in card.content.get("parts", [])
                        if part.get("kind") == "buttons" and part.get("approval_id") == body.approval_id), None)
        if buttons is None:
            # The card loses its buttons once decided: a redelivered click (same event id) is a duplicate
            # whenever it arrives, as on Slack and Discord, not an error that depends on the edit's timing.
            if body.event_id is not None and \
                    await self.baton.event_received(self.name, f"{CLICK_EVENT_PREFIX}{body.event_id}"):
                return {"delivery": "duplicate"}
            raise HTTPException(400, "that message has no buttons for this approval (it may have been decided)")
        if body.action not in {option["value"] for option in buttons.get("options", [])}:
            raise HTTPException(400, f"'{body.action}' is not one of this message's buttons")
        accepted = await self.baton.accept_click(InboundClick(
            platform=self.name, channel=card.channel, thread=card.thread_id or str(card.id), user=body.user,
            approval_id=body.approval_id, action=body.action,
            # clicks have ids of their own: a message's event id must not make a click a duplicate
            event_id=f"{CLICK_EVENT_PREFIX}{body.event_id or uuid.uuid4().hex}"))
        return {"delivery": accepted.status}

    async def events(self, request: Request, viewer: str | None = VIEWER) -> Response:
        if request.method == "HEAD":  # the stream's headers, without a stream that would never end
            return Response(media_type="text/event-stream", headers=EVENT_STREAM_HEADERS)
        return StreamingResponse(self._stream(request, viewer), media_type="text/event-stream",
                                 headers=EVENT_STREAM_HEADERS)

    async def _stream(self, request: Request, viewer: str | None) -> AsyncIterator[str]:
        """Send each new or edited message once per revision, in the order they were stored.

        Other replicas write to the same table, so this polls. It reads by ``change``, never by time (the
        replicas' clocks differ): each look reads the rows from its cursor on, and moves the cursor up to
        where nothing unseen can appear below it (``_settled_below``). The rows of a transaction still
        running then are above it, so they come at a later look, and what one look sent again is skipped."""
        seen: dict[int, int] = {}  # the revision sent of each row a look may read again
        resumed, cursor = _resume_point(request.headers.get("last-event-id")), None
        began = self.baton.db.now()
        yield ": connected\n\n"
        while not self.baton.stopping and not await request.is_disconnected():
            changed = self._changed  # taken before reading: a change made while we read is not missed
            try:
                async with self.baton.db.read() as session:
                    if cursor is None:
                        cursor = await _start(session, resumed, began)
                    rows = (await session.exec(select(PlaygroundMessage, _settled_below()).where(
                        PlaygroundMessage.change >= cursor, *self._visible_to(viewer)).order_by(
                        PlaygroundMessage.change, PlaygroundMessage.id))).all()  # type: ignore[arg-type]
            except Exception as exc:
                # The database is away: the stream stays open and goes on from its cursor once it is back (it
                # ended with a traceback, and every page's EventSource came back every 3 s for another one).
                if self.baton.db.health.unusable(exc) is None:
                    raise
                yield ": the database cannot be reached; waiting for it\n\n"
                await asyncio.sleep(STREAM_RETRY_SECONDS)
                continue
            for row, settled in rows:
                if seen.get(row.id, 0) < row.revision:  # type: ignore[arg-type]
                    # The id is where a client that lost the stream resumes (EventSource sends it back): the
                    # rows after this one here, and the changes not visible yet, are all at or above it.
                    yield (f"id: {min(row.change, settled)}\n"
                           f"data: {json.dumps({'type': 'message', 'message': self._json(row)})}\n\n")
            if rows:
                cursor = max(cursor, rows[0][1])
            # A row the next look reads is one this look read, or a change since: so much is remembered.
            seen = {row.id: max(row.revision, seen.get(row.id, 0)) for row, _settled in rows}  # type: ignore[misc]
            try:
                await asyncio.wait_for(changed.wait(), 0.5)
            except TimeoutError:
                yield ": keep-alive\n\n"

    async def history(self, location: Location, limit: int) -> list[dict[str, Any]] | None:
        """A thread's messages, or the channel's top-level ones, as everyone sees them."""
        async with self.baton.db.read() as session:
            query = self._visible(None).where(PlaygroundMessage.channel == location.channel)
            if location.thread:
                query = query.where(or_(PlaygroundMessage.thread_id == location.thread,
                                        PlaygroundMessage.id == int(location.thread) if location.thread.isdigit() else False))
            else:
                query = query.where(PlaygroundMessage.thread_id.is_(None))  # type: ignore[union-attr]
            rows = (await session.exec(query.order_by(PlaygroundMessage.id.desc()).limit(limit))).all()  # type: ignore[union-attr]
        return [{"user": row.user, "text": row.text, "is_bot": row.is_bot} for row in reversed(rows)]

    # -- delivery: the core's messages become playground messages ---------------------------------

    async def send(self, delivery: Delivery) -> str | None:
        """Store the message and mark its outbox row delivered, in one transaction: exactly once.

        The commit does not wait for the disk (``Database.session(durable=False)``): the message and
        its mark are lost together or kept together, and a lost pair is sent again when the row's
        claim runs out. (A platform elsewhere needs its mark durable: a lost mark means a double post.)
        """
        content = delivery.message.model_dump()
        text = delivery.message.plain_text()
        now = self.baton.db.now()
        async with self.baton.db.session(durable=False) as session:
            edited = (await session.exec(_EDIT, params={  # type: ignore[call-overload]
                "target": int(delivery.target_message_id), "new_content": content, "new_text": text, "at": now,
            })).first() if delivery.kind == "update" and delivery.target_message_id else None
            if edited is not None:
                message_id = edited[0]
            else:
                message_id = (await session.exec(_STORE, params={  # type: ignore[call-overload]
                    "event_id": None, "channel": delivery.location.channel,
                    "thread_id": delivery.location.thread or None, "user": BOT_NAME, "text": text, "content": content,
                    "is_bot": True, "visible_to": delivery.target_user if delivery.kind == "ephemeral" else None,
                    "created_at": now, "updated_at": now, "revision": 1})).one()[0]
            if self.send_records_delivery:
                await self.baton.outbox.record_delivery(session, delivery.id, str(message_id))
        self._notify()
        return str(message_id)

    # -- users' messages to the bot -------------------------------------------------------------

    async def _hand_over(self, message_id: int, event_id: str, channel: str, thread_id: str | None, user: str,
                         text: str) -> str:
        """Give the bot a stored user message; its delivery: accepted, duplicate or ignored."""
        accepted = await self.baton.accept_message(InboundMessage(
            platform=self.name, channel=channel, thread=thread_id or str(message_id), user=user,
            text=_without_mention(text), addressed=self._addressed(channel, text), event_id=event_id))
        return accepted.status

    @staticmethod
    def _addressed(channel: str, text: str) -> bool:
        return bool(MENTION.search(text)) or CHANNEL_KINDS.get(channel) == "dm"

    async def hand_over_stranded(self) -> None:
        """Hand the bot the users' messages that were stored but never handed over (the process
        storing one died before it had, or handing it over failed).

        Only messages there at the previous look: a younger one may still be on its way to the bot
        from the request that stored it (here or on another replica), which handing it over first would
        answer "duplicate". (Ids, not clocks: replicas' clocks differ.) And only those no look has been
        through yet: a message looked at stays as it was found, handed over or chat the bot ignored, so
        a look reads the last few seconds' messages, not the whole history (the first, at start, reads it all).
        """
        newest = (await self.baton.db.fetch(_NEWEST)).first() or 0
        up_to, self._newest_at_last_look = self._newest_at_last_look, newest
        if up_to is None or up_to <= self._looked_through:
            return
        rows = (await self.baton.db.fetch(_STRANDED, {"after": self._looked_through, "up_to": up_to})).all()
        for message_id, event_id, channel, thread_id, user, text, follow_up in rows:
            if not (follow_up or self._addressed(channel, text)):
                continue  # "ops@baton.io": no mention after all
            if await self._hand_over(message_id, event_id, channel, thread_id, user, text) == "accepted":
                log.warning("playground message %s was stored but never handed to the bot: handed over now",
                            message_id)
        self._looked_through = up_to  # not if a hand-over failed: the next look tries them again

    async def _hand_over_stranded_forever(self) -> None:
        while True:
            try:
                await self.hand_over_stranded()
            except Exception as exc:
                if not self.baton.db.health.explains(exc):  # else the outage is logged once, by ``storage.db``
                    log.exception("handing stranded playground messages to the bot failed; trying again")
            await asyncio.sleep(self.stranded_poll_seconds)

    # -- helpers ---------------------------------------------------------------------------------

    def _notify(self) -> None:
        """Wake every live stream (other replicas' streams find the change at their next poll)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    @staticmethod
    def _known_channel(channel: str) -> None:
        if channel not in CHANNEL_KINDS:
            raise HTTPException(404, f"there is no channel '{quoted(channel, 40)}'; channels: {', '.join(CHANNEL_KINDS)}")

    @staticmethod
    async def _root(session: Any, thread_id: str) -> PlaygroundMessage:
        number = re.fullmatch(r"0*([0-9]{1,15})", thread_id)  # "0538" is 538, with any number of zeros
        message_id = int(number[1]) if number else 0
        root = await session.get(PlaygroundMessage, message_id) if 1 <= message_id <= MAX_ID else None
        if root is not None and root.thread_id is not None:  # a script took a reply's id for its thread's
            raise HTTPException(404, f"message {root.id} is a reply in thread {root.thread_id}: "
                                     f"use thread {root.thread_id}")
        if root is None:
            raise HTTPException(404, f"there is no thread '{quoted(thread_id, 40)}'" if thread_id else
                                "thread_id is empty: leave it out to start a new thread")
        return root

    @staticmethod
    def _visible(viewer: str | None) -> Any:
        return select(PlaygroundMessage).where(*PlaygroundAdapter._visible_to(viewer))

    @staticmethod
    def _visible_to(viewer: str | None) -> list[Any]:
        return [or_(PlaygroundMessage.visible_to.is_(None), PlaygroundMessage.visible_to == viewer)]  # type: ignore[union-attr]

    @staticmethod
    def _json(row: PlaygroundMessage, reply_count: int = 0, last_reply_id: int | None = None) -> dict[str, Any]:
        """A message as the API shows it; a thread's root with how many replies it has and the newest one's id
        (the page counts a live reply only when it is newer: one it counted already may arrive again)."""
        content = Message.model_validate(row.content).model_dump()
        for part in content["parts"]:
            if part["kind"] == "link":
                part["url"] = f"/#/c/{part['channel']}/t/{part['thread']}"
        return {"id": row.id, "channel": row.channel, "thread_id": row.thread_id, "user": row.user, "text": row.text,
                "content": content, "is_bot": row.is_bot, "ephemeral": row.visible_to is not None,
                "created_at": row.created_at.isoformat(), "updated_at": row.updated_at.isoformat(),
                "revision": row.revision, "reply_count": reply_count, "last_reply_id": last_reply_id}


def _without_mention(text: str) -> str:
    """``text`` without its ``@baton`` mentions: one space where a mention stood between two words."""
    return _SPACED_MENTION.sub(lambda m: " " if m["before"] and m["after"] else "", text).strip()


def _resume_point(last_event_id: str | None) -> int | datetime | None:
    """Where a client that lost its live stream left off (``Last-Event-ID``): a change, or the time of one
    (the ids a Baton before 0011 sent); ``None`` for none, or what is neither."""
    if not last_event_id:
        return None
    if last_event_id.isascii() and last_event_id.isdigit() and len(last_event_id) <= 18:
        return int(last_event_id)
    try:
        resumed = datetime.fromisoformat(last_event_id)
    except ValueError:
        return None
    return resumed if resumed.tzinfo is not None else None


async def _start(session: Any, resumed: int | datetime | None, began: datetime) -> int:
    """The change a live stream that began at ``began`` (the database's time) reads from: what changed in
    the ``LOOK_BACK`` before it, or since ``resumed``, at most ``RESUME_WINDOW`` back."""
    if resumed is None:
        since = began - LOOK_BACK
    elif isinstance(resumed, datetime):
        since = min(began, max(resumed, began - RESUME_WINDOW))
    else:
        since = began - RESUME_WINDOW
    settled, earliest = (await session.exec(select(_settled_below(), select(func.min(PlaygroundMessage.change)).where(
        PlaygroundMessage.updated_at >= since, PlaygroundMessage.change > 0).scalar_subquery()))).one()  # type: ignore[arg-type,operator]
    start = settled if earliest is None else min(settled, earliest)
    if isinstance(resumed, int):  # a change no later than the stream's start, of the last hour
        start = max(start, min(resumed, settled))
    return int(start)


def _netloc(url: str) -> str:
    """``host:port`` of ``url`` ("" for none, or for what is no URL) as browsers write it in Host and Origin:
    the name in lower case, an international one in its ASCII form (``bäton.example`` is ``xn--bton-loa.example``),
    and no port that is the scheme's own (``https://Baton.Example.com:443`` is ``baton.example.com``)."""
    try:
        parts = urlsplit(url)
        name, port = parts.hostname or "", parts.port
    except ValueError:  # "http://[attacker", a port that is no number
        return ""
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:  # no name a browser could send either
            return parts.netloc
    if ":" in name:  # an IPv6 address
        name = f"[{name}]"
    return name if port is None or port == _SCHEME_PORTS.get(parts.scheme) else f"{name}:{port}"


def _answers_as(host: str, public: str) -> bool:
    """True when ``host`` (a Host header) names this machine as no other site's DNS can: localhost, an IP
    address, or BATON_PUBLIC_URL's name (``public``, its ``host:port``)."""
    try:
        name, public_name = urlsplit(f"//{host}").hostname or "", urlsplit(f"//{public}").hostname
    except ValueError:  # "[attacker": no address at all
        return False
    if name == "localhost" or name.endswith(".localhost") or name == public_name:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    """True for an address only this machine reaches (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
