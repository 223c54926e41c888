"""Request -> final reply: Baton's whole request path against the same graph run with bare LangGraph.

Both sides run the ``graphs.runbook`` graph for a low-risk runbook whose command is ``/bin/true``
(plan -> execute, one subprocess), with the same checkpointer (``storage.checkpointer.open_checkpointer``
on a SQLite file of its own) and ``durability="sync"``.

* **bare**: ``graph.astream(input, config, stream_mode="custom", durability="sync")`` on a fresh
  LangGraph thread, then ``graph.aget_state(config)`` to read the reply (exactly what
  ``GraphRuntime.run`` does). ``bot.kit`` gets a minimal run context whose ``run_effect_once``
  just calls the function: no claim, no lease, no effects ledger, no outbox, no audit.
* **baton**: ``Baton(settings)`` in-process with the playground adapter. Latency runs from the
  call to ``baton.accept_message(...)`` to the moment the playground adapter's ``send`` has
  committed the final reply into ``playground_messages`` (a wrapper around ``send`` records the
  time and resolves a future; nothing is polled).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import math
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlmodel import func, select

from bot import kit, replies
from bot.app import Baton
from bot.config import BatonConfig, load_config
from bot.messages import InboundMessage
from bot.registry import GraphRegistry
from bot.settings import Settings
from graphs.runbook import run_command
from storage.checkpointer import open_checkpointer
from storage.models import OutboxMessage, Run

RUNBOOK = "trivial"
COMMAND = ["/bin/true"]
CHANNEL = "bench"
USER = "alice"
REPLY_TIMEOUT = 60.0

# ``n`` only makes each request's fingerprint unique, so Baton's duplicate-request check runs (and finds
# nothing) instead of answering "already ran". The command is given it (``/bin/true`` ignores it): an
# argument no command uses is a warning of ``baton.yaml``'s, printed on every side of every round.
CONFIG = {
    "approvers": ["bob"],
    "runbooks": {
        RUNBOOK: {
            "description": "Benchmark: a command that does nothing.",
            "command": [*COMMAND, "{n}"],
            "args": {"n": {"pattern": "^[0-9]+$", "description": "request number"}},
            "risk": "low",
            "timeout": 10,
        }
    },
}


@dataclass
class Result:
    side: str
    mode: str
    concurrency: int
    latencies_ns: list[int] = field(default_factory=list)
    wall_ns: int = 0
    cpu_s: float = 0.0  # this process's CPU time (all threads) during the measured runs

    @property
    def cpu_ms_per_run(self) -> float:
        return self.cpu_s * 1000 / self.runs if self.runs else 0.0

    @property
    def runs(self) -> int:
        return len(self.latencies_ns)

    @property
    def runs_per_second(self) -> float:
        return self.runs / (self.wall_ns / 1e9) if self.wall_ns else 0.0

    def percentile_ms(self, p: float) -> float:
        return percentile(self.latencies_ns, p) / 1e6

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.latencies_ns) / 1e6


def combined(rounds: list[Result]) -> Result:
    """One side's rounds pooled: every latency, the wall and CPU time summed."""
    first = rounds[0]
    return Result(first.side, first.mode, first.concurrency,
                  [latency for result in rounds for latency in result.latencies_ns],
                  sum(result.wall_ns for result in rounds), sum(result.cpu_s for result in rounds))


def percentile(values: list[int] | list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p * len(ordered) / 100)))
    return float(ordered[rank - 1])


OneRequest = Callable[[int], Awaitable[int]]  # request number -> perf_counter_ns when its reply was there


async def drive(one_request: OneRequest, runs: int, concurrency: int, first: int = 0) -> tuple[list[int], int, float]:
    """``runs`` requests, ``concurrency`` of them in flight (closed loop): latencies and wall time (ns),
    CPU time (s)."""
    numbers = itertools.count(first)
    last = first + runs
    latencies: list[int] = []

    async def worker() -> None:
        while (number := next(numbers)) < last:
            started = time.perf_counter_ns()
            finished = await one_request(number)
            latencies.append(finished - started)

    # What is built so far stays out of garbage collection, on both sides alike (``baton run``
    # does the same once started: bot.server.settle_garbage_collector).
    gc.collect()
    gc.freeze()
    cpu = time.process_time()
    started = time.perf_counter_ns()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter_ns() - started, time.process_time() - cpu


def write_config(directory: Path) -> Path:
    path = directory / "baton.yaml"
    path.write_text(yaml.safe_dump(CONFIG, sort_keys=False), encoding="utf-8")
    return path


def graph_input(number: int) -> dict[str, Any]:
    """What Baton's router makes of ``run trivial n=<number>``."""
    return {"runbook": RUNBOOK, "args": {"n": str(number)}}


# -- bare LangGraph ------------------------------------------------------------------------------


class BareContext:
    """The least a ``bot.kit`` graph needs: the config, and effects that simply run."""

    def __init__(self, config: BatonConfig) -> None:
        self.config = config
        self.request = kit.Request(platform="bench", channel=CHANNEL, thread="", user=USER, text="")

    def catalog(self) -> list[dict[str, Any]]:
        return []

    async def channel_activity(self) -> list[dict[str, Any]]:
        return []

    async def run_effect_once(self, key: str, name: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        return await fn()


async def run_bare(directory: Path, mode: str, runs: int, warmup: int, concurrency: int) -> Result:
    config = load_config(write_config(directory))
    spec = GraphRegistry.discover().get("runbook")
    assert spec is not None
    url = f"sqlite:///{directory / 'bare.db'}"
    async with open_checkpointer(url) as checkpointer:
        graph = spec.compile(checkpointer)  # what GraphRuntime.compiled() does
        context = BareContext(config)

        async def one_request(number: int) -> int:
            lg_config = {"configurable": {"thread_id": f"{uuid.uuid4().hex}:runbook"}}
            token = kit.bind(context)
            try:
                async for _chunk in graph.astream(graph_input(number), lg_config, stream_mode="custom",
                                                  durability="sync"):
                    pass
            finally:
                kit.unbind(token)
            reply = (await graph.aget_state(lg_config)).values.get("reply", "")
            finished = time.perf_counter_ns()
            if "finished" not in replies.result(reply, failed=False).plain_text():  # text, or a message dict
                raise RuntimeError(f"bare run {number} did not finish: {reply!r}")
            return finished

        await drive(one_request, warmup, concurrency, first=0)
        latencies, wall, cpu = await drive(one_request, runs, concurrency, first=warmup)
    return Result("bare LangGraph", mode, concurrency, latencies, wall, cpu)


# -- Baton ---------------------------------------------------------------------------------------


class ReplyWatch:
    """Wraps the playground adapter's ``send``: resolves a future when a thread's final reply is stored."""

    def __init__(self, adapter: Any) -> None:
        self._send = adapter.send
        self._waiting: dict[str, asyncio.Future[tuple[int, str]]] = {}
        adapter.send = self.send  # the delivery loop calls self.send: the instance attribute wins

    def expect(self, thread: str) -> asyncio.Future[tuple[int, str]]:
        future = asyncio.get_running_loop().create_future()
        self._waiting[thread] = future
        return future

    async def send(self, delivery: Any) -> str | None:
        platform_id = await self._send(delivery)  # the row is committed when this returns
        if delivery.message.tone in ("success", "error", "warning", "info"):  # not progress/approval cards
            future = self._waiting.pop(delivery.location.thread, None)
            if future is not None and not future.done():
                future.set_result((time.perf_counter_ns(), delivery.message.plain_text()))
        return platform_id


async def run_baton(directory: Path, mode: str, runs: int, warmup: int, concurrency: int) -> Result:
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{directory / 'baton.db'}",  # type: ignore[call-arg]
                        BATON_CONFIG=str(write_config(directory)), BATON_ADAPTERS="playground",
                        BATON_INSTANCE_NAME="bench")
    async with Baton(settings) as baton:
        playground = next(adapter for adapter in baton.adapters if adapter.name == "playground")
        watch = ReplyWatch(playground)

        async def one_request(number: int) -> int:
            thread = f"{mode}-{number}"
            reply = watch.expect(thread)
            accepted = await baton.accept_message(InboundMessage(
                platform="playground", channel=CHANNEL, thread=thread, user=USER, text=f"run {RUNBOOK} n={number}",
                addressed=True, event_id=f"bench-{mode}-{number}"))
            if accepted.status != "accepted":
                raise RuntimeError(f"request {number} was not accepted: {accepted}")
            finished, text = await asyncio.wait_for(reply, REPLY_TIMEOUT)
            if "finished" not in text:
                raise RuntimeError(f"request {number} got an unexpected final reply: {text!r}")
            return finished

        await drive(one_request, warmup, concurrency, first=0)
        latencies, wall, cpu = await drive(one_request, runs, concurrency, first=warmup)
        async with baton.db.session() as session:
            done = (await session.exec(select(func.count()).select_from(Run).where(Run.status == "done"))).one()
            undelivered = (await session.exec(select(func.count()).select_from(OutboxMessage).where(
                OutboxMessage.status.in_(("failed",))))).one()  # type: ignore[attr-defined]
        if done != warmup + runs or undelivered:
            raise RuntimeError(f"Baton finished {done} of {warmup + runs} runs, {undelivered} failed deliveries")
    return Result("Baton", mode, concurrency, latencies, wall, cpu)


# -- the command alone ---------------------------------------------------------------------------


async def run_command_only(mode: str, runs: int, warmup: int, concurrency: int) -> Result:
    """The floor both sides share: spawning ``/bin/true`` through asyncio."""

    async def one_request(_number: int) -> int:
        await run_command(COMMAND, 10)
        return time.perf_counter_ns()

    await drive(one_request, warmup, concurrency)
    latencies, wall, cpu = await drive(one_request, runs, concurrency, first=warmup)
    return Result("command alone", mode, concurrency, latencies, wall, cpu)


Side = Callable[[Path, str, int, int, int], Awaitable[Result]]
SIDES: dict[str, Side] = {"bare": run_bare, "baton": run_baton}


async def measure(side: str, mode: str, runs: int, warmup: int, concurrency: int) -> Result:
    """One side, one mode, in a fresh temporary directory (its own SQLite files)."""
    with tempfile.TemporaryDirectory(prefix=f"baton-bench-{side}-") as directory:
        return await SIDES[side](Path(directory), mode, runs, warmup, concurrency)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
