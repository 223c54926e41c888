"""The HTTP server: one FastAPI app; each adapter mounts its routes (playground, Slack events, ...)."""

from __future__ import annotations

import asyncio
import email.message
import errno
import gc
import hmac
import json
import logging
import resource
import sqlite3
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import entry_points
from typing import Any

import httptools
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import choose_encoder
from psycopg import Error as PsycopgError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyPoolTimeout
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from bot.app import Baton, StartFailed
from bot.config import BatonConfig
from bot.messages import quoted, storable, validation_words
from bot.metrics import Metrics
from bot.settings import Settings
from storage.disk_room import short_of_room

log = logging.getLogger("baton.server")

# The largest request body any route takes: a playground message of 100,000 characters, each escaped in
# JSON (a character beyond the BMP as a surrogate pair, \ud83d\ude00: 12 bytes), is 1.2 MB; Slack's and
# Discord's events are far smaller.
MAX_BODY_BYTES = 1_300_000
MAX_ERRORS_SHOWN = 10  # a 422 names the first ten errors of a request, and says how many more there are
MAX_NAME_SHOWN = 80  # and each field's name up to so many characters


# What uvicorn's HTTP/1.1 protocol does not limit (``GuardedHttpProtocol``): the head of a request (its request
# line and headers: Slack's are about 1 kB, a browser's a few) and how long reading a request may take.
MAX_HEAD_BYTES = 64 * 1024
REQUEST_READ_SECONDS = 30.0

ASK_FOR_TOKEN = {"WWW-Authenticate": 'Bearer realm="baton metrics"'}
# In the API's schema, which named a 200 alone: a health check's 503 (its body as the 200's, naming the problems), and
# /metrics' text and its 401
UNHEALTHY: dict[int | str, dict[str, Any]] = {503: {"description": "something does not work: `problems` names it",
                                                     "content": {"application/json": {"schema": {"type": "object"}}}}}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus' text format, or OpenMetrics' when Accept asks for it",
          "content": {"text/plain": {"schema": {"type": "string"}}}},
    401: {"description": "BATON_METRICS_TOKEN is set, and the request has no 'Authorization: Bearer <it>'",
          "content": {"application/json": {"schema": {
              "type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}}}}}
RETRY_AFTER_SECONDS = 5  # what a 503 for a database that cannot be reached tells the client to wait
DATABASE_AWAY = ("Baton's database cannot be reached just now, so this request was not carried out; "
                 "try again shortly")
DATABASE_UNWRITABLE = ("Baton's database cannot be written just now ({reason}), so this request was not carried "
                       "out; try again shortly")

# asyncio's own loop, not uvloop (which uvicorn picks when it is installed, as uvicorn[standard]
# installs it). uvloop starts a subprocess with libuv's fork(), which holds the GIL, and so the
# whole process, until the child execs; it costs more the larger the process is. Here one
# runbook command (/bin/true) took 7.2 ms on uvloop inside Baton's process against 0.9 ms on
# asyncio's loop (Python's own subprocess, vfork where it can), and bench/request_path.py ran
# 2.4 times slower on uvloop.
EVENT_LOOP = "asyncio"


OUT_OF_FILES_LOG_SECONDS = 60.0  # how often the loop's "cannot accept" is logged while it goes on
_ACCEPT_OUT_OF_RESOURCE = "socket.accept() out of system resource"  # asyncio's words for it
_OUT_OF_FILES_ADVICE = {
    errno.EMFILE: "raise Baton's limit of open files (ulimit -n; systemd's LimitNOFILE=; docker run --ulimit nofile=)",
    errno.ENFILE: "the machine as a whole has no open files left: raise fs.file-max, or find the process holding them",
}


class OutOfFiles:
    """The event loop's exception handler: a listening socket that cannot accept (too many open files) is one log
    line a minute, not a traceback for every try.

    asyncio logs each failed ``accept()`` with its traceback and, past the first, goes on trying through the whole
    backlog (CPython gh-151615), each try scheduling another retry: a burst of 60 requests to a Baton with
    ``ulimit -n 28`` wrote 90,059 tracebacks (540,736 lines) in 15 s, a log that fills a small disk in its turn.
    The connections wait in the kernel's queue meanwhile and are taken as files come free; anything else the
    loop reports goes to the handler that was there before."""

    def __init__(self, previous: Any = None) -> None:
        self._previous = previous
        self._logged_at: float | None = None
        self.refused = 0  # tries since the last line

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") != _ACCEPT_OUT_OF_RESOURCE or not isinstance(exc, OSError):
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.refused += 1
        now = time.monotonic()
        if self._logged_at is not None and now - self._logged_at < OUT_OF_FILES_LOG_SECONDS:
            return
        since = "" if self._logged_at is None else f"; {self.refused:,} tries since the last such line"
        self._logged_at, self.refused = now, 0
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        advice = _OUT_OF_FILES_ADVICE.get(exc.errno or 0, "the machine is short of memory for sockets: free some")
        log.error("Baton cannot take new connections: %s (its limit: %s open files%s): %s. They wait to be taken "
                  "until files are free; said again in %g s if it goes on", exc.strerror or exc, limit, since, advice,
                  OUT_OF_FILES_LOG_SECONDS)


_OUT_OF_RESOURCE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)  # asyncio's "out of system resource"


class _AcceptsUntilOutOfFiles:
    """A listening socket as asyncio's accept loop sees it for one round: once an ``accept()`` fails for want of
    files, the round's next try finds nothing waiting (``BlockingIOError``), which ends the round; the loop has
    scheduled its retry (in a second) already."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self._out = False

    def accept(self) -> Any:
        if self._out:
            raise BlockingIOError
        try:
            return self.sock.accept()
        except OSError as exc:
            self._out = exc.errno in _OUT_OF_RESOURCE
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def accept_without_spinning(loop: asyncio.AbstractEventLoop) -> None:
    """Make the loop end a round of ``accept()`` at its first failure for want of files (CPython gh-151615).

    asyncio's selector loop goes on trying through the whole backlog (uvicorn's: 2,048) after such a failure, and
    each try schedules another retry of its own: the retries multiply, and with ``ulimit -n 40`` and 30 open event
    streams holding the files the loop made 4.4 million tries in a minute, busy with them (60 with this).
    Only the loop's own method is wrapped, on this loop, and a loop without it (another kind) is left alone."""
    original = getattr(loop, "_accept_connection", None)
    if original is None:
        return

    def accept_connection(protocol_factory: Any, sock: Any, *args: Any, **kwargs: Any) -> Any:
        raw = sock.sock if isinstance(sock, _AcceptsUntilOutOfFiles) else sock  # a retry passes the wrapper back
        return original(protocol_factory, _AcceptsUntilOutOfFiles(raw), *args, **kwargs)

    loop._accept_connection = accept_connection  # type: ignore[attr-defined]


def settle_garbage_collector() -> None:
    """Keep what start-up built (modules, mappers, compiled graphs) out of every later collection.

    Measured under a burst of Slack events: each full (generation 2) collection walked those
    objects again and stopped the event loop for ~140 ms, the whole tail of the ack latency.
    Frozen, they are never scanned; what the running server allocates is collected as before.
    """
    gc.collect()
    gc.freeze()


def create_app(settings: Settings, config: BatonConfig | None = None) -> FastAPI:
    baton = Baton(settings, config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with baton:
            settle_garbage_collector()
            yield

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN (cdn.jsdelivr.net) into Baton's own origin,
    # where a script may post and approve as anyone through the playground's API; /openapi.json stays.
    app = FastAPI(title="Baton", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(StartFailureInOneLine)
    # Not FastAPI(max_body_size=...): its 413 is plain text, sent from outside every middleware of ours.
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=MAX_BODY_BYTES)
    app.add_middleware(TooLargeInJSON)  # around the limit, to rewrite its answer
    app.add_middleware(UncompressedBodiesOnly)
    app.add_middleware(NoWebSockets)
    app.state.baton = baton
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, unreadable_body)  # type: ignore[arg-type]
    for error in (DBAPIError, PsycopgError, SQLAlchemyPoolTimeout, sqlite3.Error):  # psycopg_pool's are PsycopgError
        app.add_exception_handler(error, database_away)
    for adapter in baton.adapters:
        adapter.mount(app)

    async def health(*, database: bool) -> JSONResponse:
        problems = {adapter.name: problem for adapter in baton.adapters if (problem := adapter.problem())}
        if database and (away := await baton.db.ping()):
            problems["database"] = away
        if database and (cramped := await asyncio.to_thread(short_of_room, baton.db.url)):
            problems["disk"] = cramped
        return JSONResponse(status_code=503 if problems else 200, content={
            "ok": not problems, "instance": baton.instance, "adapters": [adapter.name for adapter in baton.adapters],
            "problems": problems, "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0]})

    @app.get("/healthz", tags=["ops"], responses=UNHEALTHY)
    async def healthz() -> JSONResponse:
        """Liveness: 200 while every adapter works; 503 naming what does not, which a restart of the replica
        mends (a supervisor restarts it). The database is not asked: a replica restarted while its database
        is away cannot even start, and would come back only after the supervisor's back-off."""
        return await health(database=False)

    @app.get("/readyz", tags=["ops"], responses=UNHEALTHY)
    async def readyz() -> JSONResponse:
        """Readiness: as ``/healthz``, and the database answers and (SQLite) its disk has room to write (a load
        balancer sends traffic elsewhere)."""
        return await health(database=True)

    # HEAD is what many uptime checks send; a route of its own, or the schema names two operations alike
    app.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)
    app.add_api_route("/readyz", readyz, methods=["HEAD"], include_in_schema=False)
    if settings.metrics:
        mount_metrics(app, baton, settings)
    return app


def mount_metrics(app: FastAPI, baton: Baton, settings: Settings) -> None:
    """``GET /metrics`` (``bot.metrics``). Off with ``BATON_METRICS=false``: then a 404, as any unknown path.

    Open by default, like ``/healthz``: it holds aggregate counts by graph, status and platform, Baton's
    version and the replica's name, never a channel, a user or a message. It is served on the port
    Slack's events reach, so where that port faces the internet set ``BATON_METRICS_TOKEN`` (or let the
    proxy pass only ``/slack/events``)."""
    metrics = Metrics(baton.db, baton.instance, baton.adapters,
                      {point.name for point in entry_points(group="baton.adapters")}, baton.outbox.undeliverable)
    token = settings.metrics_token.get_secret_value().encode() if settings.metrics_token else None

    def refused(request: Request) -> JSONResponse | None:
        if token is None:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # Starlette reads a header's bytes as Latin-1: encoded back, they are what the scraper sent (a token
        # beyond ASCII in UTF-8); only spaces and tabs are trimmed (str.strip() ate a byte 0x85 or 0xA0)
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip(" \t").encode("latin-1"), token):
            return None
        return JSONResponse(status_code=401, headers=ASK_FOR_TOKEN, content={
            "detail": "/metrics asks for the token BATON_METRICS_TOKEN names, as 'Authorization: Bearer <token>'"})

    @app.get("/metrics", tags=["ops"], response_class=Response, responses=METRICS_RESPONSES)
    async def metrics_endpoint(request: Request) -> Response:
        """Prometheus' text format (OpenMetrics when the scraper's Accept asks for it)."""
        if (refusal := refused(request)) is not None:
            return refusal
        body, content_type = await metrics.exposition(readable_accept(request))
        return Response(body, media_type=content_type)

    async def metrics_head(request: Request) -> Response:
        """What GET answers, without its body, and without reading the database for it."""
        if (refusal := refused(request)) is not None:
            return Response(status_code=401, headers=ASK_FOR_TOKEN)
        return Response(media_type=choose_encoder(readable_accept(request) or "")[1])

    app.add_api_route("/metrics", metrics_head, methods=["HEAD"], include_in_schema=False)


def readable_accept(request: Request) -> str | None:
    """The scraper's ``Accept``, or ``None`` (the text format) when it asks for a format version that is no
    number (``version=abc``): prometheus_client's choose_encoder raises on one, which was a 500 with a
    traceback. A version it cannot read is a format it does not know, and those get the text format."""
    accept = request.headers.get("accept")
    try:
        choose_encoder(accept or "")
    except (TypeError, ValueError):
        return None
    return accept


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools), with the two limits it lacks, for the port Slack's events reach
    from the internet: a request's head over ``MAX_HEAD_BYTES`` gets a 431 (uvicorn kept every header it was
    sent: one request of 200 MB of headers took 200 MB of Baton's memory, and more for as long as it was sent),
    and a request not read whole within ``REQUEST_READ_SECONDS`` of its first byte (or of the connection) is cut
    off (a connection that never sent a byte, or sent one a minute, was held for ever: a few thousand of them
    take every file descriptor Baton has, its database's and its runbooks' pipes too). Between requests,
    uvicorn's keep-alive timeout applies as before. The trailer fields after a chunked body are held to the same
    limit, and are not added to the request's headers (uvicorn added them, as many as were sent, to the headers
    of a request whose route was running already)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = self._parsed_head_bytes = 0
        self._head_refused = self._trailers_refused = False
        self._reading_head, self._head_ended = True, False
        self._chunk_open = False  # a chunk's size line was read, and nothing after it yet
        self._previous_cycle: RequestResponseCycle | None = None  # the request answered before the newest one
        self._read_deadline: asyncio.TimerHandle | None = self.loop.call_later(REQUEST_READ_SECONDS, self._read_too_slow)
        self._refusal: bytes | None = None  # sent once the requests before it are answered

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Any byte begins the next request's time: the parser skips line breaks before a request line without a
        # word (no on_message_begin), and uvicorn drops its keep-alive timeout at any byte, so a connection that
        # sent "\r\n" after a request was held for ever
        if self._refusal is not None:
            return  # what follows a request refused is not read; the refusal is sent after the answers owed
        self._start_deadline()
        in_head, self._head_ended, in_trailers = self._reading_head, False, self._chunk_open
        super().data_received(data)
        if self.transport.is_closing():
            return
        # Counted while a head is read: not a read that ended one or began one (it may hold a body); and while the
        # trailer fields after a chunked body's last chunk are (a read that holds data is a chunk's, not those)
        if (in_head and self._reading_head and not self._head_ended) or (in_trailers and self._chunk_open):
            self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES or self._head_refused or self._trailers_refused:
            in_head = self._reading_head or self._head_refused
            fields = "headers" if in_head else "trailer fields, after its chunked body,"
            self._refuse(b"431 Request Header Fields Too Large",
                         f"the request's {fields} are larger than {MAX_HEAD_BYTES:,} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_deadline()  # a request that follows another in the same read

    def on_url(self, url: bytes) -> None:
        self._parsed_head_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Counted as parsed too: a read that ends the head is not counted in data_received (it may hold a body),
        # so a head of 64 KiB and one read more (up to 256 KiB on asyncio's loop) was let through
        self._parsed_head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._reading_head:
            super().on_header(name, value)
        else:  # a trailer field: no header of the request's (RFC 9110 6.5.1), and Baton's routes read none
            self._trailers_refused |= self._parsed_head_bytes > MAX_HEAD_BYTES

    def on_headers_complete(self) -> None:
        self._reading_head, self._head_ended = False, True
        if self._parsed_head_bytes > MAX_HEAD_BYTES:
            self._head_refused = True  # not handed to the app; data_received answers once the read is parsed
            return
        self._head_bytes = self._parsed_head_bytes = 0  # from here on, its trailer fields' (after a chunked body)
        self._previous_cycle = self.cycle
        super().on_headers_complete()

    def on_chunk_header(self) -> None:
        self._chunk_open = True  # until its data comes; the last chunk (of size 0) has none: its trailer fields come

    def on_chunk_complete(self) -> None:
        self._chunk_open = False

    def on_body(self, body: bytes) -> None:
        self._chunk_open = False
        if not self._head_refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._head_refused or self._trailers_refused:
            return
        self._stop_deadline()
        self._reading_head, self._head_bytes, self._parsed_head_bytes = True, 0, 0  # the next request's head
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._stop_deadline()  # the connection is the WebSocket protocol's from here on
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        """A request the parser cannot read, refused in JSON naming why (uvicorn's plain text named nothing). Called
        while uvicorn handles the parser's error: that error is the reason."""
        error = sys.exc_info()[1]
        reason = str(error).strip() if isinstance(error, httptools.HttpParserError) and str(error).strip() else msg
        self._refuse(b"400 Bad Request", f"the request is not HTTP that Baton can read: {reason}")

    def _start_deadline(self) -> None:
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(REQUEST_READ_SECONDS, self._read_too_slow)

    def _stop_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_too_slow(self) -> None:
        self._read_deadline = None
        if self._reading_head:
            self._refuse(b"408 Request Timeout", f"the request was not sent within {REQUEST_READ_SECONDS:g} s")
        else:  # its body: the route reading it sees the client gone
            self.transport.close()

    def _refuse(self, status: bytes, reason: str) -> None:
        """Answer and close the connection, once the requests sent before this one are answered. A request pipelined
        behind others (sent before their answers came, in one read with them) that HTTP's parser could not read
        closed the connection at once, unanswered, and the answers still owed to the requests before it were lost:
        a well-formed request followed by a stray byte got no answer at all."""
        body = json.dumps({"detail": reason}).encode()
        self._refusal = (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
                         + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        self._stop_deadline()
        self._give_up_body()
        if self.cycle is None or self.cycle.response_complete:  # the newest request's answer is the last owed
            self._send_refusal()

    def _give_up_body(self) -> None:
        """The newest request, refused while its body was read (a chunk's size that is no hexadecimal number), is
        answered by the refusal, not by its route: that route waited for the rest of the body for ever, the refusal
        waited for the route's answer, and the connection stayed open, unanswered. The route sees the client gone,
        and the refusal is sent once the requests before it are answered; an answer the route had begun is cut off
        (as when a body comes too slowly): nothing can follow it."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.more_body:
            return  # not refused in its body, or answered without it
        cycle.disconnected = True  # its receive() gets http.disconnect, and what it sends is dropped
        cycle.message_event.set()
        if cycle.response_started:
            self.transport.close()
            return
        self.pipeline = deque(queued for queued in self.pipeline if queued[0] is not cycle)  # never started, then
        self.cycle = self._previous_cycle

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refusal is not None and self.cycle is not None and self.cycle.response_complete:
            self._send_refusal()

    def _send_refusal(self) -> None:
        if not self.transport.is_closing() and self._refusal is not None:
            self.transport.write(self._refusal)
        self.transport.close()


class TooLargeInJSON:
    """A body over ``MAX_BODY_BYTES`` gets a 413 in JSON naming the limit, as every other error is JSON
    with a reason. Starlette's limit answers in plain text ("Content Too Large") when the request says
    its length, in FastAPI's JSON without the limit when it does not; this replaces either."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = False

        async def send_in_json(message: Message) -> None:
            nonlocal too_large
            if message["type"] == "http.response.start" and message["status"] == 413:
                too_large = True
                response = JSONResponse(status_code=413, content={
                    "detail": f"the request body is larger than {MAX_BODY_BYTES:,} bytes, the most Baton takes"})
                await response(scope, receive, send)
            elif not too_large:  # the original 413's body is dropped: the JSON one is sent
                await send(message)

        await self.app(scope, receive, send_in_json)


class UncompressedBodiesOnly:
    """A body sent compressed (``Content-Encoding: gzip``) gets a 415 saying to send it uncompressed: Baton does not
    uncompress bodies, and such a JSON body was refused as 'byte 2 is not UTF-8' or a 'JSON decode error'."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        encoding = content_encoding(scope) if scope["type"] == "http" else ""
        if encoding.lower() not in ("", "identity"):
            response = JSONResponse(status_code=415, headers={"Accept-Encoding": "identity"}, content={
                "detail": f"the request body is compressed (Content-Encoding: {quoted(encoding, 40)}), which Baton "
                          f"does not take: send it uncompressed"})
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


class NoWebSockets:
    """A WebSocket handshake gets a 400 in JSON saying that Baton serves none (the playground's live updates are
    server-sent events, ``GET /api/events``): Starlette closed it, which uvicorn answered with a bare 403, no reason
    given, as if the client had no right to what it asked for. Where the server cannot answer a handshake with an
    HTTP response (no ``websocket.http.response`` extension) it is closed, as before."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        await receive()  # the handshake (websocket.connect)
        if "websocket.http.response" not in scope.get("extensions", {}):
            return await send({"type": "websocket.close", "code": 1008})
        body = json.dumps({"detail": f"Baton serves no WebSocket (at {quoted(scope.get('path', ''), 80)} or "
                                     f"elsewhere): the playground's live updates are server-sent events, "
                                     f"GET /api/events"}).encode()
        await send({"type": "websocket.http.response.start", "status": 400, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})


def content_encoding(scope: Scope) -> str:
    """The request's ``Content-Encoding`` ("" for none)."""
    value = next((value for name, value in scope["headers"] if name == b"content-encoding"), b"")
    return value.decode("latin-1").strip()


class StartFailureInOneLine:
    """A start that fails for a reason Baton can name (``StartFailed``: a platform refused its token)
    is reported in one line. Starlette hands uvicorn the whole traceback of any start failure, and
    uvicorn logs it: a page of frames around the one line that matters."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)

        async def send_in_one_line(message: Message) -> None:
            last = str(message.get("message") or "").rstrip().splitlines()[-1:]
            marker = f"{StartFailed.__module__}.{StartFailed.__qualname__}: "
            if message["type"] == "lifespan.startup.failed" and last and last[0].startswith(marker):
                message = {**message, "message": f"Baton cannot start: {last[0].removeprefix(marker)}"}
            await send(message)

        await self.app(scope, receive, send_in_one_line)


async def database_away(request: Request, exc: Exception) -> JSONResponse:
    """A request the database could not serve because it cannot be reached (or, on SQLite, written: the
    disk full, say): a 503 that says so, and when to try again, not a 500 with a traceback in the log (a
    PostgreSQL outage itself is logged once, by ``storage.db``). Any other database error is still a 500:
    that one is Baton's bug, with its traceback."""
    health = request.app.state.baton.db.health
    if (reason := health.unusable(exc)) is None:
        raise exc
    detail = DATABASE_AWAY
    if health.problem is None:  # SQLite's (no outage is kept for it): said here, for each request
        log.warning("%s %s was refused with a 503: Baton's database cannot be written (%s): %s", request.method,
                    request.url.path, reason, health.advice(exc))
        detail = DATABASE_UNWRITABLE.format(reason=reason)
    return JSONResponse(status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                        content={"detail": detail})


async def unreadable_body(request: Request, exc: HTTPException) -> Response:
    """A body JSON's decoder could not take for a reason other than its syntax got FastAPI's bare "There was
    an error parsing the body" (a 400): this says which. Every other HTTP error is answered as FastAPI does (a
    405's ``Allow`` naming HEAD too)."""
    cause, reason = exc.__cause__ if exc.status_code == 400 else None, None
    if isinstance(cause, UnicodeDecodeError):
        reason = f"byte {cause.start + 1:,} is not UTF-8 (JSON is UTF-8 text)"
    elif isinstance(cause, RecursionError):
        reason = "its JSON is nested too deeply"
    elif isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        reason = f"a number in it has more than {sys.get_int_max_str_digits():,} digits"
    if reason is None:
        if exc.status_code == 405:
            headers = exc.headers or {}
            allow = allowed_methods(headers.get("Allow", ""))
            exc = HTTPException(405, exc.detail, headers={**headers, "Allow": allow})
        return await http_exception_handler(request, exc)
    return JSONResponse(status_code=400, content={"detail": f"the request body cannot be read: {reason}"})


def allowed_methods(allow: str) -> str:
    """A 405's ``Allow`` with HEAD wherever GET is: every GET route of Baton's answers HEAD, from a route of its own
    (kept out of the API's schema), and Starlette names only the first route of the path (``Allow: GET``)."""
    methods = {method.strip() for method in allow.split(",") if method.strip()}
    return ", ".join(sorted((methods | {"HEAD"}) if "GET" in methods else methods))


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each field that is wrong and why, without echoing the input back as FastAPI does:
    it may be 100 kB long, or hold a character JSON cannot encode (which made this a 500). The first
    ``MAX_ERRORS_SHOWN``, and how many more: a body of 100,000 unknown fields, each an error of its own,
    got an answer ten times its size; a field's name is cut as long as a quote (it may be the 900 kB)."""
    errors = exc.errors()
    detail = [{"loc": [storable(quoted(str(part), MAX_NAME_SHOWN)) for part in error.get("loc", ())],
               "msg": storable(not_an_object(request, error) or no_body(error) or json_syntax(error)
                               or validation_words(error)),
               "type": error.get("type", "")}
              for error in errors[:MAX_ERRORS_SHOWN]]
    if len(errors) > MAX_ERRORS_SHOWN:
        detail.append({"loc": ["body"], "msg": f"and {len(errors) - MAX_ERRORS_SHOWN:,} more errors",
                       "type": "too_many_errors"})
    return JSONResponse(status_code=422, content={"detail": detail})


def no_body(error: Any) -> str | None:
    """What to say of a request that came without a body (else ``None``): ``curl -X POST`` without ``-d`` was told
    "Field required" of the body, which named no field and did not say that the body was missing."""
    if tuple(error.get("loc", ())) != ("body",) or error.get("type") != "missing":
        return None
    return "the request has no body: send a JSON object with Content-Type: application/json"


def json_syntax(error: Any) -> str | None:
    """What JSON's decoder found wrong, and where (else ``None``): a body that broke JSON's syntax was told
    "JSON decode error" at a character's position, and not what was wrong there."""
    said = (error.get("ctx") or {}).get("error") if error.get("type") == "json_invalid" else None
    if not isinstance(said, str) or not said:
        return None
    where = error.get("loc", ())[-1] if error.get("loc") else None
    at = f" at offset {where:,} (counted from 0, as its loc)" if isinstance(where, int) else ""
    return f"JSON decode error: {said}{at}"


def not_an_object(request: Request, error: Any) -> str | None:
    """What to say of a body that is no JSON object (else ``None``). FastAPI reads a body as JSON only when its
    Content-Type says so: ``curl -d`` without the header (a form), or ``fetch`` without it (text/plain),
    was told only "Input should be a valid dictionary or object to extract fields from"."""
    if tuple(error.get("loc", ())) != ("body",) or error.get("type") != "model_attributes_type":
        return None
    content_type = request.headers.get("content-type")
    header = email.message.Message()
    header["content-type"] = content_type or ""
    subtype = header.get_content_subtype()
    read_as_json = header.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))
    if content_type and read_as_json:
        return "the body must be a JSON object"
    sent_as = f"'{quoted(content_type, 60)}'" if content_type else "no Content-Type"
    return f"the body must be a JSON object sent with Content-Type: application/json (it came with {sent_as})"
