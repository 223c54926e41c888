"""The outbox: every bot message is stored first, then delivered by its platform's adapter.

Delivery keeps order per thread (a row waits until every earlier row of its thread is sent, and a thread's
rows are stored one transaction at a time: ``_lock_thread``), paces per channel when the platform asks for
it, and survives crashes: a claim is a lease that another replica takes over when it expires.

A run's final reply usually needs no trip through the claim: when this process has the
platform's adapter and nothing earlier in the thread is still undelivered, the row is stored
already claimed (in the transaction that records the outcome) and handed straight to the adapter
after the commit (``enqueue_claimed`` / ``hand_over``). If the process dies before sending it,
the claim expires and any replica sends it, as for any other claimed row.

A claim lasts as long as a replica's lease on a thread (``BATON_LEASE_SECONDS``): a dead replica's
messages go to the others as soon as its threads do. A live replica keeps the claims of the
deliveries its delivery loop holds (``keep_claims``, every third of a claim), however long the
platform takes to answer: a message in flight is not taken over, and sent twice, because its send
outlasted the claim.

A platform outside Baton's database (Slack, Discord) cannot be marked in the transaction that sends:
a call that times out after the platform posted is retried, and a process that dies (or is stopped
mid-send) between the platform's answer and the stored mark has the row sent again once its claim
runs out. The adapter closes that gap with what its platform offers: Discord's nonce (a try within a
few minutes of the first gets the message posted then), Slack's message metadata (each post names its
row and step; a try after one whose post may have reached Slack, or a row taken over, looks for it in
the thread first). ``Delivery.attempts`` is how an adapter tells a first try (1: nothing to look for)
from a later one. The playground marks its messages in the transaction that stores them: exactly once.

A channel's answers go before its housekeeping: rows Baton stores of itself (``housekeeping``: an expired card's
edit and its thread's notice) wait, at the channel's pace, while a row that answers someone waits there, however
many of them were stored first; they drain whenever the channel has nothing fresher. 10,000 cards expiring together
stored 20,000 messages in their channel: at Slack's one a second, the answer to whoever asked next came hours late.
A priority, not a reordering: a thread keeps its order (a housekeeping row ahead of an answer in its thread goes
with the answers: it is stored as one when the answer is), and the choice is made in the claim, from the stored rows,
the same on every replica.

A claim's work is that of the channels with unsent rows and of the rows it takes, not the backlog's: it walks the
channels (ix_outbox_unsent, a partial index of the unsent rows), passes those their pace holds, and reads each other
one's first due row. It read every unsent row of the platform, and a paced one page after page of them: with 20,000
expiry notices waiting in a Slack channel, each claim (one a second) held the event loop most of a second on SQLite.

Times another replica compares (claims, retries, a channel's pace and a 429's hold) are on the database's clock
(``Database.now``), the one clock replicas share. One further ahead than any wait Baton sets was set on a clock
that was off (or was before it was set back): it counts as come, rather than silencing its channel until then.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

from pydantic import ValidationError
from sqlalchemy import DateTime, and_, bindparam, exists, false, func, literal, literal_column, or_, true, update
from sqlalchemy.orm import aliased
from sqlmodel import select

from bot import audit
from bot.messages import Location, Message, storable, validation_words
from bot.recent import REMEMBERED, Recent
from bot.redaction import Redactor
from storage.db import Database, Transaction, insert_ignore, insert_returning_id, lock_for_transaction, prepared
from storage.models import ChannelPace, OutboxMessage, utcnow

log = logging.getLogger("baton.outbox")

# Why a channel takes none of Baton's messages, in the contract's words (``DeliveryRejected.unreachable``): Baton was
# removed from it (or never added), it is gone (deleted, unknown), archived, or (a thread) locked.
Unreachable = Literal["removed", "gone", "archived", "locked"]
UNREACHABLE: tuple[Unreachable, ...] = get_args(Unreachable)
# Why a message was given up, as ``baton_messages_undeliverable_total`` counts it: its channel's reason, the platform
# refused that message itself, or it failed until Baton gave up on it. A bounded set: a label's values.
UNDELIVERABLE = (*UNREACHABLE, "refused", "gave_up")
_UNREACHABLE_WORDS = {"removed": "Baton is not a member of it (removed from it, or never added)",
                      "gone": "it no longer exists (deleted), or Baton cannot see it", "archived": "it is archived",
                      "locked": "the thread is locked"}
# A message given up for good, told to the core in the transaction that marks it failed: (that transaction, the row,
# the error as stored). The orchestrator ends a run whose approval card could not be posted.
FailedHook = Callable[[Transaction, OutboxMessage, str], Awaitable[None]]
CLAIM_SECONDS = 30.0  # BATON_LEASE_SECONDS's default; Baton claims for as long as its lease setting says
# The longest a retry waits, whatever the platform asked (a Retry-After of ``inf`` or of centuries: a broken
# header, a proxy's): past it, no date could be stored, or the message and its channel waited for ever.
MAX_RETRY_SECONDS = 3600.0
# Channels and threads told unreachable that are remembered (so told once): each locked Discord thread Baton had
# written in added one for good.
UNREACHABLE_REMEMBERED = REMEMBERED

# The claim's statements are built once, with bound parameters: building them (and their cache
# keys) on every poll cost more CPU than running them.
_NOW = bindparam("now", type_=DateTime())
# A wait Baton sets ends at most ``MAX_RETRY_SECONDS`` (a 429's hold, a retry) or a channel's pace ahead. A pace,
# hold or retry time further ahead was set on a clock that was ahead: another replica's, or this machine's before
# it was set back (NTP correcting a virtual machine after it resumed). It counts as come: waited for, it kept the
# channel (every message of it, from every replica) silent until the clock caught up, hours or days later.
# Its default (no such bound) is for callers that give none.
_LATEST = bindparam("latest", datetime(9999, 1, 1, tzinfo=UTC), type_=DateTime())


def latest_wait(now: datetime, pace_seconds: float = 0.0) -> datetime:
    """The furthest ahead of ``now`` that a wait Baton set may end (``_LATEST``)."""
    return now + timedelta(seconds=MAX_RETRY_SECONDS + max(pace_seconds, 0.0))


def _claimable(rows: Any) -> Any:
    """Due now: ``rows`` is the model (in ORM queries) or its table's columns (in Core writes). A row never tried is
    due whatever its ``next_attempt_at`` says: that is the storing replica's clock, which may be ahead of this one's."""
    return or_(and_(rows.status == "pending", or_(rows.attempts == 0, rows.next_attempt_at <= _NOW,
                                                   rows.next_attempt_at > _LATEST)),
               and_(rows.status == "sending", rows.claimed_until < _NOW))  # a crashed sender's claim


_ROWS = OutboxMessage.__table__  # type: ignore[attr-defined]
_TAKE = prepared(update(_ROWS)
                 .where(_ROWS.c.id == bindparam("row_id"), _claimable(_ROWS.c))
                 .values(status="sending", claimed_by=bindparam("worker"),
                         claimed_until=bindparam("until", type_=DateTime()), attempts=_ROWS.c.attempts + 1))
_GIVE_BACK = update(_ROWS).where(
    _ROWS.c.id.in_(bindparam("row_ids", expanding=True)), _ROWS.c.status == "sending",
    _ROWS.c.claimed_by == bindparam("worker"),
).values(status="pending", claimed_by=None, claimed_until=None, attempts=_ROWS.c.attempts - 1)
_KEEP = update(_ROWS).where(
    _ROWS.c.id.in_(bindparam("row_ids", expanding=True)), _ROWS.c.status == "sending",
    _ROWS.c.claimed_by == bindparam("worker"),
).values(claimed_until=bindparam("until", type_=DateTime()))
# A delivery is settled only by the worker whose claim it is: one that stalled past its claim, while
# another replica took the row over and sent it, must not send it again (retry), mark it failed or
# overwrite its platform id. A claim that ran out and that nobody took is still its worker's.
_CLAIM_HELD = (_ROWS.c.id == bindparam("row_id"), _ROWS.c.status == "sending",
               _ROWS.c.claimed_by == bindparam("worker"))
_DELIVERED = prepared(update(_ROWS).where(*_CLAIM_HELD).values(
    status="sent", platform_message_id=bindparam("platform_id"), sent_at=bindparam("now", type_=DateTime()),
    claimed_until=None, error=None))
_RETRY = prepared(update(_ROWS).where(*_CLAIM_HELD).values(
    status="pending", next_attempt_at=bindparam("at", type_=DateTime()), claimed_until=None, error=bindparam("error")))
# A try the platform only put off (a 429: nothing of it posted): an attempt still (each try has its number, which
# Slack's adapter tells tries apart by), but no failure: counted apart, and not towards giving the message up.
_PUT_OFF = prepared(update(_ROWS).where(*_CLAIM_HELD).values(
    status="pending", next_attempt_at=bindparam("at", type_=DateTime()), claimed_until=None, error=bindparam("error"),
    put_offs=_ROWS.c.put_offs + 1))
_FAILED = prepared(update(_ROWS).where(*_CLAIM_HELD).values(status="failed", claimed_until=None, error=bindparam("error")))


_THREADS_LOCKED = "baton_outbox_threads_locked"  # a transaction's ``info``: the threads ``_lock_thread`` locked


class _HookFailed(Exception):
    """``Outbox.on_failed`` raised (its error is the cause): the row is marked failed again, without it."""


class ClaimLost(RuntimeError):
    """Another replica took this outbox row over (this one stalled past its claim): it is theirs to send."""


# A post's latest version: its latest edit, else the post (an edit is stored in the post's thread, after it).
_LATEST_VERSION = select(OutboxMessage.payload).where(
    OutboxMessage.platform == bindparam("platform"), OutboxMessage.channel == bindparam("channel"),
    OutboxMessage.thread == bindparam("thread"), OutboxMessage.id >= bindparam("post_id"),
    or_(OutboxMessage.id == bindparam("post_id"),
        and_(OutboxMessage.kind == "update", OutboxMessage.ref_outbox_id == bindparam("post_id"))),
).order_by(OutboxMessage.id.desc()).limit(1)  # type: ignore[union-attr]


# Where an edit goes: the platform id of the post's latest delivered version. An edit of a post that
# never made it (refused, given up on) or that someone deleted is posted anew, and that new message is
# what the next edit must change: the post's own id made every later edit post one more copy.
_SHOWN_AS = prepared(select(OutboxMessage.platform_message_id).where(
    OutboxMessage.platform == bindparam("platform"), OutboxMessage.channel == bindparam("channel"),
    OutboxMessage.thread == bindparam("thread"), OutboxMessage.id >= bindparam("post_id"),
    OutboxMessage.id < bindparam("edit_id"), OutboxMessage.status == "sent",
    OutboxMessage.platform_message_id.is_not(None),  # type: ignore[union-attr]
    or_(OutboxMessage.id == bindparam("post_id"),
        and_(OutboxMessage.kind == "update", OutboxMessage.ref_outbox_id == bindparam("post_id"))),
).order_by(OutboxMessage.id.desc()).limit(1))  # type: ignore[union-attr]


# The rows stored after an edit in its thread, first the nearest: the edits of the same message that follow it
# straight away supersede it (``_latest_edit``).
_NEXT_IN_THREAD = prepared(select(OutboxMessage).where(
    OutboxMessage.platform == bindparam("platform"), OutboxMessage.channel == bindparam("channel"),
    OutboxMessage.thread == bindparam("thread"), OutboxMessage.id > bindparam("after"),
).order_by(OutboxMessage.id).limit(50))  # type: ignore[arg-type]
_SUPERSEDE_DUE = prepared(update(_ROWS).where(_ROWS.c.id == bindparam("row_id"), _ROWS.c.status == "pending",
                                               _ROWS.c.attempts == 0).values(
    status="sent", claimed_by=None, claimed_until=None, error=bindparam("error")))
_SUPERSEDE_PENDING = update(_ROWS).where(_ROWS.c.id.in_(bindparam("row_ids", expanding=True)),
                                         _ROWS.c.status == "pending").values(
    status="sent", claimed_by=None, claimed_until=None, error=bindparam("error"))


# An IN list of literals, not of values: a prepared statement takes no expanding IN parameter.
_UNSENT = [literal("pending"), literal("sending")]
# Through ix_outbox_thread_status: the thread's unsent rows only (through ix_outbox_thread it read every row
# the thread ever sent: 6 ms at 50,000, with SQLite's write lock held).
_UNDELIVERED_IN_THREAD = prepared(select(OutboxMessage.id).where(
    OutboxMessage.platform == bindparam("platform"), OutboxMessage.channel == bindparam("channel"),
    OutboxMessage.thread == bindparam("thread"), OutboxMessage.status.in_(_UNSENT)).limit(1))  # type: ignore[attr-defined]


# Every platform's unsent rows: how many, and since when (read at start, not polled).
_BACKLOG = select(OutboxMessage.platform, func.count(), func.min(OutboxMessage.created_at)).where(
    OutboxMessage.status.in_(_UNSENT)).group_by(OutboxMessage.platform)  # type: ignore[attr-defined]


# Which rows a claim reads: those that answer someone, then the housekeeping; ``None``: either (whether anything is
# due at all). A row's lane is stored (``housekeeping``): a housekeeping row that an answer is stored behind in its
# thread is an answer from then on (``_PROMOTE``), so a thread keeps its order and goes with the answers.
Lane = Literal["answers", "housekeeping"]
LANES: tuple[Lane, ...] = get_args(Lane)


def _unsent(rows: Any) -> Any:
    """Still to send, in ix_outbox_unsent's words: a partial index is read only for a query that states its condition
    (as SQL, not as bound values: PostgreSQL's generic plan of a prepared statement knows no values)."""
    return rows.status.in_([literal_column("'pending'"), literal_column("'sending'")])


def _first_due(channel: Any, housekeeping: bool, after: Any = None) -> Any:
    """The first due row of ``channel`` in a lane, in id order (after ``after``): a row waits for every earlier unsent
    row of its thread. Through ix_outbox_unsent, the walk stops at it: only the channel's rows before it that are not
    due (in flight, waiting to retry, behind an earlier row of their thread) are read, never its whole backlog."""
    row, earlier = aliased(OutboxMessage), aliased(OutboxMessage)
    # A scalar subquery, not NOT EXISTS: PostgreSQL made that an anti-join reading the channel's every unsent row
    # for each row, where this looks up the row's own thread (ix_outbox_thread_status on SQLite; on PostgreSQL
    # ix_outbox_unsent_thread: without it, before ANALYZE, it read the channel's unsent rows in ix_outbox_unsent).
    earlier_in_thread = select(earlier.id).where(earlier.platform == row.platform, earlier.channel == row.channel,
                                                 earlier.thread == row.thread, earlier.id < row.id, _unsent(earlier))
    return select(row.id).where(
        row.platform == bindparam("platform"), row.channel == channel, _unsent(row),
        row.housekeeping == (true() if housekeeping else false()), *(() if after is None else (row.id > after,)),
        _claimable(row), earlier_in_thread.limit(1).scalar_subquery().is_(None)).order_by(row.id).limit(1) \
        .scalar_subquery()


@functools.cache
def _due_statement(limit: int, lane: Lane | None = None) -> Any:
    """The first due row of each channel (of ``lane``; of either, answers first, for ``None``) whose pace allows a
    message now, in id order, after ``after``: at most ``limit``.

    A claim's work is the channels' and the rows it returns', not the backlog's: the channels with unsent rows are
    walked one index seek each (a skip scan of ix_outbox_unsent, by a recursive CTE), a channel its pace holds is
    passed at once, and each other one's first due row found by ``_first_due``. Before, every claim read every
    unsent row of the platform (and, paced, page after page of them): 13 / 69 / 467 ms on SQLite at 200 / 2,000 /
    8,000 rows waiting in one channel, on the event loop, and 8.5 s on PostgreSQL at 2,000 before it was analysed."""
    # Ordered by ix_outbox_unsent's columns: SQLite then reads that index (without, it took ix_outbox_thread_status,
    # which holds status, and walked the channel's rows sent long ago to its first unsent one).
    first = aliased(OutboxMessage)
    channels = select(select(first.channel).where(first.platform == bindparam("platform"), _unsent(first))
                      .order_by(first.channel, first.housekeeping).limit(1).scalar_subquery().label("channel")) \
        .cte("unsent_channels", recursive=True)
    after = aliased(OutboxMessage)
    following = select(after.channel).where(after.platform == bindparam("platform"), _unsent(after),
                                            after.channel > channels.c.channel) \
        .order_by(after.channel, after.housekeeping).limit(1)
    channels = channels.union_all(select(following.scalar_subquery()).where(channels.c.channel.is_not(None)))
    # A channel whose pace allows no message yet (or a 429 holds): passed at once. A pace further ahead than any
    # Baton sets was set on a clock that was ahead: it counts as come (``_LATEST``).
    paced_out = exists().where(ChannelPace.platform == bindparam("platform"), ChannelPace.channel == channels.c.channel,
                               ChannelPace.next_at > _NOW, ChannelPace.next_at <= _LATEST)
    due = {"answers": _first_due(channels.c.channel, False), "housekeeping": _first_due(channels.c.channel, True),
           None: func.coalesce(_first_due(channels.c.channel, False), _first_due(channels.c.channel, True))}[lane]
    firsts = select(due.label("id")).where(channels.c.channel.is_not(None), ~paced_out).subquery("firsts")
    page = select(firsts.c.id).where(firsts.c.id > bindparam("after", 0)).order_by(firsts.c.id).limit(limit) \
        .subquery("page")  # after ``after``: the next page
    # The page's rows by their ids (a join with the whole outbox, PostgreSQL read all of it for a hash)
    return prepared(select(OutboxMessage).join(page, OutboxMessage.id == page.c.id)
                    .order_by(OutboxMessage.id))  # type: ignore[arg-type]


@functools.cache
def _next_due(lane: Lane) -> Any:
    """The first due row of one channel in ``lane`` after row ``after``: a claim's next from that channel (unpaced),
    or the one after a row this version cannot read."""
    return prepared(select(OutboxMessage).where(OutboxMessage.id == _first_due(
        bindparam("channel"), lane == "housekeeping", bindparam("after"))))


# A thread's housekeeping rows, when an answer is stored behind them: they go with the answers now (as a thread keeps
# its order), stored so that the claim finds a channel's answers by index, not by reading its housekeeping.
_PROMOTE = prepared(update(_ROWS).where(
    _ROWS.c.platform == bindparam("in_platform"), _ROWS.c.channel == bindparam("in_channel"),
    _ROWS.c.thread == bindparam("in_thread"), _ROWS.c.status.in_(_UNSENT), _ROWS.c.housekeeping == true(),
).values(housekeeping=False))


def _row(location: Location, message: Message, *, kind: str = "post", target_user: str | None = None,
         ref_outbox_id: int | None = None, correlation_id: str | None = None,
         housekeeping: bool = False) -> dict[str, Any]:
    """A new outbox row's columns (a dict: building an ``OutboxMessage`` costs more than the INSERT)."""
    now = utcnow()
    return {"platform": location.platform, "workspace": location.workspace, "channel": location.channel,
            "thread": location.thread, "kind": kind, "target_user": target_user, "ref_outbox_id": ref_outbox_id,
            "payload": message.model_dump(), "status": "pending", "attempts": 0, "put_offs": 0,
            "next_attempt_at": now, "claimed_by": None, "claimed_until": None, "correlation_id": correlation_id,
            "created_at": now, "housekeeping": housekeeping}


@dataclass(frozen=True)
class Delivery:
    """One claimed outbox row, ready for an adapter to send."""

    id: int
    kind: str  # post | update | ephemeral
    location: Location
    message: Message
    target_user: str | None
    target_message_id: str | None  # for ``update``: the platform id of the message to edit
    attempts: int
    # When the row was stored: where an adapter that looks for an earlier try's post (Slack) starts looking,
    # and what tells its row from another database's of the same id (baton.db made anew, a restore).
    created_at: datetime | None = None
    put_offs: int = 0  # of the tries before this one, those the platform only put off (a 429): nothing posted

    @property
    def failures(self) -> int:
        """The tries, this one included, that were no mere put-off: what a delivery is given up after."""
        return self.attempts - self.put_offs


class Outbox:
    """Stores messages, and hands them to this process's delivery loops (one a platform).

    A delivery loop takes deliveries with ``handed_over`` and ``claim_if_wanted``, and settles each
    (``delivered``, ``retry``, ``failed``) or gives up on it before it takes more: until then its
    claims are kept (``keep_claims``), as long as the loop that took them is running.
    """

    def __init__(self, db: Database, worker: str = "local", claim_seconds: float = CLAIM_SECONDS,
                 redactor: Redactor | None = None) -> None:
        self._db = db
        self._redactor = redactor or Redactor(())  # every message passes it: no secret is ever posted
        self.worker = worker  # this process, as named in the claims it makes
        self.claim_seconds = claim_seconds
        self._wake: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._senders: dict[str, float] = {}  # platform -> channel pace, for the adapters running here
        self._handed: defaultdict[str, deque[Delivery]] = defaultdict(deque)
        self._claim_wanted: set[str] = set()  # platforms whose stored rows may be due
        self._taken: dict[str, list[int]] = {}  # platform -> the rows its delivery loop took last
        self._loops: dict[str, asyncio.Task[Any] | None] = {}  # platform -> the task that takes them
        self._claimed_as: dict[int, str] = {}  # row -> the worker ``claim`` took it as, until it is settled
        self._begun: set[int] = set()  # taken rows whose sending has begun (they may have reached the platform)
        self._unreadable: set[int] = set()  # rows whose message this version cannot read, said once each
        # (platform, channel) -> until when a 429 asked for quiet there, as this process saw it: the straight
        # hand-over of a final reply on an unpaced platform reads no pace row, so it went into the 429.
        self._holds: dict[tuple[str, str], datetime] = {}
        # (platform, reason) -> messages this process gave up on: ``baton_messages_undeliverable_total``
        self.undeliverable: defaultdict[tuple[str, str], int] = defaultdict(int)
        # (platform, channel, thread or "") told unreachable
        self._unreachable: Recent[tuple[str, str, str]] = Recent(UNREACHABLE_REMEMBERED)
        self.on_failed: FailedHook | None = None

    def attach(self, platform: str, pace_seconds: float) -> None:
        """This process delivers ``platform``'s messages from now on (its adapter has started)."""
        self._senders[platform] = pace_seconds
        self._claim_wanted.add(platform)  # rows left from before

    def detach(self, platform: str) -> None:
        self._senders.pop(platform, None)

    async def report_unserved(self) -> dict[str, int]:
        """Once the adapters have started: warn of the stored messages for platforms this process does not
        deliver (Discord's tokens removed from .env after messages for it were stored). They are kept, for
        a replica that serves the platform, or for this one once it serves it again. Returns how many, a platform."""
        async with self._db.read() as session:
            backlog = (await session.exec(_BACKLOG)).all()  # type: ignore[call-overload]
        unserved = {platform: int(count) for platform, count, _oldest in backlog if platform not in self._senders}
        for platform, count, oldest in backlog:
            if platform in unserved:
                log.warning("%d outbox message(s) for %s are waiting, the oldest since %s UTC, and this Baton does not "
                            "deliver %s (no adapter for it here: its settings, or BATON_ADAPTERS): a replica serving %s "
                            "sends them; if none does, they wait, and go out late once %s is served again",
                            count, platform, f"{oldest:%Y-%m-%d %H:%M}", platform, platform, platform)
        return unserved

    @staticmethod
    async def latest_version(session: Transaction, location: Location, post_id: int) -> Message | None:
        """The message that post ``post_id`` (in ``location``) shows once its stored edits are delivered."""
        payload = (await session.exec(_LATEST_VERSION, params={  # type: ignore[call-overload]
            "platform": location.platform, "channel": location.channel, "thread": location.thread,
            "post_id": post_id})).first()
        return None if payload is None else Message.model_validate(payload)

    async def enqueue(
        self,
        session: Transaction,
        location: Location,
        message: Message,
        *,
        kind: str = "post",
        target_user: str | None = None,
        ref_outbox_id: int | None = None,
        correlation_id: str | None = None,
        housekeeping: bool = False,
    ) -> int:
        """Store a message in the caller's transaction and return its row id; call ``wake`` after it commits.
        ``housekeeping``: Baton's own tidying, no answer to anyone: its channel's answers go first."""
        await self._lock_thread(session, location)
        if not housekeeping:
            await self._promote(session, location)
        return int(await insert_returning_id(session, OutboxMessage, _row(
            location, self._redactor.message(message), kind=kind, target_user=target_user, ref_outbox_id=ref_outbox_id,
            correlation_id=correlation_id, housekeeping=housekeeping)))

    @staticmethod
    async def _promote(session: Transaction, location: Location) -> None:
        """An answer is stored in ``location``'s thread: the housekeeping waiting there goes with the answers."""
        await session.exec(_PROMOTE, params={  # type: ignore[call-overload]
            "in_platform": location.platform, "in_channel": location.channel, "in_thread": location.thread})

    async def _lock_thread(self, session: Transaction, location: Location) -> None:
        """Store rows in ``location``'s thread one transaction at a time, from this row to the commit.

        Order per thread is the order of the rows' ids, and a row is claimed (or handed over) when no row
        of its thread with a smaller id is unsent. On PostgreSQL (READ COMMITTED) two transactions storing
        in one thread at once (a replica's "Queued" note, another's run result) saw nothing of each other,
        and the id is taken at the insert, not the commit: the row committed first went out, and the one
        numbered before it followed. Under this lock a thread's ids follow its commits. SQLite's writers
        take turns already: there ``lock_for_transaction`` takes nothing."""
        name = f"outbox:{location.platform}:{location.channel}:{location.thread}"
        held = session.info.setdefault(_THREADS_LOCKED, set())
        if name not in held:  # once a transaction: its later rows there (a card's edit, then the reply) need no trip
            await lock_for_transaction(session, name)
            held.add(name)

    async def enqueue_claimed(self, session: Transaction, location: Location, message: Message, *,
                              correlation_id: str | None = None, housekeeping: bool = False) -> Delivery | None:
        """Post ``message``, claimed by this process in the caller's transaction when it may go at once.

        Returns the delivery to ``hand_over`` after the commit; ``None`` when the row was stored
        for the delivery loop instead (no adapter for the platform here, an earlier message of the
        thread still undelivered, or the channel's pace not yet allowing another message): then
        ``wake`` after the commit, as for ``enqueue``. ``housekeeping`` (as for ``enqueue``) is always
        stored: taken here, it took its channel's slot from an answer waiting in the stored queue.
        """
        message = self._redactor.message(message)
        pace = self._senders.get(location.platform)
        thread = {"platform": location.platform, "channel": location.channel, "thread": location.thread}
        await self._lock_thread(session, location)  # before the check: it then sees an earlier row still to commit
        if pace is None or housekeeping or self.held(location) \
                or (await session.exec(_UNDELIVERED_IN_THREAD, params=thread)).first() is not None \
                or (pace > 0 and not await self._channel_slot(session, location.platform, location.channel, pace)):
            if not housekeeping:
                await self._promote(session, location)
            await insert_returning_id(session, OutboxMessage, _row(location, message, correlation_id=correlation_id,
                                                                   housekeeping=housekeeping))
            return None
        row = _row(location, message, correlation_id=correlation_id)
        row.update(status="sending", attempts=1, claimed_by=self.worker,
                   claimed_until=self._db.now() + timedelta(seconds=self.claim_seconds))
        row_id = await insert_returning_id(session, OutboxMessage, row)
        return Delivery(id=row_id, kind="post", location=location, message=message, target_user=None,
                        target_message_id=None, attempts=1, created_at=row["created_at"])

    def held(self, location: Location) -> bool:
        """Whether a 429 this process saw still holds ``location``'s channel: a delivery taken before it (in the
        same claim, or handed over meanwhile) waits for the hold's end too (``put_back``)."""
        return bool(self._holds) and self._held(location.platform, location.channel)

    async def put_back(self, delivery_id: int) -> None:
        """A delivery taken and never begun goes back to the stored queue as it was, not counted as a try: the
        claim takes it again once its channel allows a message."""
        worker = self._claimed_as.pop(delivery_id, self.worker)
        async with self._db.session(durable=False) as session:  # lost, its claim runs out: sent then
            await session.exec(_GIVE_BACK,  # type: ignore[call-overload]
                               params={"row_ids": [delivery_id], "worker": worker})

    def _held(self, platform: str, channel: str) -> bool:
        """Whether a 429 this process saw still holds ``channel``."""
        self._forget_holds_over(self._db.now())
        return (platform, channel) in self._holds

    def _forget_holds_over(self, now: datetime) -> None:
        """Forget the holds that ran out, and those ending further ahead than any hold lasts: seen before the
        clock was set back, they would have held their channels for as long as it was set back."""
        latest = latest_wait(now)
        for key in [key for key, until in self._holds.items() if until <= now or until > latest]:
            del self._holds[key]

    def hand_over(self, platform: str, delivery: Delivery | None) -> None:
        """After the commit: give the adapter the delivery ``enqueue_claimed`` made, or else ``wake`` it."""
        if delivery is None:
            return self.wake(platform)
        self._handed[platform].append(delivery)
        self._wake[platform].set()

    def wake(self, platform: str) -> None:
        """Rows were stored for ``platform``: its delivery loop claims them."""
        self._claim_wanted.add(platform)
        self._wake[platform].set()

    def handed_over(self, platform: str) -> list[Delivery]:
        """The deliveries handed to this process's adapter since it last asked."""
        waiting = self._handed[platform]
        deliveries = list(waiting)
        waiting.clear()
        self._took(platform, deliveries)
        return deliveries

    def _took(self, platform: str, deliveries: list[Delivery]) -> None:
        """``platform``'s delivery loop took ``deliveries``: the ones it took before are settled or given up."""
        self._begun.difference_update(self._taken.get(platform, ()))
        self._taken[platform] = [delivery.id for delivery in deliveries]
        self._loops[platform] = asyncio.current_task()

    async def keep_claims(self) -> int:
        """Extend the claims of the rows this process's delivery loops hold (taken, or handed over and
        waiting to be taken), so that a slow send is not taken over while in flight. Not those of a
        loop that has ended (an adapter stopped, a crash): they run out, and another replica sends
        them. Returns how many were extended."""
        row_ids = [row_id for platform in self._senders if not self._loop_ended(platform)
                   for row_id in [*self._taken.get(platform, ()), *(d.id for d in self._handed.get(platform, ()))]]
        if not row_ids:
            return 0
        until = self._db.now() + timedelta(seconds=self.claim_seconds)
        # Not durable: after a power cut the claims are this dead process's, to run out anyway.
        async with self._db.session(durable=False) as session:
            kept = await session.exec(_KEEP, params={  # type: ignore[call-overload]
                "row_ids": row_ids, "worker": self.worker, "until": until})
        return int(kept.rowcount)

    def _loop_ended(self, platform: str) -> bool:
        loop = self._loops.get(platform)
        return loop is not None and loop.done()

    def begin(self, delivery_id: int) -> None:
        """The delivery loop begins to send this row: from now on it may reach the platform."""
        self._begun.add(delivery_id)

    async def give_back_unsent(self) -> int:
        """At shutdown, once the delivery loops have stopped: the deliveries they held and never began to
        send (handed over, or claimed) go back to the stored queue, for any replica to send at once rather
        than after their claim expires. One whose sending began keeps its claim, which runs out, as a
        crashed sender's does: it may have reached the platform. Returns how many."""
        ids = [delivery.id for waiting in self._handed.values() for delivery in waiting]
        ids += [row_id for taken in self._taken.values() for row_id in taken if row_id not in self._begun]
        self._handed.clear()
        self._taken.clear()
        self._begun.clear()
        if not ids:
            return 0
        async with self._db.session() as session:
            given = await session.exec(_GIVE_BACK, params={"row_ids": ids, "worker": self.worker})  # type: ignore[call-overload]
        return int(given.rowcount)

    async def claim_if_wanted(self, platform: str, *, pace_seconds: float = 0.0) -> list[Delivery]:
        """``claim`` when rows may be due (woken, polled, or the last claim found some)."""
        self._took(platform, [])
        if platform not in self._claim_wanted:
            return []
        self._claim_wanted.discard(platform)
        deliveries = await self.claim(platform, self.worker, pace_seconds=pace_seconds)
        self._took(platform, deliveries)
        if deliveries or self._handed.get(platform):
            # Sending these, or the deliveries handed over meanwhile, may unblock the next rows of their threads.
            self._claim_wanted.add(platform)
        return deliveries

    async def wait(self, platform: str, timeout: float) -> None:
        """Until woken or handed a delivery; after ``timeout`` the stored rows are polled (retries come due,
        other replicas' rows)."""
        event = self._wake[platform]
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            self._claim_wanted.add(platform)
        event.clear()

    async def claim(self, platform: str, worker: str, *, limit: int = 20, pace_seconds: float = 0.0) -> list[Delivery]:
        await self._db.read_clock(unless_read=True)  # a process's first claim: no connection may have read it yet
        now = self._db.now()
        due_params = {"platform": platform, "now": now, "latest": latest_wait(now, pace_seconds)}
        # Idle polling never takes the write lock, nor does a row this version cannot read (it would, every poll).
        if not await self._worth_claiming(due_params, limit):
            return []
        deliveries: list[Delivery] = []
        async with self._db.session() as session:
            paced: set[str] = set()  # the channels given their slot in this claim
            for lane in LANES:  # a channel's slot goes to an answer waiting there before any housekeeping
                if len(deliveries) < limit:
                    await self._claim_lane(session, lane, due_params, worker, limit, pace_seconds, paced, deliveries)
        return deliveries

    async def _claim_lane(self, session: Transaction, lane: Lane, due_params: dict[str, Any], worker: str, limit: int,
                          pace_seconds: float, paced: set[str], deliveries: list[Delivery]) -> None:
        """Claim ``lane``'s due rows into ``deliveries``, in id order, until they hold ``limit``: paced, a channel's
        first (one a channel); unpaced, each channel's in turn, its next read once its first is taken (the first
        ``limit`` due rows of the platform are those of the ``limit`` channels whose first comes first)."""
        now = due_params["now"]
        after = 0
        for _page in range(limit):
            page = (await session.exec(_due_statement(limit, lane), params={  # type: ignore[call-overload]
                **due_params, "after": after})).all()
            waiting = [(row.id, row) for row in page]  # a heap by id: each channel's due row it reached
            while waiting and len(deliveries) < limit:
                row = heapq.heappop(waiting)[1]
                if pace_seconds > 0 and row.channel in paced:  # before reading the message
                    continue
                message = self._readable(row)
                taken = None
                if message is not None and (pace_seconds <= 0 or await self._slot_for(session, row, pace_seconds,
                                                                                       paced)):
                    if row.kind == "update" and pace_seconds > 0:  # a burst of edits of one message: its last
                        row, message = await self._latest_edit(session, row, message)
                    taken = await self._take(session, row, message, worker, now)
                    if taken is not None:
                        deliveries.append(taken)
                if message is None or pace_seconds <= 0:  # read on in its channel: after a row this version cannot
                    following = (await session.exec(_next_due(lane), params={  # type: ignore[call-overload]
                        **due_params, "channel": row.channel, "after": row.id})).first()  # read, or (unpaced) any
                    if following is not None:
                        heapq.heappush(waiting, (following.id, following))
            # A full page: more channels may have due rows after it.
            if len(page) < limit or len(deliveries) >= limit:
                return
            after = page[-1].id

    async def _worth_claiming(self, due_params: dict[str, Any], limit: int) -> bool:
        """Whether a row is due to send (read outside any transaction): not when each channel's first due row is one
        this version cannot read, and nothing due follows it in its channel."""
        due = (await self._db.fetch(_due_statement(limit), {**due_params, "after": 0})).all()
        if len(due) >= limit or any(row.id not in self._unreadable for row in due):
            return True
        for row in due:
            for lane in LANES:
                after = 0
                while (following := (await self._db.fetch(_next_due(lane), {
                        **due_params, "channel": row.channel, "after": after})).first()) is not None:
                    if following.id not in self._unreadable:
                        return True
                    after = following.id
        return False

    async def _slot_for(self, session: Transaction, row: OutboxMessage, pace_seconds: float, paced: set[str]) -> bool:
        """Whether ``row`` may go now: the first row of its channel in this claim, and the channel's pace allows it."""
        if row.channel in paced:
            return False
        paced.add(row.channel)
        return await self._channel_slot(session, row.platform, row.channel, pace_seconds)

    def _readable(self, row: OutboxMessage) -> Message | None:
        """The row's message; ``None`` when this version cannot read it (stored by another Baton version in a
        rolling deploy, or before a rollback). Raising here failed the whole claim, and with it every delivery
        of the platform; the row is left as it is, for a replica that reads it."""
        try:
            return Message.model_validate(row.payload)
        except ValidationError as exc:
            if row.id not in self._unreadable:
                self._unreadable.add(row.id)  # type: ignore[arg-type]
                log.error("outbox message %s (%s in channel %s, thread %s) was stored by a Baton version this one "
                          "cannot read (%s); it is left for a replica that can, and its thread's later messages wait "
                          "behind it", row.id, row.kind, row.channel, row.thread or "-",
                          "; ".join(f"{'.'.join(map(str, error['loc']))}: {validation_words(error)}"
                                    for error in exc.errors()))
            return None

    @staticmethod
    async def _latest_edit(session: Transaction, row: OutboxMessage, message: Message) -> tuple[OutboxMessage, Message]:
        """The edit to send for the due edit ``row``: the last of the edits of the same message that follow it
        straight away in its thread, the others marked sent, superseded (nothing else is stored between them:
        each would have shown a state the next replaced at once). On a paced channel (Slack: one message a
        second) a run's burst of ``progress()`` lines took a slot each, and its reply waited behind them all."""
        if row.attempts:  # tried before, it may have reached the platform (an edit posted anew): it goes as it is,
            return row, message  # and its adapter looks for that try's post (``Delivery.attempts``)
        later = (await session.exec(_NEXT_IN_THREAD, params={  # type: ignore[call-overload]
            "platform": row.platform, "channel": row.channel, "thread": row.thread, "after": row.id})).all()
        latest: tuple[OutboxMessage, Message] | None = None
        skipped: list[int] = []
        for candidate in later:
            if (candidate.kind != "update" or candidate.ref_outbox_id != row.ref_outbox_id
                    or candidate.target_user != row.target_user or candidate.status != "pending"):
                break
            try:
                newer = Message.model_validate(candidate.payload)
            except ValidationError:
                break  # for a replica that reads it, as any row this version cannot read
            if latest is not None:
                skipped.append(latest[0].id)  # type: ignore[arg-type]
            latest = (candidate, newer)
        if latest is None:
            return row, message
        error = f"superseded by a later edit of the same message (outbox row {latest[0].id})"
        # The due row first, still never tried: when another replica took it meanwhile, nothing here is superseded
        # (its edits wait behind it, and are claimed after it).
        if not (await session.exec(_SUPERSEDE_DUE, params={  # type: ignore[call-overload]
                "row_id": row.id, "error": error})).rowcount:
            return row, message
        if skipped:
            await session.exec(_SUPERSEDE_PENDING, params={"row_ids": skipped, "error": error})  # type: ignore[call-overload]
        return latest

    async def _take(self, session: Transaction, row: OutboxMessage, message: Message, worker: str,
                    now: datetime) -> Delivery | None:
        """Claim a due row for ``worker``; ``None`` when another replica took it first."""
        taken = await session.exec(_TAKE, params={  # type: ignore[call-overload]
            "row_id": row.id, "now": now, "latest": latest_wait(now), "worker": worker,
            "until": now + timedelta(seconds=self.claim_seconds)})
        if not taken.rowcount:
            return None
        if worker != self.worker:
            self._claimed_as[row.id] = worker  # type: ignore[index]
        target = None
        if row.ref_outbox_id is not None:
            target = (await session.exec(_SHOWN_AS, params={  # type: ignore[call-overload]
                "platform": row.platform, "channel": row.channel, "thread": row.thread, "post_id": row.ref_outbox_id,
                "edit_id": row.id})).first()
            if target is None:  # not stored in its post's thread: the post's own id, if it has one
                ref = await session.get(OutboxMessage, row.ref_outbox_id)
                target = ref.platform_message_id if ref else None
        return Delivery(
            id=row.id,  # type: ignore[arg-type]
            kind=row.kind,
            location=Location(platform=row.platform, workspace=row.workspace, channel=row.channel, thread=row.thread or ""),
            message=message,
            target_user=row.target_user,
            target_message_id=target,
            attempts=row.attempts + 1,
            created_at=row.created_at,
            put_offs=row.put_offs,
        )

    async def _channel_slot(self, session: Transaction, platform: str, channel: str, pace_seconds: float) -> bool:
        """Take the channel's next sending slot if its pace allows a message now."""
        now = self._db.now()
        await insert_ignore(session, ChannelPace, {"platform": platform, "channel": channel, "next_at": now},
                            ["platform", "channel"])
        result = await session.exec(
            update(ChannelPace)
            .where(ChannelPace.platform == platform, ChannelPace.channel == channel,  # type: ignore[arg-type]
                   or_(ChannelPace.next_at <= now, ChannelPace.next_at > latest_wait(now, pace_seconds)))  # type: ignore[arg-type]
            .values(next_at=now + timedelta(seconds=pace_seconds))
        )
        return bool(result.rowcount)

    async def delivered(self, delivery_id: int, platform_message_id: str | None) -> None:
        # Durable, though nothing outside follows it: a mark lost to a power cut would have the message
        # sent twice, and the next durable write may be a long way off on a quiet Baton.
        async with self._db.session() as session:
            if not await self._settle(session, _DELIVERED, delivery_id, platform_id=platform_message_id, now=utcnow()):
                log.warning("outbox message %s was sent after another replica had taken it over", delivery_id)

    async def record_delivery(self, session: Transaction, delivery_id: int, platform_message_id: str | None) -> None:
        """Mark a row sent in the caller's transaction: for a platform that stores its messages in
        Baton's database, in the transaction that stores the message (delivered exactly once).
        ``ClaimLost`` when another replica took the row over: the caller's transaction must not commit."""
        if not await self._settle(session, _DELIVERED, delivery_id, platform_id=platform_message_id, now=utcnow()):
            raise ClaimLost(f"outbox message {delivery_id} was taken over by another replica")

    async def retry(self, delivery_id: int, after_seconds: float, error: str, *, hold_channel: bool = False,
                    failed: bool = True) -> None:
        """Try the row again in ``after_seconds``. ``hold_channel``: the platform asked to wait (a 429's
        Retry-After), for its channel, not only this message: no other message goes there before then.
        The wait is at most ``MAX_RETRY_SECONDS`` (none for a NaN or a negative one). ``failed=False``: the
        platform posted nothing of this try and only asked to wait (``Delivery.failures`` leaves it out)."""
        after_seconds = min(after_seconds, MAX_RETRY_SECONDS) if after_seconds > 0 else 0.0
        now = self._db.now()
        at = now + timedelta(seconds=after_seconds)
        async with self._db.session() as session:
            if await self._settle(session, _RETRY if failed else _PUT_OFF, delivery_id, at=at,
                                  error=self._stored_error(error)) \
                    and hold_channel:
                row = await session.get(OutboxMessage, delivery_id)
                if row is not None:
                    self._forget_holds_over(now)
                    held = self._holds.get((row.platform, row.channel))
                    self._holds[(row.platform, row.channel)] = max(at, held) if held else at
                    await insert_ignore(session, ChannelPace, {"platform": row.platform, "channel": row.channel,
                                                               "next_at": at}, ["platform", "channel"])
                    await session.exec(update(ChannelPace).where(  # type: ignore[call-overload]
                        ChannelPace.platform == row.platform, ChannelPace.channel == row.channel,  # type: ignore[arg-type]
                        # over a slot set on a clock that was ahead too: it counts as come, and the hold was lost
                        or_(ChannelPace.next_at < at, ChannelPace.next_at > latest_wait(now))).values(next_at=at))  # type: ignore[arg-type]

    async def failed(self, delivery_id: int, error: str, *, reason: str = "refused", thread_only: bool = False) -> None:
        """The platform will never show this message: marked failed, and audited under its correlation id
        (the request's or digest's trail said nothing of a reply that never reached the thread). ``reason``: one
        of ``UNDELIVERABLE``; a channel's (``UNREACHABLE``) is said in the log once a channel (or a thread, with
        ``thread_only`` as ``DeliveryRejected`` says), until a message gets through there again (``reached``): Baton
        removed from a busy channel logged an error a message."""
        error = self._stored_error(error)
        worker = self._claimed_as.pop(delivery_id, self.worker)
        try:
            row = await self._mark_failed(delivery_id, worker, error, reason, self.on_failed)
        except _HookFailed as exc:
            # Its error rolled the mark back: the row stayed "sending", and once its claim ran out it was sent again,
            # refused again, and its hook failed again, for as long as Baton ran, its thread's later messages behind it.
            log.error("outbox message %s is given up; what Baton does then (ending the run whose approval card it was) "
                      "failed, and the message is marked failed without it", delivery_id, exc_info=exc.__cause__)
            row = await self._mark_failed(delivery_id, worker, error, reason, None)
        if row is None:
            return
        self.undeliverable[(row.platform, reason if reason in UNDELIVERABLE else "refused")] += 1
        if reason in UNREACHABLE:
            self._tell_unreachable(row, reason, error, thread_only and bool(row.thread))

    async def _mark_failed(self, delivery_id: int, worker: str, error: str, reason: str,
                           hook: FailedHook | None) -> OutboxMessage | None:
        """Mark the row failed, audit it and tell ``hook``, in one transaction; the row, or ``None`` when this process's
        claim on it no longer holds. ``_HookFailed`` when the hook raised, unless the database being away explains it:
        then the whole write is lost, and the delivery loop makes it again once the database is back
        (``Adapter._record``)."""
        async with self._db.session() as session:
            if not await self._settle(session, _FAILED, delivery_id, worker=worker, error=error):
                return None
            row = await session.get(OutboxMessage, delivery_id)
            if row is None:
                return None
            await audit.record(session, "message.failed", row.correlation_id or f"outbox-{delivery_id}",
                               platform=row.platform, channel=row.channel, thread=row.thread or None,
                               outbox_id=delivery_id, message_kind=row.kind, error=error, reason=reason)
            if hook is not None:
                try:
                    await hook(session, row, error)
                except Exception as exc:
                    if self._db.health.unusable(exc) is not None:
                        raise
                    raise _HookFailed from exc
        return row

    def _tell_unreachable(self, row: OutboxMessage, reason: str, error: str, thread_only: bool) -> None:
        key = (row.platform, row.channel, row.thread if thread_only else "")
        where = f"thread {row.thread} of channel {row.channel}" if thread_only else f"channel {row.channel}"
        if key in self._unreachable:
            log.info("%s: message %s (%s) given up: %s cannot be reached (%s)", row.platform, row.id, row.kind, where,
                     error)
            return
        self._unreachable.add(key)  # forgotten past its bound: told again, once, if it is refused again
        log.warning("%s: %s cannot be reached: %s (%s). Baton's messages there are given up, and a run waiting for "
                    "an approval card there ends; said once until a message gets through there again (invite Baton "
                    "back, or unarchive it)", row.platform, where, _UNREACHABLE_WORDS[reason], error)

    def reached(self, location: Location) -> None:
        """A message got through to ``location``'s channel: a later refusal there is told again."""
        if self._unreachable:
            self._unreachable.discard((location.platform, location.channel, ""))
            self._unreachable.discard((location.platform, location.channel, location.thread))

    def _stored_error(self, error: str) -> str:
        """What the platform said, as stored and audited: without Baton's secrets, short, and storable. A lone
        surrogate (a reason phrase not in UTF-8, as aiohttp reads it) or a NUL (PostgreSQL) failed the write that
        settles the row: it was sent again at each claim's end, never given up on, and its thread waited."""
        return storable(self._redactor.text(error)[:500])

    async def _settle(self, session: Transaction, statement: Any, delivery_id: int, *, worker: str | None = None,
                      **values: Any) -> bool:
        """Run ``statement`` on the row while this process's claim on it (as ``worker``, when the caller took it
        already) holds; false when it does not."""
        if worker is None:
            worker = self._claimed_as.pop(delivery_id, self.worker)
        settled = await session.exec(statement, params={  # type: ignore[call-overload]
            "row_id": delivery_id, "worker": worker, **values})
        return bool(settled.rowcount)
