"""Where a Baton request's time goes: one request at a time, split into the steps of the request path.

The probes wrap methods of the running objects (``Orchestrator._handle``, ``_finish_run``,
``Leases.next_or_release``, ``GraphRuntime.run``, the checkpointer, the effects ledger, the
adapter's ``send``), time the writers' turn on ``Database``'s writer queue, trace the statements
of the SQLite write connection (``Database.sqlite_writer``) and listen to the read engine
(``Database.read()`` sessions begin with a plain ``BEGIN``); nothing in the project is changed.
A probe whose target no longer exists is skipped and its rows are shown as "n/a".
``transaction_floor`` measures the least one durable write costs on the machine, for comparison.
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import aiosqlite.core
from sqlalchemy import bindparam, event, update

from bench.request_path import (
    CHANNEL,
    REPLY_TIMEOUT,
    RUNBOOK,
    USER,
    BareContext,
    ReplyWatch,
    drive,
    graph_input,
    percentile,
    write_config,
)
from bot import kit, runtime
from bot.app import Baton
from bot.config import load_config
from bot.messages import InboundMessage, Location
from bot.threads import create as create_thread
from bot.registry import GraphRegistry
from bot.settings import Settings
from storage.checkpointer import open_checkpointer
from storage import db as storage_db
from storage.db import Database, prepared
from storage.migrate import upgrade
from storage.models import ThreadRecord

# (label, from mark, to mark). Consecutive marks of one request. A new thread is made with its lease
# held, so its first event needs no Leases.take; the lease is given back in _finish_run's own
# transaction when nothing else is queued; the final reply is claimed there and handed straight
# to the adapter (no outbox claim).
STEPS = [
    ("accept_message up to its commit: thread record (lease held), inbound event, audit (1 write txn)",
     "start", "committed"),
    ("drain task starts (scheduled at that commit; no lease to take for a new thread)", "committed", "handling"),
    ("before the graph: route; duplicate check, Run insert, thread update, audit (1 write txn, not durable)",
     "handling", "graph_start"),
    ("graph run: GraphRuntime.run (LangGraph, checkpointer, effects ledger, command)", "graph_start", "graph_end"),
    ("_finish_run: effect's outcome, Run, thread, reply claimed, audit, event, lease fenced and released (1 write txn)",
     "graph_end", "stored"),
    ("hand-over -> playground send: the message and its delivered mark (1 write txn)",
     "stored", "delivered"),
]
# (label, key, probe that must be installed for the row to mean anything)
SUMS = [
    ("  inside the graph run: checkpointer calls", "checkpointer", "checkpointer"),
    ("  inside the graph run: effects ledger (1 write txn; the outcome rides on _finish_run's)", "ledger", "ledger"),
    ("  inside the graph run: the command", "command", "ledger"),
]
WAITS = [
    ("time queued for the writers' turn (Database.session), summed", "writer_wait", "writer_turn"),
    ("time taking the write lock (BEGIN IMMEDIATE: waits only behind another process), summed",
     "write_begin", "writer"),
    ("time in plain BEGIN (Database.read sessions), summed", "read_begin", "read_engine"),
]
COUNTS = [
    ("write transactions (BEGIN IMMEDIATE) per request", "write_txns", "writer"),
    ("  of which durable (waits for a sync of the WAL after its commit)", "durable_txns", "wal_sync"),
    ("syncs of Baton's WAL per request (durable writes committed together share one)", "wal_syncs", "wal_sync"),
    ("read transactions (plain BEGIN, Database.read) per request (the idle outbox poll and the sweeper read with Database.fetch: none)",
     "read_txns", "read_engine"),
    ("SQL statements in write transactions per request (without BEGIN)", "write_statements", "writer"),
    ("SQL statements in read transactions per request (without BEGIN)", "read_statements", "read_engine"),
    ("checkpointer writes (aput + aput_writes) per request", "checkpoint_writes", "checkpointer"),
    ("aiosqlite thread round trips per request (all connections)", "hops", "hops"),
]
TAIL_NOTE = ("Anything of a request still running after its reply was stored (the drain giving up its slot, the "
             "outbox loop's next claim) runs while the next request starts and is counted in that request's window; "
             "one request at a time, the counts per request are still one whole request's.")


class Probe:
    """Marks and sums of the request in flight (requests run one at a time), and the probes installed."""

    def __init__(self) -> None:
        self.marks: dict[str, int] = {}
        self.sums: defaultdict[str, int] = defaultdict(int)
        self.active = False
        self.installed: set[str] = set()

    def reset(self) -> None:
        self.marks, self.sums, self.active = {}, defaultdict(int), True

    def mark(self, name: str) -> None:
        if self.active:
            self.marks.setdefault(name, time.perf_counter_ns())

    def add(self, name: str, value: int) -> None:
        if self.active:
            self.sums[name] += value


def _wrap(obj: Any, attr: str, before: Callable[[], None] | None = None,
          after: Callable[[Any], None] | None = None, timed: Callable[[int], None] | None = None) -> bool:
    """Wrap an async method on ``obj`` (an instance attribute wins over the class's); False if there is none."""
    original = getattr(obj, attr, None) if obj is not None else None
    if original is None or not inspect.iscoroutinefunction(original):
        return False

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before:
            before()
        started = time.perf_counter_ns()
        try:
            result = await original(*args, **kwargs)
        finally:
            if timed:
                timed(time.perf_counter_ns() - started)
        if after:
            after(result)
        return result

    setattr(obj, attr, wrapper)
    return True


def _probe_checkpointer(checkpointer: Any, probe: Probe) -> None:
    for attr in ("aput", "aput_writes", "aget_tuple"):
        def timed(ns: int, attr: str = attr) -> None:
            probe.add("checkpointer", ns)
            if attr != "aget_tuple":
                probe.add("checkpoint_writes", 1)
        if _wrap(checkpointer, attr, timed=timed):
            probe.installed.add("checkpointer")


def _probe_ledger(probe: Probe) -> Callable[[], None]:
    """Time ``RunServices.run_effect_once`` minus the effect itself; returns the undo."""
    services = getattr(runtime, "RunServices", None)
    original = getattr(services, "run_effect_once", None)
    if original is None or not inspect.iscoroutinefunction(original):
        return lambda: None

    async def run_effect_once(self: Any, key: str, name: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        inner = 0

        async def timed_fn() -> Any:
            nonlocal inner
            started = time.perf_counter_ns()
            try:
                return await fn()
            finally:
                inner = time.perf_counter_ns() - started

        started = time.perf_counter_ns()
        try:
            return await original(self, key, name, timed_fn)
        finally:
            probe.add("ledger", time.perf_counter_ns() - started - inner)
            probe.add("command", inner)

    services.run_effect_once = run_effect_once  # type: ignore[union-attr]
    probe.installed.add("ledger")

    def undo() -> None:
        services.run_effect_once = original  # type: ignore[union-attr]
    return undo


def _probe_hops(probe: Probe) -> Callable[[], None]:
    """Count calls handed to aiosqlite's worker threads (each is a thread round trip); returns the undo."""
    connection = getattr(getattr(aiosqlite, "core", None), "Connection", None)
    original = getattr(connection, "_execute", None)
    if original is None or not inspect.iscoroutinefunction(original):
        return lambda: None

    async def _execute(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        probe.add("hops", 1)
        return await original(self, fn, *args, **kwargs)

    connection._execute = _execute  # type: ignore[union-attr]
    probe.installed.add("hops")

    def undo() -> None:
        connection._execute = original  # type: ignore[union-attr]
    return undo


def _probe_read_engine(engine: Any, probe: Probe) -> None:
    """``Database.read()`` sessions: count them by their plain ``BEGIN``, time the BEGIN, count their statements.

    (Write transactions run on the SQLite writer's own connection: ``_probe_sqlite_writer``.)
    """
    if engine is None:
        return
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "before_cursor_execute")
    def before(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        conn.info["bench_started"] = time.perf_counter_ns()

    @event.listens_for(sync_engine, "after_cursor_execute")
    def after(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.split(None, 1)[:1] == ["BEGIN"]:
            probe.add("read_txns", 1)
            probe.add("read_begin", time.perf_counter_ns() - conn.info.get("bench_started", time.perf_counter_ns()))
        else:
            probe.add("read_statements", 1)
            probe.add("statements", 1)

    probe.installed.add("read_engine")


class _TimedTurn:
    """Stands in for ``Database._writers`` (a ``WriterQueue``): times how long writers queue for their turn."""

    def __init__(self, queue: Any, probe: Probe) -> None:
        self._queue = queue
        self._probe = probe

    @asynccontextmanager
    async def turn(self, urgent: bool = False) -> AsyncIterator[None]:
        started = time.perf_counter_ns()
        async with self._queue.turn(urgent):
            self._probe.add("writer_wait", time.perf_counter_ns() - started)
            self._probe.add("writer_turns", 1)
            yield


def _probe_sqlite_writer(db: Any, probe: Probe) -> Callable[[], None]:
    """SQLite's write transactions run on the writer's own ``sqlite3`` connection (``storage.sqlite_inline``),
    not through an engine: count their statements with SQLite's trace callback, and time taking the write
    lock by wrapping ``write_session`` where ``Database.session`` looks it up, and count the durable writes and
    the syncs of the WAL they waited for by wrapping the writer's ``synced`` and ``sync_wal``."""
    writer = getattr(db, "sqlite_writer", None)
    original = getattr(storage_db, "write_session", None)
    if writer is None or original is None:
        return lambda: None

    def trace(statement: str) -> None:
        words = statement.split(None, 2)
        first = words[0].upper() if words else ""
        if first == "BEGIN":
            probe.add("write_txns", 1)
        elif first not in ("COMMIT", "ROLLBACK", "PRAGMA"):
            probe.add("write_statements", 1)
            probe.add("statements", 1)
    writer.connection.set_trace_callback(trace)

    @asynccontextmanager
    async def write_session(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        started = time.perf_counter_ns()
        async with original(*args, **kwargs) as session:
            probe.add("write_begin", time.perf_counter_ns() - started)
            yield session

    storage_db.write_session = write_session  # type: ignore[attr-defined]
    probe.installed.add("writer")
    synced, sync_wal = getattr(writer, "synced", None), getattr(writer, "sync_wal", None)
    if synced is not None and sync_wal is not None:
        async def counted_synced() -> None:  # a durable write waits for the WAL's sync
            probe.add("durable_txns", 1)
            await synced()

        def counted_sync_wal() -> None:
            probe.add("wal_syncs", 1)
            sync_wal()

        writer.synced, writer.sync_wal = counted_synced, counted_sync_wal
        probe.installed.add("wal_sync")

    def undo() -> None:  # the connections (and their trace callbacks) go with the Baton
        storage_db.write_session = original  # type: ignore[attr-defined]
    return undo


def _probe_db(db: Any, probe: Probe) -> Callable[[], None]:
    """The probes on a SQLite ``Database`` (the bench's); returns the undo of what outlives the Baton."""
    undo = _probe_sqlite_writer(db, probe)
    _probe_read_engine(getattr(db, "read_engine", None), probe)
    queue = getattr(db, "_writers", None)
    if queue is not None and hasattr(queue, "turn"):
        db._writers = _TimedTurn(queue, probe)
        probe.installed.add("writer_turn")
    return undo


def _settings(directory: Path) -> Settings:
    return Settings(BATON_DATABASE_URL=f"sqlite:///{directory / 'baton.db'}",  # type: ignore[call-arg]
                    BATON_CONFIG=str(write_config(directory)), BATON_ADAPTERS="playground",
                    BATON_INSTANCE_NAME="bench")


async def baton_breakdown(directory: Path, runs: int, warmup: int) -> tuple[list[dict[str, Any]], set[str]]:
    probe = Probe()
    undo, undo_hops = _probe_ledger(probe), _probe_hops(probe)
    undo_db: Callable[[], None] = lambda: None
    samples: list[dict[str, Any]] = []
    try:
        async with Baton(_settings(directory)) as baton:
            orchestrator = baton.orchestrator
            assert orchestrator is not None
            playground = next(adapter for adapter in baton.adapters if adapter.name == "playground")
            undo_db = _probe_db(baton.db, probe)
            _probe_checkpointer(getattr(baton.runtime, "checkpointer", None), probe)
            leases = getattr(orchestrator, "leases", None)
            _wrap(orchestrator, "_handle", before=lambda: probe.mark("handling"))
            _wrap(leases, "next_or_release", after=lambda work: work is None and probe.mark("released"))
            _wrap(baton.runtime, "run", before=lambda: probe.mark("graph_start"),
                  after=lambda _: probe.mark("graph_end"))
            _wrap(orchestrator, "_finish_run", after=lambda _: probe.mark("stored"))
            schedule = orchestrator._schedule

            def marked_schedule(*args: Any, **kwargs: Any) -> None:  # called at accept_message's commit
                probe.mark("committed")
                schedule(*args, **kwargs)

            orchestrator._schedule = marked_schedule  # type: ignore[method-assign]
            watch = ReplyWatch(playground)

            async def one_request(number: int) -> int:
                thread = f"breakdown-{number}"
                reply = watch.expect(thread)
                probe.reset()
                probe.mark("start")
                await baton.accept_message(InboundMessage(
                    platform="playground", channel=CHANNEL, thread=thread, user=USER,
                    text=f"run {RUNBOOK} n={number}", addressed=True, event_id=f"breakdown-{number}"))
                probe.mark("accepted")
                finished, _text = await asyncio.wait_for(reply, REPLY_TIMEOUT)
                probe.active = False
                if number >= warmup:
                    samples.append({**probe.marks, "delivered": finished, **probe.sums})
                return finished

            await drive(one_request, warmup + runs, 1)
    finally:
        undo()
        undo_hops()
        undo_db()
    return samples, probe.installed


# -- the same steps run back to back, with nothing else running ------------------------------------

ISOLATED = [  # (label, key); keys are measured calls, "before_graph" is derived
    ("accept_message up to its commit (its acknowledgement then waits for the sync of the WAL)", "accept"),
    ("drain: Leases.take (only when the new thread's lease was not fresh any more)", "take"),
    ("drain: _handle_message before the graph (route; duplicate check, Run insert, thread, audit)",
     "before_graph"),
    ("drain: GraphRuntime.run", "run"),
    ("  of which the effects ledger (without the command)", "ledger"),
    ("drain: _finish_run (effect's outcome, reply claimed for hand-over, lease check and release)", "finish"),
    ("adapter _deliver of the handed-over reply: the message and its delivered mark, one transaction", "deliver"),
    ("**total**", "total"),
    ("(not in the total) Outbox.claim with nothing due: the idle loop's poll, every 0.5 s (one Database.fetch)", "claim_idle"),
]
METRICS = ("wall", "cpu", "write_txns", "read_txns", "statements", "hops")


class Meter:
    """Wall time, main-thread CPU and the probe's counters of measured calls, summed per request."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.current: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.requests: list[dict[str, dict[str, float]]] = []

    def snapshot(self) -> dict[str, float]:
        return {"wall": time.perf_counter_ns() / 1e6, "cpu": time.thread_time() * 1000,
                **{key: float(self.probe.sums.get(key, 0)) for key in METRICS[2:]}}

    def add(self, key: str, before: dict[str, float], after: dict[str, float]) -> None:
        for metric in METRICS:
            self.current[key][metric] += after[metric] - before[metric]
        self.current[key]["calls"] += 1

    async def measure(self, key: str, call: Awaitable[Any]) -> Any:
        before = self.snapshot()
        try:
            return await call
        finally:
            self.add(key, before, self.snapshot())

    def wrap(self, obj: Any, attr: str, key: str) -> bool:
        original = getattr(obj, attr, None) if obj is not None else None
        if original is None or not inspect.iscoroutinefunction(original):
            return False

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await self.measure(key, original(*args, **kwargs))

        setattr(obj, attr, wrapper)
        return True

    def finish_request(self, keep: bool) -> None:
        if keep:
            self.requests.append({key: dict(values) for key, values in self.current.items()})
        self.current = defaultdict(lambda: defaultdict(float))


Isolated = tuple[list[dict[str, dict[str, float]]], set[str]]


async def isolated_breakdown(directory: Path, runs: int, warmup: int) -> Isolated | None:
    """Each request's steps awaited one after the other by the bench: no contention, exact CPU per step.

    ``None`` when what the bench drives itself (the drain, the outbox claim, the adapter's delivery)
    is gone; a wrapped step that is gone only leaves its row "n/a".
    """
    probe = Probe()
    meter = Meter(probe)
    undo_hops = _probe_hops(probe)
    undo_db: Callable[[], None] = lambda: None
    services = getattr(runtime, "RunServices", None)
    original_ledger = getattr(services, "run_effect_once", None)

    async def run_effect_once(self: Any, key: str, name: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        before = meter.snapshot()
        inner: dict[str, float] = {}

        async def measured() -> Any:
            start = meter.snapshot()
            try:
                return await fn()
            finally:
                end = meter.snapshot()
                inner.update({metric: end[metric] - start[metric] for metric in METRICS})

        try:
            return await original_ledger(self, key, name, measured)  # type: ignore[misc]
        finally:
            after = meter.snapshot()
            meter.add("ledger", before, {metric: after[metric] - inner.get(metric, 0) for metric in METRICS})

    if original_ledger is not None and inspect.iscoroutinefunction(original_ledger):
        services.run_effect_once = run_effect_once  # type: ignore[union-attr]
    try:
        async with Baton(_settings(directory)) as baton:
            orchestrator = baton.orchestrator
            playground = next(adapter for adapter in baton.adapters if adapter.name == "playground")
            needed = [(baton, "_loops"), (orchestrator, "_schedule"), (orchestrator, "_first_work"),
                      (orchestrator, "drain"),
                      (baton.outbox, "claim"), (baton.outbox, "handed_over"), (baton.outbox, "attach"),
                      (playground, "_deliver"), (playground, "stop")]
            if any(not hasattr(obj, attr) for obj, attr in needed):
                return None
            for task in baton._loops:  # no sweeper, no retention job
                task.cancel()
            await playground.stop()  # no delivery loop: the bench takes the handed-over reply and delivers it
            baton.outbox.attach(playground.name, playground.channel_pace_seconds)
            scheduled: list[int] = []
            committed = asyncio.Event()
            accept_started: dict[str, float] = {}  # the meter's snapshot as the request's accept_message starts

            def record_schedule(record_id: int, first: Any = None) -> None:
                meter.add("accept", accept_started, meter.snapshot())  # called at accept_message's commit
                committed.set()
                scheduled.append(record_id)  # the bench runs the drain itself
                if first is not None:  # what _schedule keeps of a new thread's first event
                    orchestrator._first_work[record_id] = first  # type: ignore[union-attr]

            orchestrator._schedule = record_schedule  # type: ignore[method-assign,union-attr]
            undo_db = _probe_db(baton.db, probe)
            leases = getattr(orchestrator, "leases", None)
            for obj, attr, key in [(leases, "take", "take"), (leases, "next_or_release", "next_or_release"),
                                   (orchestrator, "_handle_message", "handle"), (baton.runtime, "run", "run"),
                                   (orchestrator, "_finish_run", "finish")]:
                meter.wrap(obj, attr, key)
            for number in range(warmup + runs):
                probe.reset()
                committed.clear()
                start = accept_started = meter.snapshot()
                # The drain runs as soon as the event is committed (as it does live), the acknowledgement
                # (after the sync of the WAL) is awaited after it.
                acknowledged = asyncio.ensure_future(baton.accept_message(InboundMessage(
                    platform="playground", channel=CHANNEL, thread=f"isolated-{number}", user=USER,
                    text=f"run {RUNBOOK} n={number}", addressed=True, event_id=f"isolated-{number}")))
                commit_seen = asyncio.ensure_future(committed.wait())
                await asyncio.wait([acknowledged, commit_seen], return_when=asyncio.FIRST_COMPLETED)
                commit_seen.cancel()
                if len(scheduled) != 1:
                    raise RuntimeError(f"isolated request {number}: expected one drain to be scheduled, got {scheduled}")
                await orchestrator.drain(scheduled.pop())  # type: ignore[union-attr]
                if (await acknowledged).status != "accepted":
                    raise RuntimeError(f"isolated request {number} was not accepted")
                deliveries = baton.outbox.handed_over(playground.name)
                if len(deliveries) != 1 or "finished" not in deliveries[0].message.plain_text():
                    raise RuntimeError(f"isolated request {number}: unexpected outbox rows {deliveries}")
                await meter.measure("deliver", playground._deliver(deliveries[0]))
                meter.add("total", start, meter.snapshot())  # the idle poll below is off the request's path
                leftover = await meter.measure("claim_idle", baton.outbox.claim(playground.name, baton.instance))
                if leftover:
                    raise RuntimeError(f"isolated request {number}: unexpected outbox rows {leftover}")
                meter.finish_request(keep=number >= warmup)
    finally:
        if original_ledger is not None:
            services.run_effect_once = original_ledger  # type: ignore[union-attr]
        undo_hops()
        undo_db()
    for request in meter.requests:  # the part of _handle_message before the graph
        parts = [request.get(key) for key in ("handle", "run", "finish")]
        if any(part is None for part in parts):
            continue
        handle, run, finish = parts  # type: ignore[misc]
        request["before_graph"] = {metric: handle.get(metric, 0) - run.get(metric, 0) - finish.get(metric, 0)
                                   for metric in METRICS}
        request["before_graph"]["calls"] = 1
    return (meter.requests, probe.installed) if meter.requests else None


def render_isolated(isolated: Isolated | None) -> str:
    if not isolated:
        return "(n/a: the Baton internals this probe drives have changed)"
    requests, installed = isolated
    needs = {"write_txns": "writer", "read_txns": "read_engine", "statements": "writer", "hops": "hops"}
    lines = [("| step (nothing else running) | calls | wall ms p50 | main-thread CPU ms p50 | write txns | read txns | "
              "statements (write + read) | aiosqlite round trips |"), "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, key in ISOLATED:
        rows = [request[key] for request in requests if key in request]
        if not rows:
            lines.append(f"| {label} | n/a | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue

        def p50(metric: str, rows: list[dict[str, float]] = rows) -> str:
            if metric in needs and needs[metric] not in installed:
                return "n/a"
            value = percentile([row.get(metric, 0) for row in rows], 50)
            return f"{value:.2f}" if metric in ("wall", "cpu") else f"{value:g}"

        calls = "" if key in ("total", "before_graph") else p50("calls")
        lines.append(f"| {label} | {calls} | {p50('wall')} | {p50('cpu')} | {p50('write_txns')} | "
                     f"{p50('read_txns')} | {p50('statements')} | {p50('hops')} |")
    return "\n".join(lines)


async def bare_breakdown(directory: Path, runs: int, warmup: int) -> tuple[list[dict[str, Any]], set[str]]:
    config = load_config(write_config(directory))
    spec = GraphRegistry.discover().get("runbook")
    assert spec is not None
    probe = Probe()
    probe.installed.add("ledger")  # the bare context's run_effect_once is ours
    samples: list[dict[str, Any]] = []

    class TimedContext(BareContext):
        async def run_effect_once(self, key: str, name: str, fn: Callable[[], Awaitable[Any]]) -> Any:
            started = time.perf_counter_ns()
            try:
                return await fn()
            finally:
                probe.add("command", time.perf_counter_ns() - started)

    async with open_checkpointer(f"sqlite:///{directory / 'bare.db'}") as checkpointer:
        _probe_checkpointer(checkpointer, probe)
        graph = spec.compile(checkpointer)
        context = TimedContext(config)

        async def one_request(number: int) -> int:
            probe.reset()
            probe.mark("start")
            lg_config = {"configurable": {"thread_id": f"{uuid.uuid4().hex}:runbook"}}
            token = kit.bind(context)
            try:
                async for _chunk in graph.astream(graph_input(number), lg_config, stream_mode="custom",
                                                  durability="sync"):
                    pass
            finally:
                kit.unbind(token)
            await graph.aget_state(lg_config)
            finished = time.perf_counter_ns()
            probe.active = False
            if number >= warmup:
                samples.append({**probe.marks, "delivered": finished, **probe.sums})
            return finished

        undo_hops = _probe_hops(probe)
        try:
            await drive(one_request, warmup + runs, 1)
        finally:
            undo_hops()
    return samples, probe.installed


def _row(label: str, values: list[float], unit: str = "ms") -> str:
    if not values:
        return f"| {label} | n/a | n/a |"
    if unit == "ms":
        return f"| {label} | {percentile(values, 50) / 1e6:.2f} | {sum(values) / len(values) / 1e6:.2f} |"
    return f"| {label} | {percentile(values, 50):g} | {sum(values) / len(values):.2f} |"


def _summed(samples: list[dict[str, Any]], key: str, needs: str, installed: set[str]) -> list[float]:
    return [s.get(key, 0) for s in samples] if needs in installed else []


def render(baton: tuple[list[dict[str, Any]], set[str]], bare: tuple[list[dict[str, Any]], set[str]]) -> str:
    samples, installed = baton
    lines = ["| Baton step (sequential) | p50 ms | mean ms |", "|---|---:|---:|"]
    for label, start, end in STEPS:
        lines.append(_row(label, [s[end] - s[start] for s in samples if start in s and end in s]))
    for label, key, needs in SUMS:
        lines.append(_row(label, _summed(samples, key, needs, installed)))
    lines.append(_row("**total: accept -> final reply delivered**", [s["delivered"] - s["start"] for s in samples]))
    lines.append(_row("(beside the steps) the acknowledgement: accept_message returns once a sync has the event "
                      "on disk (made as soon as the drain first waits)",
                      [s["accepted"] - s["start"] for s in samples if "accepted" in s]))
    for label, key, needs in WAITS:
        lines.append(_row(label, _summed(samples, key, needs, installed)))
    for label, key, needs in COUNTS:
        lines.append(_row(label, _summed(samples, key, needs, installed), unit="count"))
    bare_samples, bare_installed = bare
    lines += ["", "| bare LangGraph (sequential) | p50 ms | mean ms |", "|---|---:|---:|"]
    lines.append(_row("**total: astream + aget_state**", [s["delivered"] - s["start"] for s in bare_samples]))
    lines.append(_row("  checkpointer calls", _summed(bare_samples, "checkpointer", "checkpointer", bare_installed)))
    lines.append(_row("  the command", _summed(bare_samples, "command", "ledger", bare_installed)))
    lines.append(_row("checkpointer writes (aput + aput_writes) per request",
                      _summed(bare_samples, "checkpoint_writes", "checkpointer", bare_installed), unit="count"))
    lines.append(_row("aiosqlite thread round trips per request",
                      _summed(bare_samples, "hops", "hops", bare_installed), unit="count"))
    return "\n".join(lines)


async def transaction_floor(directory: Path, runs: int) -> str:
    """The least one write costs here: a write transaction of one prepared Core statement, durable and not,
    and the same statement through Python's ``sqlite3`` alone (what the data layer adds)."""
    url = f"sqlite:///{directory / 'floor.db'}"
    upgrade(url)
    db = Database(url)
    table = ThreadRecord.__table__  # type: ignore[attr-defined]
    # Prepared, as the request path's statements are (storage.sqlite_prepared), not through the ORM session.
    touch = prepared(update(table).where(table.c.id == bindparam("record_id")).values(status=bindparam("status")))
    floors: dict[str, tuple[float, float]] = {}
    try:
        async with db.session() as session:
            record, _ = await create_thread(session, Location(platform="bench", channel=CHANNEL, thread="floor"),
                                            db.now())
        for durable in (True, False):
            walls: list[float] = []
            cpus: list[float] = []
            for number in range(runs + 20):
                started, cpu = time.perf_counter_ns(), time.process_time_ns()
                async with db.session(durable=durable) as session:
                    await session.exec(touch, params={"record_id": record.id, "status": f"s{number % 2}"})  # type: ignore[call-overload]
                if number >= 20:
                    walls.append(time.perf_counter_ns() - started)
                    cpus.append(time.process_time_ns() - cpu)
            floors["durable" if durable else "lazy"] = (percentile(walls, 50) / 1e6, percentile(cpus, 50) / 1e6)
    finally:
        await db.dispose()
    with closing(sqlite3.connect(directory / "floor.db", isolation_level=None)) as raw:
        raw.execute("PRAGMA synchronous=FULL")
        walls = []
        for number in range(runs + 20):
            started = time.perf_counter_ns()
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("UPDATE thread_records SET status = ? WHERE id = ?", (f"s{number % 2}", record.id))
            raw.execute("COMMIT")
            if number >= 20:
                walls.append(time.perf_counter_ns() - started)
    durable, lazy = floors["durable"], floors["lazy"]
    return (f"The floor of one write here (p50 of {runs}): a write transaction of one prepared Core statement through "
            f"`Database.session()` takes {durable[0]:.2f} ms wall / {durable[1]:.2f} ms CPU durable (the commit, "
            f"then a sync of the WAL) and {lazy[0]:.2f} / {lazy[1]:.2f} ms not durable "
            f"(synchronous=NORMAL); the same durable write through Python's `sqlite3` alone (synchronous=FULL) takes "
            f"{percentile(walls, 50) / 1e6:.2f} ms wall. Against a 25% budget of about a quarter of bare LangGraph's p50.")


async def breakdown(runs: int, warmup: int) -> str:
    with tempfile.TemporaryDirectory(prefix="baton-bench-breakdown-") as directory:
        bare = await bare_breakdown(Path(directory), runs, warmup)
    with tempfile.TemporaryDirectory(prefix="baton-bench-breakdown-") as directory:
        baton = await baton_breakdown(Path(directory), runs, warmup)
    with tempfile.TemporaryDirectory(prefix="baton-bench-breakdown-") as directory:
        isolated = await isolated_breakdown(Path(directory), runs, warmup)
    with tempfile.TemporaryDirectory(prefix="baton-bench-breakdown-") as directory:
        floor = await transaction_floor(Path(directory), max(runs, 200))
    return "\n\n".join([
        "A live Baton, one request at a time (the drain task, the outbox loop and the next request overlap):",
        render(baton, bare),
        TAIL_NOTE,
        ("The same steps awaited one after the other by the bench, with the sweeper and the outbox loop stopped "
         "(no lock contention; CPU is the event loop thread's, the aiosqlite threads' own CPU is not in it):"),
        render_isolated(isolated),
        floor,
    ])
