"""Thread records and the one-writer-per-thread lease.

The lease is a row-level compare-and-set on ``thread_records`` (``lease_owner``/``lease_until``):
atomic under PostgreSQL's row locks and SQLite's write lock alike, so it holds across processes
and replicas, and a crashed holder's lease simply expires. Its times are the database's
(``Database.now``): replicas whose clocks differ by minutes still agree on when a lease runs out.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, Select, bindparam, case, or_, update
from sqlmodel import select

from bot.messages import Location
from bot.settings import DAY
from storage.db import Database, Transaction, insert_new_id, prepared, when_committed
from storage.models import InboundEvent, ThreadRecord, loaded, new_lg_thread_id

BUSY = ("running", "waiting")


# Hot statements, built once with bound parameters (building them cost more CPU than running them).
# KEY SHARE (PostgreSQL; SQLite renders no clause and has one writer): the record found stays until the transaction
# ends, as the foreign key of the event stored next needs. Without it retention could delete it in between, and the
# event's insert failed (its request got a 500). Retention's deletion waits for this lock, and a find waiting for
# that deletion finds nothing once it commits (a new record is made). Updates of the thread (lease, status) do not
# wait for it: they change no key.
_FIND = prepared(select(ThreadRecord).where(
    ThreadRecord.platform == bindparam("platform"), ThreadRecord.workspace == bindparam("workspace"),
    ThreadRecord.channel == bindparam("channel"), ThreadRecord.thread == bindparam("thread"))
    .with_for_update(read=True, key_share=True))  # FOR KEY SHARE (without read=True: FOR NO KEY UPDATE)
_PENDING = select(InboundEvent).where(InboundEvent.thread_record_id == bindparam("record_id"),
                                      InboundEvent.status == "pending")
CANCEL_KIND = "cancel"  # an inbound event that asks to stop the run it names (``Orchestrator._cancel_kind``)
CANCELLED_BY = "cancelled by "  # + who: the error of a run a cancel ended (a later cancel and the digests read it)
# ``status``, ``help`` or a typed ``approve`` written in a thread busy with a run (``bot.routing.aside``): answered
# beside the run, without touching it (``Orchestrator._handle_aside``).
ASIDE_KIND = "aside"
# Clicks, cancels and asides do not wait their turn behind requests, and are taken while the thread waits at a card
# (a cancel left behind a run that reached its card, or that ended, hit what ran next; a status waited a day for
# the card's decision). No IN list: prepared.
URGENT = or_(InboundEvent.kind == "click", InboundEvent.kind == CANCEL_KIND, InboundEvent.kind == ASIDE_KIND)
_NEXT_CLICK = prepared(_PENDING.where(URGENT).order_by(InboundEvent.id).limit(1))  # type: ignore[arg-type]
_NEXT_CLICKS_FIRST = prepared(_PENDING.order_by(case((URGENT, 0), else_=1), InboundEvent.id).limit(1))  # type: ignore[arg-type]
_MINE = select(InboundEvent.id).where(InboundEvent.platform == bindparam("platform"),
                                      InboundEvent.event_id == bindparam("event_id"))
_THREADS = ThreadRecord.__table__  # type: ignore[attr-defined]
# A lease ending further ahead than any Baton writes was written before the clock was set back: it counts as run
# out (a crashed holder's lease would stall its threads as long as the jump). The bound is not now + this
# replica's lease: replicas may run with other BATON_LEASE_SECONDS (up to a day), and each one's Database.now() is
# an estimate (on PostgreSQL a few ms off, read again once a minute), so a live lease must never lie beyond it. A
# clock set back by less than that still stalls a dead holder's threads until the clock has caught up.
LEASE_AT_MOST = timedelta(seconds=DAY, hours=1)


def lease_run_out(now: Any, latest: Any) -> Any:
    """Nobody holds the thread: no lease, or one that ended before ``now`` or ends after ``latest``."""
    return or_(_THREADS.c.lease_owner.is_(None), _THREADS.c.lease_until < now, _THREADS.c.lease_until > latest)


# For prepared statements; its parameters: ``run_out_params``.
LEASE_RUN_OUT = lease_run_out(bindparam("now", type_=DateTime()), bindparam("latest", type_=DateTime()))
_TAKE = prepared(update(_THREADS).where(
    _THREADS.c.id == bindparam("record_id"), or_(LEASE_RUN_OUT, _THREADS.c.lease_owner == bindparam("owner")),
).values(lease_owner=bindparam("owner"), lease_until=bindparam("until", type_=DateTime())))
_LEASE_HELD = (_THREADS.c.id == bindparam("record_id"), _THREADS.c.lease_owner == bindparam("owner"))
_RENEW = prepared(update(_THREADS).where(*_LEASE_HELD).values(lease_until=bindparam("until", type_=DateTime())))
_RELEASE = prepared(update(_THREADS).where(*_LEASE_HELD).values(lease_owner=None, lease_until=None))


def _release_when_idle(next_event: Select[Any]) -> Any:
    """Release our lease unless ``next_event`` finds an event (one statement for the usual case)."""
    return prepared(update(_THREADS).where(*_LEASE_HELD, ~next_event.exists()).values(lease_owner=None, lease_until=None))
# NO KEY UPDATE (PostgreSQL): it still waits for a take, a renewal or another drain, but not for the KEY SHARE
# lock a new event's foreign key holds on the row; that accept waits for the thread's outbox lock (its
# "Queued" note), which the drain answering the thread holds by then: FOR UPDATE made a deadlock.
_LOCK_STATUS = prepared(select(_THREADS.c.status).where(_THREADS.c.id == bindparam("record_id"))
                        .with_for_update(key_share=True))
_PENDING_IDS = select(InboundEvent.id).where(InboundEvent.thread_record_id == bindparam("record_id"),
                                             InboundEvent.status == "pending")
_RELEASE_WHEN_NO_CLICK = _release_when_idle(_PENDING_IDS.where(URGENT))
_RELEASE_WHEN_NOTHING_QUEUED = _release_when_idle(_PENDING_IDS)
EARLIER_LOOKED_AT = 20
_EARLIER = prepared(select(InboundEvent.kind, InboundEvent.text, InboundEvent.payload).where(
    InboundEvent.thread_record_id == bindparam("record_id"), InboundEvent.status == "pending",
    InboundEvent.id < _MINE.scalar_subquery()).order_by(InboundEvent.id).limit(EARLIER_LOOKED_AT))  # type: ignore[operator, arg-type]


def run_out_params(now: datetime) -> dict[str, datetime]:
    """``LEASE_RUN_OUT``'s parameters at ``now`` (the database's time)."""
    return {"now": now, "latest": now + LEASE_AT_MOST}


async def find(session: Transaction, location: Location) -> ThreadRecord | None:
    """The thread's record, if any; it cannot be deleted before ``session`` ends (``_FIND``)."""
    return (await session.exec(_FIND, params=location.model_dump())).first()


async def create(session: Transaction, location: Location, now: datetime, lease: tuple[str, datetime] | None = None,
                 ) -> tuple[ThreadRecord, bool]:
    """The thread's record, made at ``now`` (the database's clock) unless a concurrent writer made it first; and
    whether it is new.

    ``lease`` (owner, until): a new record is made with its lease already held, so the first event
    needs no separate ``Leases.take``.
    """
    owner, until = lease if lease is not None else (None, None)
    values = {**location.model_dump(), "lg_thread_id": new_lg_thread_id(), "status": "idle",
              "created_at": now, "updated_at": now, "lease_owner": owner, "lease_until": until}
    new_id = await insert_new_id(session, ThreadRecord, values, ["platform", "workspace", "channel", "thread"])
    if new_id is not None:
        return loaded(ThreadRecord, {**values, "id": new_id}), True
    record = await find(session, location)
    assert record is not None
    return record, False


def location_of(record: ThreadRecord) -> Location:
    return Location(platform=record.platform, workspace=record.workspace, channel=record.channel, thread=record.thread)


Work = tuple[InboundEvent, ThreadRecord]


def _elapsed_clock() -> float:
    """Seconds on a clock that goes on while the process is stopped or the machine suspended (Linux's boot
    time; elsewhere the monotonic clock) and is never set back."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


class Leases:
    """Take a thread's lease together with its next event, and give it back when the queue is empty."""

    def __init__(self, db: Database, owner: str, seconds: float) -> None:
        self._db = db
        self.owner = owner
        self.seconds = seconds
        self.clock = _elapsed_clock  # this process's own: a stall (SIGSTOP, a frozen VM) shows on it
        # By ``clock``: until when each lease this process took or renewed runs at the least, for ``surely_held``.
        self._held_until: dict[int, float] = {}

    def lease_for_new_thread(self) -> tuple[str, datetime]:
        return self.owner, self._db.now() + timedelta(seconds=self.seconds)

    def still_fresh(self, record: ThreadRecord) -> bool:
        """Whether ``record``'s lease, taken by this process, has most of its time left (else ``take`` again)."""
        if record.lease_owner != self.owner or record.lease_until is None:
            return False
        left = (record.lease_until - self._db.now()).total_seconds()
        if left <= self.seconds / 2:
            return False
        self._held_until[record.id] = self.clock() + left  # type: ignore[index]
        return True

    def surely_held(self, record_id: int) -> bool:
        """Whether the lease on ``record_id`` is surely still ours with no statement: it was taken or renewed
        here less than half a lease ago by this process's clock. The heartbeat renews it every third of a
        lease, so only a process that stalled (or whose event loop was held) that long asks the database."""
        return self.clock() < self._held_until.get(record_id, 0.0) - self.seconds / 2

    def run_out_params(self, now: datetime | None = None) -> dict[str, datetime]:
        """``LEASE_RUN_OUT``'s parameters at ``now`` (the database's time, by default read now). Until a lease
        after this process's last database outage, a lease that ran out during it is not yet run out: its holder,
        cut off as this replica was, renews it at its next heartbeat. A 35 s outage let the replica whose sweep
        came first take over a live run, its command still running on its holder, and run what was queued behind
        it beside."""
        now = self._db.now() if now is None else now
        away = self._db.health.away_lately(self.seconds)
        params = run_out_params(now)
        if away is not None:
            params["now"] = now - timedelta(seconds=away)  # when the outage began
        return params

    def _held_from(self, session: Transaction, record_id: int, asked: float) -> None:
        """Once ``session`` commits: the lease on ``record_id``, set before ``asked`` (by ``clock``), is ours."""
        until = asked + self.seconds
        when_committed(session, lambda: self._held_until.__setitem__(record_id, until))

    def let_go(self, record_id: int) -> None:
        """Forget the lease on ``record_id`` as held here (given back, or lost to another replica)."""
        self._held_until.pop(record_id, None)

    async def take(self, record_id: int) -> Work | None:
        """The lease and the next event, or ``None`` if another writer holds it or nothing waits.

        A lease this process already holds counts as free: the orchestrator drains a thread once
        at a time in a process, and a thread made with its lease held (``create``) is taken so.
        """
        await self._db.read_clock(unless_read=True)  # a process's first lease: no connection may have read it yet
        asked, now = self.clock(), self._db.now()
        async with self._db.session() as session:
            taken = await session.exec(_TAKE, params={  # type: ignore[call-overload]
                "record_id": record_id, "owner": self.owner, "until": now + timedelta(seconds=self.seconds),
                **self.run_out_params(now)})
            if not taken.rowcount:
                return None
            self._held_from(session, record_id, asked)
            return await self._next_or_release(session, record_id)

    async def next_or_release(self, record_id: int) -> Work | None:
        """The next event while we hold the lease; with none left, release it in the same transaction.

        The record row is locked first, so a concurrent ``take`` waits for this transaction and
        then finds the lease free: an event queued meanwhile is never stranded.
        """
        async with self._db.session() as session:
            return await self._next_or_release(session, record_id)

    async def _next_or_release(self, session: Transaction, record_id: int) -> Work | None:
        record = (await session.exec(
            # NO KEY UPDATE, as _LOCK_STATUS: after take's UPDATE, FOR UPDATE waited for a new event's foreign
            # key (KEY SHARE), whose accept waited for the outbox lock of a stalled drain waiting for this row.
            select(ThreadRecord).where(ThreadRecord.id == record_id).with_for_update(key_share=True)  # type: ignore[arg-type]
            .execution_options(populate_existing=True))).one()
        if record.lease_owner != self.owner:  # lost it while handling (see Orchestrator._mark_done)
            return None
        event = await next_event(session, record)
        if event is not None:
            return event, record
        await self.give_back(session, record_id)
        return None

    async def renew(self, record_id: int) -> bool:
        async with self._db.session() as session:
            return await self.keep(session, record_id)

    async def release(self, record_id: int) -> None:
        async with self._db.session() as session:
            await self.give_back(session, record_id)

    async def keep(self, session: Transaction, record_id: int) -> bool:
        """Extend our lease, in the caller's transaction; false when it is no longer ours."""
        asked = self.clock()
        kept = await session.exec(_RENEW, params={  # type: ignore[call-overload]
            "record_id": record_id, "owner": self.owner, "until": self._db.now() + timedelta(seconds=self.seconds)})
        if not kept.rowcount:
            self.let_go(record_id)
            return False
        self._held_from(session, record_id, asked)
        return True

    async def give_back_when_idle(self, session: Transaction, record_id: int, status: str) -> bool:
        """Release our lease, in the caller's transaction, if nothing ``next_event_of`` would take is queued
        on the thread (whose status is ``status``); false when something is, or the lease is not ours."""
        statement = _RELEASE_WHEN_NO_CLICK if status == "waiting" else _RELEASE_WHEN_NOTHING_QUEUED
        released = await session.exec(statement, params={"record_id": record_id, "owner": self.owner})  # type: ignore[call-overload]
        if released.rowcount:
            self.let_go(record_id)
        return bool(released.rowcount)

    async def give_back(self, session: Transaction, record_id: int) -> bool:
        """Release our lease, in the caller's transaction; false when it was not ours."""
        self.let_go(record_id)
        released = await session.exec(_RELEASE, params={"record_id": record_id, "owner": self.owner})  # type: ignore[call-overload]
        return bool(released.rowcount)


async def next_event(session: Transaction, record: ThreadRecord) -> InboundEvent | None:
    """The next queued event: clicks, cancels and asides first (``URGENT``), then messages in order.

    Messages wait while the thread waits for approval: they are handled after the run.
    """
    return await next_event_of(session, record.id, record.status)  # type: ignore[arg-type]


def asked_at(started: datetime, received: datetime | None, kind: str | None) -> datetime:
    """When a run's request was asked, from the run's start and its inbound event's arrival and kind: the message's
    arrival (time queued behind another run is part of its wait), else the run's start (a choice card's click)."""
    return min(received, started) if kind == "message" and received is not None else started


async def has_pending(session: Transaction, record_id: int) -> bool:
    """Whether the thread has events still to be handled (a request waiting for a drain slot, say)."""
    return (await session.exec(_PENDING_IDS.limit(1), params={"record_id": record_id})).first() is not None  # type: ignore[call-overload]


async def next_event_of(session: Transaction, record_id: int, status: str) -> InboundEvent | None:
    """``next_event`` of the thread ``record_id`` whose status is ``status``."""
    return (await session.exec(_NEXT_CLICK if status == "waiting" else _NEXT_CLICKS_FIRST,  # type: ignore[call-overload]
                               params={"record_id": record_id})).first()


async def lock_status(session: Transaction, record_id: int) -> str | None:
    """The thread's status, its row locked for the rest of the transaction (``None``: no such thread)."""
    return (await session.exec(_LOCK_STATUS, params={"record_id": record_id})).first()  # type: ignore[call-overload]


async def pending_before(session: Transaction, record: ThreadRecord, event_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The thread's events before ``event_id`` not handled yet, oldest first, as (kind, text, payload);
    the first ``EARLIER_LOOKED_AT`` of them."""
    params = {"record_id": record.id, "platform": record.platform, "event_id": event_id}
    return [tuple(row) for row in (await session.exec(_EARLIER, params=params)).all()]  # type: ignore[misc]
