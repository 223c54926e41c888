"""The one request path: claim, queue per thread, route, run, approve, resume, reply.

Every inbound event is first stored with a unique platform event id (a retry, a redelivery or a
second replica stops there). Pending events form each thread's queue; whoever holds the thread's
lease drains it in order. A crash leaves events pending and the lease expiring, and the sweeper
of any replica picks the work up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import unicodedata
import uuid
from datetime import datetime, timedelta
from typing import Any

from langgraph.types import Command, Interrupt
from sqlalchemy import Boolean, DateTime, Float, String, bindparam, exists, func, literal, or_, update
from sqlalchemy.orm import aliased
from sqlmodel import select

from bot import approvals, audit, digest_commands, model_routing, replies, threads, tool_review
from bot.config import BatonConfig
from bot.kit import APPROVAL_MARK, APPROVAL_TEXT_LIMIT, Request, duration, people_read
from bot.leased_run import LeasedRunServices, LeaseLost
from bot.lookalikes import controls_escaped
from bot.digests import Digests
from bot.messages import Accepted, InboundClick, InboundMessage, Location, Message, quoted_code, storable
from bot.outbox import Delivery, Outbox
from bot.registry import GraphSpec
from bot.models import MODEL_ERRORS, ModelFailed, cost_of, usage_of
from bot.routing import (CANCEL_COMMAND, CHOOSER, DECISION_WORDS, DIGEST_COMMAND, ROUTER, RUNBOOK_GRAPH, Route,
                          RouteError, aside, cancel_word, is_cancel, is_request, route, route_to, runbook_named)
from bot.runtime import (EffectInDoubt, GraphOutcome, GraphRuntime, ProgressSink, RunServices, RunTimedOut,
                         Services)
from bot.settings import Settings
from storage.db import (Transaction, database_advice, database_unreachable, database_unusable, insert_new_id,
                        insert_row, lock_for_transaction, prepared, when_committed)
from storage.models import Approval, Effect, InboundEvent, OutboxMessage, Run, ThreadRecord, loaded

log = logging.getLogger("baton.orchestrator")
SWEEP_AFTER_SECONDS = 2.0
MENTION_ADDED = ":mention-added"  # the event id of a message's edit that added the bot's mention (``_talk``)
EDIT_OF = "edit_of"  # the payload key of such an edit stored while its message was queued: that message's event id
PASSED_OVER = ("conversation", "empty", "too long")  # outcomes of a message without a mention: no answer
SWEEP_BATCH = 200
# Threads with events pending since before ``received_before`` and no live lease: nobody is draining them. An
# event received after ``received_after`` was stamped before the database's clock was set back: it counts as old
# (waited for, a dead replica's requests were taken over only once the clock had caught up).
_ORPHANED_THREADS = prepared(select(InboundEvent.thread_record_id).join(ThreadRecord).where(
    InboundEvent.status == "pending",
    or_(InboundEvent.received_at < bindparam("received_before", type_=DateTime()),
        InboundEvent.received_at > bindparam("received_after", type_=DateTime())),
    threads.LEASE_RUN_OUT,
    or_(threads.URGENT, ThreadRecord.status != "waiting"),
).distinct().limit(SWEEP_BATCH))  # a backlog is taken a batch per sweep, never in one long query
EXPIRY = "expiry"  # the payload key of the event Baton stores when a card's time is up (no platform click has it)
EXPIRY_EVENT = "baton-expiry:"  # + the approval's id: the event id of that event (one per card)
UNPOSTED = "unposted"  # the payload key of the event Baton stores when the platform refused a card for good
UNPOSTED_EVENT = "baton-unposted:"  # + the approval's id
_EXPIRY_STORED = aliased(InboundEvent)
# Cards nobody decided on since before ``asked_before`` (``Orchestrator.expire_approvals``) whose expiry is not
# stored yet: one whose expiry was handled and still shows pending (its handling broke off) is not picked
# again and again, taking the batch's room from the cards behind it.
_OVERDUE_APPROVALS = prepared(select(Approval.id, ThreadRecord.platform, ThreadRecord.workspace, ThreadRecord.channel,
                                     ThreadRecord.thread, ThreadRecord.id).join(
    ThreadRecord, Approval.thread_record_id == ThreadRecord.id).where(  # type: ignore[arg-type]
    Approval.status == "pending", Approval.created_at < bindparam("asked_before", type_=DateTime()),
    ~exists().where(_EXPIRY_STORED.platform == ThreadRecord.platform,
                    _EXPIRY_STORED.event_id == literal(EXPIRY_EVENT) + Approval.id),
).order_by(Approval.created_at).limit(SWEEP_BATCH))
INVISIBLE = {"Cf", "Cc", "Zs", "Zl", "Zp"}  # format characters (U+200B), controls and spaces: no request
PROGRESS_LINES = 20  # the latest progress lines a run's progress message shows
# A longer line is cut: every edit stores the whole message, and 50 lines of 100 KB stored 81 MB of outbox rows.
PROGRESS_LINE_CHARS = 1000
# A run taken up again after Baton stopped while it ran more often than this is failed instead: the run
# itself may be what stops Baton (os._exit in a node, the memory it takes), at every start of every replica.
MAX_TAKEOVERS = 3
CUT_OFF_SECONDS = 1.0  # past the grace, what the runs' last checkpoint writes get before they are refused
CANCEL_LOOK_SECONDS = 0.5  # how often a stopping Baton looks for cancels of the runs in their grace
STOP_GRACE_SECONDS = 8.0  # what a stopping Baton waits for events being handled (uvicorn's own grace is 10 s)


# Statements of every request, built once with bound parameters (building them cost more CPU than running them).
_RECENT_TWIN = prepared(select(ThreadRecord).where(
    ThreadRecord.platform == bindparam("platform"), ThreadRecord.workspace == bindparam("workspace"),
    ThreadRecord.channel == bindparam("channel"), ThreadRecord.fingerprint == bindparam("fingerprint"),
    or_(*(ThreadRecord.status == busy for busy in threads.BUSY),  # no IN list: prepared statements take none
        (ThreadRecord.status == "done") & (ThreadRecord.updated_at >= bindparam("since", type_=DateTime()))),
).order_by(ThreadRecord.updated_at.desc()).limit(1))  # type: ignore[attr-defined]
# The writes of every request go to the tables (SQLAlchemy Core): ORM-enabled UPDATEs cost more CPU
# than the SQL they run.
_EVENTS, _THREADS, _RUNS = InboundEvent.__table__, ThreadRecord.__table__, Run.__table__  # type: ignore[attr-defined]
_CLOSE_EVENT = prepared(update(_EVENTS).where(_EVENTS.c.id == bindparam("closed_id"), _EVENTS.c.status == "pending")
                        .values(status="done", outcome=bindparam("closed_as"), handled_at=bindparam("now", type_=DateTime())))
# ``_CLOSE_EVENT`` while this replica holds the event's thread and its run still runs, read without taking the
# thread's row (an aside answered beside its run: the run's own writes take that row, ``_answer_each_beside``). A
# replica that stalled past its lease and lost the thread answered it beside the new holder, whose drain then stopped
# on the event closed; and an answer made while the run ran was stored after it had posted its card ("Nothing in this
# thread waits for a decision now", under the card) or its result (a status saying it runs).
_CLOSE_EVENT_WHILE_HELD = prepared(update(_EVENTS).where(
    _EVENTS.c.id == bindparam("closed_id"), _EVENTS.c.status == "pending",
    exists().where(_THREADS.c.id == _EVENTS.c.thread_record_id, _THREADS.c.lease_owner == bindparam("owner"),
                   _THREADS.c.status == "running"),
    exists().where(_RUNS.c.id == bindparam("run_id"), _RUNS.c.status == "running"),  # that run, not the next one
).values(status="done", outcome=bindparam("closed_as"), handled_at=bindparam("now", type_=DateTime())))
# A run that answers repeats with no link (help, status, a "thanks!" in the thread) keeps the thread's
# fingerprint: the request the thread was made for is still found by the duplicate check.
_START_THREAD = prepared(update(_THREADS).where(_THREADS.c.id == bindparam("record_id")).values(
    status=bindparam("status"), graph=bindparam("graph"),
    fingerprint=func.coalesce(bindparam("fingerprint", type_=String()), _THREADS.c.fingerprint),
    title=bindparam("title"), requested_by=bindparam("user"), updated_at=bindparam("now", type_=DateTime()),
    pruned_at=None))
# A failed request may be asked again: once the thread answers something else (status, help), it is
# "done" again, and the request it kept would be "finished recently".
_FORGET_REQUEST = prepared(update(_THREADS).where(_THREADS.c.id == bindparam("record_id")).values(fingerprint=None))
_FINISH_THREAD = prepared(update(_THREADS).where(_THREADS.c.id == bindparam("record_id")).values(
    status=bindparam("status"), updated_at=bindparam("now", type_=DateTime()), last_result=bindparam("result")))
_FINISH_RUN = prepared(update(_RUNS).where(_RUNS.c.id == bindparam("run_id")).values(
    status=bindparam("status"), finished_at=bindparam("now", type_=DateTime()), error=bindparam("error"),
    cancelled=bindparam("cancelled", type_=Boolean()), turnaround_ms=bindparam("turnaround_ms"),
    waited_seconds=_RUNS.c.waited_seconds + bindparam("waited", type_=Float())))
_KEEP_PROGRESS = prepared(update(_RUNS).where(_RUNS.c.id == bindparam("run_id")).values(
    progress_outbox_id=bindparam("progress_row")))


def _ends_cancelled(status: str, error: str | None) -> bool:
    """Whether a run ending so is marked ``Run.cancelled``: failed with ``CANCELLED_BY`` + who as its error, as
    ``_end_cancelled`` ends it (what the digests and migration 0014 took for cancelled, read from the error)."""
    return status == "failed" and error is not None and error.startswith(threads.CANCELLED_BY)


def continued_progress(shown: list[str], posted: list[str]) -> list[str]:
    """The lines a continued run's progress message shows: those ``shown`` when the run stopped, then
    those the continued run ``posted``. A node that the crash cut short runs again from its start and
    posts its first lines again: where ``posted`` repeats the end of ``shown``, the repeat is shown once."""
    start = next(at for at in range(len(shown) + 1)
                 if shown[at:at + len(posted)] == posted[:len(shown) - at])  # at == len(shown) always matches
    rest = shown[start:]
    return shown[:start] + (posted if len(posted) > len(rest) else rest)


def _says_nothing(text: str) -> bool:
    """A message with nothing to read: empty, or only invisible characters."""
    return not text or all(unicodedata.category(char) in INVISIBLE for char in text)


async def _no_progress(_line: str) -> None:
    """Where an aside's graph's progress lines go (``Orchestrator._handle_aside``): its answer is its reply."""


def _private(message: InboundMessage) -> dict[str, bool]:
    return {"private": True} if message.private else {}  # the usual event's payload stays as it was


class _AnsweredElsewhere(Exception):
    """An aside answered beside its run had been answered meanwhile, or its thread is another replica's now: the
    transaction storing this answer is undone."""


def _housekeeping(event: InboundEvent) -> bool:
    """Whether ``event`` is one Baton stored of itself (a card's expiry, a card the platform refused for good), no
    person's: what handling it posts waits, in its channel, behind the answers to people (``Outbox.enqueue``)."""
    return EXPIRY in event.payload or UNPOSTED in event.payload


def _interrupt_of(approval: Approval, state: GraphOutcome) -> Interrupt | None:
    """The graph's question ``approval`` is the card of, if the graph still waits on it."""
    return next((interrupt for interrupt in state.interrupts if interrupt.id == approval.interrupt_id), None)


class Orchestrator:
    def __init__(self, settings: Settings, services: Services, runtime: GraphRuntime, outbox: Outbox, instance: str,
                 digests: Digests) -> None:
        self.settings = settings
        self.services = services
        self.db = services.db
        self.registry = services.registry
        self.runtime = runtime
        self.outbox = outbox
        self.digests = digests
        self.leases = threads.Leases(services.db, instance, settings.lease_seconds)
        self._tasks: set[asyncio.Task[None]] = set()
        self._drain_slots = asyncio.Semaphore(settings.max_draining_threads)
        self._waiting_for_slot: set[int] = set()
        self._draining: set[int] = set()
        self._drain_again: set[int] = set()
        self._released: set[int] = set()  # threads whose last handled event also released the lease
        self._first_work: dict[int, threads.Work] = {}  # new threads' first events, their lease already ours
        self._stopping = False  # set by ``stop``: no further event is started
        # The runs this process is running now, by thread (the drain's task and the run), for ``cancel``; and
        # the cancel events that stopped one, kept until its run ends.
        self._running: dict[int, tuple[asyncio.Task[Any], Run]] = {}
        self._cancels: dict[int, InboundEvent] = {}
        self._run_services: dict[int, LeasedRunServices] = {}  # of the runs in ``_running``
        self._taken: set[int] = set()  # threads another replica took while this one ran them: their drains cut off
        self._rejected: set[int] = set()  # runs going on to their end after a Reject: a cancel leaves them to it
        # Threads whose asides are being answered beside their run here (``_answer_asides_beside``), one task each;
        # and those where another was stored meanwhile.
        self._beside: dict[int, asyncio.Task[None]] = {}
        self._beside_again: set[int] = set()
        outbox.on_failed = self._message_failed

    @property
    def config(self) -> BatonConfig:
        """``baton.yaml`` as read last: it may be read again while Baton runs (``Baton.reload_config``)."""
        return self.services.config

    # -- 1-2. accept and claim -------------------------------------------------------------------

    async def accept_message(self, message: InboundMessage) -> Accepted:
        """Store the event (unique per platform event id) and queue it on its thread."""
        location = Location(**message.model_dump(include={"platform", "workspace", "channel", "thread"}))
        correlation = uuid.uuid4().hex
        async with self.db.session(urgent=True) as session:  # the platform waits for this write
            record = await threads.find(session, location)
            if record is None and not message.addressed:
                return Accepted(status="ignored", reason="not addressed to the bot and not in a Baton thread")
            new_thread = False
            if record is None:
                record, new_thread = await threads.create(session, location, self.db.now(),
                                                          self.leases.lease_for_new_thread())
            kind, text, payload = "message", message.text, {"addressed": message.addressed, **_private(message)}
            if not new_thread and is_cancel(message.text, message.addressed, self.registry) and (
                    record.status in threads.BUSY or await threads.has_pending(session, record.id)):  # type: ignore[arg-type]
                kind, text, payload = await self._cancel_kind(session, record, message.text, payload)
            elif not new_thread and record.status in threads.BUSY and (asked := self._aside(message)) is not None:
                kind, payload = threads.ASIDE_KIND, {**payload, "aside": asked}
            event = await self._claim(session, message.platform, message.event_id, kind, location, message.user,
                                      text, payload, record.id, correlation, self.db.now())
            if event is None and message.mention_added and (talk := await self._talk(session, message)):
                # Edited to add the mention its writer forgot, where it had been taken for people talking: a
                # request now, once (the edit's id is its own), its original passed over without an answer. One
                # still queued (behind a run, at a card) is looked at again once the drain has taken it (a request
                # taken after it, as this edit is; a status or cancel is answered at once).
                edited = {**payload, EDIT_OF: message.event_id} if talk == "queued" and kind == "message" else payload
                event = await self._claim(session, message.platform, message.event_id + MENTION_ADDED, kind,
                                          location, message.user, text, edited, record.id, correlation,
                                          self.db.now())
            if event is None:
                return Accepted(status="duplicate", reason="this event was already received")
            # A thread made just now has nothing queued before this event. An aside waits for nothing: at a card
            # the drain takes it at once, beside a running run the run's replica answers it (``look_beside_runs``).
            waits = kind == "message"
            queued = waits and not new_thread and (
                record.status == "waiting" or await self._waits_for_work(session, record, message.event_id))
            if queued and not message.addressed and not self._is_request(message):
                queued = False  # people talking in the thread ("can you approve?"): it gets no answer, nor this
            if queued:
                after = "the approval is decided and the current run finishes"
                if record.status != "waiting":
                    after = "the current run finishes"
                elif record.graph == CHOOSER:  # a "Which one?" card: nothing asks for an approval
                    after = "one of the choices above is picked and its run finishes"
                await self.outbox.enqueue(session, location, Message.text(
                    f"Queued: I'll handle this after {after}.", tone="progress"), correlation_id=correlation)
            await audit.record(session, "request.received", correlation, platform=message.platform,
                               channel=message.channel, thread=message.thread, user=message.user, chars=len(message.text))
            # The drain starts at the commit, the acknowledgement waits for the disk: everything the
            # drain shows outside follows a durable write of its own, which takes the event with it.
            # A new thread's lease is already ours, and this event is its whole queue: the drain starts with it.
            when_committed(session, lambda: self._schedule(
                record.id, first=(event, record) if new_thread else None))  # type: ignore[arg-type]
            if kind == threads.CANCEL_KIND and record.id in self._running:  # else the run's replica sees it (``sweep``)
                when_committed(session, lambda: self._spawn(self.look_beside_runs()))
            elif kind == threads.ASIDE_KIND and record.id in self._running:
                when_committed(session, lambda: self._answer_asides_beside(record.id))  # type: ignore[arg-type]
        if queued:
            self.outbox.wake(message.platform)
        return Accepted(status="accepted", correlation_id=correlation)

    async def accept_click(self, click: InboundClick) -> Accepted:
        location = Location(**click.model_dump(include={"platform", "workspace", "channel", "thread"}))
        correlation = uuid.uuid4().hex
        async with self.db.session(urgent=True) as session:  # the platform waits for this write
            # KEY SHARE (PostgreSQL; SQLite renders no clause): retention deletes a decided card with its finished
            # run, then its thread record. Held, the card stays until this click's event names the thread; a click
            # that waited for the card's deletion finds none (an unknown approval, below).
            approval = await session.get(Approval, click.approval_id, with_for_update={"read": True, "key_share": True})
            record_id = approval.thread_record_id if approval else None
            stored = await self._claim(session, click.platform, click.event_id, "click", location, click.user,
                                       click.action, {"approval_id": click.approval_id, "action": click.action},
                                       record_id, correlation, self.db.now())
            if stored is None:
                return Accepted(status="duplicate", reason="this click was already received")
            await audit.record(session, "click.received", correlation, platform=click.platform, channel=click.channel,
                               thread=click.thread, user=click.user, approval_id=click.approval_id, action=click.action)
            if approval is None:
                await self.outbox.enqueue(session, location, Message.text(
                    "I don't know that approval: it may belong to another Baton or have been removed.", tone="warning"),
                    kind="ephemeral", target_user=click.user, correlation_id=correlation)
                await session.exec(_CLOSE_EVENT, params={  # type: ignore[call-overload]
                    "closed_id": stored.id, "closed_as": "unknown approval", "now": self.db.now()})
            elif record_id is not None:
                when_committed(session, lambda: self._schedule(record_id))  # as in accept_message
        self.outbox.wake(click.platform)
        return Accepted(status="accepted", correlation_id=correlation)

    async def _cancel_kind(self, session: Transaction, record: ThreadRecord, text: str,
                           payload: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        """How a ``cancel`` in a busy thread is stored. Behind a running run it would wait for the run's end, so
        it is an event of its own kind, which the replica running the run looks for (``look_beside_runs``); at a
        card it is a click on Reject (its requester withdraws it, an approver rejects it, anyone else is told
        who may). At a card that offers a choice of graphs it is a message, as before. A cancel names the run it
        is for: one that ends before the cancel reaches it leaves the cancel for the drain to answer, never to
        stop the next run."""
        if record.status not in threads.BUSY:  # a request waiting to start (Baton busy): the cancel withdraws it
            return threads.CANCEL_KIND, text, {**payload, "run_id": None}
        if record.status == "running":
            running = (await session.exec(select(Run.id).where(
                Run.thread_record_id == record.id, Run.status == "running").order_by(Run.id.desc()).limit(1))).first()  # type: ignore[union-attr]
            return threads.CANCEL_KIND, text, {**payload, "run_id": running}
        cards = await self._waiting_cards(session, record.id)  # type: ignore[arg-type]
        if not cards:  # a "Which one?" card: the cancel withdraws it (as a message it waited behind the card a day)
            choosing = (await session.exec(select(Approval.run_id).where(
                Approval.thread_record_id == record.id, Approval.status == "pending", Approval.kind == "choice",
            ).order_by(Approval.created_at.desc()).limit(1))).first()  # type: ignore[attr-defined]
            if choosing is None:
                return "message", text, payload
            return threads.CANCEL_KIND, text, {**payload, "run_id": choosing}
        if len(cards) > 1:  # a Reject of one card would leave the run waiting on the others: the run is cancelled
            return threads.CANCEL_KIND, text, {**payload, "run_id": cards[0][1]}
        return "click", "reject", {"approval_id": cards[0][0], "action": "reject", "cancel": True}

    @staticmethod
    async def _waiting_cards(session: Transaction, record_id: int) -> list[tuple[str, int]]:
        """The approval cards (not choices of graphs) of the thread's newest waiting run: (id, run id), newest first."""
        cards = (await session.exec(select(Approval.id, Approval.run_id).where(
            Approval.thread_record_id == record_id, Approval.status == "pending", Approval.kind == "approval",
        ).order_by(Approval.created_at.desc()))).all()  # type: ignore[attr-defined]
        return [(card, run) for card, run in cards if run == cards[0][1]] if cards else []

    async def look_beside_runs(self) -> int:
        """Stop the runs of this process that a ``cancel`` is waiting for, if whoever sent it may stop them
        (who asked for the run, or an approver of its graph or runbook); tell anyone else who may. Answer the
        asides waiting in their threads (``_answer_asides_beside``). How many runs were stopped. Called when a
        cancel is stored here, and by every sweep for the cancels and asides stored elsewhere."""
        running = list(self._running)
        if not running:
            return 0
        async with self.db.read() as session:
            asked = (await session.exec(select(InboundEvent).where(
                InboundEvent.thread_record_id.in_(running), InboundEvent.status == "pending",  # type: ignore[union-attr]
                or_(InboundEvent.kind == threads.CANCEL_KIND, InboundEvent.kind == threads.ASIDE_KIND),
            ).order_by(InboundEvent.id))).all()
        stopped = 0
        for event in asked:
            record_id: int = event.thread_record_id  # type: ignore[assignment]
            if event.kind == threads.ASIDE_KIND:
                if record_id in self._running and record_id not in self._beside:
                    self._answer_asides_beside(record_id)
                continue
            if record_id not in self._running or record_id in self._cancels:
                continue
            task, run = self._running[record_id]
            # For a run that ended, or one answering its Reject (a "cancel" sent twice, the first a Reject at the
            # card; a cancel as someone rejects): the drain answers it. Stopped, the rejection's reply was lost
            # for "cancelled ... a command it was running was killed", and the run ended cancelled.
            if not self._cancel_is_for(event, run) or run.id in self._rejected:
                continue
            others = self._approvers_of(run)
            if self._may_cancel(run, event, others):
                if event.payload.get("run_id") is None and not await self._stops_still(event, record_id, run):
                    continue
                self._cancels[record_id] = event
                task.cancel()
                stopped += 1
                continue
            if event.payload.get("run_id") is None:  # it may withdraw its sender's own queued requests: the drain's
                continue
            async with self.db.session() as session:
                refused = await session.exec(_CLOSE_EVENT, params={  # type: ignore[call-overload]
                    "closed_id": event.id, "closed_as": "cancel refused", "now": self.db.now()})
                if refused.rowcount:  # once, whichever sweep or replica saw it first
                    await self.outbox.enqueue(session, Location(platform=event.platform, workspace=event.workspace,
                                                                channel=event.channel, thread=event.thread),
                                              replies.cancel_refused(run.requested_by, others), kind="ephemeral",
                                              target_user=event.user, correlation_id=event.correlation_id)
                    await audit.record(session, "run.cancel_refused", event.correlation_id, platform=event.platform,
                                       channel=event.channel, thread=event.thread, user=event.user, run_id=run.id)
            self.outbox.wake(event.platform)
        return stopped

    @staticmethod
    def _cancel_is_for(cancel: InboundEvent, run: Run) -> bool:
        """Whether ``cancel`` is for ``run``: the run it names, or, naming none (written while the thread's request
        had not started its run yet: routed by the model, say), the run a request stored before it started."""
        named = cancel.payload.get("run_id")
        if named is not None:
            return bool(named == run.id)
        return run.inbound_id is not None and cancel.id is not None and run.inbound_id < cancel.id

    async def _stops_still(self, cancel: InboundEvent, record_id: int, run: Run) -> bool:
        """Whether ``cancel``, naming no run, read before this look's awaits, is pending still and ``run`` still runs
        here: one that stopped the run its request began is closed by then, and must not stop the next."""
        async with self.db.read() as session:
            status = (await session.exec(select(InboundEvent.status).where(InboundEvent.id == cancel.id))).first()
        running = self._running.get(record_id)
        return status == "pending" and running is not None and running[1] is run and record_id not in self._cancels

    @staticmethod
    def _may_cancel(run: Run, event: InboundEvent, others: list[str]) -> bool:
        """Whether ``event``'s sender may cancel ``run``: who asked for it, or one of ``others`` (``_approvers_of``)."""
        return event.user == run.requested_by or approvals.is_approver(others, event.platform, event.user)

    async def _end_cancelled(self, run: Run, record: ThreadRecord, event: InboundEvent, cancel: InboundEvent,
                             services: RunServices | None = None, *, at_cards: bool = False,
                             at_choice: bool = False) -> None:
        """End ``run`` as cancelled by ``cancel``'s sender, the cancel closed with it (``_finish_run``)."""
        log.info("run %s (%s) was cancelled by %s", run.id, run.graph, cancel.user)
        # When it was written: one the drain takes after the run's replica died waited for its lease to run out.
        written = min(cancel.received_at, self.db.now())
        if written < run.started_at:  # written as its request was routed (``_cancel_is_for``): it ran until now
            written = self.db.now()
        seconds = max((written - run.started_at).total_seconds(), 0.0)
        cut_off = services.cut_off if isinstance(services, LeasedRunServices) else None
        in_doubt = None
        if services is None and not (at_cards or at_choice):  # its replica stopped while it ran: nothing was killed
            async with self.db.read() as session:
                in_doubt = (await session.exec(select(Effect.name).where(  # type: ignore[call-overload]
                    Effect.run_id == run.id, Effect.status == "started"))).first()
        await self._finish_run(run, record, event, "failed", replies.cancelled(
            self._asked_for(run), cancel.user, seconds, at_cards=at_cards, at_choice=at_choice, cut_off=cut_off,
            in_doubt=in_doubt), threads.CANCELLED_BY + cancel.user, services, cancel=cancel)

    async def _handle_cancel(self, event: InboundEvent, record: ThreadRecord) -> None:
        """``_answer_cancel``, unless the cancel was refused beside its run meanwhile."""
        try:
            await self._answer_cancel(event, record)
        except LeaseLost:
            # Refused beside its run by the replica running it (``look_beside_runs``, whose close checks no lease)
            # as the run ended, once this drain had read it as pending: that answer stands, this one is undone, and
            # the thread, still ours, goes on. It stopped the drain, the lease kept until it ran out (30 s).
            if await self._closed_while_ours(event) is not True:
                raise

    async def _answer_cancel(self, event: InboundEvent, record: ThreadRecord) -> None:
        """A cancel the drain takes (before the requests queued in the thread): the run it was for is not
        running in this process. It reached its card since: the cancel rejects the card (or withdraws it, for
        its requester); it waits at several cards, or it is marked running but its replica stopped: it ends here
        as cancelled (its cards expire with it), instead of waiting on or being taken up again first. It ended:
        the reply says so, and who cancelled it if someone did."""
        run_id = event.payload.get("run_id")
        async with self.db.read() as session:
            run = await session.get(Run, run_id) if run_id is not None else await self._run_begun_beside(session, event)
            cards = await self._waiting_cards(session, record.id) if record.status == "waiting" else []  # type: ignore[arg-type]
        waiting = run is not None and run.status == "waiting" and [card for card, of in cards if of == run.id]
        if waiting and len(waiting) == 1:  # its one card: a Reject (its requester withdraws it)
            event.payload = {**event.payload, "approval_id": waiting[0], "action": "reject", "cancel": True}
            return await self._handle_click(event, record)
        choosing = run is not None and run.status == "waiting" and run.graph == CHOOSER
        if run is not None and (waiting or choosing or (run.status == "running" and record.status == "running")):
            others = self._approvers_of(run)
            if not self._may_cancel(run, event, others):
                return await self._finish_event(event, "cancel refused", replies.cancel_refused(
                    run.requested_by, others), ephemeral=True)
            # Waiting at its cards, or its replica stopped while it ran. Its own event stays pending (a run taken
            # over); taken next, it finds its run ended ("recovered").
            return await self._end_cancelled(run, record, event, event, at_cards=bool(waiting), at_choice=choosing)
        if run_id is None:  # its sender's queued requests; else, if it might have, the run it came too late for
            return await self._withdraw_queued(event, outran=run is not None and self._may_cancel(
                run, event, self._approvers_of(run)))
        if run is not None and (run.error or "").startswith(threads.CANCELLED_BY):
            return await self._finish_event(event, "cancelled already", replies.cancelled_already(
                run.error.removeprefix(threads.CANCELLED_BY)))  # type: ignore[union-attr]
        rejected = await self._rejection_of(run, cancel_word(event.text)) if run is not None else None
        if rejected is not None:
            return await self._finish_event(event, "rejected already", rejected)
        await self._finish_event(event, "nothing to cancel", replies.cancel_too_late(cancel_word(event.text)))

    @staticmethod
    async def _run_begun_beside(session: Any, cancel: InboundEvent) -> Run | None:
        """The run of a cancel naming none (``_cancel_is_for``): one that a request stored before it began as the
        cancel came (the model routing it), going on still or ended since; ``None`` when no request had begun."""
        return (await session.exec(select(Run).join(InboundEvent, InboundEvent.id == Run.inbound_id).where(
            Run.thread_record_id == cancel.thread_record_id, Run.inbound_id < cancel.id,  # type: ignore[operator]
            or_(*(Run.status == busy for busy in threads.BUSY), InboundEvent.handled_at >= cancel.received_at),
        ).order_by(Run.id.desc()).limit(1))).first()  # type: ignore[union-attr]

    async def _rejection_of(self, run: Run, word: str) -> Message | None:
        """What a cancel (written with ``word``) that came as ``run`` answered a Reject is told: who rejected it (who
        cancelled it, when the Reject was their ``cancel`` at its card); ``None`` when no card of it was rejected."""
        async with self.db.read() as session:
            card = (await session.exec(select(Approval).where(
                Approval.run_id == run.id, Approval.status == "rejected",
            ).order_by(Approval.decided_at.desc()).limit(1))).first()  # type: ignore[union-attr]
            decided = await session.get(InboundEvent, card.decided_event_id) if card and card.decided_event_id else None
        if card is None:
            return None
        if decided is not None and decided.payload.get("cancel"):
            return replies.cancelled_already(card.decided_by)  # type: ignore[arg-type]
        return replies.rejected_already(card.decided_by, word)  # type: ignore[arg-type]

    async def _withdraw_queued(self, event: InboundEvent, *, outran: bool = False) -> None:
        """A cancel sent while the thread's request waited to start: its sender's requests queued before it go
        unrun (a request of someone else's is theirs to cancel). ``outran``: with none, it came too late for the run
        a request begun as it was written made (``_run_begun_beside``), which has ended."""
        now = self.db.now()
        async with self.db.session() as session:
            withdrawn = (await session.exec(update(InboundEvent).where(  # type: ignore[call-overload]
                InboundEvent.thread_record_id == event.thread_record_id, InboundEvent.kind == "message",
                InboundEvent.status == "pending", InboundEvent.id < event.id, InboundEvent.user == event.user,  # type: ignore[operator]
            ).values(status="done", outcome="cancelled before it started", handled_at=now))).rowcount
            if withdrawn:
                await audit.record(session, "request.cancelled", event.correlation_id, platform=event.platform,
                                   channel=event.channel, thread=event.thread, user=event.user, requests=withdrawn)
            word = cancel_word(event.text)
            reply = replies.withdrawn(event.user, withdrawn) if withdrawn else replies.cancel_too_late(word) \
                if outran else replies.nothing_to_cancel(in_thread=True, word=word)
            delivery = await self._answer(session, event, "cancelled before it started" if withdrawn else
                                          "nothing to cancel", reply)
        self.outbox.hand_over(event.platform, delivery)

    def _approvers_of(self, run: Run) -> list[str]:
        """Who baton.yaml lets decide on ``run``'s graph (a runbook: its own approvers), besides its requester."""
        if run.graph == RUNBOOK_GRAPH:
            runbook = runbook_named(run.input_text)
            if runbook in self.config.runbooks:
                return approvals.who_may_approve(self.config.approvers_for_runbook(runbook), run.requested_by, "high")
        return approvals.who_may_approve(self.config.approvers_for_graph(run.graph), run.requested_by, "high")

    @staticmethod
    def _asked_for(run: Run) -> str:
        """What the user asked for, as chat shows it: ``run restart`` rather than the graph running every runbook,
        and the words a "Which one?" card asked about rather than its pseudo-graph."""
        if run.graph == CHOOSER:
            return quoted_code(run.input_text, 120)
        runbook = runbook_named(run.input_text) if run.graph == RUNBOOK_GRAPH else None
        return f"run {runbook}" if runbook else run.graph

    def _spawn(self, job: Any) -> None:
        task = asyncio.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _aside(self, message: InboundMessage) -> str | None:
        """``routing.aside`` of ``message``, written in a thread busy with a run (a request too long is none)."""
        text = message.text.strip()
        if len(text) > self.settings.max_message_chars:
            return None
        return aside(text, self.registry, addressed=message.addressed)

    def _is_request(self, message: InboundMessage) -> bool:
        """Whether ``message``, written in a Baton thread without mentioning the bot, is a request (a command
        or a graph's pattern, which gets an answer) rather than people talking there (which gets none)."""
        return self._is_request_text(message.text)

    def _is_request_text(self, text: str) -> bool:
        text = text.strip()
        if _says_nothing(text) or len(text) > self.settings.max_message_chars:  # these get no answer either
            return False
        # Asked only of unaddressed messages; in the write transaction: no graph author's code runs.
        return is_request(text, self.registry, addressed=False)

    async def _talk(self, session: Transaction, message: InboundMessage) -> str | None:
        """Whether ``message``'s event was stored without a mention of the bot: ``"passed over"`` as people talking
        (no answer), ``"queued"`` while it waits for the drain (which may yet find a request in it); ``None`` for a
        request Baton took, or one waiting as a request by itself (told "Queued: ..."), which is not run again
        when it is edited."""
        stored = (await session.exec(select(InboundEvent.payload, InboundEvent.kind, InboundEvent.status,
                                            InboundEvent.outcome, InboundEvent.text).where(
            InboundEvent.platform == message.platform, InboundEvent.event_id == message.event_id))).first()
        if stored is None or stored[0].get("addressed") is not False or stored[1] != "message":
            return None
        if stored[2] == "pending":
            return None if self._is_request_text(stored[4]) else "queued"
        return "passed over" if stored[3] in PASSED_OVER else None

    async def _edit_of_a_request(self, event: InboundEvent) -> bool:
        """Whether ``event``, an edit adding the mention stored while its message was queued (``EDIT_OF``), edits a
        message the drain took as a request after all: that one ran, the edit is nothing new."""
        async with self.db.read() as session:
            outcome = (await session.exec(select(InboundEvent.outcome).where(
                InboundEvent.platform == event.platform, InboundEvent.event_id == event.payload[EDIT_OF]))).first()
        return outcome not in PASSED_OVER

    async def _waits_for_work(self, session: Transaction, record: ThreadRecord, event_id: str) -> bool:
        """Whether an earlier event of the thread still to be handled is work (a request or a click), so that
        ``event_id`` waits for it. People's talk there ("thanks!") is passed over without an answer: a request
        behind it alone was told "Queued: ... after the current run finishes" with no run going on."""
        earlier = await threads.pending_before(session, record, event_id)
        # An aside is answered at once, not waited for: a request written as the run ended, beside it a status
        # still being answered, was told "Queued: ... after the current run finishes", with no run going on.
        return len(earlier) == threads.EARLIER_LOOKED_AT or any(
            kind != threads.ASIDE_KIND and (kind == "click" or payload.get("addressed") or self._is_request_text(text))
            for kind, text, payload in earlier)

    @staticmethod
    async def _claim(session: Transaction, platform: str, event_id: str, kind: str, location: Location, user: str,
                     text: str, payload: dict[str, Any], record_id: int | None, correlation: str,
                     received_at: datetime) -> InboundEvent | None:
        """Store the event, received at ``received_at`` (the database's clock); ``None`` when it was received before
        (a retry, a redelivery, another replica)."""
        values = {
            "platform": platform, "event_id": event_id, "kind": kind, "workspace": location.workspace,
            "channel": location.channel, "thread": location.thread, "user": user, "text": text, "payload": payload,
            "status": "pending", "thread_record_id": record_id, "correlation_id": correlation,
            "received_at": received_at}
        new_id = await insert_new_id(session, InboundEvent, values, ["platform", "event_id"])
        return None if new_id is None else loaded(InboundEvent, {**values, "id": new_id})

    # -- 3. one writer per thread ----------------------------------------------------------------

    def _schedule(self, record_id: int, first: threads.Work | None = None) -> None:
        """Drain the thread as soon as one of ``BATON_MAX_DRAINING_THREADS`` slots is free.

        Unbounded, a burst (100 Slack mentions a second) starts thousands of drains that all
        contend for the database and the event loop, and the backlog stalls. A thread already
        waiting for a slot is not scheduled twice: its drain, once started, takes every event
        queued on the thread by then (the sweeper's repeats cost nothing either). A thread this
        process is draining is never drained twice at once, even if its lease ran out meanwhile
        (the lease names the process, not the drain); it is looked at again when that drain ends.

        ``first``: the thread's first event, with the lease this process took when it made the
        thread; the drain starts with it instead of taking the lease and reading the queue.
        """
        if first is not None and record_id not in self._draining and record_id not in self._waiting_for_slot:
            self._first_work[record_id] = first  # only the drain made just below may start with it
        if record_id in self._draining:
            self._drain_again.add(record_id)
            return
        if record_id in self._waiting_for_slot:
            return
        self._waiting_for_slot.add(record_id)
        task = asyncio.create_task(self.drain(record_id), name=f"drain-{record_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, record_id: int) -> None:
        waited = self._drain_slots.locked()
        if waited:  # every slot busy: a new thread's lease goes back, for a replica with a free slot to take
            await self._give_back_unstarted(record_id)  # (its sweep): held here, it waited up to a lease for ours
        async with self._drain_slots:
            self._waiting_for_slot.discard(record_id)
            if self._stopping:
                return await self._give_back_unstarted(record_id)
            if record_id in self._draining:
                self._drain_again.add(record_id)
                return
            self._draining.add(record_id)
            if waited:  # a cancel may have come meanwhile: the thread's queue is read, clicks and cancels first
                self._first_work.pop(record_id, None)
            try:
                await self._drain_now(record_id)
            finally:
                self._draining.discard(record_id)
                # The lease is given back or lost by now. A take that found nothing queued gave it back in the
                # transaction whose commit then marked it held: one entry a thread drained again, for good.
                self.leases.let_go(record_id)
        if record_id in self._drain_again and not self._stopping:
            self._drain_again.discard(record_id)
            self._schedule(record_id)

    async def _drain_now(self, record_id: int) -> None:
        """Handle the thread's queued events in order, if nobody else is doing it already."""
        try:
            work = self._first_work.pop(record_id, None)
            fresh = work is not None and self.leases.still_fresh(work[1])  # a new thread's first event, as stored
            if not fresh:
                work = await self.leases.take(record_id)
        except Exception as exc:
            if not self.db.health.explains(exc):
                log.exception("taking thread %s failed; the sweeper will retry", record_id)
            return
        if work is None:
            return
        heartbeat = asyncio.create_task(self._heartbeat(record_id))
        try:
            while work is not None:
                self._released.discard(record_id)
                await self._handle(*work, fresh=fresh)
                fresh = False
                if record_id in self._released:  # nothing was queued: the last transaction gave the lease back
                    self._released.discard(record_id)
                    break
                if self._stopping:  # the rest of the thread's queue is for whoever takes it next
                    if (beside := self._beside.get(record_id)) is not None:  # an aside's answer under way: stored
                        await asyncio.wait([beside])  # while the lease is ours, not thrown away
                    await self.leases.release(record_id)
                    break
                work = await self.leases.next_or_release(record_id)
        except LeaseLost as exc:
            log.warning("stopped draining: %s", exc)
        except asyncio.CancelledError:  # Baton stopping, past its grace: not an error
            if self._cut_off_as_taken(record_id):
                log.warning("stopped draining thread %s: another replica took it over while this one stalled; "
                            "the run stopped here, and goes on there", record_id)
                return
            log.info("draining thread %s was stopped; the sweeper will retry", record_id)
            await asyncio.shield(self.leases.release(record_id))
            raise
        except BaseException as exc:
            if isinstance(exc, Exception) and self.db.health.explains(exc):
                # The outage is logged once (storage.db); raised, it also ended the task with "Task exception
                # was never retrieved" and its traceback.
                log.warning("draining thread %s stopped, the database being away; the sweeper will retry", record_id)
                with contextlib.suppress(Exception):  # away still: the lease runs out instead
                    await asyncio.shield(self.leases.release(record_id))
                return
            if isinstance(exc, Exception) and (reason := database_unusable(exc)) is not None:
                # SQLite's disk full (say): one line saying what to do, not three tracebacks of the same error. The
                # event stays queued; the thread is taken up again when its lease runs out, as after a crash.
                log.warning("draining thread %s stopped: Baton's database cannot be written (%s): %s; the thread is "
                            "taken up again once it can be", record_id, reason, database_advice(exc))
                with contextlib.suppress(Exception):  # unwritable still: the lease runs out instead
                    await asyncio.shield(self.leases.release(record_id))
                return
            log.exception("draining thread %s stopped; the sweeper will retry", record_id)
            await asyncio.shield(self.leases.release(record_id))
            raise
        finally:
            heartbeat.cancel()
            self._taken.discard(record_id)

    def _cut_off_as_taken(self, record_id: int) -> bool:
        """Whether the drain of ``record_id`` was cancelled by ``_taken_over`` alone (not by Baton stopping too)."""
        task = asyncio.current_task()
        return record_id in self._taken and task is not None and task.uncancel() == 0

    def _taken_over(self, record_id: int) -> None:
        """Another replica took the thread while this one ran it (it stalled past its lease): the run stops
        writing there. It is cut off at once: going on, its step's LangGraph checkpoint was written beside the
        new holder's and became the thread's latest (the card the new holder posted then found its question
        gone, and the thread waited for good). A side effect under way ends first (``stop_after_effect``)."""
        running = self._running.get(record_id)
        if running is None:  # between events or at its end: the next write is fenced (``_mark_done``)
            return
        services = self._run_services.get(record_id)
        if services is not None and services.stop_after_effect():
            return
        self._taken.add(record_id)
        running[0].cancel()

    async def _heartbeat(self, record_id: int) -> None:
        """Renew the lease every third of it; a renewal that fails (a database blip) is tried again
        at the next beat rather than ending the heartbeat, so a long run keeps its thread."""
        while True:
            await asyncio.sleep(self.leases.seconds / 3)
            try:
                renewed = await self.leases.renew(record_id)
            except Exception as exc:
                if not self.db.health.explains(exc) and database_unusable(exc) is None:  # a full disk: the run says so
                    log.exception("renewing the lease on thread %s failed; trying again", record_id)
                continue
            if not renewed:
                log.warning("lost the lease on thread %s", record_id)
                self._taken_over(record_id)
                return

    async def sweep(self) -> int:
        """Schedule every thread that has old pending events and no live lease (crash recovery)."""
        now, after = self.db.now(), timedelta(seconds=SWEEP_AFTER_SECONDS)
        ids = (await self.db.fetch(_ORPHANED_THREADS, {  # leases and events both on the database's clock
            **self.leases.run_out_params(), "received_before": now - after, "received_after": now + after})).all()
        for record_id in ids:
            self._schedule(record_id)  # type: ignore[arg-type]
        if self._running:  # a cancel or an aside stored by another replica for a run of this one
            await self.look_beside_runs()
        await self.db.read_clock()  # once a minute: a clock set meanwhile (NTP) is not taken for a lease's end
        return len(ids)

    async def expire_approvals(self) -> int:
        """Cards waiting longer than ``BATON_APPROVAL_EXPIRY_SECONDS`` expire: nothing runs, the run ends and its
        thread is told. A request approved days later acted on a situation long gone, and one nobody decides
        on kept its thread (and ``status``) waiting for good. The expiry is stored as an event of the card's
        thread, handled in its turn by whoever holds the thread, like a click (one per card, whichever
        replica stores it first). Cards are stamped and compared on the database's clock: on each replica's own,
        one 10 minutes behind stored cards that expired 10 minutes early everywhere."""
        expiry = self.settings.approval_expiry_seconds
        if not expiry:
            return 0
        overdue = (await self.db.fetch(_OVERDUE_APPROVALS, {
            "asked_before": self.db.now() - timedelta(seconds=expiry)})).all()
        stored = 0
        for approval_id, platform, workspace, channel, thread, record_id in overdue:
            location = Location(platform=platform, workspace=workspace, channel=channel, thread=thread)
            async with self.db.session(durable=False) as session:  # the expiry's own outcome is durable
                event = await self._claim(session, platform, f"{EXPIRY_EVENT}{approval_id}", "click", location,
                                          "Baton", "expire", {"approval_id": approval_id, "action": "expire",
                                                              EXPIRY: expiry}, record_id, uuid.uuid4().hex,
                                          self.db.now())
                if event is not None:
                    when_committed(session, lambda: self._schedule(record_id))  # noqa: B023 (called at once)
            stored += event is not None
        return stored

    async def _message_failed(self, session: Transaction, row: OutboxMessage, error: str) -> None:
        """A card the platform refused for good (Baton removed from the channel, the channel archived) cannot be
        clicked: its run waited for a decision nobody could give, until its expiry (a day by default), its thread
        and ``status`` saying "waiting for approval". An event of its thread, stored with the refusal, ends the run
        in its turn (``_card_unposted``), as an expiry does."""
        if row.kind != "post":
            return
        found = (await session.exec(select(Approval.id, Approval.thread_record_id).where(  # type: ignore[call-overload]
            Approval.status == "pending", Approval.card_outbox_id == row.id))).first()
        record = await session.get(ThreadRecord, found[1]) if found is not None else None
        if found is None or record is None:
            return
        approval_id, record_id = found
        event = await self._claim(session, record.platform, f"{UNPOSTED_EVENT}{approval_id}", "click",
                                  threads.location_of(record), "Baton", "expire",
                                  {"approval_id": approval_id, "action": "expire", UNPOSTED: error}, record_id,
                                  row.correlation_id or uuid.uuid4().hex, self.db.now())
        if event is not None:
            when_committed(session, lambda: self._schedule(record_id))

    async def refresh_approvers(self) -> int:
        """At start: the cards waiting for a decision name (and ``status`` and digests list) the approvers
        baton.yaml gives now, not those of when they were posted; how many changed."""
        async with self.db.read() as session:
            waiting = (await session.exec(
                select(Approval, ThreadRecord, Run.correlation_id)
                .join(ThreadRecord, Approval.thread_record_id == ThreadRecord.id)  # type: ignore[arg-type]
                .join(Run, Approval.run_id == Run.id)  # type: ignore[arg-type]
                .where(Approval.status == "pending", Approval.kind == "approval"))).all()
        changed = 0
        for approval, record, correlation in waiting:
            spec = self.registry.get(approval.graph)
            if spec is None:
                continue
            try:
                state = await self.runtime.state(spec, record.lg_thread_id)
                _current, edited = await self._with_approvers_now(approval, record, spec, state, correlation,
                                                                  housekeeping=True)
            except Exception:  # this card is brought up to date at its next click; the others go on
                log.exception("approval %s: its approvers could not be brought up to date", approval.id)
                continue
            changed += edited
        return changed

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop draining, gracefully: the events being handled get ``grace`` seconds to finish (a command
        cut off half-run is an effect in doubt, and its run fails), no further event is started, and a
        thread that waited for a slot gives its lease back at once, so that another replica, or this one
        restarted, takes it without waiting for the lease to run out."""
        self._stopping = True
        for record_id in list(self._waiting_for_slot):
            await self._give_back_unstarted(record_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._tasks and (left := deadline - loop.time()) > 0:
            await asyncio.wait(list(self._tasks), timeout=min(left, CANCEL_LOOK_SECONDS))
            if self._running:  # the sweep is over: a cancel stored elsewhere still reaches a run in its grace
                try:
                    await self.look_beside_runs()
                except Exception as exc:  # the grace runs out as it would have
                    if not self.db.health.explains(exc):
                        log.exception("looking for cancels while stopping failed")
        cut_off = list(self._tasks)
        for task in cut_off:
            task.cancel()
        if cut_off:  # LangGraph lets their checkpoint writes finish: a second for those, not the pool's 30 s
            _done, waiting = await asyncio.wait(cut_off, timeout=CUT_OFF_SECONDS)
            if waiting:
                await self.runtime.refuse_waiting_checkpoints()
        await asyncio.gather(*cut_off, return_exceptions=True)

    async def _give_back_unstarted(self, record_id: int) -> None:
        """A new thread's lease, taken when its first event was stored, for a drain that will not start."""
        if self._first_work.pop(record_id, None) is not None:
            try:
                await self.leases.release(record_id)
            except Exception:
                log.exception("giving back thread %s failed; its lease runs out instead", record_id)

    # -- 4-6. handle one event -------------------------------------------------------------------

    async def _handle(self, event: InboundEvent, record: ThreadRecord, *, fresh: bool = False) -> None:
        """Handle one event; ``fresh``: it was stored just now and has not been looked at before."""
        try:
            if event.kind == "click":
                await self._handle_click(event, record)
            elif event.kind == threads.CANCEL_KIND:
                await self._handle_cancel(event, record)
            elif event.kind == threads.ASIDE_KIND:
                await self._handle_aside(event, record)
            else:
                await self._handle_message(event, record, fresh)
        except LeaseLost:
            raise
        except Exception as exc:
            if database_unusable(exc) is not None:  # its answer cannot be stored either: the drain says why, once
                raise
            log.exception("event %s failed", event.id)
            await self._finish_event(event, f"error: {type(exc).__name__}",
                                     Message.text("Something went wrong while handling this; it was logged.", tone="error"),
                                     failed=f"{type(exc).__name__}: {exc}"[:1000])

    async def _handle_message(self, event: InboundEvent, record: ThreadRecord, fresh: bool = False) -> None:
        if EDIT_OF in event.payload and await self._edit_of_a_request(event):
            return await self._finish_event(event, "edit of a request")
        text = event.text.strip()
        # Written in a Baton thread without mentioning the bot: a request if a command matches, else
        # conversation ("thanks!", "any update?"), which gets no answer (it got the whole help text).
        conversation = event.payload.get("addressed") is False
        if _says_nothing(text):
            return await self._finish_event(event, "empty", None if conversation else Message.text(
                "I see no request in your message. Try `help` to see what I can do.", tone="warning"))
        if len(text) > self.settings.max_message_chars:  # in conversation, a log pasted for people: no answer
            return await self._finish_event(event, "too long", None if conversation else Message.text(
                f"That request is {len(text):,} characters long; I take requests of up to "
                f"{self.settings.max_message_chars:,} characters. Nothing was run.", tone="warning"))
        request = Request(platform=event.platform, channel=event.channel, thread=event.thread, user=event.user, text=text,
                          private=bool(event.payload.get("private")))
        earlier = None if fresh else await self._run_started_by(event)
        if earlier is not None:  # we crashed while handling this event: continue, never start twice
            earlier_spec = self.registry.get(earlier.graph)
            if earlier.status != "running":
                return await self._finish_event(event, "recovered")
            if earlier_spec is None:
                return await self._finish_run(earlier, record, event, "failed", replies.graph_gone(earlier.graph),
                                              f"the {earlier.graph} graph is not installed any more")
            if await self._taken_up_again(earlier, record, event):
                await self._continue(earlier, record, earlier_spec, event, request)
            return None
        try:
            chosen = route(request, text, self.registry, self.config, addressed=not conversation)
        except RouteError as exc:
            return await self._finish_event(event, "rejected input", Message.text(str(exc), tone="warning"))
        if chosen.graph == DIGEST_COMMAND:
            return await self._digest_command(event, chosen.input["words"])
        if chosen.graph == CANCEL_COMMAND:  # a thread with a run going on stored it as a cancel (``_cancel_kind``)
            if conversation and not is_cancel(text, addressed=False, registry=self.registry):  # people talking
                return await self._finish_event(event, "conversation")
            # A thread that ran nothing is the one this message began
            return await self._finish_event(event, "nothing to cancel", replies.nothing_to_cancel(
                in_thread=record.graph is not None, word=cancel_word(text)))
        if chosen.unmatched and conversation and self.services.model is None:
            return await self._finish_event(event, "conversation")
        usage: Any = None
        if chosen.unmatched and self.services.model is not None:
            try:
                redact = self.services.redactor.text if self.services.redactor else None  # as bot.kit.chat does
                guess = await asyncio.wait_for(model_routing.guess(self.services.model, text, self.registry, redact),
                                               self.services.model_deadline)
            except TimeoutError:
                return await self._finish_event(event, "model error", None if conversation else replies.model_error(
                    ModelFailed(f"no answer within {self.services.model_deadline:g}s")))
            except Exception as exc:
                log.warning("model routing failed: %s", exc)
                return await self._finish_event(event, "model error",
                                                None if conversation else replies.model_error(exc))
            usage = guess.raw
            if conversation and guess.graph is None:
                # Chatter in a Baton thread ("thanks!"): answered only when the model names a graph for it,
                # never with the help text, a choice card or a model's error. What asking cost is kept.
                return await self._finish_event(event, "conversation", spent=usage)
            if guess.graph is None and guess.options:
                return await self._offer_choices(event, record, text, guess.options, usage)
            if guess.graph is not None:
                try:
                    chosen = route_to(self.registry, guess.graph, request, text)
                except RouteError as exc:  # the graph's make_input refused the request
                    return await self._finish_event(event, "rejected input", Message.text(str(exc), tone="warning"),
                                                    spent=usage)
        spec = self.registry.get(chosen.graph)
        if spec is None:
            return await self._finish_event(event, "no graph", Message.text(
                f"The `{chosen.graph}` graph is not installed.", tone="error"), spent=usage)
        # A rejected request leaves its thread without a fingerprint (``_handle_click``): only then is one looked for.
        if chosen.fingerprint and not chosen.force and not fresh and record.fingerprint is None and (
                rejected := await self._rejected_while_queued(event, record, request, chosen.fingerprint)) is not None:
            return await self._finish_event(event, "duplicate request", replies.rejected_above(rejected), spent=usage)
        # Not durable: nothing leaves the process before the run's first durable write (an effect's
        # ledger entry, an approval card, the outcome), which flushes this one too.
        async with self.db.session(durable=False) as session:
            twin = await self._locked_twin(session, record, chosen)
            if twin is None:
                run = await self._insert_run(session, event, record, spec.name, text, chosen.fingerprint, chosen.title,
                                             usage)
        if twin is not None:
            return await self._finish_event(event, "duplicate request",  # what routing it cost is kept still
                                            replies.duplicate(twin.channel, twin.thread, twin.status,
                                                              here=twin.id == record.id), spent=usage)
        if not fresh:  # a new thread has no checkpoints yet
            await self._keep_latest_checkpoint(record, spec.name)
        await self._drive(run, record, spec, chosen.input, event)

    async def _keep_latest_checkpoint(self, record: ThreadRecord, graph: str) -> None:
        """Before a new run in a thread that had others: their checkpoints go but the latest, which the run goes on
        from (``GraphRuntime.keep_latest``). A failure costs the run nothing: they go with the next run's."""
        try:
            await self.runtime.keep_latest(record.lg_thread_id, graph)
        except Exception as exc:
            log.warning("deleting the earlier checkpoints of thread %s failed: %s", record.id, storable(str(exc)))

    async def _handle_aside(self, event: InboundEvent, record: ThreadRecord) -> None:
        """``status``, ``help`` or a typed ``approve`` / ``reject`` written while the thread was busy with a run
        (``routing.aside``), taken by the drain before the thread's queued requests: while the thread waits at a
        card, or after the run it was written beside ended before the run's replica answered it
        (``_answer_asides_beside``)."""
        beside = self._beside.get(record.id)  # type: ignore[arg-type]
        if beside is not None:  # answering the thread's asides beside its run, which has just ended: done first
            await asyncio.wait([beside])
            if await self._closed_while_ours(event) is not None:
                return
        outcome, reply, ephemeral = await self._aside_answer(event, record)
        try:
            await self._finish_event(event, outcome, reply, ephemeral=ephemeral)
        except LeaseLost:
            # Answered beside its run by the replica that held the thread before this one (on PostgreSQL, its
            # close ran as its lease ran out, and committed once this drain had read the aside): this answer is
            # undone, and the thread, still ours, goes on. It stopped the drain, the lease kept until it ran out.
            if await self._closed_while_ours(event) is not True:
                raise

    async def _closed_while_ours(self, event: InboundEvent) -> bool | None:
        """Whether ``event`` was closed, and its thread is still this replica's; ``None`` while it is pending."""
        async with self.db.read() as session:
            status, owner = (await session.exec(select(InboundEvent.status, ThreadRecord.lease_owner).join(
                ThreadRecord, ThreadRecord.id == InboundEvent.thread_record_id,  # type: ignore[arg-type]
            ).where(InboundEvent.id == event.id))).one()
        return None if status == "pending" else owner == self.leases.owner

    async def _aside_answer(self, event: InboundEvent, record: ThreadRecord) -> tuple[str, Message, bool]:
        """What an aside is answered: (outcome, reply, whether only its sender sees it). It does not touch the
        thread's run. A decision typed is told where decisions are made (the card's buttons, which check who
        may decide, and whose first decision wins): typed text approves nothing. Status and help run as their
        graphs, with no run of their own: the thread goes on showing its run (and a run row would pass for its
        latest, which a request queued behind a rejected card is compared with)."""
        if event.payload["aside"] in DECISION_WORDS:
            async with self.db.read() as session:
                cards = (await session.exec(select(Approval).where(
                    Approval.thread_record_id == record.id, Approval.status == "pending",
                ).order_by(Approval.created_at))).all()  # type: ignore[arg-type]
            return "typed decision", replies.decide_on_the_card(event.payload["aside"], list(cards), event.user), True
        text = event.text.strip()
        request = Request(platform=event.platform, channel=event.channel, thread=event.thread, user=event.user,
                          text=text, private=bool(event.payload.get("private")))
        try:
            chosen = route(request, text, self.registry, self.config,
                           addressed=event.payload.get("addressed") is not False)
        except RouteError as exc:  # a status or help graph of a team's own refusing what it was asked
            return "rejected input", Message.text(str(exc), tone="warning"), False
        spec = self.registry.get(chosen.graph)
        if spec is None:  # taken out since (baton.yaml reloaded)
            return "no graph", Message.text(f"The `{chosen.graph}` graph is not installed.", tone="error"), False
        services = RunServices(self.services, request, None, record.workspace, event.correlation_id)
        try:
            outcome = await self.runtime.run(spec, record.lg_thread_id, chosen.input, services, _no_progress)
            error = outcome.values.get("error") or None
            reply = replies.result(outcome.values.get("reply"), failed=bool(error), error=error)
        except Exception as exc:  # answered here: the thread's run, which may be running, is no part of it
            log.warning("%s asked beside run of thread %s failed: %s", spec.name, record.id, storable(str(exc)))
            reply = replies.failure(spec.name, exc)
        return spec.name, reply.naming(event.user, *sorted(people_read(services))), False

    def _answer_asides_beside(self, record_id: int) -> None:
        """Answer the asides waiting in thread ``record_id``, whose run runs in this process, beside that run:
        a ``status`` written during a ten-minute deploy was told "Queued: ..." and answered after it. One task
        per thread answers them in order; one stored while it works is read at its end."""
        if self._stopping:
            return  # taken with the thread's queue by whoever drains it next
        if record_id in self._beside:
            self._beside_again.add(record_id)
            return
        task = asyncio.create_task(self._asides_beside(record_id), name=f"asides-{record_id}")
        self._beside[record_id] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _asides_beside(self, record_id: int) -> None:
        try:
            await self._answer_each_beside(record_id)
        finally:  # in the step that decided to stop: an aside stored after it starts a task of its own
            self._beside.pop(record_id, None)
            self._beside_again.discard(record_id)  # asked for as it stopped (its run ended): the drain takes those

    async def _answer_each_beside(self, record_id: int) -> None:
        try:
            again = True
            while again:
                self._beside_again.discard(record_id)
                async with self.db.read() as session:
                    record = await session.get(ThreadRecord, record_id)
                    asides = (await session.exec(select(InboundEvent).where(
                        InboundEvent.thread_record_id == record_id, InboundEvent.status == "pending",
                        InboundEvent.kind == threads.ASIDE_KIND,
                    ).order_by(InboundEvent.id))).all()  # type: ignore[arg-type]
                for event in asides:
                    running = self._running.get(record_id)
                    if running is None or self._stopping:  # the run ended: the drain takes what is left, first
                        return
                    # The graph asked for is the one running (a team's own long `status`): a second run of it beside
                    # the first, in its LangGraph thread, could read the other's state. It waits for the run's end;
                    # the asides behind it do not (a `help` waited for the whole run).
                    if running[1].graph == event.payload["aside"]:
                        continue
                    outcome, reply, ephemeral = await self._aside_answer(event, record)  # type: ignore[arg-type]
                    try:
                        # The thread's outbox lock first, then the event's row, as the drain answering an event takes
                        # them (``_answer``, ``_mark_done``); the thread's row is read, not taken: the run's own writes
                        # take it and the outbox lock in either order (its result, its card), and one of them
                        # deadlocked with this on PostgreSQL. The event is answered by whoever closes it.
                        async with self.db.session() as session:
                            delivery = await self._answer(session, event, outcome, reply, ephemeral=ephemeral,
                                                          close=False)
                            if not (await session.exec(_CLOSE_EVENT_WHILE_HELD, params={  # type: ignore[call-overload]
                                    "closed_id": event.id, "closed_as": outcome[:200], "now": self.db.now(),
                                    "owner": self.leases.owner, "run_id": running[1].id})).rowcount:
                                raise _AnsweredElsewhere
                    except _AnsweredElsewhere:
                        continue  # by the drain, its run ended meanwhile; or the thread is another replica's now
                    self.outbox.hand_over(event.platform, delivery)
                again = record_id in self._beside_again
        except Exception as exc:  # the drain takes them after the run, as before
            if not self.db.health.explains(exc) and database_unusable(exc) is None:
                log.exception("answering the asides of thread %s beside its run failed", record_id)

    async def _rejected_while_queued(self, event: InboundEvent, record: ThreadRecord, request: Request,
                                     fingerprint: str) -> str | None:
        """Who rejected the same request in this thread while ``event`` waited behind it (typed again while its
        card waited): it was asked again at once, a second card right under the Reject. ``None`` otherwise (a
        request written after the Reject is asked again, as a rejected one may be)."""
        async with self.db.read() as session:
            last = (await session.exec(select(Run).where(Run.thread_record_id == record.id).order_by(
                Run.id.desc()).limit(1))).first()  # type: ignore[union-attr]
            if last is None or last.finished_at is None or event.received_at >= last.finished_at:
                return None
            rejected = (await session.exec(select(Approval.decided_by).where(
                Approval.run_id == last.id, Approval.status == "rejected").limit(1))).first()
        if rejected is None:
            return None
        try:
            earlier = route(request, last.input_text, self.registry, self.config)
        except (RouteError, ValueError):
            return None
        return rejected if earlier.fingerprint == fingerprint else None

    async def _run_started_by(self, event: InboundEvent) -> Run | None:
        """The run ``event`` started before Baton stopped, if it got that far."""
        async with self.db.read() as session:
            return (await session.exec(select(Run).where(Run.inbound_id == event.id))).first()

    async def _continue(self, run: Run, record: ThreadRecord, spec: GraphSpec, event: InboundEvent,
                        request: Request) -> None:
        """Go on with a run that was under way when Baton stopped.

        From its graph's last checkpoint; or, when Baton stopped between storing the run and its
        graph's first checkpoint, from the start, with the input routed again from the request (going
        on from the checkpoint would find nothing to do, or an earlier run's end in the same thread).
        """
        if await self.runtime.started(spec, record.lg_thread_id, run.id):  # type: ignore[arg-type]
            return await self._drive(run, record, spec, None, event)
        try:
            chosen = route(request, request.text, self.registry, self.config)
            if chosen.graph != run.graph:  # it was routed by the model or chosen on a card
                chosen = route_to(self.registry, run.graph, request, run.input_text)
        except (RouteError, ValueError) as exc:
            return await self._finish_run(run, record, event, "failed", Message.text(
                f"Baton stopped before this run began, and it cannot be started again as it was ({exc}). "
                "Nothing was run; please ask again.", tone="error"), str(exc)[:1000])
        await self._drive(run, record, spec, chosen.input, event)

    async def _insert_run(self, session: Transaction, event: InboundEvent, record: ThreadRecord, graph: str, text: str,
                          fingerprint: str | None, title: str, usage: Any = None, status: str = "running",
                          user: str | None = None) -> Run:
        user = user or event.user
        run = await insert_row(session, Run, self._run_row(event, record.id, graph, status, user, text, usage))
        await session.exec(_START_THREAD, params={  # type: ignore[call-overload]
            "record_id": record.id, "status": status, "graph": graph, "fingerprint": fingerprint,
            "title": title or graph, "user": user, "now": self.db.now()})
        await audit.record(session, "run.started", event.correlation_id, platform=event.platform, channel=event.channel,
                           thread=event.thread, user=user, run_id=run.id, graph=graph, title=title)
        return run

    def _run_row(self, event: InboundEvent, record_id: int | None, graph: str, status: str, user: str, text: str,
                 usage: Any) -> dict[str, Any]:
        input_tokens, output_tokens = usage_of(usage)
        price = self.config.models.prices.get(self.services.model_name or "")
        now = self.db.now()
        return {
            "thread_record_id": record_id, "inbound_id": event.id, "platform": event.platform,
            "channel": event.channel, "graph": graph, "status": status, "requested_by": user, "input_text": text,
            "correlation_id": event.correlation_id, "started_at": now, "finished_at": now if status == "done" else None,
            "waited_seconds": 0.0, "turnaround_ms": 0 if status == "done" else None, "error": None,
            "tokens": (input_tokens + output_tokens) or None, "cost": cost_of(price, input_tokens, output_tokens),
            "takeovers": 0, "cancelled": False}

    async def _offer_choices(self, event: InboundEvent, record: ThreadRecord, text: str, options: list[str],
                             usage: Any) -> None:
        """The model is unsure: ask the requester to pick the graph (a "choice" card), instead of guessing."""
        async with self.db.session() as session:
            run = await self._insert_run(session, event, record, CHOOSER, text, None, text[:120], usage, status="waiting")
            approval = Approval(kind="choice", run_id=run.id, thread_record_id=record.id,  # type: ignore[arg-type]
                                interrupt_id=f"choice:{uuid.uuid4().hex}", graph=CHOOSER,
                                summary=f"Which of these did you mean by `{quoted_code(text, 300)}`?",
                                details={"text": text, "options": options}, risk="low", approvers=[event.user],
                                requested_by=event.user, created_at=self.db.now())
            session.add(approval)
            await session.flush()
            card_id = await self.outbox.enqueue(session, threads.location_of(record), replies.choice_card(approval),
                                                correlation_id=event.correlation_id)
            approval.card_outbox_id = card_id
            await audit.record(session, "choice.offered", event.correlation_id, platform=event.platform,
                               channel=event.channel, thread=event.thread, user=event.user, run_id=run.id,
                               approval_id=approval.id, options=options)
            await self._mark_done(session, event, "choice offered")
        self.outbox.wake(event.platform)

    async def _digest_command(self, event: InboundEvent, words: list[str]) -> None:
        location = Location(platform=event.platform, workspace=event.workspace, channel=event.channel, thread=event.thread)
        outcome, reply = await digest_commands.answer(self.digests, location, words, user=event.user,
                                                      event_id=event.event_id, correlation_id=event.correlation_id)
        await self._finish_event(event, outcome, reply)

    async def _locked_twin(self, session: Transaction, record: ThreadRecord, chosen: Route) -> ThreadRecord | None:
        """The thread of the same request as ``chosen`` running or done recently in the channel, unless forced; the
        request is locked for the rest of ``session``: the same request sent twice at once (to one replica or
        two), one finds the other's run."""
        if not chosen.fingerprint or chosen.force:
            return None
        await lock_for_transaction(session, f"request:{record.platform}:{record.workspace}:{record.channel}:"
                                            f"{chosen.fingerprint}")
        return await self._recent_twin(session, record, chosen.fingerprint)

    async def _recent_twin(self, session: Transaction, record: ThreadRecord, fingerprint: str) -> ThreadRecord | None:
        since = self.db.now() - timedelta(seconds=self.settings.dedupe_window_seconds)
        return (await session.exec(_RECENT_TWIN, params={  # type: ignore[call-overload]
            "platform": record.platform, "workspace": record.workspace, "channel": record.channel,
            "fingerprint": fingerprint, "since": since})).first()

    async def _handle_click(self, event: InboundEvent, record: ThreadRecord) -> None:
        approval_id = event.payload["approval_id"]
        approve = event.payload["action"] == "approve"
        async with self.db.read() as session:
            approval = await session.get(Approval, approval_id)
            run = await session.get(Run, approval.run_id) if approval else None
        if EXPIRY in event.payload:
            return await self._expire_request(event, record, approval, run)
        if UNPOSTED in event.payload:
            return await self._card_unposted(event, record, approval, run)
        if approval is not None and run is not None and approval.kind == "choice":
            return await self._handle_choice(event, record, approval, run)
        spec = self.registry.get(approval.graph) if approval else None
        if approval is not None and run is not None and spec is None and run.status in threads.BUSY:
            return await self._graph_gone(run, record, event)
        if approval is None or run is None or spec is None:
            return await self._finish_event(event, "unknown approval", Message.text(
                "I can't find the run behind this approval any more.", tone="warning"), ephemeral=True)
        if approval.status != "pending":
            if approval.decided_event_id == event.id and run.status in threads.BUSY:  # crashed mid-resume
                if await self._taken_up_again(run, record, event):
                    await self._resume(approval, run, record, spec, event)
                return None
            return await self._finish_event(event, "already decided", replies.already_decided(approval), ephemeral=True)
        if run.status not in threads.BUSY:  # its run ended (failed) while this card waited: nothing to go on with
            async with self.db.session() as session:
                await self._expire_card(session, record, approval.id, event.correlation_id)
                approval = await session.get(Approval, approval.id, populate_existing=True)
                delivery = await self._answer(session, event, "already decided", replies.already_decided(approval),  # type: ignore[arg-type]
                                              ephemeral=True)
            return self.outbox.hand_over(event.platform, delivery)
        if event.payload["action"] not in ("approve", "reject"):
            return await self._finish_event(event, "unknown action", Message.text(
                "That button is not Approve or Reject; nothing was changed.", tone="warning"), ephemeral=True)
        state = await self.runtime.state(spec, record.lg_thread_id)
        approval, _edited = await self._with_approvers_now(approval, record, spec, state, event.correlation_id)
        reason = approvals.refusal(approval, event.platform, event.user, event.payload["action"])
        if reason is not None:
            async with self.db.session() as session:
                # Under the run's request, as the approval's other entries: the click's own is in ``click``.
                await audit.record(session, "approval.refused", run.correlation_id, platform=event.platform,
                                   channel=event.channel, thread=event.thread, user=event.user, run_id=run.id,
                                   approval_id=approval.id, reason=reason, click=event.correlation_id)
            refused = (replies.cancel_refused(approval.requested_by, approvals.approvers_besides_requester(approval))
                       if event.payload.get("cancel")  # asked to cancel, not to decide
                       else Message.text(reason, tone="warning").naming(approval.requested_by, *approval.approvers))
            return await self._finish_event(event, "refused", refused, ephemeral=True)
        pending = {interrupt.id for interrupt in state.interrupts}
        now = self.db.now()
        async with self.db.session() as session:
            if approval.interrupt_id not in pending:
                await session.exec(update(Approval).where(Approval.id == approval.id, Approval.status == "pending")  # type: ignore[arg-type]
                                   .values(status="stale", decided_by=approvals.EXPIRED_BY, decided_at=now))
                won = False
            else:
                won = await approvals.decide(session, approval.id, approve, event.user, now, event.id)  # type: ignore[arg-type]
            approval = await session.get(Approval, approval.id, populate_existing=True)
            assert approval is not None
            if approval.status == "stale" or won:
                await self._edit_card(session, record, approval, event.correlation_id)
            if won:
                waited = self._waited_since(approval.created_at)
                await session.exec(update(Run).where(Run.id == run.id).values(  # type: ignore[arg-type]
                    status="running", waited_seconds=Run.waited_seconds + waited))
                # A rejected request may be asked again: the duplicate check no longer finds this thread.
                forget = {} if approve else {"fingerprint": None}
                await session.exec(update(ThreadRecord).where(ThreadRecord.id == record.id)  # type: ignore[arg-type]
                                   .values(status="running", updated_at=now, **forget))
                await audit.record(session, f"approval.{approval.status}", run.correlation_id, platform=event.platform,
                                   channel=event.channel, thread=event.thread, user=event.user, run_id=run.id,
                                   approval_id=approval.id, waited_seconds=round(waited, 3), click=event.correlation_id)
        if not won and not pending:  # the graph holds no question any more (its code changed): the run cannot go on
            return await self._finish_run(run, record, event, "failed", replies.question_gone(spec.name),
                                          "the graph's saved state holds no question any more")
        if not won:
            return await self._finish_event(event, "already decided", replies.already_decided(approval), ephemeral=True)
        await self._resume(approval, run, record, spec, event)

    async def _expire_request(self, event: InboundEvent, record: ThreadRecord, approval: Approval | None,
                              run: Run | None) -> None:
        """A card's time is up (``expire_approvals``): its run ends as failed, which expires the card, and the
        thread is told. A card whose run ended without it just expires; one decided meanwhile is left as it is."""
        if approval is not None and approval.status == "pending" and (run is None or run.status not in threads.BUSY):
            async with self.db.session() as session:  # its run ended without it: it only leaves the waiting cards
                await self._expire_card(session, record, approval.id, event.correlation_id,  # type: ignore[arg-type]
                                        housekeeping=True)
                await self._mark_done(session, event, "expired")
            return None
        if approval is None or run is None or approval.status != "pending":
            return await self._finish_event(event, "expired already")
        waited = duration(float(event.payload[EXPIRY]))
        await self._finish_run(run, record, event, "failed", replies.approval_expired(approval, waited),
                               f"nobody decided on the approval within {waited}")

    async def _card_unposted(self, event: InboundEvent, record: ThreadRecord, approval: Approval | None,
                             run: Run | None) -> None:
        """The platform refused ``approval``'s card for good (``_message_failed``): its run ends as failed. A card
        decided on meanwhile (another of its posts, a typed decision) or whose run ended is left as it is."""
        if approval is None or run is None or approval.status != "pending" or run.status not in threads.BUSY:
            return await self._finish_event(event, "card not posted, decided already")
        said = str(event.payload[UNPOSTED])
        await self._finish_run(run, record, event, "failed", replies.approval_card_not_posted(approval, said),
                               f"its approval card could not be posted ({said}), so nobody could decide on it")

    async def _with_approvers_now(self, approval: Approval, record: ThreadRecord, spec: GraphSpec, state: GraphOutcome,
                                  correlation: str, *, housekeeping: bool = False) -> tuple[Approval, bool]:
        """``approval`` deciding by baton.yaml as it is now: Baton restarted with other approvers since its card
        was posted (someone left the team, say), so the card and the check follow the new list. True when this
        call changed it (and edited its card). ``housekeeping``: the edit is Baton's own tidying (at start, at a
        reload), not an answer to a click."""
        now = self._approvers_now(approval, spec, state)
        now = approval.approvers if now is None else now
        risk = self._risk_now(approval, spec, state) or approval.risk
        if now == approval.approvers and risk == approval.risk:
            return approval, False
        async with self.db.session() as session:
            # Locked (PostgreSQL) and read again: two replicas starting together both found the old list, and
            # both edited the card; the one that comes second finds the new list and leaves the card alone.
            current = await session.get(Approval, approval.id, populate_existing=True, with_for_update=True)
            assert current is not None
            if current.status != "pending" or (current.approvers, current.risk) == (now, risk):  # decided, or
                return current, False  # brought up to date, meanwhile
            current.approvers, current.risk = now, risk
            await self._edit_card(session, record, current, correlation, housekeeping=housekeeping)
        log.info("approval %s: approvers or risk changed in baton.yaml since it was asked (%s, %s -> %s, %s)",
                 approval.id, approval.approvers, approval.risk, now, risk)
        return current, True

    def _risk_now(self, approval: Approval, spec: GraphSpec, state: GraphOutcome) -> str | None:
        """The risk baton.yaml now gives a plain graph's ``interrupt()`` (``graphs.<name>.risk``); ``None`` for a
        question whose graph said its risk itself (``approve()``, and the runbook graph through it)."""
        asked = getattr(_interrupt_of(approval, state), "value", None)
        if asked is None or (isinstance(asked, dict) and asked.get("baton") == APPROVAL_MARK):
            return None
        return self.config.policy_for_graph(spec.name).risk

    def _approvers_now(self, approval: Approval, spec: GraphSpec, state: GraphOutcome) -> list[str] | None:
        """Who baton.yaml now says may decide ``approval``; ``None`` when the graph named its approvers itself
        (or the runbook is gone: it will not run anyway)."""
        if spec.name == RUNBOOK_GRAPH:
            runbook = state.values.get("runbook")
            return self.config.approvers_for_runbook(runbook) if runbook in self.config.runbooks else None
        asked = getattr(_interrupt_of(approval, state), "value", None)
        if isinstance(asked, dict) and asked.get("baton") == APPROVAL_MARK and asked.get("runbook") is not None:
            runbook = asked["runbook"]  # approve(..., runbook=...): that runbook's approvers (the assistant's tools)
            return self.config.approvers_for_runbook(runbook) if runbook in self.config.runbooks else None
        if asked is None or (isinstance(asked, dict) and asked.get("baton") == APPROVAL_MARK
                             and asked.get("approvers") is not None):
            return None
        return list(self.config.approvers_for_graph(spec.name))

    async def _handle_choice(self, event: InboundEvent, record: ThreadRecord, approval: Approval, run: Run) -> None:
        """The requester picked a graph on a choice card: close the card, then run that graph."""
        choice = event.payload["action"]
        if approval.status != "pending" and approval.decided_event_id == event.id:  # this click chose, then we stopped
            chosen_run = await self._run_started_by(event)
            chosen_spec = self.registry.get(chosen_run.graph) if chosen_run else None
            if chosen_run is not None and chosen_run.status == "running" and chosen_spec is None:  # uninstalled since
                return await self._graph_gone(chosen_run, record, event)
            if chosen_run is not None and chosen_run.status == "running" and chosen_spec is not None:
                request = Request(platform=record.platform, channel=record.channel, thread=record.thread,
                                  user=chosen_run.requested_by, text=chosen_run.input_text)
                if await self._taken_up_again(chosen_run, record, event):  # not for ever, as any run taken up
                    await self._continue(chosen_run, record, chosen_spec, event, request)
                return None
        if approval.status != "pending":
            return await self._finish_event(event, "already chosen", Message.text(
                f"{approval.decided_by} already chose `{approval.choice}`; nothing was changed.", tone="info"
            ).naming(approval.decided_by), ephemeral=True)
        reason = approvals.refusal(approval, event.platform, event.user)
        if reason is not None:
            return await self._finish_event(event, "refused", Message.text(
                f"Only {approval.requested_by}, who asked, can choose here.", tone="warning"
            ).naming(approval.requested_by), ephemeral=True)
        spec = self.registry.get(choice)
        if choice not in approval.details.get("options", []) or spec is None:
            return await self._finish_event(event, "unknown choice", Message.text(
                "That is not one of the choices; nothing was changed.", tone="warning"), ephemeral=True)
        text = str(approval.details["text"])
        request = Request(platform=record.platform, channel=record.channel, thread=record.thread,
                          user=approval.requested_by, text=text)
        try:
            chosen = route_to(self.registry, choice, request, text)
        except RouteError as exc:  # the chosen graph's make_input refused the request: another choice may do
            return await self._finish_event(event, "rejected input", Message.text(str(exc), tone="warning"),
                                            ephemeral=True)
        now = self.db.now()
        async with self.db.session() as session:
            chosen_first = await approvals.choose(session, approval.id, choice, event.user, now, event.id)  # type: ignore[arg-type]
            if not chosen_first:
                await self._answer(session, event, "already chosen", Message.text(
                    "Someone chose first; nothing was changed.", tone="info"), ephemeral=True)
            else:
                approval = await session.get(Approval, approval.id, populate_existing=True)
                assert approval is not None
                await self.outbox.enqueue(session, threads.location_of(record), replies.choice_card(approval), kind="update",
                                          ref_outbox_id=approval.card_outbox_id, correlation_id=event.correlation_id)
                await session.exec(update(Run).where(Run.id == run.id).values(  # type: ignore[arg-type]
                    status="done", finished_at=now, turnaround_ms=int((now - run.started_at).total_seconds() * 1000),
                    waited_seconds=self._waited_since(approval.created_at)))
                # A pick is a route as the model's or a name's: the same request running (or done recently) in the
                # channel gets a link to it, not a second run (both requesters picked `announce`: it ran twice).
                twin = await self._locked_twin(session, record, chosen)
                if twin is None:
                    new_run = await self._insert_run(session, event, record, choice, text, chosen.fingerprint,
                                                     chosen.title, user=approval.requested_by)
                else:  # the choice is all this thread ran
                    linked = replies.duplicate(twin.channel, twin.thread, twin.status, here=twin.id == record.id)
                    await session.exec(_FINISH_THREAD, params={  # type: ignore[call-overload]
                        "record_id": record.id, "status": "done", "now": now, "result": linked.plain_text()[:2000]})
        if not chosen_first:
            return self.outbox.wake(event.platform)
        if twin is not None:
            return await self._finish_event(event, "duplicate request", linked)
        await self._keep_latest_checkpoint(record, spec.name)
        await self._drive(new_run, record, spec, chosen.input, event)

    def _waited_since(self, asked: datetime) -> float:
        """Seconds since a card was posted (stamped on the database's clock; one stamped ahead: none)."""
        return max(0.0, (self.db.now() - asked).total_seconds())

    async def _expire_cards(self, session: Transaction, record: ThreadRecord, run_id: int,
                            correlation: str, by: str = approvals.EXPIRED_BY, *,
                            housekeeping: bool = False) -> datetime | None:
        """The cards of ``run`` (which ended) still waiting for a decision expire: their buttons go, and a
        click on them revives nothing. Returns when the oldest of them was posted (the run waited since).
        ``by``: who ended the run (a cancel's sender), else Baton. ``housekeeping``: their edits are Baton's own
        tidying (``Outbox.enqueue``), not part of an answer to someone."""
        # All locked first (PostgreSQL): a card locked, then the thread's outbox lock taken to edit it, then the
        # next card locked made a cycle with a replica's refresh_approvers (a card, then the same thread).
        waiting = (await session.exec(select(Approval.id, Approval.created_at).where(  # type: ignore[call-overload]
            Approval.run_id == run_id, Approval.status == "pending").with_for_update())).all()
        for approval_id, _posted in waiting:
            await self._expire_card(session, record, approval_id, correlation, by, housekeeping=housekeeping)
        return min((posted for _id, posted in waiting), default=None)

    async def _expire_card(self, session: Transaction, record: ThreadRecord, approval_id: str, correlation: str,
                           by: str = approvals.EXPIRED_BY, *, housekeeping: bool = False) -> None:
        expired = await session.exec(update(Approval).where(  # type: ignore[call-overload]
            Approval.id == approval_id, Approval.status == "pending",  # type: ignore[arg-type]
        ).values(status="stale", decided_by=by, decided_at=self.db.now()))
        if expired.rowcount:
            card = await session.get(Approval, approval_id, populate_existing=True)
            await self._edit_card(session, record, card, correlation, housekeeping=housekeeping)  # type: ignore[arg-type]
            await audit.record(session, "approval.expired", correlation, platform=record.platform,
                               channel=record.channel, thread=record.thread, user=by,
                               run_id=card.run_id, approval_id=approval_id)  # type: ignore[union-attr]

    async def _edit_card(self, session: Transaction, record: ThreadRecord, approval: Approval, correlation: str, *,
                         housekeeping: bool = False) -> None:
        card = replies.choice_card(approval) if approval.kind == "choice" else replies.approval_card(approval)
        await self.outbox.enqueue(session, threads.location_of(record), card, kind="update",
                                  ref_outbox_id=approval.card_outbox_id, correlation_id=correlation,
                                  housekeeping=housekeeping)

    async def _taken_up_again(self, run: Run, record: ThreadRecord, event: InboundEvent) -> bool:
        """Count that ``run``, under way when Baton stopped, is taken up again; false once that happened more
        than ``MAX_TAKEOVERS`` times, and the run is failed instead (its thread told)."""
        takeovers = run.takeovers + 1
        async with self.db.session() as session:  # durable: should this stop Baton again, it has been counted
            await session.exec(update(Run).where(Run.id == run.id).values(takeovers=takeovers))  # type: ignore[arg-type]
        run.takeovers = takeovers
        if takeovers <= MAX_TAKEOVERS:
            return True
        log.warning("run %s (%s) was under way each of the last %d times Baton stopped: it is failed, not taken up "
                    "again", run.id, run.graph, takeovers)
        await self._finish_run(run, record, event, "failed", replies.stopped_too_often(self._asked_for(run), takeovers),
                               f"Baton stopped {takeovers} times while this run was under way; not taken up again")
        return False

    async def _graph_gone(self, run: Run, record: ThreadRecord, event: InboundEvent) -> None:
        """A click on the card of a run whose graph is not installed any more: the run cannot go on, so it
        fails (the card says it expired) rather than wait, and show in ``status``, for good."""
        await self._finish_run(run, record, event, "failed", replies.graph_gone(run.graph),
                               f"the {run.graph} graph is not installed any more")

    async def _resume(self, approval: Approval, run: Run, record: ThreadRecord, spec: GraphSpec,
                      event: InboundEvent) -> None:
        asked = _interrupt_of(approval, await self.runtime.state(spec, record.lg_thread_id))
        payload = None if asked is None else Command(  # its response_schema says what it takes (a bool, say)
            resume={approval.interrupt_id: approvals.resume_value(approval, asked.response_schema, asked.value)})
        rejected = approval.status == "rejected"
        if rejected:
            self._rejected.add(run.id)  # type: ignore[arg-type]
        try:
            await self._drive(run, record, spec, payload, event)
        finally:
            if rejected:
                self._rejected.discard(run.id)  # type: ignore[arg-type]

    # -- 5, 7, 8. run the graph and report -------------------------------------------------------

    async def _drive(self, run: Run, record: ThreadRecord, spec: GraphSpec, payload: Any, event: InboundEvent) -> None:
        location = threads.location_of(record)
        services = LeasedRunServices(self.services, Request(
            platform=record.platform, channel=record.channel, thread=record.thread, user=run.requested_by,
            text=run.input_text, private=bool(event.payload.get("private"))),  # a click's payload says nothing of it
            run.id, record.workspace, run.correlation_id, leases=self.leases, record_id=record.id)  # type: ignore[arg-type]

        progress_lines: list[str] = []
        # The outbox row of this stretch's progress message: a run continued after a crash has one already.
        progress_row = run.progress_outbox_id
        shown = await self._progress_shown(location, progress_row) if progress_row is not None else []

        async def post_progress(text: str) -> None:
            """The first update of a run is posted; later ones edit that message (the thread is not flooded)."""
            nonlocal progress_row
            text = replies.cut_line(text, PROGRESS_LINE_CHARS)
            progress_lines.append(text)
            lines = continued_progress(shown, progress_lines) if shown else progress_lines
            if shown and lines == shown:
                return  # a node cut short by the crash, running again, repeats what the message shows
            message = Message.text("\n".join(lines[-PROGRESS_LINES:]), tone="progress")
            async with services.session() as session:
                if progress_row is None:
                    progress_row = await self.outbox.enqueue(session, location, message,
                                                             correlation_id=run.correlation_id)
                    await session.exec(_KEEP_PROGRESS, params={  # type: ignore[call-overload]
                        "run_id": run.id, "progress_row": progress_row})
                else:
                    await self.outbox.enqueue(session, location, message, kind="update", ref_outbox_id=progress_row,
                                              correlation_id=run.correlation_id)
            self.outbox.wake(location.platform)

        try:
            await self._run_and_report(run, record, spec, payload, event, services, post_progress)
        finally:
            try:
                await services.flush_effects()
            except Exception as exc:
                if database_unusable(exc) is None:  # else the drain that ends now says why, once
                    log.exception("recording the outcomes of run %s's effects failed", run.id)

    async def _progress_shown(self, location: Location, progress_row: int) -> list[str]:
        """The lines a continued run's progress message shows, as its last stored edit left them."""
        async with self.db.read() as session:
            message = await self.outbox.latest_version(session, location, progress_row)
        return message.plain_text().split("\n") if message is not None else []

    async def _run_and_report(self, run: Run, record: ThreadRecord, spec: GraphSpec, payload: Any, event: InboundEvent,
                              services: LeasedRunServices, post_progress: ProgressSink) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._running[record.id] = (task, run)  # type: ignore[index]
        self._run_services[record.id] = services  # type: ignore[index]
        try:
            try:
                outcome = await self.runtime.run(spec, record.lg_thread_id, payload, services, post_progress, run.id,
                                                  fence=services)
            finally:  # from here on a cancel finds no run: it is answered as come too late
                self._running.pop(record.id, None)  # type: ignore[arg-type]
                self._run_services.pop(record.id, None)  # type: ignore[arg-type]
                if (cancel := self._cancels.pop(record.id, None)) is not None:  # type: ignore[arg-type]
                    task.uncancel()  # ours; if the graph caught it and ended otherwise, that end stands
        except asyncio.CancelledError:
            if cancel is None or task.cancelling():  # Baton stopping (too): not a cancel of this run alone
                raise
            await self._end_cancelled(run, record, event, cancel, services)
            return
        except LeaseLost:  # an effect found the thread taken over: its new holder answers it
            raise
        except Exception as exc:
            if (reason := database_unusable(exc)) is not None:  # its checkpoint could not be written: no bug of its own
                log.warning("run %s (%s) stopped: Baton's database cannot be written or reached (%s): %s", run.id,
                            spec.name, reason, database_advice(exc))
                await self._finish_run(run, record, event, "failed", replies.database_unusable(
                    spec.name, reason, unreachable=database_unreachable(exc) is not None), str(exc)[:1000], services)
                return
            log.warning("run %s (%s) failed: %s", run.id, spec.name, storable(str(exc)))  # a log file in UTF-8 too
            if isinstance(exc, RunTimedOut):
                message = replies.timed_out(spec.name, exc.limit)
            elif isinstance(exc, EffectInDoubt):
                message = replies.in_doubt(run.input_text, exc.effect)
            elif isinstance(exc, MODEL_ERRORS):
                message = replies.model_error(exc)
            else:
                message = replies.failure(spec.name, exc)
            await self._finish_run(run, record, event, "failed", message, str(exc)[:1000], services)
            return
        if outcome.waiting:
            await self._wait_for_approval(run, record, spec, outcome.interrupts, event, services)
            return
        error = outcome.values.get("error") or None
        try:
            # Whoever asked, who may decide on it, and whose messages the graph read: a reply naming them names people.
            message = replies.result(outcome.values.get("reply"), failed=bool(error), error=error).naming(
                run.requested_by, *self._approvers_of(run), *sorted(people_read(services)))
        except replies.ReplyNotShown as exc:  # the graph's author is told what is wrong with it, and the run ends
            log.warning("run %s (%s) failed: %s", run.id, spec.name, exc)
            await self._finish_run(run, record, event, "failed", replies.failure(spec.name, exc), str(exc)[:1000],
                                   services)
            return
        await self._finish_run(run, record, event, "failed" if error else "done", message, error, services)

    async def _wait_for_approval(self, run: Run, record: ThreadRecord, spec: GraphSpec, interrupts: list[Interrupt],
                                 event: InboundEvent, services: RunServices) -> None:
        location = threads.location_of(record)
        async with services.session() as session:
            known = set((await session.exec(select(Approval.interrupt_id).where(Approval.run_id == run.id))).all())
            asked = [self._approval_for(interrupt, run, record, spec) for interrupt in interrupts
                     if interrupt.id not in known]
            # Nobody who could click there may approve it (its only approver asked for it): the card waited a day.
            undecidable = next((approval for approval in asked
                                if approvals.nobody_may_approve(approval, record.platform)), None)
            # Asked in a direct message, of someone else: nobody who may decide would ever see the card.
            unseen = next((approval for approval in asked
                           if approvals.refusal(approval, record.platform, run.requested_by) is not None), None)
            if undecidable is None and (unseen is None or not await self._started_in_private(session, run, event)):
                await self._post_cards(session, asked, run, record, location)
                await self._mark_done(session, event, "waiting for approval")
                unseen = None
        if undecidable is not None:
            return await self._finish_run(run, record, event, "failed", replies.approval_nobody_may_give(
                undecidable, record.platform), "needs an approval nobody may give", services)
        if unseen is None:
            self.outbox.wake(record.platform)
            return
        await self._finish_run(run, record, event, "failed", replies.approval_out_of_sight(unseen),
                               "needs an approval nobody else can see in a direct message", services)

    async def _post_cards(self, session: Transaction, asked: list[Approval], run: Run, record: ThreadRecord,
                          location: Location) -> None:
        for approval in asked:
            session.add(approval)
            await session.flush()
            card_id = await self.outbox.enqueue(session, location, replies.approval_card(approval),
                                                correlation_id=run.correlation_id)
            approval.card_outbox_id = card_id
            await audit.record(session, "approval.requested", run.correlation_id, platform=record.platform,
                               channel=record.channel, thread=record.thread, user=run.requested_by, run_id=run.id,
                               approval_id=approval.id, approvers=approval.approvers, risk=approval.risk)
        # After the card, the run goes on in a new progress message (progress_outbox_id: see ``Run``).
        await session.exec(update(Run).where(Run.id == run.id).values(  # type: ignore[arg-type]
            status="waiting", progress_outbox_id=None))
        await session.exec(update(ThreadRecord).where(ThreadRecord.id == record.id)  # type: ignore[arg-type]
                           .values(status="waiting", updated_at=self.db.now()))

    async def _started_in_private(self, session: Transaction, run: Run, event: InboundEvent) -> bool:
        """Whether ``run`` was asked for in a direct message (``InboundMessage.private``)."""
        started = event if event.id == run.inbound_id else await session.get(InboundEvent, run.inbound_id)
        return bool(started is not None and started.payload.get("private"))

    def _approval_for(self, interrupt: Interrupt, run: Run, record: ThreadRecord, spec: GraphSpec) -> Approval:
        value = interrupt.value
        policy = self.config.policy_for_graph(spec.name)
        if isinstance(value, dict) and value.get("baton") == APPROVAL_MARK:
            summary, details, risk = str(value["summary"]), dict(value.get("details") or {}), value.get("risk", "high")
            approvers = value.get("approvers")
        else:  # a plain graph's interrupt(value): show the value, apply the graph's policy
            summary, details = tool_review.question(value) if tool_review.is_review(value) else replies.card_question(
                value, spec.name)
            summary = controls_escaped(summary)  # as a runbook's card shows its command (approve() shows its own)
            details = {controls_escaped(key): controls_escaped(shown) for key, shown in details.items()}
            risk, approvers = policy.risk, None
            if len(summary) > APPROVAL_TEXT_LIMIT:  # the approver must see what they decide: the whole, in details
                details = {"the whole question": summary, **details}  # a tool review's arguments stay
                summary = summary[:APPROVAL_TEXT_LIMIT - 60].rstrip() + "\n… (cut here: the whole of it is below)"
        if approvers is None:
            approvers = self.config.approvers_for_graph(spec.name)
        return Approval(run_id=run.id, thread_record_id=record.id, interrupt_id=interrupt.id, graph=spec.name,  # type: ignore[arg-type]
                        summary=summary[:APPROVAL_TEXT_LIMIT], details=details, risk=risk, approvers=list(approvers),
                        requested_by=run.requested_by, created_at=self.db.now())

    async def _finish_run(self, run: Run, record: ThreadRecord, event: InboundEvent, status: str, message: Message,
                          error: str | None, services: RunServices | None = None, *,
                          cancel: InboundEvent | None = None) -> None:
        """Store the run's outcome and reply; with ``services``, its effects' outcomes too (``RunServices.session``).
        A failed run's cards still waiting expire with it. ``cancel``: the event that stopped the run, closed with
        it; an effect the run had started was cut off by that, not left in doubt. ``cancel`` may be ``event``:
        a run whose replica stopped, ended by a cancel (its effects are left as they were, in doubt)."""
        error = storable(error) if error is not None else None  # a node's exception may hold a NUL, a lone surrogate
        housekeeping = _housekeeping(event)
        asked = await self._asked_at(run, event)  # before the write transaction: it may read the request's event
        now = self.db.now()
        async with (services.session() if services is not None else self.db.session()) as session:
            if cancel is not None:
                if cancel.id != event.id:  # stopped here while it ran (else its replica had stopped: in doubt)
                    await session.exec(_CLOSE_EVENT, params={  # type: ignore[call-overload]
                        "closed_id": cancel.id, "closed_as": f"cancelled run {run.id}", "now": now})
                    cut_off = f"{threads.CANCELLED_BY}{cancel.user} while it ran"
                    started = (await session.exec(select(Effect.name).where(  # type: ignore[call-overload]
                        Effect.run_id == run.id, Effect.status == "started"))).all()
                    await session.exec(update(Effect).where(  # type: ignore[arg-type]
                        Effect.run_id == run.id, Effect.status == "started",
                    ).values(status="failed", finished_at=now, result={"error": cut_off}))
                    for name in started:  # as an effect that failed by itself: its "started" entry is answered
                        await audit.record(session, "effect.failed", run.correlation_id, platform=record.platform,
                                           channel=record.channel, thread=record.thread, user=run.requested_by,
                                           run_id=run.id, effect=name, error=cut_off)
                await audit.record(session, "run.cancelled", run.correlation_id, platform=record.platform,
                                   channel=record.channel, thread=record.thread, user=cancel.user, run_id=run.id,
                                   cancel=cancel.correlation_id)
            waited = 0.0  # a run ending at its cards (expired, cancelled) waited for a decision until now
            if status == "failed":  # a card it left waiting (another branch's question) would revive it
                since = await self._expire_cards(session, record, run.id, run.correlation_id,  # type: ignore[arg-type]
                                                 cancel.user if cancel is not None else approvals.EXPIRED_BY,
                                                 housekeeping=housekeeping)
                waited = self._waited_since(since) if since is not None else 0.0
                await session.exec(_FORGET_REQUEST, params={"record_id": record.id})  # type: ignore[call-overload]
            await session.exec(_FINISH_RUN, params={  # type: ignore[call-overload]
                "run_id": run.id, "status": status, "now": now, "error": error, "waited": waited,
                "cancelled": _ends_cancelled(status, error), "turnaround_ms": int((now - asked).total_seconds() * 1000)})
            await session.exec(_FINISH_THREAD, params={  # type: ignore[call-overload]
                "record_id": record.id, "status": status, "now": now, "result": message.plain_text()[:2000]})
            reply = await self.outbox.enqueue_claimed(session, threads.location_of(record), message,
                                                      correlation_id=run.correlation_id, housekeeping=housekeeping)
            await audit.record(session, f"run.{status}", run.correlation_id, platform=record.platform, channel=record.channel,
                               thread=record.thread, user=run.requested_by, run_id=run.id, graph=run.graph, error=error,
                               seconds=round((now - run.started_at).total_seconds(), 3))
            await self._mark_done(session, event, status, thread_status=status)
        self.outbox.hand_over(record.platform, reply)

    async def _asked_at(self, run: Run, event: InboundEvent) -> datetime:
        """When ``run``'s request came: its turnaround counts the time it was queued behind another run."""
        asked = event if event.id == run.inbound_id else None
        if asked is None and run.inbound_id is not None:  # ended by a click, a cancel, a takeover: read once
            async with self.db.read() as session:
                asked = await session.get(InboundEvent, run.inbound_id)
        if asked is None:
            return run.started_at
        return threads.asked_at(run.started_at, asked.received_at, asked.kind)

    async def _finish_event(self, event: InboundEvent, outcome: str, reply: Message | None = None,
                            *, ephemeral: bool = False, failed: str | None = None, spent: Any = None) -> None:
        """Mark the event handled, and post ``reply`` in the same transaction. ``failed``: handling it broke
        off (the reason): the thread's run, if it was running, failed (or the thread showed it running for good).
        ``spent``: a model's usage in answering nothing (routing chatter), kept as a finished run of ``ROUTER``
        so that digests count what it cost; the thread is left as it was."""
        async with self.db.session() as session:
            if spent is not None and any(usage_of(spent)):
                await insert_row(session, Run, self._run_row(event, event.thread_record_id, ROUTER, "done", event.user,
                                                             event.text, spent))
            if failed is not None:
                now = self.db.now()
                broken = (await session.exec(select(Run).where(
                    Run.thread_record_id == event.thread_record_id, Run.status == "running"))).all()
                for run in broken:  # with its turnaround, or the histogram leaves out what the counters count
                    mine = event.id == run.inbound_id  # else the run's start: no read in this transaction
                    asked = threads.asked_at(run.started_at, event.received_at if mine else None, event.kind)
                    await session.exec(update(Run).where(Run.id == run.id, Run.status == "running").values(  # type: ignore[arg-type]
                        status="failed", error=failed, finished_at=now,
                        turnaround_ms=int((now - asked).total_seconds() * 1000)))
                if broken:  # its cards still waiting would revive it
                    record = await session.get(ThreadRecord, event.thread_record_id)
                    for run in broken:
                        await self._expire_cards(session, record, run.id, event.correlation_id)  # type: ignore[arg-type]
                await session.exec(update(ThreadRecord).where(  # type: ignore[arg-type]
                    ThreadRecord.id == event.thread_record_id, ThreadRecord.status == "running",
                ).values(status="failed", updated_at=now, fingerprint=None))
            delivery = await self._answer(session, event, outcome, reply, ephemeral=ephemeral)
        self.outbox.hand_over(event.platform, delivery)

    async def _answer(self, session: Transaction, event: InboundEvent, outcome: str, reply: Message | None = None,
                      *, ephemeral: bool = False, close: bool = True) -> Delivery | None:
        """Answer ``event`` in the caller's transaction; a reply this process may send at once is returned
        (``Outbox.hand_over`` it after the commit). ``close=False``: the caller closes the event itself, after."""
        delivery = None
        if reply is not None:
            location = Location(platform=event.platform, workspace=event.workspace, channel=event.channel,
                                thread=event.thread)
            if ephemeral:
                await self.outbox.enqueue(session, location, reply, kind="ephemeral", target_user=event.user,
                                          correlation_id=event.correlation_id)
            else:
                delivery = await self.outbox.enqueue_claimed(session, location, reply, correlation_id=event.correlation_id)
        await audit.record(session, "request.answered", event.correlation_id, platform=event.platform,
                           channel=event.channel, thread=event.thread, user=event.user, outcome=outcome)
        if close:
            await self._mark_done(session, event, outcome)
        return delivery

    async def _mark_done(self, session: Transaction, event: InboundEvent, outcome: str, *,
                         thread_status: str | None = None) -> None:
        """Close the event, in the transaction that stores its outcome, only while we still hold the thread.

        The fence against a lost lease (this process stalled past it and another drain took the
        thread over): raising here rolls the whole transaction back, reply included, so the
        event is answered once, by whoever holds the thread. With nothing else queued on the
        thread the lease is released in the same transaction (``_released`` tells the drain, once it commits).
        ``thread_status``: the status this transaction already wrote to the thread's record (its row
        is locked then), so it need not be read.
        """
        now = self.db.now()
        # The record row first, locked: a replica's ``take`` of this thread waits for this
        # transaction and then finds the lease free, so an event it queued meanwhile is not stranded.
        status = thread_status or await threads.lock_status(session, event.thread_record_id)  # type: ignore[arg-type]
        closed = await session.exec(_CLOSE_EVENT, params={  # type: ignore[call-overload]
            "closed_id": event.id, "closed_as": outcome[:200], "now": now})
        if not closed.rowcount:
            raise LeaseLost(f"event {event.id} was already handled elsewhere")
        record_id: int = event.thread_record_id  # type: ignore[assignment]
        # Marked given back once committed: marked before, a commit refused and ``_handle``'s answer stored instead,
        # which keeps the lease for an event queued meanwhile, stopped the drain with the lease held (until it ran out).
        if status is not None and await self.leases.give_back_when_idle(session, record_id, status):
            when_committed(session, lambda: self._released.add(record_id))  # nothing else queued: one statement
            return
        more = status is not None and await threads.next_event_of(session, record_id, status) is not None
        held = await (self.leases.keep if more else self.leases.give_back)(session, record_id)
        if not held:
            raise LeaseLost(f"thread {record_id} is no longer ours; event {event.id} is left to its holder")
        if not more:
            when_committed(session, lambda: self._released.add(record_id))
