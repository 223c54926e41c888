"""``GET /metrics``: what a dashboard of Baton shows, in Prometheus' text format (``prometheus_client``).

Most numbers are read from the database at each scrape, so every replica reports the same shared
truth (a dashboard takes ``max()`` over replicas, never ``sum()``); a few are this process's own
(``baton_up``, its build, its adapters, the messages they gave up on). Labels are graph, status and platform
only (and the replica's name on ``baton_build_info``, a bounded reason on ``baton_messages_undeliverable_total``):
never a channel, a user, a message or anything secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            InfoMetricFamily, Metric)
from sqlalchemy import case, func, insert, literal_column, null, update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.outbox import UNDELIVERABLE as UNDELIVERABLE_REASONS
from bot.routing import ROUTER
from storage.db import Database, Transaction
from storage.models import Approval, DigestRun, ForgottenTotals, InboundEvent, OutboxMessage, Run, utcnow

log = logging.getLogger(__name__)

# Upper bounds of the turnaround histogram, in seconds: a runbook's few seconds up to a request
# that waited a day for its approval.
TURNAROUND_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)
FINAL_RUN = ("done", "failed")  # a request rejected on its card ends "done": its graph answers it
ACTIVE_RUN = ("running", "waiting")
UNDELIVERED = ("pending", "sending")
DIGEST_GRAPH = "digest"  # what a digest's own model summary cost is counted under (as the digest card does)
# Scrapes closer together than this share one reading of the database: the endpoint needs no
# password, and a client asking in a loop must not turn it into a load on the database.
REUSE_SECONDS = 1.0
# How long a scrape waits for the database's numbers (Prometheus gives up on a scrape after 10 s by default):
# a database that holds the reading (a lock taken by a migration, a server that stopped answering) gets
# baton_database_up 0 within this, and the reading goes on meanwhile, for the next scrape to find.
COLLECT_TIMEOUT_SECONDS = 5.0
# Rows inserted within this long are aggregated afresh at every scrape, not added to the kept totals:
# on PostgreSQL ids come from a sequence, so a transaction still open may commit a lower id than one
# already seen. Baton's write transactions last well under a second (clocks of replicas may differ a bit).
SETTLED = timedelta(minutes=10)
IN_CHUNK = 500  # ids per IN (...) when open rows are read again


def baton_version() -> str:
    try:
        return version("baton")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


@dataclass
class Rollup:
    """Running totals of an append-only table whose rows change only until their status is final.

    A full GROUP BY over ``runs`` took 550 to 750 ms a scrape at 1,000,000 rows on SQLite (every row
    sorted: no index leads with graph or status), so it is not made at each scrape. Rows are never
    deleted, ids only grow, and a final row's grouped columns no longer change: the rows up to
    ``through`` that were final when read are added up once and kept (``totals``); the ones still
    open then (running, waiting) are read again by id at each scrape until they are final; rows newer
    than ``SETTLED`` are aggregated afresh each time. The first scrape of a process reads the table once.
    Every value is summed; each group's first value is its row count.

    Data retention (``bot.retention``) deletes old final rows, adding what they counted to ``forgotten_totals``
    in the same transaction. The totals kept here still count the rows deleted since they were read from
    scratch, so they are added to that table's totals as they were then (``base``), not as they are now. When
    rows this process never counted as final went (an open row deleted, or rows newer than ``through``:
    it did not read for longer than the retention), the table is read from scratch, with the table's totals
    as they are now. Either way a counter stays where it was across a deletion, on every replica, and a
    replica started after it counts what the others do.
    """

    table: Any
    keys: tuple[Any, ...]  # labelled expressions grouped by
    values: tuple[Any, ...]  # summed
    born: Any  # the row's insert time
    status: Any = None  # None: a row is final as inserted
    final: tuple[str, ...] = ()
    through: int = 0
    totals: dict[tuple[Any, ...], list[float]] = field(default_factory=dict)
    open_ids: set[int] = field(default_factory=set)
    name: str = ""  # its rows in forgotten_totals
    base: dict[tuple[Any, ...], list[float]] = field(default_factory=dict)  # forgotten when read from scratch
    seen: dict[tuple[Any, ...], tuple[list[float], int]] | None = None  # forgotten_totals at the last reading

    async def read(self, session: AsyncSession, now: datetime) -> tuple[dict[tuple[Any, ...], list[float]],
                                                                         dict[tuple[Any, ...], list[float]]]:
        """(every final row's totals, the deleted rows' included; the open rows' totals) as of now; kept state
        changes only when all statements succeeded. ``session`` must read one snapshot (``Metrics._shared``):
        a deletion committed between two of its statements would be counted twice, or not at all."""
        forgotten = await forgotten_totals(session, self.name)
        kept = (self.through, self.totals, self.open_ids, self.base)
        if self.seen is None or (forgotten != self.seen and
                                 max((last for _, last in forgotten.values()), default=0) > self.through):
            self._start_over(forgotten)
        try:
            read = await self._read(session, now)
            if read is None:  # an open row was deleted: what it ended as is in forgotten_totals only
                self._start_over(forgotten)
                read = await self._read(session, now)
                assert read is not None
        except BaseException:
            self.through, self.totals, self.open_ids, self.base = kept
            raise
        self.seen = forgotten
        finished, active = read
        for key, values in self.base.items():
            _add(finished, key, values)
        return finished, active

    def _start_over(self, forgotten: dict[tuple[Any, ...], tuple[list[float], int]]) -> None:
        self.through, self.totals, self.open_ids = 0, {}, set()
        self.base = {key: list(totals) for key, (totals, _) in forgotten.items()}

    async def _read(self, session: AsyncSession, now: datetime) -> tuple[dict[tuple[Any, ...], list[float]],
                                                                         dict[tuple[Any, ...], list[float]]] | None:
        """``read`` from the kept state; ``None``, and nothing kept, when a row read as open is gone."""
        ident = self.table.id
        settled = (await session.exec(select(func.max(ident)).where(
            ident > self.through, self.born < now - SETTLED))).one() or self.through
        totals = {key: list(values) for key, values in self.totals.items()}
        open_ids = set(self.open_ids)
        if settled > self.through:
            for key, open_id, values in await self._grouped(session, ident > self.through, ident <= settled):
                if open_id is None:
                    _add(totals, key, values)
                else:
                    open_ids.add(open_id)
        active: dict[tuple[Any, ...], list[float]] = {}
        still_open: set[int] = set()
        ids = sorted(open_ids)
        found = 0
        for start in range(0, len(ids), IN_CHUNK):
            for key, open_id, values in await self._grouped(session, ident.in_(ids[start:start + IN_CHUNK])):
                found += int(values[0])  # an open row is a group of its own, of one
                if open_id is None:  # final since it was last read
                    _add(totals, key, values)
                else:
                    still_open.add(open_id)
                    _add(active, key, values)
        if found < len(ids):
            return None
        self.through, self.totals, self.open_ids = settled, totals, still_open
        finished = {key: list(values) for key, values in totals.items()}
        for key, open_id, values in await self._grouped(session, ident > settled):
            _add(finished if open_id is None else active, key, values)
        return finished, active

    async def _grouped(self, session: AsyncSession | Transaction, *where: Any) -> list[tuple[tuple[Any, ...], int | None, list[float]]]:
        """Rows of ``where`` grouped by ``keys``: final rows together, each open row on its own (its id).

        One statement, so one snapshot: a row that becomes final meanwhile is seen as one or the other.
        Grouped by position (GROUP BY 1, 2, ...), so each CASE is written and bound once."""
        width = len(self.keys)
        opens = [] if self.status is None else [
            case((self.status.in_(self.final), null()), else_=self.table.id).label("open_id")]
        columns = [*self.keys, *opens, func.count(), *(func.sum(value) for value in self.values)]
        positions = [literal_column(str(n)) for n in range(1, width + len(opens) + 1)]
        rows = (await session.exec(select(*columns).where(*where).group_by(*positions))).all()
        return [(tuple(row[:width]), row[width] if opens else None,
                 [float(value or 0) for value in row[width + len(opens):]]) for row in rows]


def _add(into: dict[tuple[Any, ...], list[float]], key: tuple[Any, ...], values: Sequence[float]) -> None:
    kept = into.setdefault(key, [0.0] * len(values))
    for n, value in enumerate(values):
        kept[n] += value


def _turnaround_bucket() -> Any:
    """The index of the first bucket a finished run's turnaround fits in; NULL while it has none."""
    limits = [(Run.turnaround_ms <= int(limit * 1000), n) for n, limit in enumerate(TURNAROUND_BUCKETS)]
    return case((Run.turnaround_ms.is_(None), null()), *limits, else_=len(TURNAROUND_BUCKETS))  # type: ignore[union-attr]


def runs_rollup() -> Rollup:
    return Rollup(Run, keys=(Run.graph, Run.status, _turnaround_bucket().label("bucket")),
                  values=(Run.turnaround_ms, Run.waited_seconds, Run.tokens, Run.cost),
                  born=Run.started_at, status=Run.status, final=FINAL_RUN, name="runs")


def inbound_rollup() -> Rollup:
    return Rollup(InboundEvent, keys=(InboundEvent.platform,), values=(), born=InboundEvent.received_at,
                  name="inbound")


async def forgotten_totals(session: AsyncSession | Transaction,
                           name: str) -> dict[tuple[Any, ...], tuple[list[float], int]]:
    """What the rows of the rollup ``name`` that retention deleted counted: each group's totals and the highest id."""
    rows = (await session.exec(select(ForgottenTotals.key, ForgottenTotals.totals, ForgottenTotals.last_id)  # type: ignore[call-overload]
                               .where(ForgottenTotals.metric == name))).all()
    return {tuple(json.loads(key)): ([float(value) for value in totals], int(last_id)) for key, totals, last_id in rows}


async def forget(session: Transaction, rollup: Rollup, ids: Sequence[int]) -> None:
    """Add what the final rows ``ids`` of ``rollup``'s table count to ``forgotten_totals``, in the transaction
    that deletes them (``bot.retention``), which holds the retention lock: nobody else updates those totals
    meanwhile. Grouped by the rollup's own expressions, so they are counted exactly as a scrape counted them."""
    if not ids:
        return
    groups: dict[tuple[Any, ...], list[float]] = {}
    for start in range(0, len(ids), IN_CHUNK):
        for key, open_id, values in await rollup._grouped(session, rollup.table.id.in_(ids[start:start + IN_CHUNK])):  # type: ignore[arg-type]
            if open_id is not None:
                raise ValueError(f"{rollup.name} row {open_id} is not final: it cannot be forgotten")
            _add(groups, key, values)
    last = max(ids)
    known = await forgotten_totals(session, rollup.name)
    now = utcnow()
    for key, values in groups.items():
        stored = json.dumps(list(key))
        if key in known:
            totals, last_id = known[key]
            await session.exec(update(ForgottenTotals).where(  # type: ignore[call-overload]
                ForgottenTotals.metric == rollup.name, ForgottenTotals.key == stored,
            ).values(totals=[kept + value for kept, value in zip(totals, values, strict=True)],
                     last_id=max(last_id, last), updated_at=now))
        else:
            await session.exec(insert(ForgottenTotals).values(  # type: ignore[call-overload]
                metric=rollup.name, key=stored, totals=values, last_id=last, updated_at=now))


class _Families:
    """What ``generate_latest`` reads: any object with ``collect()`` (no registry is kept between scrapes)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


class Metrics:
    """The families of one scrape: shared ones from the database, this process's own beside them."""

    def __init__(self, db: Database, instance: str, adapters: Sequence[Any], platforms: Iterable[str],
                 undeliverable: Mapping[tuple[str, str], int] | None = None) -> None:
        self.db = db
        self.undeliverable = undeliverable if undeliverable is not None else {}  # ``Outbox.undeliverable``
        self.instance = instance
        self.adapters = adapters
        self.served = [adapter.name for adapter in adapters]
        self.platforms = sorted({*platforms, *self.served})  # every platform whose rows the outbox may hold
        self.runs = runs_rollup()
        self.inbound = inbound_rollup()
        self._last: tuple[float, list[Metric]] | None = None
        self._reading: asyncio.Task[None] | None = None  # the one reading of the database under way
        self._began = 0.0  # when it began (time.perf_counter())
        self._trouble: str | None = None  # why the database could not be read, as logged (once while it lasts)

    async def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The body and its content type: the text format, or OpenMetrics when the scraper asks for it."""
        encode, content_type = choose_encoder(accept or "")
        return encode(_Families(await self.families())), content_type

    async def families(self) -> list[Metric]:
        """This replica's own families, and the shared ones of a reading at most ``REUSE_SECONDS`` old. A reading
        that takes longer than ``COLLECT_TIMEOUT_SECONDS`` is not waited for: the scrape says the database is not
        answering (it hung for as long as the database did, and Prometheus saw the replica down, ``up`` 0)."""
        if self._reading is None and (self._last is None or time.monotonic() - self._last[0] >= REUSE_SECONDS):
            # one reading at a time, shared by the scrapes that come meanwhile: the rollups are updated by one
            self._began = time.perf_counter()
            self._reading = asyncio.create_task(self._collect(), name="metrics-reading")
        reading = self._reading
        if reading is not None:
            try:  # shielded: a scrape that stops waiting leaves the reading to go on
                await asyncio.wait_for(asyncio.shield(reading), COLLECT_TIMEOUT_SECONDS)
            except TimeoutError:
                return [*self._own(), *self._unanswered()]
        assert self._last is not None
        return [*self._own(), *self._last[1]]

    async def _collect(self) -> None:
        try:
            shared = await self._shared()
            took = GaugeMetricFamily("baton_metrics_collect_seconds",
                                     "How long this replica took to read the shared numbers at its last scrape.",
                                     value=time.perf_counter() - self._began)
            self._last = (time.monotonic(), [*shared, took])
        finally:
            self._reading = None

    def _unanswered(self) -> list[Metric]:
        """What a scrape says while the database has not answered its reading: down, and for how long it waited."""
        self._troubled(f"it did not answer within {COLLECT_TIMEOUT_SECONDS:g} s")
        return [GaugeMetricFamily("baton_database_up", "1 when this scrape could read Baton's database.", value=0),
                GaugeMetricFamily("baton_metrics_collect_seconds",
                                  "How long this replica took to read the shared numbers at its last scrape.",
                                  value=time.perf_counter() - self._began)]

    def _own(self) -> list[Metric]:
        up = GaugeMetricFamily("baton_up", "1 while this replica serves.", value=1)
        build = InfoMetricFamily("baton_build", "This replica's Baton version and name (BATON_INSTANCE_NAME).",
                                 value={"version": baton_version(), "replica": self.instance})
        healthy = GaugeMetricFamily("baton_adapter_healthy",
                                    "1 while this replica's adapter works, 0 when /healthz names a problem.",
                                    labels=["platform"])
        for adapter in self.adapters:
            healthy.add_metric([adapter.name], 0 if adapter.problem() else 1)
        # This process's own count (a replica counts what its adapters gave up): sum it over replicas.
        undeliverable = CounterMetricFamily(
            "baton_messages_undeliverable", "Messages this replica gave up on for good, by platform and why: the "
            "channel cannot be reached (removed, gone, archived, locked), the platform refused that message "
            "(refused), or it kept failing (gave_up).", labels=["platform", "reason"])
        counts = {**{(platform, reason): 0 for platform in self.served for reason in UNDELIVERABLE_REASONS},
                  **self.undeliverable}
        for (platform, reason), count in sorted(counts.items()):
            undeliverable.add_metric([platform, reason], count)
        return [up, build, healthy, undeliverable]

    async def _shared(self) -> list[Metric]:
        try:
            async with self.db.scan() as session:  # SQLite: off the event loop (aiosqlite's thread)
                if not self.db.is_sqlite:  # one snapshot (SQLite's read transaction is one): see Rollup.read
                    await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
                families = await self._read(session, self.db.now())  # rows are stamped on its clock
        except Exception as exc:  # noqa: BLE001 - the scrape still answers: baton_database_up says what is wrong
            self._troubled(f"{type(exc).__name__}: {_first_line(exc)}")
            families = []
        else:
            if self._trouble is not None:
                log.info("metrics: the database is read again")
                self._trouble = None
        return [GaugeMetricFamily("baton_database_up", "1 when this scrape could read Baton's database.",
                                  value=1 if families else 0), *families]

    def _troubled(self, reason: str) -> None:
        """Log why the database could not be read, once while the reason lasts: a scrape every 15 s logged the
        same lines (a traceback's worth) four times a minute, for each replica, all through an outage."""
        if reason != self._trouble:
            log.warning("metrics: the database could not be read (baton_database_up 0 until it can): %s", reason)
            self._trouble = reason

    async def _read(self, session: AsyncSession, now: datetime) -> list[Metric]:
        finished, active = await self.runs.read(session, now)
        received, queued = await self.inbound.read(session, now)
        return [*_run_families(finished, active, await _digest_spend(session)),
                *await _approval_families(session, now),
                *await self._outbox_families(session, now),
                *self._inbound_families(received, queued, await _inbound_pending(session))]

    async def _outbox_families(self, session: AsyncSession, now: datetime) -> list[Metric]:
        messages = GaugeMetricFamily("baton_outbox_messages",
                                     "Messages not delivered: pending (due or waiting to retry), sending, failed for good.",
                                     labels=["platform", "status"])
        oldest = GaugeMetricFamily("baton_outbox_oldest_undelivered_seconds",
                                   "Age of the oldest message still pending or sending (0: none); "
                                   "growing means the platform is not hearing Baton.", labels=["platform"])
        counts = {(platform, status): 0 for platform in self.served for status in (*UNDELIVERED, "failed")}
        # platform IN (...) and status IN (...): seeks in ix_outbox_due, never the delivered rows
        for platform, status, count in (await session.exec(
                select(OutboxMessage.platform, OutboxMessage.status, func.count())
                .where(OutboxMessage.platform.in_(self.platforms),  # type: ignore[attr-defined]
                       OutboxMessage.status.in_((*UNDELIVERED, "failed")))  # type: ignore[attr-defined]
                .group_by(OutboxMessage.platform, OutboxMessage.status))).all():
            counts[(platform, status)] = count
        for (platform, status), count in sorted(counts.items()):
            messages.add_metric([platform, status], count)
        ages = dict.fromkeys(self.served, 0.0)
        for platform, created in (await session.exec(
                select(OutboxMessage.platform, func.min(OutboxMessage.created_at))
                .where(OutboxMessage.platform.in_(self.platforms),  # type: ignore[attr-defined]
                       OutboxMessage.status.in_(UNDELIVERED))  # type: ignore[attr-defined]
                .group_by(OutboxMessage.platform))).all():
            ages[platform] = _age(now, created)
        for platform, age in sorted(ages.items()):
            oldest.add_metric([platform], age)
        return [messages, oldest]

    def _inbound_families(self, received: dict[tuple[Any, ...], list[float]], _open: dict[tuple[Any, ...], list[float]],
                          pending: dict[str, int]) -> list[Metric]:
        total = CounterMetricFamily("baton_inbound_events", "Events received from each platform (messages and clicks), "
                                    "each counted once however often the platform delivered it.", labels=["platform"])
        counts = {**dict.fromkeys(self.served, 0.0), **{key[0]: values[0] for key, values in received.items()}}
        for platform, count in sorted(counts.items()):
            total.add_metric([platform], count)
        queued = GaugeMetricFamily("baton_inbound_events_pending", "Events stored and not handled yet (threads' queues).",
                                   labels=["platform"])
        for platform, count in sorted({**dict.fromkeys(self.served, 0), **pending}.items()):
            queued.add_metric([platform], count)
        return [total, queued]


def _first_line(exc: BaseException) -> str:
    """An error's first line (SQLAlchemy's add its statement, its parameters and a link on the next ones)."""
    return next(iter(str(exc).splitlines()), "").strip() or type(exc).__name__


def _age(now: datetime, then: datetime | None) -> float:
    return max(0.0, (now - then).total_seconds()) if then is not None else 0.0


def _run_families(finished: dict[tuple[Any, ...], list[float]], active: dict[tuple[Any, ...], list[float]],
                  digest_spend: tuple[float, float]) -> list[Metric]:
    started = CounterMetricFamily("baton_runs_started", "Requests run through each graph.", labels=["graph"])
    ended = CounterMetricFamily("baton_runs_finished", "Runs ended, by graph and outcome (done, failed).",
                                labels=["graph", "status"])
    now_active = GaugeMetricFamily("baton_runs_active", "Runs under way now (running) or waiting for a human's decision.",
                                   labels=["graph", "status"])
    turnaround = HistogramMetricFamily("baton_run_turnaround_seconds",
                                       "Request to result of the finished runs, waiting for humans included.",
                                       labels=["graph"])
    waited = CounterMetricFamily("baton_run_waited_seconds", "Time runs spent waiting for a human's decision.",
                                 labels=["graph"])
    tokens = CounterMetricFamily("baton_model_tokens", "Model tokens (input and output) runs recorded.", labels=["graph"])
    cost = CounterMetricFamily("baton_model_cost_dollars",
                               "Model cost in dollars, where baton.yaml gives the model's price.", labels=["graph"])
    graphs: dict[str, dict[str, Any]] = {}
    for rows, is_final in ((finished, True), (active, False)):
        for (graph, status, bucket), (count, turnaround_ms, waited_s, tokens_n, cost_d) in rows.items():
            one = graphs.setdefault(graph, _blank_graph())
            one["waited"] += waited_s
            one["tokens"] += tokens_n
            one["cost"] += cost_d
            if not is_request(graph):
                continue
            one["started"] += count
            side = one["ended" if is_final else "active"]
            side[status] = side.get(status, 0.0) + count
            if bucket is not None:
                one["buckets"][int(bucket)] += count
                one["turnaround"] += turnaround_ms / 1000
    digest_tokens, digest_cost = digest_spend
    if digest_tokens or digest_cost:  # no run holds a digest's own summary (see bot.digest_stats)
        one = graphs.setdefault(DIGEST_GRAPH, _blank_graph())
        one["tokens"] += digest_tokens
        one["cost"] += digest_cost
    for graph, one in sorted(graphs.items()):
        started.add_metric([graph], one["started"])
        for status in FINAL_RUN:
            ended.add_metric([graph, status], one["ended"].get(status, 0.0))
        for status in ACTIVE_RUN:
            now_active.add_metric([graph, status], one["active"].get(status, 0.0))
        cumulative, buckets = 0.0, []
        for limit, count in zip([*map(_bound, TURNAROUND_BUCKETS), "+Inf"], one["buckets"], strict=True):
            cumulative += count
            buckets.append((limit, cumulative))
        turnaround.add_metric([graph], buckets, one["turnaround"])
        waited.add_metric([graph], one["waited"])
        tokens.add_metric([graph], one["tokens"])
        cost.add_metric([graph], one["cost"])
    return [started, ended, now_active, turnaround, waited, tokens, cost]


def is_request(graph: str) -> bool:
    """Whether a run is a request's: not chatter a model routed nowhere (kept as a finished run for what asking
    cost, which is counted all the same), as a digest counts them (``bot.digest_stats``). Unlike a digest, a
    choice card's run counts whether it was picked from or not: it is counted while it waits, and a counter
    never goes down (Prometheus reads a drop as a reset, and ``rate()`` as a burst of requests)."""
    return graph != ROUTER


def _blank_graph() -> dict[str, Any]:
    return {"started": 0.0, "ended": {}, "active": {}, "buckets": [0.0] * (len(TURNAROUND_BUCKETS) + 1),
            "turnaround": 0.0, "waited": 0.0, "tokens": 0.0, "cost": 0.0}


def _bound(limit: float) -> str:
    return f"{limit:g}" if limit < 1e6 else repr(limit)


def digests_rollup() -> Rollup:
    """What digests' own model summaries cost, for ``forget`` (no group, nothing open: only a firing that ended is
    deleted)."""
    return Rollup(DigestRun, keys=(), values=(DigestRun.tokens, DigestRun.cost), born=DigestRun.claimed_at,
                  name="digests")


async def _digest_spend(session: AsyncSession) -> tuple[float, float]:
    """What digests' own model summaries cost (one row per firing: a small table), the deleted ones' included."""
    tokens, cost = (await session.exec(select(func.sum(DigestRun.tokens), func.sum(DigestRun.cost)))).one()
    for (_count, forgotten_tokens, forgotten_cost), _last in (await forgotten_totals(session, "digests")).values():
        tokens, cost = (tokens or 0) + forgotten_tokens, (cost or 0) + forgotten_cost
    return float(tokens or 0), float(cost or 0)


async def _approval_families(session: AsyncSession, now: datetime) -> list[Metric]:
    pending = GaugeMetricFamily("baton_approvals_pending", "Approval cards waiting for a human's decision.",
                                labels=["graph"])
    oldest = GaugeMetricFamily("baton_approval_oldest_pending_seconds", "Age of the oldest approval still waiting.",
                               labels=["graph"])
    # status = 'pending' is a range of ix_approvals_status: the decided ones are never read
    for graph, count, created in (await session.exec(
            select(Approval.graph, func.count(), func.min(Approval.created_at))
            .where(Approval.status == "pending", Approval.kind == "approval")
            .group_by(Approval.graph).order_by(Approval.graph))).all():
        pending.add_metric([graph], count)
        oldest.add_metric([graph], _age(now, created))
    return [pending, oldest]


async def _inbound_pending(session: AsyncSession) -> dict[str, int]:
    return dict((await session.exec(  # type: ignore[arg-type]
        select(InboundEvent.platform, func.count()).where(InboundEvent.status == "pending")
        .group_by(InboundEvent.platform))).all())
