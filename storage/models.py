"""SQLModel tables. Datetimes are timezone-aware UTC throughout (``utcnow``)."""

from __future__ import annotations

import functools
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import JSON, BigInteger, Column, Index, Text, UniqueConstraint, false, inspect, text
from sqlalchemy.orm import configure_mappers
from sqlmodel import Field, SQLModel

M = TypeVar("M", bound=SQLModel)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(at: datetime) -> datetime:
    """``at`` in UTC; a naive time (SQLite gives back what it was given, without its zone) is taken as UTC."""
    return at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)


def loaded(model: type[M], values: dict[str, Any]) -> M:
    """A ``model`` instance holding ``values`` as stored, made the way the ORM makes a row it loads:
    without ``__init__``, whose validation and per-attribute events cost ~60 µs a row. For rows just
    written or read on the request path; a column not in ``values`` was stored as NULL (a prepared
    INSERT refuses to leave a column with a default out). The instance belongs to no session."""
    new_instance, columns = _loader(model)
    instance = new_instance()
    instance.__dict__.update(columns, **values)
    return instance


@functools.cache
def _loader(model: type[SQLModel]) -> tuple[Any, dict[str, None]]:
    """``model``'s bare constructor and its columns, all NULL: looked up once (each lookup cost more than the row)."""
    configure_mappers()  # what __init__ would do first
    mapper = inspect(model)
    return mapper.class_manager.new_instance, dict.fromkeys(mapper.columns.keys())


def new_token() -> str:
    return secrets.token_urlsafe(12)


def new_lg_thread_id() -> str:
    return uuid.uuid4().hex


class ThreadRecord(SQLModel, table=True):
    """One chat thread: its stable LangGraph thread id, status, and who may write to it now."""

    __tablename__ = "thread_records"
    __table_args__ = (
        UniqueConstraint("platform", "workspace", "channel", "thread", name="uq_thread_location"),
        Index("ix_thread_fingerprint", "platform", "workspace", "channel", "fingerprint"),
        Index("ix_thread_status", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    platform: str
    workspace: str = ""
    channel: str
    thread: str
    lg_thread_id: str = Field(default_factory=new_lg_thread_id, unique=True)
    graph: str | None = None
    status: str = "idle"  # idle | running | waiting | done | failed
    fingerprint: str | None = None
    title: str | None = None
    requested_by: str | None = None
    last_result: str | None = Field(default=None, sa_column=Column(Text))
    lease_owner: str | None = None
    lease_until: datetime | None = None
    pruned_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class InboundEvent(SQLModel, table=True):
    """Every platform event, claimed once by its platform event id; pending ones form the thread's queue."""

    __tablename__ = "inbound_events"
    __table_args__ = (
        UniqueConstraint("platform", "event_id", name="uq_inbound_event"),
        Index("ix_inbound_queue", "thread_record_id", "status", "id"),
        Index("ix_inbound_status", "status", "received_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    platform: str
    event_id: str
    kind: str  # message | click | cancel | aside (bot.threads)
    workspace: str = ""
    channel: str
    thread: str
    user: str
    text: str = Field(default="", sa_column=Column(Text, nullable=False))
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = "pending"  # pending | done
    outcome: str | None = None
    thread_record_id: int | None = Field(default=None, foreign_key="thread_records.id")
    correlation_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    received_at: datetime = Field(default_factory=utcnow)
    handled_at: datetime | None = None


class Run(SQLModel, table=True):
    """One request run through one graph, from the request to its final result."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_thread", "thread_record_id"),
        Index("ix_runs_inbound", "inbound_id"),  # deleting an event (retention) looks for runs that name it
        # Covers every aggregate of a channel digest, so a window is read from the index alone.
        Index("ix_runs_digest", "platform", "channel", "started_at", "status", "graph", "turnaround_ms",
              "waited_seconds", "tokens", "cost", "cancelled"),
        # A digest's turnarounds, waits and failures are of the runs that ended in its window, whenever they
        # started: read from the index alone (but the failures it lists).
        Index("ix_runs_ended", "platform", "channel", "finished_at", "status", "graph", "turnaround_ms",
              "waited_seconds", "cancelled", "tokens", "cost"),
    )

    id: int | None = Field(default=None, primary_key=True)
    thread_record_id: int = Field(foreign_key="thread_records.id")
    inbound_id: int | None = Field(default=None, foreign_key="inbound_events.id")
    platform: str
    channel: str
    graph: str
    status: str = "running"  # running | waiting | done | failed (a rejected request: done)
    requested_by: str
    input_text: str = Field(default="", sa_column=Column(Text, nullable=False))
    correlation_id: str
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    waited_seconds: float = 0.0
    turnaround_ms: int | None = None  # request to result, set when the run finishes
    error: str | None = Field(default=None, sa_column=Column(Text))
    tokens: int | None = None
    cost: float | None = None
    # The outbox row of the progress message the run is posting now (its edits refer to it), kept so
    # that a run continued after a crash edits that message instead of posting it again. Cleared when
    # the run stops for an approval: after the card, the run goes on in a progress message of its own.
    progress_outbox_id: int | None = None
    # How often the run was taken up again after Baton stopped while it was running (a crash, a stop):
    # a run that itself stops Baton (os._exit, the memory it takes) must not stop every start for ever.
    takeovers: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Ended by a ``cancel``: failed, its error ``bot.threads.CANCELLED_BY`` + who. Nothing broke, so the digests
    # count it apart from the failures; kept here, not read from the error, which no index can hold (migration 0014).
    cancelled: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


class Approval(SQLModel, table=True):
    """A graph's ``interrupt()`` waiting for a human; the card's buttons carry only ``id``."""

    __tablename__ = "approvals"
    __table_args__ = (
        UniqueConstraint("run_id", "interrupt_id", name="uq_approval_interrupt"),
        Index("ix_approvals_status", "status", "created_at"),
        Index("ix_approvals_thread", "thread_record_id"),  # deleting a thread record (retention) looks here
        # A digest's approvals granted and rejected: those decided in its window, not every one ever decided.
        Index("ix_approvals_decided", "status", "decided_at"),
    )

    id: str = Field(default_factory=new_token, primary_key=True)
    run_id: int = Field(foreign_key="runs.id")
    thread_record_id: int = Field(foreign_key="thread_records.id")
    interrupt_id: str
    graph: str
    summary: str = Field(sa_column=Column(Text, nullable=False))
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    risk: str = "high"
    approvers: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    requested_by: str
    kind: str = "approval"  # approval | choice ("which graph did you mean?")
    status: str = "pending"  # pending | approved | rejected | stale (a choice, once made: approved)
    choice: str | None = None  # the option a choice card's click picked
    decided_by: str | None = None
    decided_at: datetime | None = None
    decided_event_id: int | None = None
    card_outbox_id: int | None = None
    created_at: datetime = Field(default_factory=utcnow)


class Effect(SQLModel, table=True):
    """The effects ledger: a side effect keyed (thread, task, name) runs at most once."""

    __tablename__ = "effects"
    __table_args__ = (Index("ix_effects_run", "run_id"),)  # a run's effects; deleting a run (retention) looks here

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True)
    run_id: int | None = Field(default=None, foreign_key="runs.id")
    name: str
    status: str = "started"  # started | done | failed
    result: Any = Field(default=None, sa_column=Column(JSON))
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class AuditEntry(SQLModel, table=True):
    """Append-only log; ``correlation_id`` ties a chat event to its run, approval and effects."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_correlation", "correlation_id"), Index("ix_audit_at", "at"))

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow)
    correlation_id: str
    kind: str
    platform: str | None = None
    channel: str | None = None
    thread: str | None = None
    user: str | None = None
    run_id: int | None = None
    approval_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


# The outbox's rows still to send, as SQL: ix_outbox_unsent's condition, which a query must state word for word (not
# as bound values) for SQLite or PostgreSQL to read that index.
OUTBOX_UNSENT = "status IN ('pending', 'sending')"


class OutboxMessage(SQLModel, table=True):
    """A message on its way to a platform: delivered in order per thread, retried, never doubled."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "platform", "status", "next_attempt_at"),
        Index("ix_outbox_thread", "platform", "channel", "thread", "id"),
        # "Anything of this thread still unsent?" (each reply, each claim) without reading what it sent.
        Index("ix_outbox_thread_status", "platform", "channel", "thread", "status", "id"),
        # The unsent rows alone (partial: a row leaves them once sent or given up), by channel and lane in order, and
        # by thread: what a claim walks (``bot.outbox``), a channel at a time, and how it tells a thread's first row,
        # however many rows wait or were ever sent.
        Index("ix_outbox_unsent", "platform", "channel", "housekeeping", "id",
              sqlite_where=text(OUTBOX_UNSENT), postgresql_where=text(OUTBOX_UNSENT)),
        Index("ix_outbox_unsent_thread", "platform", "channel", "thread", "id",
              sqlite_where=text(OUTBOX_UNSENT), postgresql_where=text(OUTBOX_UNSENT)),
    )

    id: int | None = Field(default=None, primary_key=True)
    platform: str
    workspace: str = ""
    channel: str
    thread: str | None = None
    kind: str = "post"  # post | update | ephemeral
    target_user: str | None = None
    ref_outbox_id: int | None = None
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = "pending"  # pending | sending | sent | failed
    attempts: int = 0
    # Of those, the tries the platform only put off (a 429, a refused token: nothing posted): no failure of the message
    put_offs: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Baton's own tidying (a card's expiry: its edit and its thread's notice), not an answer to anyone: in its
    # channel it goes after the answers waiting there (``bot.outbox``), however many of it were stored first.
    housekeeping: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    next_attempt_at: datetime = Field(default_factory=utcnow)
    claimed_by: str | None = None
    claimed_until: datetime | None = None
    platform_message_id: str | None = None
    error: str | None = Field(default=None, sa_column=Column(Text))
    correlation_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None


class ChannelPace(SQLModel, table=True):
    """Earliest time the next message may go to a channel (shared by all replicas)."""

    __tablename__ = "channel_pace"

    platform: str = Field(primary_key=True)
    channel: str = Field(primary_key=True)
    next_at: datetime = Field(default_factory=utcnow)


class PlaygroundMessage(SQLModel, table=True):
    """The playground's own chat history: it is the platform, so it keeps its messages here."""

    __tablename__ = "playground_messages"
    # ix_playground_thread: a page of a channel's top level (thread_id IS NULL) or of a thread, and its reply counts
    __table_args__ = (Index("ix_playground_channel", "channel", "id"), Index("ix_playground_updated", "updated_at"),
                      Index("ix_playground_thread", "channel", "thread_id", "id"), Index("ix_playground_change", "change"))

    id: int | None = Field(default=None, primary_key=True)
    event_id: str | None = Field(default=None, unique=True)
    channel: str
    thread_id: str | None = None
    user: str
    text: str = Field(default="", sa_column=Column(Text, nullable=False))
    content: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    is_bot: bool = False
    visible_to: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    revision: int = 1
    # The write that stored the row as it is now, where the live streams resume (``adapters.playground``): the
    # writing transaction's id on PostgreSQL, a counter on SQLite. 0: written before it was kept.
    change: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))


class DigestSchedule(SQLModel, table=True):
    """When a channel gets its digest: from ``baton.yaml`` (``source=config``) or made in chat."""

    __tablename__ = "digest_schedules"
    __table_args__ = (UniqueConstraint("key", name="uq_digest_schedule_key"), Index("ix_digest_channel", "platform", "channel"))

    id: int | None = Field(default=None, primary_key=True)
    key: str  # "config:<platform>:<channel>:<cron>:<tz>" or "chat:<platform>:<workspace>:<channel>"
    source: str  # config | chat
    platform: str
    workspace: str = ""
    channel: str
    cron: str
    timezone: str = "UTC"
    graphs: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    enabled: bool = True
    created_by: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class DigestRun(SQLModel, table=True):
    """One digest firing, claimed by (schedule, fire time) before anything is posted."""

    __tablename__ = "digest_runs"
    __table_args__ = (
        UniqueConstraint("schedule_key", "fire_time", name="uq_digest_firing"),
        Index("ix_digest_runs_channel", "platform", "workspace", "channel", "window_end"),
    )

    id: int | None = Field(default=None, primary_key=True)
    schedule_key: str  # the schedule's key, or "now:<event>" for `digest now`
    fire_time: datetime
    platform: str
    workspace: str = ""
    channel: str
    window_start: datetime
    window_end: datetime
    status: str = "claimed"  # claimed | posted | failed
    claimed_by: str | None = None
    claimed_at: datetime = Field(default_factory=utcnow)
    posted_at: datetime | None = None
    summary: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # What building it cost (its model summary): there is no run to hold it, and it is spent in the channel.
    tokens: int | None = None
    cost: float | None = None


class ForgottenTotals(SQLModel, table=True):
    """What data retention (``bot.retention``) deleted, as ``GET /metrics`` counted it: added to the rows still
    there, so that a counter never goes down when old rows go (Prometheus reads a drop as a reset). One row per
    rollup and group, updated in the transaction that deletes the rows it counts."""

    __tablename__ = "forgotten_totals"

    metric: str = Field(primary_key=True)  # the rollup: runs | inbound
    key: str = Field(primary_key=True)  # its group's labels, as JSON
    totals: list[float] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # row count, then each sum
    last_id: int = 0  # the highest id of the rows deleted in this group
    updated_at: datetime = Field(default_factory=utcnow)
