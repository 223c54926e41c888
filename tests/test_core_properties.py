"""A stateful property test of the core request path: random sequences of requests, follow-ups, redeliveries,
repeats, clicks (by whoever asked, approvers, others; again, at once, on old cards) and restarts of Baton on the same
SQLite database, against one in-process Baton served through the playground's HTTP API. After every step, once
Baton has nothing left to do, what the database and the threads show is checked against what must always hold:
each command ran as often as it was meant to (a high-risk one only after an approval by an allowed approver), no
thread has two runs at once, each request is answered once and in its turn, each card says who decided it or still
waits, no outbox row is left behind and nothing is half-written."""

from __future__ import annotations

import asyncio
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                run_state_machine_as_test)
from sqlmodel import select

from bot.messages import InboundClick
from storage.models import (Approval, AuditEntry, Effect, InboundEvent, OutboxMessage, PlaygroundMessage, Run,
                            ThreadRecord)
from tests.conftest import PG_SKIP_REASON
from tests.support import create_postgres_database, runs_in, write_config

T = TypeVar("T")
USERS = ["alice", "bob", "carol", "dave"]  # alice and bob approve (write_config)
APPROVERS = {"alice", "bob"}
REQUESTS = ["run uptime", "run uptime force", "run restart service=web", "run restart service=api force", "help",
            "status", "run restart service=db", "run restrat", "frobnicate the widgets", "", "run slow seconds=0.3",
            "cancel"]
FOLLOW_UPS = [*REQUESTS, "thanks!", "approve", "reject"]
SETTLE_SECONDS = 30.0


class LiveBaton:
    """Baton's app (the playground only) started in this process, on an event loop of its own thread, so that
    its drains, outbox and sweeper go on between the steps; ``call`` runs a coroutine there and waits for it."""

    def __init__(self, directory: Path, database_url: str) -> None:
        from bot.server import create_app
        from bot.settings import Settings

        self.counter = directory / "executions.txt"
        config = write_config(directory, self.counter)
        self._settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config,  # type: ignore[call-arg]
                                  BATON_ADAPTERS="playground")
        self._create_app = create_app
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="baton-under-test", daemon=True)
        self._thread.start()
        self._stack: Any = None
        self.app: Any = None
        self.http: httpx.AsyncClient | None = None

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = SETTLE_SECONDS) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def start(self) -> None:
        self.call(self._start())

    def stop(self) -> None:
        self.call(self._stop())

    def close(self) -> None:
        try:
            if self.app is not None:
                self.stop()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    async def _start(self) -> None:
        from contextlib import AsyncExitStack

        self.app = self._create_app(self._settings)
        self._stack = AsyncExitStack()
        await self._stack.enter_async_context(self.app.router.lifespan_context(self.app))
        self.http = await self._stack.enter_async_context(httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://127.0.0.1", timeout=SETTLE_SECONDS))

    async def _stop(self) -> None:
        stack, self._stack, self.app, self.http = self._stack, None, None, None
        await stack.aclose()

    @property
    def baton(self) -> Any:
        return self.app.state.baton

    async def rows(self, model: type[T], *where: Any) -> list[T]:
        async with self.baton.db.read() as session:
            query = select(model).where(*where).order_by(model.id)  # type: ignore[attr-defined]
            return list((await session.exec(query)).all())


class CoreRequestPath(RuleBasedStateMachine):
    directory: Path  # set by the test
    new_database: Callable[[Path], tuple[str, Callable[[], None]]]  # a migrated database for each example; its drop

    def __init__(self) -> None:
        super().__init__()
        self.live: LiveBaton | None = None  # the replica people talk to now
        self.replicas: list[LiveBaton] = []
        self.threads: list[str] = []  # the threads begun, by thread id
        self.posted: list[dict[str, Any]] = []  # the messages posted, with their event ids, to be redelivered
        self.clicks: list[dict[str, Any]] = []  # the clicks made, with their event ids, to be redelivered
        self.restarts = 0
        self.drop: Callable[[], None] | None = None

    # -- set-up and tear-down --------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        directory = self.directory / uuid.uuid4().hex[:8]
        directory.mkdir()
        database_url, self.drop = self.new_database(directory)
        self.replicas = [LiveBaton(directory, database_url) for _ in range(2)]
        for replica in self.replicas:
            replica.start()
        self.live = self.replicas[0]

    def teardown(self) -> None:
        try:
            for replica in self.replicas:
                replica.close()
        finally:
            if self.drop is not None:
                self.drop()

    # -- what people do --------------------------------------------------------------------------------

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self.live is not None and self.live.http is not None
        response = self.live.call(self.live.http.post("/api/messages", json=body))
        if not body["text"].strip():
            assert response.status_code == 400, response.text
            return {}
        assert response.status_code == 201, response.text
        return dict(response.json())

    @rule(text=st.sampled_from(REQUESTS), user=st.sampled_from(USERS), channel=st.sampled_from(["general", "ops"]))
    def ask_in_a_new_thread(self, text: str, user: str, channel: str) -> None:
        body = {"channel": channel, "user": user, "text": f"@baton {text}".strip(), "event_id": uuid.uuid4().hex}
        answer = self._post(body)
        assert answer["delivery"] == "accepted", answer
        self.threads.append(answer["thread_id"])
        self.posted.append({**body, "thread_id": answer["thread_id"]})
        del self.posted[-1]["thread_id"]  # a redelivery of a top-level message is top-level again

    @precondition(lambda self: self.threads)
    @rule(data=st.data(), text=st.sampled_from(FOLLOW_UPS), user=st.sampled_from(USERS), addressed=st.booleans())
    def follow_up(self, data: st.DataObject, text: str, user: str, addressed: bool) -> None:
        thread = data.draw(st.sampled_from(self.threads), label="thread")
        channel = self._channel_of(thread)
        body = {"channel": channel, "user": user, "text": f"@baton {text}".strip() if addressed else text,
                "thread_id": thread, "event_id": uuid.uuid4().hex}
        if not body["text"]:
            body["text"] = "@baton"  # no request: the playground refuses empty text before the bot sees it
        answer = self._post(body)
        assert answer["delivery"] == "accepted", answer
        self.posted.append(body)

    @precondition(lambda self: self.threads)
    @rule(data=st.data(), user=st.sampled_from(USERS))
    def a_burst_in_one_thread(self, data: st.DataObject, user: str) -> None:
        """Several follow-ups posted at once, as people typing together: they queue, in order."""
        thread = data.draw(st.sampled_from(self.threads), label="thread")
        texts = data.draw(st.lists(st.sampled_from(["run uptime force", "status", "run slow seconds=0.2 force",
                                                    "help", "run restart service=worker force"]),
                                   min_size=2, max_size=4), label="texts")
        bodies = [{"channel": self._channel_of(thread), "user": user, "text": f"@baton {text}", "thread_id": thread,
                   "event_id": uuid.uuid4().hex} for text in texts]
        assert self.live is not None and self.live.http is not None
        http = self.live.http

        async def post_all() -> list[httpx.Response]:
            return list(await asyncio.gather(*(http.post("/api/messages", json=body) for body in bodies)))

        for response in self.live.call(post_all()):
            assert response.status_code == 201 and response.json()["delivery"] == "accepted", response.text
        self.posted.extend(bodies)

    @precondition(lambda self: self.posted)
    @rule(data=st.data())
    def redeliver_a_message(self, data: st.DataObject) -> None:
        body = data.draw(st.sampled_from(self.posted), label="message")
        answer = self._post(body)
        assert answer["delivery"] == "duplicate", answer

    def _cards(self) -> list[tuple[Approval, int | None]]:
        """Every card posted so far, decided or not, with the playground message it is (``None``: not sent yet)."""
        assert self.live is not None

        async def read() -> list[tuple[Approval, int | None]]:
            cards = await self.live.rows(Approval)  # type: ignore[union-attr]
            outbox = await self.live.rows(OutboxMessage)  # type: ignore[union-attr]
            sent = {row.id: row.platform_message_id for row in outbox}
            return [(card, int(sent[card.card_outbox_id]) if sent.get(card.card_outbox_id) else None)
                    for card in cards]

        return self.live.call(read())

    @rule(data=st.data(), user=st.sampled_from(USERS), action=st.sampled_from(["approve", "approve", "reject"]),
          how=st.sampled_from(["page", "platform"]))
    def click(self, data: st.DataObject, user: str, action: str, how: str) -> None:
        """A click on a card, waiting or decided: through the page's API, or as Slack and Discord deliver a click
        on a card as the clicker saw it (its buttons may be gone by now)."""
        which = data.draw(st.integers(0, 1000), label="card")  # drawn always: what is there depends on timing
        cards = [card for card in self._cards() if card[1] is not None]
        if not cards:
            return
        card, message_id = cards[which % len(cards)]
        self._click(card, message_id, user, action, how, uuid.uuid4().hex)

    def _click(self, card: Approval, message_id: int | None, user: str, action: str, how: str, event_id: str) -> str:
        assert self.live is not None and self.live.http is not None
        if how == "page":
            response = self.live.call(self.live.http.post("/api/clicks", json={
                "message_id": message_id, "approval_id": card.id, "action": action, "user": user,
                "event_id": event_id}))
            if response.status_code == 400:  # decided: the card has no buttons any more
                return "refused"
            assert response.status_code == 202, response.text
            delivery = str(response.json()["delivery"])
        else:
            root = self.live.call(self.live.rows(ThreadRecord, ThreadRecord.id == card.thread_record_id))[0]
            accepted = self.live.call(self.live.baton.accept_click(InboundClick(
                platform="playground", channel=root.channel, thread=root.thread, user=user, approval_id=card.id,
                action=action, event_id=f"click:{event_id}")))
            delivery = accepted.status
        self.clicks.append({"card": card, "message_id": message_id, "user": user, "action": action, "how": how,
                            "event_id": event_id, "delivery": delivery})
        return delivery

    @rule(data=st.data(), users=st.lists(st.sampled_from(USERS), min_size=2, max_size=3),
          actions=st.lists(st.sampled_from(["approve", "reject"]), min_size=3, max_size=3))
    def clicks_at_once(self, data: st.DataObject, users: list[str], actions: list[str]) -> None:
        """Several people click one waiting card at the same moment: the first valid decision wins."""
        which = data.draw(st.integers(0, 1000), label="card")
        cards = [card for card in self._cards() if card[1] is not None and card[0].status == "pending"]
        if not cards:
            return
        card, message_id = cards[which % len(cards)]
        assert self.live is not None and self.live.http is not None
        http = self.live.http
        bodies = [{"message_id": message_id, "approval_id": card.id, "action": action, "user": user,
                   "event_id": uuid.uuid4().hex} for user, action in zip(users, actions)]

        async def click_all() -> list[httpx.Response]:
            return list(await asyncio.gather(*(http.post("/api/clicks", json=body) for body in bodies)))

        for body, response in zip(bodies, self.live.call(click_all())):
            assert response.status_code in (202, 400), response.text
            if response.status_code == 202:
                self.clicks.append({"card": card, "message_id": message_id, "user": body["user"],
                                    "action": body["action"], "how": "page", "event_id": body["event_id"],
                                    "delivery": response.json()["delivery"]})

    @precondition(lambda self: self.clicks)
    @rule(data=st.data())
    def redeliver_a_click(self, data: st.DataObject) -> None:
        made = self.clicks[data.draw(st.integers(0, 1000), label="click") % len(self.clicks)]
        before = len(self.clicks)
        delivery = self._click(made["card"], made["message_id"], made["user"], made["action"], made["how"],
                               made["event_id"])
        del self.clicks[before:]  # the same click: not one more
        if made["delivery"] == "accepted":
            assert delivery == "duplicate", (made, delivery)

    @rule()
    def talk_to_the_other_replica(self) -> None:
        """From now on people's posts and clicks reach the other replica (a load balancer's turn)."""
        self.live = self.replicas[1 - self.replicas.index(self.live)]  # type: ignore[arg-type]

    @rule()
    def restart_baton(self) -> None:
        """Baton stopped and started again on the same database, between two steps."""
        assert self.live is not None
        self.live.stop()
        self.live.start()
        self.restarts += 1

    @rule(text=st.sampled_from(["run uptime force", "run slow seconds=0.3 force", "run restart service=web force"]),
          user=st.sampled_from(USERS), data=st.data())
    def stop_while_working(self, text: str, user: str, data: st.DataObject) -> None:
        """Baton stopped while a request it just took runs (or a click it just took resumes a run), then started
        again on the same database: the work is taken up again, not lost and not done twice."""
        assert self.live is not None
        click, which = data.draw(st.booleans(), label="a click rather than a request"), data.draw(st.integers(0, 1000))
        pending = [card for card in self._cards() if card[1] is not None and card[0].status == "pending"]
        if pending and click:
            card, message_id = pending[which % len(pending)]
            approver = next(name for name in sorted(APPROVERS) if name != card.requested_by)
            self._click(card, message_id, approver, "approve", "page", uuid.uuid4().hex)
        else:
            body = {"channel": "general", "user": user, "text": f"@baton {text}", "event_id": uuid.uuid4().hex}
            answer = self._post(body)
            self.threads.append(answer["thread_id"])
            self.posted.append(body)
        self.live.stop()
        self.live.start()
        self.restarts += 1

    # -- what must hold ----------------------------------------------------------------------------------

    def _channel_of(self, thread: str) -> str:
        assert self.live is not None
        root = self.live.call(self.live.rows(PlaygroundMessage, PlaygroundMessage.id == int(thread)))
        return root[0].channel

    @invariant()
    def everything_holds_once_baton_has_settled(self) -> None:
        if self.live is None or self.live.app is None:
            return
        self.live.call(self._settled(), SETTLE_SECONDS + 5)
        self.live.call(self._check())

    async def _settled(self) -> None:
        """Wait until nothing is left to do: no event waits but those queued behind a card, no run runs, no
        message waits to be sent."""
        assert self.live is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_SECONDS
        last: Any = None
        while loop.time() < deadline:
            records = {r.id: r for r in await self.live.rows(ThreadRecord)}
            events = await self.live.rows(InboundEvent, InboundEvent.status == "pending")
            busy = [e.id for e in events if e.kind != "message"
                    or records[e.thread_record_id].status != "waiting"]  # type: ignore[index]
            running = await self.live.rows(Run, Run.status == "running")
            unsent_now = OutboxMessage.status.in_(("pending", "sending"))  # type: ignore[attr-defined]
            unsent = await self.live.rows(OutboxMessage, unsent_now)
            last = (busy, [r.id for r in running], [o.id for o in unsent])
            if not any(last):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"Baton did not settle within {SETTLE_SECONDS}s: (events, runs, outbox) {last}")

    async def _check(self) -> None:
        assert self.live is not None
        live = self.live
        records = await live.rows(ThreadRecord)
        events = await live.rows(InboundEvent)
        runs = await live.rows(Run)
        cards = await live.rows(Approval)
        effects = await live.rows(Effect)
        audit = await live.rows(AuditEntry)
        outbox = await live.rows(OutboxMessage)
        shown = {row.id: row for row in await live.rows(PlaygroundMessage)}
        executed = Counter(runs_in(live.counter))
        runs_by_id = {run.id: run for run in runs}

        # Each command ran as often as its runs say: a low-risk one once a run, a high-risk one once an approval.
        done_commands = Counter()
        for effect in effects:
            assert effect.status in ("done", "failed"), f"effect left {effect.status}: {effect}"
            if effect.status == "done" and effect.name == "command":
                done_commands[runs_by_id[effect.run_id].input_text] += 1  # type: ignore[index]
        per_run = Counter(effect.run_id for effect in effects)
        assert all(count == 1 for count in per_run.values()), f"a run with two command effects: {per_run}"
        uptime_runs = [run for run in runs if run.input_text.startswith("run uptime") and run.status == "done"]
        assert executed["uptime"] == len(uptime_runs), (executed, [r.id for r in uptime_runs])
        approved = [card for card in cards if card.status == "approved"]
        for card in approved:
            assert card.decided_by in APPROVERS and card.decided_by != card.requested_by, card
            assert runs_by_id[card.run_id].status in ("done", "failed"), runs_by_id[card.run_id]
        restarted = sum(count for line, count in executed.items() if line.startswith("restart "))
        assert restarted == len(approved), (executed, approved)
        for card in cards:
            if card.status == "rejected":
                assert card.decided_by in APPROVERS | {card.requested_by}, card
            if card.status != "pending":
                assert card.decided_by and card.decided_at, card

        # No thread has two runs going; a thread says what its runs say.
        for record in records:
            going = [run for run in runs if run.thread_record_id == record.id and run.status in ("running", "waiting")]
            assert len(going) <= 1, f"thread {record.thread} has two runs going: {going}"
            if going:
                assert record.status == going[0].status, (record, going)
            else:
                assert record.status not in ("running", "waiting"), (record, runs)

        # Each card says who decided it, or still waits with its buttons (and its run waits).
        for card in cards:
            outbox_row = next(row for row in outbox if row.id == card.card_outbox_id)
            message = shown[int(outbox_row.platform_message_id)]  # type: ignore[arg-type]
            buttons = any(part.get("kind") == "buttons" for part in message.content.get("parts", []))
            if card.status == "pending":
                assert buttons, message.text
                assert runs_by_id[card.run_id].status == "waiting", (card, runs_by_id[card.run_id])
            else:
                assert not buttons, (card, message.text)
                assert f"by {card.decided_by} at" in message.text, (card.status, card.decided_by, message.text)

        # Every request is handled once, in its turn; each answered once.
        for event in events:
            if event.status == "done":
                assert event.outcome and event.handled_at, event
        for record in records:
            mine = [event for event in events if event.thread_record_id == record.id and event.kind == "message"
                    and event.status == "done"]
            handled = [event.handled_at for event in mine]
            assert handled == sorted(handled), f"thread {record.thread} handled out of order: " + \
                str([(event.id, event.text, event.handled_at) for event in mine])
            started = [run.inbound_id for run in runs if run.thread_record_id == record.id]
            assert started == sorted(started), f"thread {record.thread}: runs started out of order {started}"
        terminal = Counter()
        for entry in audit:
            assert entry.correlation_id, entry
            if entry.kind == "request.answered" or entry.kind in ("run.done", "run.failed"):
                terminal[entry.correlation_id] += 1
        for run in runs:
            if run.status in ("done", "failed"):
                assert run.finished_at is not None, run
        for event in events:
            if event.kind == "message" and event.status == "done" and event.outcome != "waiting for approval":
                if event.outcome in ("done", "failed") and any(run.inbound_id == event.id for run in runs):
                    continue  # its run's end, counted by the run's correlation below
                assert terminal[event.correlation_id] == 1, (event, terminal[event.correlation_id])
        for run in runs:
            if run.status in ("done", "failed"):
                ends = [entry for entry in audit if entry.correlation_id == run.correlation_id
                        and entry.kind in ("run.done", "run.failed")]
                assert len(ends) == 1, (run, ends)

        # The thread shows each command's output once per run of it.
        for record in records:
            said = [m for m in shown.values() if m.is_bot and m.thread_id == record.thread and not m.visible_to]
            uptime = [run for run in uptime_runs if run.thread_record_id == record.id]
            assert sum("did uptime" in m.text for m in said) == len(uptime), (record.thread, [m.text for m in said])

        # A refused or late click is answered to its clicker alone; a repeated request points at its twin.
        for event in events:
            if event.kind == "click" and event.outcome in ("refused", "already decided"):
                told = [m for m in shown.values() if m.visible_to == event.user and m.thread_id == event.thread]
                assert told, (event, "no answer only its clicker sees")
            if event.outcome == "duplicate request":
                said = [m.text for m in shown.values() if m.is_bot and m.thread_id == event.thread]
                assert any("so I did not" in text for text in said), (event, said)

        # Nobody holds a thread that has nothing to do.
        for record in records:
            assert record.lease_owner is None, (record, "holds a lease with nothing to do")

        # No outbox row is left behind or failed.
        stuck = [row for row in outbox if row.status not in ("sent",)]
        assert not stuck, stuck


@pytest.fixture
def new_database(request: pytest.FixtureRequest) -> Callable[[Path], tuple[str, Callable[[], None]]]:
    """What makes each example's database: a copy of a migrated one, on the backend the test runs on."""
    if request.param == "sqlite":
        migrated = request.getfixturevalue("migrated_sqlite")

        def copy(directory: Path) -> tuple[str, Callable[[], None]]:
            shutil.copyfile(migrated, directory / "baton.db")
            return f"sqlite:///{directory / 'baton.db'}", lambda: None

        return copy
    if PG_SKIP_REASON:
        pytest.skip(PG_SKIP_REASON)
    template = request.getfixturevalue("migrated_postgres")
    return lambda _directory: create_postgres_database(template, drop_later=True)


@pytest.mark.parametrize("new_database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
                         indirect=True)
def test_the_core_request_path_keeps_its_promises_whatever_people_do(
        tmp_path: Path, new_database: Callable[[Path], tuple[str, Callable[[], None]]]) -> None:
    CoreRequestPath.directory = tmp_path
    CoreRequestPath.new_database = staticmethod(new_database)  # type: ignore[assignment]
    # Derandomized (conftest): the same 8 sequences of up to 15 steps each run: ~20 s on SQLite, ~30 s on PostgreSQL.
    run_state_machine_as_test(CoreRequestPath, settings=settings(max_examples=8, stateful_step_count=15, deadline=None))
