"""Where a Baton request's time goes: one request at a time, split into the steps of the request path.

The probes wrap methods of the running objects (``Leases.acquire``, ``Orchestrator._next`` and
``_finish_run``, ``GraphRuntime.run``, ``Outbox.claim``, the checkpointer, the effects ledger, the
adapter's ``send``) and listen to the SQLAlchemy engine; nothing in the project is changed. A
probe whose method no longer exists is skipped and its steps are shown as "n/a".
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite.core
from sqlalchemy import event

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
from bot.messages import InboundMessage
from bot.registry import GraphRegistry
from bot.settings import Settings
from storage.checkpointer import open_checkpointer

# (label, from mark, to mark): consecutive marks of one request
STEPS = [
    ("accept_message: thread record, inbound event, audit (1 txn)", "start", "accepted"),
    ("drain task: take the thread lease (1 txn)", "accepted", "leased"),
    ("drain task: load record + next event (1 txn)", "leased", "fetched"),
    ("before the graph: earlier-run check, duplicate check, Run insert, Run reload (4 txns)", "fetched", "graph_start"),
    ("graph run: GraphRuntime.run (LangGraph, checkpointer, effects ledger, command)", "graph_start", "graph_end"),
    ("_finish_run: Run, thread, outbox row, audit, event (1 txn)", "graph_end", "stored"),
    ("outbox: wake -> claim committed (1 txn, races the drain's tail)", "stored", "claimed"),
    ("playground send: insert the message (1 txn)", "claimed", "delivered"),
]
SUMS = [
    ("  inside the graph run: checkpointer calls", "checkpointer"),
    ("  inside the graph run: effects ledger (2 txns)", "ledger"),
    ("  inside the graph run: the command", "command"),
]
COUNTS = [
    ("SQLAlchemy transactions (BEGIN IMMEDIATE) per request", "transactions"),
    ("SQL statements per request (without BEGIN)", "statements"),
    ("checkpointer writes (aput + aput_writes) per request", "checkpoint_writes"),
    ("aiosqlite thread round trips per request (all connections)", "hops"),
]


class Probe:
    """Marks and sums of the request in flight (requests run one at a time)."""

    def __init__(self) -> None:
        self.marks: dict[str, int] = {}
        self.sums: defaultdict[str, int] = defaultdict(int)
        self.active = False

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
    original = getattr(obj, attr, None)
    if original is None:
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
        _wrap(checkpointer, attr, timed=timed)


def _probe_ledger(probe: Probe) -> Callable[[], None]:
    """Time ``RunServices.run_effect_once`` minus the effect itself; returns the undo."""
    original = runtime.RunServices.run_effect_once

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

    runtime.RunServices.run_effect_once = run_effect_once  # type: ignore[method-assign]

    def undo() -> None:
        runtime.RunServices.run_effect_once = original  # type: ignore[method-assign]
    return undo


def _probe_hops(probe: Probe) -> Callable[[], None]:
    """Count calls handed to aiosqlite's worker threads (each is a thread round trip); returns the undo."""
    original = aiosqlite.core.Connection._execute

    async def _execute(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        probe.add("hops", 1)
        return await original(self, fn, *args, **kwargs)

    aiosqlite.core.Connection._execute = _execute  # type: ignore[method-assign]

    def undo() -> None:
        aiosqlite.core.Connection._execute = original  # type: ignore[method-assign]
    return undo


def _probe_engine(engine: Any, probe: Probe) -> None:
    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def before(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        conn.info["bench_started"] = time.perf_counter_ns()

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def after(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("BEGIN"):
            probe.add("transactions", 1)
            probe.add("begin_wait", time.perf_counter_ns() - conn.info.get("bench_started", 0))
        else:
            probe.add("statements", 1)


async def baton_breakdown(directory: Path, runs: int, warmup: int) -> list[dict[str, Any]]:
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{directory / 'baton.db'}",  # type: ignore[call-arg]
                        BATON_CONFIG=str(write_config(directory)), BATON_ADAPTERS="playground",
                        BATON_INSTANCE_NAME="bench")
    probe = Probe()
    undo, undo_hops = _probe_ledger(probe), _probe_hops(probe)
    samples: list[dict[str, Any]] = []
    try:
        async with Baton(settings) as baton:
            orchestrator = baton.orchestrator
            assert orchestrator is not None
            playground = next(adapter for adapter in baton.adapters if adapter.name == "playground")
            _probe_engine(baton.db.engine, probe)
            _probe_checkpointer(baton.runtime.checkpointer, probe)
            _wrap(orchestrator.leases, "acquire", after=lambda won: won and probe.mark("leased"))
            _wrap(orchestrator, "_next", after=lambda work: work is not None and probe.mark("fetched"))
            _wrap(baton.runtime, "run", before=lambda: probe.mark("graph_start"),
                  after=lambda _: probe.mark("graph_end"))
            _wrap(orchestrator, "_finish_run", after=lambda _: probe.mark("stored"))
            _wrap(baton.outbox, "claim", after=lambda rows: rows and probe.mark("claimed"))
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
    return samples


# -- the same steps run back to back, with nothing else running ------------------------------------

ISOLATED = [  # (label, key); keys are wrapped calls, "before_graph" is derived
    ("accept_message", "accept"),
    ("drain: Leases.acquire", "acquire"),
    ("drain: Orchestrator._next (before the event, after it, after the release)", "next"),
    ("drain: _handle_message before the graph (earlier run, route, duplicate check, Run insert + reload)",
     "before_graph"),
    ("drain: GraphRuntime.run", "run"),
    ("  of which the effects ledger (without the command)", "ledger"),
    ("drain: _finish_run", "finish"),
    ("drain: Leases.release", "release"),
    ("Outbox.claim (x1 here; x3 per request in a live Baton)", "claim"),
    ("adapter _deliver: send + Outbox.delivered", "deliver"),
    ("**total**", "total"),
]
METRICS = ("wall", "cpu", "transactions", "statements", "hops")


class Meter:
    """Wall time, main-thread CPU and the probe's counters of wrapped calls, summed per request."""

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

    def wrap(self, obj: Any, attr: str, key: str) -> bool:
        original = getattr(obj, attr, None)
        if original is None:
            return False

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            before = self.snapshot()
            try:
                return await original(*args, **kwargs)
            finally:
                self.add(key, before, self.snapshot())

        setattr(obj, attr, wrapper)
        return True

    def finish_request(self, keep: bool) -> None:
        if keep:
            self.requests.append({key: dict(values) for key, values in self.current.items()})
        self.current = defaultdict(lambda: defaultdict(float))


async def isolated_breakdown(directory: Path, runs: int, warmup: int) -> list[dict[str, dict[str, float]]] | None:
    """Each request's steps awaited one after the other by the bench: no contention, exact CPU per step."""
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{directory / 'baton.db'}",  # type: ignore[call-arg]
                        BATON_CONFIG=str(write_config(directory)), BATON_ADAPTERS="playground",
                        BATON_INSTANCE_NAME="bench")
    probe = Probe()
    meter = Meter(probe)
    undo_hops = _probe_hops(probe)
    original_ledger = runtime.RunServices.run_effect_once

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
            return await original_ledger(self, key, name, measured)
        finally:
            after = meter.snapshot()
            meter.add("ledger", before, {metric: after[metric] - inner.get(metric, 0) for metric in METRICS})

    runtime.RunServices.run_effect_once = run_effect_once  # type: ignore[method-assign]
    try:
        async with Baton(settings) as baton:
            orchestrator = baton.orchestrator
            playground = next(adapter for adapter in baton.adapters if adapter.name == "playground")
            needed = [(baton, "_loops"), (orchestrator, "_schedule"), (orchestrator, "drain"),
                      (orchestrator, "_handle_message"), (orchestrator, "_next"), (orchestrator, "_finish_run"),
                      (playground, "_deliver")]
            if any(not hasattr(obj, attr) for obj, attr in needed):
                return None
            for task in baton._loops:  # no sweeper, no retention job
                task.cancel()
            await playground.stop()  # no delivery loop: the bench claims and delivers itself
            scheduled: list[int] = []
            orchestrator._schedule = scheduled.append  # type: ignore[method-assign]
            _probe_engine(baton.db.engine, probe)
            for obj, attr, key in [(orchestrator.leases, "acquire", "acquire"), (orchestrator, "_next", "next"),
                                   (orchestrator, "_handle_message", "handle"), (baton.runtime, "run", "run"),
                                   (orchestrator, "_finish_run", "finish"), (orchestrator.leases, "release", "release"),
                                   (baton.outbox, "claim", "claim"), (playground, "_deliver", "deliver")]:
                meter.wrap(obj, attr, key)
            for number in range(warmup + runs):
                probe.reset()
                start = meter.snapshot()
                before = meter.snapshot()
                await baton.accept_message(InboundMessage(
                    platform="playground", channel=CHANNEL, thread=f"isolated-{number}", user=USER,
                    text=f"run {RUNBOOK} n={number}", addressed=True, event_id=f"isolated-{number}"))
                meter.add("accept", before, meter.snapshot())
                await orchestrator.drain(scheduled.pop())
                deliveries = await baton.outbox.claim(playground.name, baton.instance)
                if len(deliveries) != 1 or "finished" not in deliveries[0].message.plain_text():
                    raise RuntimeError(f"isolated request {number}: unexpected outbox rows {deliveries}")
                await playground._deliver(deliveries[0])
                meter.add("total", start, meter.snapshot())
                meter.finish_request(keep=number >= warmup)
    finally:
        runtime.RunServices.run_effect_once = original_ledger  # type: ignore[method-assign]
        undo_hops()
    for request in meter.requests:  # the part of _handle_message before the graph
        handle, run, finish = request.get("handle", {}), request.get("run", {}), request.get("finish", {})
        request["before_graph"] = {metric: handle.get(metric, 0) - run.get(metric, 0) - finish.get(metric, 0)
                                   for metric in METRICS}
        request["before_graph"]["calls"] = 1
    return meter.requests


def render_isolated(requests: list[dict[str, dict[str, float]]] | None) -> str:
    if not requests:
        return "(n/a: the Baton internals this probe wraps have changed)"
    lines = [("| step (nothing else running) | calls | wall ms p50 | main-thread CPU ms p50 | txns | statements | "
              "aiosqlite round trips |"), "|---|---:|---:|---:|---:|---:|---:|"]
    for label, key in ISOLATED:
        rows = [request[key] for request in requests if key in request]
        if not rows:
            lines.append(f"| {label} | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue

        def p50(metric: str, rows: list[dict[str, float]] = rows) -> float:
            return percentile([row.get(metric, 0) for row in rows], 50)

        calls = "" if key in ("total", "before_graph") else f"{p50('calls'):g}"
        lines.append(f"| {label} | {calls} | {p50('wall'):.2f} | {p50('cpu'):.2f} | {p50('transactions'):g} | "
                     f"{p50('statements'):g} | {p50('hops'):g} |")
    return "\n".join(lines)


async def bare_breakdown(directory: Path, runs: int, warmup: int) -> list[dict[str, Any]]:
    config = load_config(write_config(directory))
    spec = GraphRegistry.discover().get("runbook")
    assert spec is not None
    probe = Probe()
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
    return samples


def _row(label: str, values: list[float], unit: str = "ms") -> str:
    if not values:
        return f"| {label} | n/a | n/a |"
    if unit == "ms":
        return f"| {label} | {percentile(values, 50) / 1e6:.2f} | {sum(values) / len(values) / 1e6:.2f} |"
    return f"| {label} | {percentile(values, 50):g} | {sum(values) / len(values):.2f} |"


def render(baton: list[dict[str, Any]], bare: list[dict[str, Any]]) -> str:
    lines = ["| Baton step (sequential) | p50 ms | mean ms |", "|---|---:|---:|"]
    for label, start, end in STEPS:
        lines.append(_row(label, [s[end] - s[start] for s in baton if start in s and end in s]))
    for label, key in SUMS:
        lines.append(_row(label, [s.get(key, 0) for s in baton]))
    lines.append(_row("**total: accept -> final reply delivered**", [s["delivered"] - s["start"] for s in baton]))
    lines.append(_row("time spent in BEGIN IMMEDIATE (lock wait + thread hop), summed",
                      [s.get("begin_wait", 0) for s in baton]))
    for label, key in COUNTS:
        lines.append(_row(label, [s.get(key, 0) for s in baton], unit="count"))
    lines += ["", "| bare LangGraph (sequential) | p50 ms | mean ms |", "|---|---:|---:|"]
    lines.append(_row("**total: astream + aget_state**", [s["delivered"] - s["start"] for s in bare]))
    lines.append(_row("  checkpointer calls", [s.get("checkpointer", 0) for s in bare]))
    lines.append(_row("  the command", [s.get("command", 0) for s in bare]))
    lines.append(_row("checkpointer writes (aput + aput_writes) per request",
                      [s.get("checkpoint_writes", 0) for s in bare], unit="count"))
    lines.append(_row("aiosqlite thread round trips per request", [s.get("hops", 0) for s in bare], unit="count"))
    return "\n".join(lines)


async def breakdown(runs: int, warmup: int) -> str:
    with tempfile.TemporaryDirectory(prefix="baton-bench-breakdown-") as directory:
        bare = await bare_breakdown(Path(directory), runs, warmup)
    with tempfile.TemporaryDirectory(prefix="baton-bench-breakdown-") as directory:
        baton = await baton_breakdown(Path(directory), runs, warmup)
    with tempfile.TemporaryDirectory(prefix="baton-bench-breakdown-") as directory:
        isolated = await isolated_breakdown(Path(directory), runs, warmup)
    return "\n\n".join([
        "A live Baton, one request at a time (the drain task, the outbox loop and the next request overlap):",
        render(baton, bare),
        ("The same steps awaited one after the other by the bench, with the sweeper and the outbox loop stopped "
         "(no lock contention; CPU is the event loop thread's, the aiosqlite threads' own CPU is not in it):"),
        render_isolated(isolated),
    ])
