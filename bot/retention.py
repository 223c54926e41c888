"""Data retention: finished rows older than ``BATON_RETENTION_DAYS`` are deleted, a small batch a transaction.

What goes once older than the retention (``Retention.delete_expired``, with the checkpoint pruner's interval):

- the playground's messages (a thread's first message once its replies are gone);
- runs finished (done, failed) whose thread is not running nor waiting and that no card still waits on, with
  their approvals and their effects ledger entries. What they counted in ``GET /metrics`` is added to
  ``forgotten_totals`` in the same transaction (``bot.metrics.forget``): no counter goes down;
- inbound events handled that no remaining run was started by (a playground event: once its message is gone,
  or the playground would hand the message over again as never handed over); counted as runs are;
- outbox rows delivered or given up on, that no undelivered edit, no waiting card and no run under way refers to;
- audit entries;
- digest firings that ended, but each schedule's latest (``bot.digests`` counts its next firing from it); what their
  summaries cost is added to ``forgotten_totals`` as runs' is;
- thread records with nothing left of them: finished, checkpoints pruned, nobody holding their lease, untouched
  for longer than both the retention and the dedupe window (the same request again still links to its thread).
  A message for the thread stored meanwhile keeps it, or goes to a new record (``Retention._threads``).

The newest row of each table always stays (``_below_newest``: SQLite would give its id out again).

Each batch is picked by a read that holds no lock (off the event loop on SQLite), then deleted by a short write
transaction that checks every condition again. Replicas may run it at the same time: each write transaction
holds the retention lock (``lock_for_transaction``: PostgreSQL's advisory lock, SQLite's write lock), and a row
another replica deleted first is not found again, so nothing is deleted or counted twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, cast, delete, exists, func, or_
from sqlalchemy.orm import aliased
from sqlmodel import select

from bot.metrics import (ACTIVE_RUN, FINAL_RUN, UNDELIVERED, Rollup, digests_rollup, forget, inbound_rollup,
                         runs_rollup)
from bot.threads import BUSY, lease_run_out, run_out_params
from storage.db import Database, Transaction, lock_for_transaction
from storage.models import (Approval, AuditEntry, DigestRun, Effect, InboundEvent, OutboxMessage, PlaygroundMessage,
                            Run, ThreadRecord, utcnow)

log = logging.getLogger(__name__)

BATCH = 200  # rows of a table per write transaction, at most
# A batch that held the write lock longer makes the table's next one half as big (deleting a row looks for the
# rows that refer to it: each such foreign key has an index, migration 0012).
LOCK_TARGET_SECONDS = 0.05
LOCK = "baton:retention"
PLAYGROUND = "playground"  # adapters.playground.PLATFORM (bot imports no adapter)
FINISHED_THREAD = ("done", "failed", "idle")

Step = Callable[[datetime], Awaitable[tuple[int, int]]]


def _below_newest(table: Any) -> Any:
    """Not the table's newest row, which always stays: SQLite hands the highest id out again once its row is
    deleted, and what remembers ids takes them for ever-growing (``bot.metrics.Rollup`` reads only ids above
    those it has counted; the playground looks for stranded messages above the last one it looked at)."""
    newest = aliased(table, name="newest")
    return table.id < select(func.max(newest.id)).scalar_subquery()


def _run_expired(cutoff: datetime) -> tuple[Any, ...]:
    return (Run.status.in_(FINAL_RUN), Run.started_at < cutoff, _below_newest(Run),  # type: ignore[attr-defined]
            func.coalesce(Run.finished_at, Run.started_at) < cutoff,
            ~exists().where(ThreadRecord.id == Run.thread_record_id, ThreadRecord.status.in_(BUSY)),  # type: ignore[attr-defined]
            ~exists().where(Approval.run_id == Run.id, Approval.status == "pending"))


def _event_expired(cutoff: datetime) -> tuple[Any, ...]:
    return (InboundEvent.status == "done", InboundEvent.received_at < cutoff, _below_newest(InboundEvent),
            func.coalesce(InboundEvent.handled_at, InboundEvent.received_at) < cutoff,
            ~exists().where(Run.inbound_id == InboundEvent.id),  # ix_runs_inbound
            or_(InboundEvent.platform != PLAYGROUND, ~exists().where(PlaygroundMessage.event_id == InboundEvent.event_id)))


_LATER = aliased(OutboxMessage, name="later")


def _message_expired(cutoff: datetime) -> tuple[Any, ...]:
    """Delivered or given up on, and no longer anybody's post to edit: an edit goes to its post's latest
    delivered version (``bot.outbox``), so a post's edits stay as long as the post may be edited."""
    post = (OutboxMessage.id, OutboxMessage.ref_outbox_id)
    return (OutboxMessage.status.in_(("sent", "failed")), OutboxMessage.created_at < cutoff,  # type: ignore[attr-defined]
            _below_newest(OutboxMessage),
            ~exists().where(Approval.status == "pending", Approval.card_outbox_id.in_(post)),  # type: ignore[union-attr]
            ~exists().where(Run.platform == OutboxMessage.platform, Run.channel == OutboxMessage.channel,
                            Run.status.in_(ACTIVE_RUN), Run.progress_outbox_id.in_(post)),  # type: ignore[attr-defined,union-attr]
            ~exists().where(_LATER.platform == OutboxMessage.platform, _LATER.status.in_(UNDELIVERED),  # type: ignore[attr-defined]
                            _LATER.ref_outbox_id.in_(post)))  # type: ignore[union-attr]


_LATER_FIRING = aliased(DigestRun, name="later_firing")


def _digest_expired(cutoff: datetime) -> tuple[Any, ...]:
    """A firing that ended (posted, given up), unless it is its schedule's latest: that one says when the next is
    due (``bot.digests``). Each ``digest now`` has a key of its own: one goes once a later digest was fired in its
    channel (the next ``digest now`` there covers the time since the channel's latest)."""
    return (DigestRun.status != "claimed", DigestRun.fire_time < cutoff, DigestRun.claimed_at < cutoff,
            _below_newest(DigestRun),
            or_(and_(DigestRun.schedule_key.startswith("now:"),  # type: ignore[attr-defined]
                     exists().where(_LATER_FIRING.platform == DigestRun.platform,
                                    _LATER_FIRING.workspace == DigestRun.workspace,
                                    _LATER_FIRING.channel == DigestRun.channel,
                                    _LATER_FIRING.fire_time > DigestRun.fire_time)),
                exists().where(_LATER_FIRING.schedule_key == DigestRun.schedule_key,  # uq_digest_firing
                               _LATER_FIRING.fire_time > DigestRun.fire_time)))


_REPLY = aliased(PlaygroundMessage, name="reply")


def _playground_expired(cutoff: datetime) -> tuple[Any, ...]:
    return (PlaygroundMessage.updated_at < cutoff, _below_newest(PlaygroundMessage),
            or_(PlaygroundMessage.thread_id.is_not(None),  # type: ignore[union-attr]
                ~exists().where(_REPLY.channel == PlaygroundMessage.channel,
                                _REPLY.thread_id == cast(PlaygroundMessage.id, String))))


def _thread_expired(cutoff: datetime, now: datetime) -> tuple[Any, ...]:
    """Nothing left of it, finished, its checkpoints gone (else nobody would prune them), nobody holding it."""
    return (ThreadRecord.status.in_(FINISHED_THREAD), ThreadRecord.pruned_at.is_not(None),  # type: ignore[attr-defined,union-attr]
            ThreadRecord.updated_at < cutoff, lease_run_out(**run_out_params(now)), _below_newest(ThreadRecord),
            ~exists().where(Run.thread_record_id == ThreadRecord.id),
            ~exists().where(InboundEvent.thread_record_id == ThreadRecord.id))


async def _first_id_since(session: Any, table: Any, born: Any, since: datetime) -> int | None:
    """The first row (by id) inserted at ``since`` or later: rows before it are the old ones, so a look for old
    rows need not read the table's recent part (ids and insert times go up together, give or take seconds)."""
    return (await session.exec(select(table.id).where(born >= since).order_by(table.id).limit(1))).first()


class Retention:
    """Deletes what ``BATON_RETENTION_DAYS`` no longer keeps (``days`` 0: nothing)."""

    def __init__(self, db: Database, days: int, keep_threads_seconds: float = 0.0, batch: int = BATCH) -> None:
        self.db = db
        self.days = days
        self.keep_threads_seconds = keep_threads_seconds  # the dedupe window: a twin is looked for that far back
        self.batch = batch
        self.sizes: dict[str, int] = {}  # each table's next batch (``_writing``), ``batch`` at most
        self.transactions = 0  # write transactions made
        self._table = ""  # the table being deleted from

    def cutoff(self, now: datetime | None = None) -> datetime | None:
        """Rows older than this may be gone; ``None`` when everything is kept."""
        return None if not self.days else (now or utcnow()) - timedelta(days=self.days)

    async def delete_expired(self) -> dict[str, int]:
        """One pass: every table in batches until none is due. How many rows went, by table."""
        cutoff = self.cutoff()
        if cutoff is None:
            return {}
        steps: list[tuple[str, Step]] = [
            ("playground_messages", self._playground), ("runs", self._runs), ("inbound_events", self._events),
            ("outbox", self._messages), ("audit_log", self._audit), ("digest_runs", self._digests),
            ("thread_records", self._threads)]
        deleted: dict[str, int] = {}
        for table, step in steps:
            self._table, total = table, 0
            while True:
                size = self._size()
                found, gone = await step(cutoff)
                total += gone
                if found < size or not gone:
                    break
                await asyncio.sleep(0)  # the request path goes first between two batches
            if total:
                deleted[table] = total
        if deleted:
            log.info("retention: deleted what is older than %d day%s: %s", self.days, "" if self.days == 1 else "s",
                     ", ".join(f"{count} {table}" for table, count in deleted.items()))
        return deleted

    def _size(self) -> int:
        """The table's next batch: it begins small, and grows while batches are quick."""
        return self.sizes.get(self._table, max(1, self.batch // 8))

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[Transaction]:
        """A write transaction holding the retention lock; the table's next batch is halved when this one held the
        write lock longer than ``LOCK_TARGET_SECONDS``, and doubled again (up to ``batch``) when it was quick."""
        async with self.db.session(durable=False) as session:  # nothing outside waits for it
            await lock_for_transaction(session, LOCK)
            began = time.perf_counter()  # after the lock: another replica's batch is not this one's
            self.transactions += 1
            yield session
        took, size = time.perf_counter() - began, self._size()
        if took > LOCK_TARGET_SECONDS:
            self.sizes[self._table] = max(1, size // 2)
        elif took < LOCK_TARGET_SECONDS / 4:
            self.sizes[self._table] = min(self.batch, size * 2)

    async def _picked(self, query: Any) -> list[Any]:
        async with self.db.scan() as session:  # SQLite: off the event loop; no lock held
            return list((await session.exec(query.limit(self._size()))).all())

    async def _delete(self, table: Any, ids: Sequence[Any], *still: Any, rollup: Rollup | None = None
                      ) -> tuple[int, int]:
        """Delete the rows ``ids`` that still match ``still``: (how many were picked, how many went). ``rollup``:
        what they counted is added to ``forgotten_totals`` first, the rows locked meanwhile (counted once)."""
        if not ids:
            return 0, 0
        async with self._writing() as session:
            if rollup is None:
                gone = (await session.exec(delete(table).where(table.id.in_(ids), *still))).rowcount  # type: ignore[call-overload]
                return len(ids), gone
            locked = list((await session.exec(select(table.id).where(  # type: ignore[call-overload]
                table.id.in_(ids), *still).with_for_update(of=table))).all())
            if locked:
                await forget(session, rollup, locked)
                await session.exec(delete(table).where(table.id.in_(locked)))  # type: ignore[call-overload]
        return len(ids), len(locked)

    async def _runs(self, cutoff: datetime) -> tuple[int, int]:
        """A batch of runs, with their approvals and effects (ix_effects_run: an effect stamped on another replica's
        clock, after its run ended, goes with it)."""
        async with self.db.scan() as session:
            bound = await _first_id_since(session, Run, Run.started_at, cutoff)
            picked = (await session.exec(select(Run.id).where(
                *_run_expired(cutoff), *(() if bound is None else (Run.id < bound,)))
                .order_by(Run.id).limit(self._size()))).all()  # type: ignore[arg-type]
        if not picked:
            return 0, 0
        async with self._writing() as session:
            ids = list((await session.exec(select(Run.id).where(Run.id.in_(picked), *_run_expired(cutoff))  # type: ignore[union-attr]
                                           .with_for_update(of=Run))).all())
            if ids:
                await forget(session, runs_rollup(), ids)
                await session.exec(delete(Effect).where(Effect.run_id.in_(ids)))  # type: ignore[call-overload,union-attr]
                await session.exec(delete(Approval).where(Approval.run_id.in_(ids)))  # type: ignore[call-overload,attr-defined]
                await session.exec(delete(Run).where(Run.id.in_(ids)))  # type: ignore[call-overload,union-attr]
        return len(picked), len(ids)

    async def _events(self, cutoff: datetime) -> tuple[int, int]:
        picked = await self._picked(select(InboundEvent.id).where(*_event_expired(cutoff))
                                    .order_by(InboundEvent.received_at))  # ix_inbound_status
        return await self._delete(InboundEvent, picked, *_event_expired(cutoff), rollup=inbound_rollup())

    async def _messages(self, cutoff: datetime) -> tuple[int, int]:
        async with self.db.scan() as session:
            bound = await _first_id_since(session, OutboxMessage, OutboxMessage.created_at, cutoff)
            picked = (await session.exec(select(OutboxMessage.id).where(
                *_message_expired(cutoff), *(() if bound is None else (OutboxMessage.id < bound,)))  # type: ignore[operator]
                .order_by(OutboxMessage.id).limit(self._size()))).all()
        return await self._delete(OutboxMessage, picked, *_message_expired(cutoff))

    async def _audit(self, cutoff: datetime) -> tuple[int, int]:
        expired = (AuditEntry.at < cutoff, _below_newest(AuditEntry))
        picked = await self._picked(select(AuditEntry.id).where(*expired).order_by(AuditEntry.at))
        return await self._delete(AuditEntry, picked, *expired)

    async def _digests(self, cutoff: datetime) -> tuple[int, int]:
        """A batch of digest firings; what their summaries cost is added to ``forgotten_totals``."""
        picked = await self._picked(select(DigestRun.id).where(*_digest_expired(cutoff)).order_by(DigestRun.id))
        return await self._delete(DigestRun, picked, *_digest_expired(cutoff), rollup=digests_rollup())

    async def _playground(self, cutoff: datetime) -> tuple[int, int]:
        picked = await self._picked(select(PlaygroundMessage.id).where(*_playground_expired(cutoff))
                                    .order_by(PlaygroundMessage.updated_at))
        return await self._delete(PlaygroundMessage, picked, *_playground_expired(cutoff))

    async def _threads(self, cutoff: datetime) -> tuple[int, int]:
        cutoff = min(cutoff, utcnow() - timedelta(seconds=self.keep_threads_seconds))
        now = self.db.now()  # leases are compared on the database's clock (bot.threads)
        async with self.db.scan() as session:
            bound = await _first_id_since(session, ThreadRecord, ThreadRecord.created_at, cutoff)
            picked = list((await session.exec(select(ThreadRecord.id).where(
                *_thread_expired(cutoff, now), *(() if bound is None else (ThreadRecord.id < bound,)))  # type: ignore[operator]
                .order_by(ThreadRecord.id).limit(self._size()))).all())
            # An approval's thread is its run's, so none should be left: looked for once a batch (ix_approvals_thread).
            held = set((await session.exec(select(Approval.thread_record_id).where(
                Approval.thread_record_id.in_(picked)))).all()) if picked else set()  # type: ignore[attr-defined]
        ids = [record_id for record_id in picked if record_id not in held]
        if not ids:
            return len(picked), 0
        async with self._writing() as session:
            # Locked first, then deleted by a second statement: a request storing its event holds its record
            # (threads.find, KEY SHARE) and is waited for, and the DELETE, with a snapshot taken after that
            # event's commit, leaves the record. A single DELETE waiting for it would not look again and would
            # fail the event's foreign key, and the pass with it. Once locked, no new event can name them.
            still = _thread_expired(cutoff, self.db.now())
            locked = list((await session.exec(select(ThreadRecord.id).where(
                ThreadRecord.id.in_(ids), *still).with_for_update(of=ThreadRecord))).all())  # type: ignore[union-attr]
            gone = (await session.exec(delete(ThreadRecord).where(  # type: ignore[call-overload]
                ThreadRecord.id.in_(locked), *still))).rowcount if locked else 0  # type: ignore[union-attr]
        return len(picked), gone
