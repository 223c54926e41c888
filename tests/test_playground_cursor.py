"""The playground's live stream (``GET /api/events``) with several replicas on one database.

The stream followed ``updated_at``, stamped on each writer's own clock. With two replicas whose clocks differed
by more than its 5 s overlap, a page missed the other replica's messages and card edits until it was reloaded:
a replica behind wrote changes older than the cursor of every other replica's streams, and one ahead moved
their cursors minutes ahead, past what every other replica wrote next. And a slow transaction that committed
after a later one had been read was missed whatever the clocks said. Here two real Batons serve the page's API
over HTTP in this process, one with its clock minutes off: its code, and only its code, reads that clock (a
context variable picks the replica whose code asks).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import storage.models
from adapters.playground import PlaygroundAdapter
from bot.app import Baton
from bot.messages import Location, Message
from bot.outbox import Delivery
from bot.server import create_app
from bot.settings import Settings
from storage.db import Database
from tests.support import until

SKEW = timedelta(minutes=5)
WAIT = 10.0  # seconds a change may take to reach a stream (it takes at most one look: half a second)
CHANNEL = "random"
_SKEW_OF_THIS_CODE: contextvars.ContextVar[timedelta] = contextvars.ContextVar("skew", default=timedelta(0))


def _replica_clock() -> datetime:
    return datetime.now(UTC) + _SKEW_OF_THIS_CODE.get()


@pytest.fixture
def clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every module's ``utcnow`` reads the clock of the replica whose code calls it."""
    original = storage.models.utcnow
    for module in list(sys.modules.values()):
        if getattr(module, "utcnow", None) is original:
            monkeypatch.setattr(module, "utcnow", _replica_clock)


def _context(skew: timedelta) -> contextvars.Context:
    context = contextvars.copy_context()
    context.run(_SKEW_OF_THIS_CODE.set, skew)
    return context


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test's process keeps its own signal handlers
        yield


@dataclass
class Replica:
    baton: Baton
    url: str
    skew: timedelta
    server: _Server
    task: asyncio.Task[None]

    @property
    def adapter(self) -> PlaygroundAdapter:
        return next(adapter for adapter in self.baton.adapters if isinstance(adapter, PlaygroundAdapter))

    async def run(self, coroutine: Any) -> Any:
        """Await ``coroutine`` as this replica's own code: on its clock."""
        return await asyncio.create_task(coroutine, context=_context(self.skew))

    async def post(self, text: str) -> dict[str, Any]:
        """A user's message, posted through this replica's API."""
        async with httpx.AsyncClient(base_url=self.url, timeout=WAIT) as http:
            posted = await http.post("/api/messages", json={"channel": CHANNEL, "user": "carol", "text": text})
        assert posted.status_code == 201, posted.text
        return posted.json()["message"]  # type: ignore[no-any-return]

    async def send(self, text: str, *, edit: int | None = None, thread: str = "") -> int:
        """The bot's message (or its edit of message ``edit``), stored by this replica as its outbox has it stored."""
        delivery = Delivery(id=0, kind="update" if edit else "post",
                            location=Location(platform="playground", channel=CHANNEL, thread=thread),
                            message=Message.text(text), target_user=None,
                            target_message_id=str(edit) if edit else None, attempts=0)
        return int(await self.run(self.adapter.send(delivery)))


@contextlib.asynccontextmanager
async def _replica(database_url: str, config_path: Path, skew: timedelta = timedelta(0)) -> AsyncIterator[Replica]:
    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    app = create_app(settings)
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    server = _Server(uvicorn.Config(app, log_level="warning", loop="asyncio", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[listening]), context=_context(skew))

    async def started() -> bool:
        if task.done():
            task.result()  # its start failed: say why
        return server.started

    await until(started, "the replica to start")
    replica = Replica(app.state.baton, f"http://127.0.0.1:{listening.getsockname()[1]}", skew, server, task)

    async def recorded(_session: Any, _delivery_id: int, _platform_message_id: str | None) -> None:
        return None  # the messages here are no outbox rows: nothing to mark sent

    replica.baton.outbox.record_delivery = recorded  # type: ignore[method-assign]
    try:
        yield replica
    finally:
        replica.baton.stopping = True  # as ``baton run`` does: the live streams end at their next look
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@dataclass
class Stream:
    """A page's live updates from one replica: the events it got, in order."""

    url: str
    last_event_id: str | None = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    looked: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        async with httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(WAIT, read=None)) as http, \
                http.stream("GET", "/api/events", headers=headers) as response:
            assert response.status_code == 200
            event_id = ""
            async for line in response.aiter_lines():
                if line.startswith("id: "):
                    event_id = line.removeprefix("id: ")
                elif line.startswith("data: "):
                    self.events.append((event_id, json.loads(line.removeprefix("data: "))["message"]))
                elif line == ": keep-alive":  # it has looked at the table at least once
                    self.looked.set()

    async def open(self, opened: list[Stream]) -> Stream:
        opened.append(self)
        self.task = asyncio.create_task(self._read())
        await asyncio.wait_for(self.looked.wait(), WAIT)
        return self

    async def close(self) -> None:
        assert self.task is not None
        if self.task.done():
            self.task.result()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def got(self) -> list[tuple[str, int]]:
        return [(message["text"], message["revision"]) for _id, message in self.events]

    async def gets(self, text: str, revision: int = 1) -> None:
        async def arrived() -> bool:
            if self.task is not None and self.task.done():
                self.task.result()
            return (text, revision) in self.got()
        await until(arrived, f"{text!r} (revision {revision}) on the stream of {self.url} (it got {self.got()})", WAIT)


@pytest.fixture
async def pages() -> AsyncIterator[list[Stream]]:
    """The streams a test opens: any still open at its end (a test that failed) are closed."""
    opened: list[Stream] = []
    yield opened
    for stream in opened:
        if stream.task is not None:
            stream.task.cancel()
    await asyncio.gather(*(stream.task for stream in opened if stream.task is not None), return_exceptions=True)


@pytest.mark.parametrize("skew", [SKEW, -SKEW], ids=["minutes ahead", "minutes behind"])
async def test_every_page_gets_every_replicas_messages_and_edits_in_order_once(
        database: Database, config_path: Path, clocks: None, pages: list[Stream], skew: timedelta) -> None:
    """A page on either replica gets what both store, the bot's card edits included, each revision once and in
    the order they were stored, whichever replica's clock is off."""
    async with _replica(database.url, config_path) as accurate, _replica(database.url, config_path, skew) as off:
        # The skew is real: that replica reads its own clock (which it corrects by the PostgreSQL server's).
        if database.is_sqlite:  # (SQLite's replicas share one machine: nothing to correct it by)
            assert abs(datetime.fromisoformat((await off.post("what time is it"))["created_at"])
                       - datetime.now(UTC) - skew) < timedelta(seconds=30)
        else:
            assert abs(off.baton.db.clock.offset + skew) < timedelta(seconds=30)
        both = [await Stream(accurate.url).open(pages), await Stream(off.url).open(pages)]
        expected: list[tuple[str, int]] = []

        async def everyone_gets(text: str, revision: int = 1) -> None:
            expected.append((text, revision))
            for page in both:
                await page.gets(text, revision)

        await accurate.post("one, on the accurate replica")
        await everyone_gets("one, on the accurate replica")
        thread = (await off.post("two, on the replica whose clock is off"))["id"]
        await everyone_gets("two, on the replica whose clock is off")
        card = await off.send("Approve? (card)", thread=str(thread))
        await everyone_gets("Approve? (card)")
        await accurate.send("Approved by alice (edit 1)", edit=card)
        await everyone_gets("Approved by alice (edit 1)", 2)
        await off.send("Approved by alice, done (edit 2)", edit=card)
        await everyone_gets("Approved by alice, done (edit 2)", 3)
        await accurate.send("three: the result", thread=str(thread))
        await everyone_gets("three: the result")

        # Stored one after another on alternating replicas, without waiting for the streams: in that order.
        burst = [f"burst {number}" for number in range(6)]
        for number, text in enumerate(burst):
            await (accurate if number % 2 else off).send(text, thread=str(thread))
        for text in burst:
            await everyone_gets(text)
        for page in both:
            got = page.got()
            assert got[len(got) - len(expected):] == expected, got  # each revision once, in order
            await page.close()


async def test_a_page_that_lost_its_stream_resumes_on_another_replica(
        database: Database, config_path: Path, clocks: None, pages: list[Stream]) -> None:
    """A page whose stream broke comes back (``Last-Event-ID``), maybe on the other replica: it gets what both
    replicas stored meanwhile. An id that is no change of this database is read as a new stream's start."""
    async with _replica(database.url, config_path) as accurate, _replica(database.url, config_path, SKEW) as ahead:
        page = await Stream(accurate.url).open(pages)
        before = (await accurate.post("before the break"))["id"]
        await page.gets("before the break")
        await page.close()
        last_event_id = page.events[-1][0]
        assert last_event_id.isdigit(), last_event_id

        await ahead.post("while away, on the replica ahead")
        await accurate.send("while away, edited by the accurate replica", edit=before)
        await accurate.post("while away, on the accurate replica")
        back = await Stream(ahead.url, last_event_id).open(pages)
        missed = [("while away, on the replica ahead", 1), ("while away, edited by the accurate replica", 2),
                  ("while away, on the accurate replica", 1)]
        for text, revision in missed:
            await back.gets(text, revision)
        got = back.got()
        assert got[got.index(missed[0]):] == missed, got  # once each, in order (what came first it had already)
        await back.close()

        stranger = await Stream(accurate.url, "999999999999999999").open(pages)  # another database's, or made up
        await ahead.post("after a made-up id")
        await stranger.gets("after a made-up id")
        await stranger.close()


@pytest.mark.postgres
async def test_a_transaction_that_commits_after_a_later_one_is_not_missed(
        postgres_url: str, config_path: Path, clocks: None, pages: list[Stream]) -> None:
    """Two writes in flight together commit in either order: a stream that had read the later one moved its
    cursor past the earlier one, which it then never sent (here the earlier one took 10 s to commit, twice the
    time-based stream's overlap; a change number alone would lose it just the same)."""
    async with _replica(postgres_url, config_path) as replica:
        page = await Stream(replica.url).open(pages)
        stored, release = asyncio.Event(), asyncio.Event()

        async def slow_commit(_session: Any, _delivery_id: int, _platform_message_id: str | None) -> None:
            stored.set()  # its row is written, its transaction still open
            await release.wait()

        replica.baton.outbox.record_delivery = slow_commit  # type: ignore[method-assign]
        slow = asyncio.create_task(_stamped_earlier(replica, "the slow one"))
        try:
            await asyncio.wait_for(stored.wait(), WAIT)
            await replica.post("the quick one")  # begun after the slow one, committed before it
            await page.gets("the quick one")
        finally:
            release.set()
            await slow
        await page.gets("the slow one")
        assert page.got() == [("the quick one", 1), ("the slow one", 1)]
        await page.close()


async def _stamped_earlier(replica: Replica, text: str) -> int:
    """``replica.send`` by code whose clock reads 10 s earlier: a send that waited that long for its commit."""
    delivery = Delivery(id=0, kind="post", location=Location(platform="playground", channel=CHANNEL, thread=""),
                        message=Message.text(text), target_user=None, target_message_id=None, attempts=0)
    return int(await asyncio.create_task(replica.adapter.send(delivery), context=_context(-timedelta(seconds=10))))
