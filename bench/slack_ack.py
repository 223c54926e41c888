"""``python -m bench.slack_ack``: how fast Slack gets its acknowledgement, under a steady stream of mentions.

A steady open-loop stream (``--rate`` signed ``app_mention`` events per second for ``--duration``
seconds; default 100/s for 30 s) goes to ``POST /slack/events`` of two servers in turn, each
talking to its own fake Slack Web API (``tests/fake_slack.py``, in a process of its own):

* **Baton**: ``baton run`` with the Slack adapter and SQLite. The Bolt listener only stores the
  event (``Baton.accept_message``); the run happens after the ack.
* **naive Bolt**: an ``AsyncApp(process_before_response=True)`` whose listener runs the same
  ``runbook`` graph with a SQLite checkpointer (bare LangGraph) and posts the reply before it
  returns: the ack waits for the whole run.

The sender and the fake Web API run at a higher CPU priority than the server under test
(``give_slack_priority``): on this shared 2-core machine they stand for Slack's servers, which do not
wait for Baton's cores. The sender behaves like Slack: an acknowledgement not received within 3 seconds (or a non-2xx)
counts as failed and the event is sent again with ``X-Slack-Retry-Num`` (up to 3 retries; Slack
waits about a minute before its second retry, the bench retries at once). Each event is
``run trivial n=<i>`` (a low-risk runbook running ``/bin/true``) in one of ``--channels``
channels, round robin: Baton paces replies at one per second per channel, as Slack asks.

Reported per side: acknowledgement latency of the first delivery (p50, p99, max, measured by
the sender from request to response), events acknowledged, retries sent, and from the database
(Baton) or the server's own count (naive) how many events ran exactly once, twice or more
(duplicates) or never (lost); from the fake Slack, events answered by exactly one reply, and
the time from an event to its reply.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from fastapi import FastAPI, Request

from bench.__main__ import _load, _version, environment, publish
from bench.request_path import RUNBOOK, BareContext, write_config
from tests.fake_slack import (
    BOT_TOKEN,
    BOT_USER_ID,
    SIGNING_SECRET,
    FakeSlack,
    SlackSender,
)
from tests.support import BatonProcess, free_port, wait_for

RESULTS = Path(__file__).parent / "results" / "slack_ack.md"
ACK_DEADLINE = 3.0  # Slack gives up on an acknowledgement after 3 seconds and retries
MAX_RETRIES = 3
SLACK_PACKAGES = ["slack_bolt", "slack_sdk", "aiohttp", "uvicorn", "httpx"]


# -- Slack's side: the stream of events ------------------------------------------------------------


@dataclass
class Event:
    number: int
    channel: str
    ts: str
    sent_at: float = 0.0  # wall clock of the first delivery
    lag: float = 0.0  # how late the sender started it (the sender's own health)
    attempts: list[tuple[int | None, float]] = field(default_factory=list)  # (status or None on timeout, seconds)

    @property
    def key(self) -> str:
        return f"{self.channel}:{self.ts}"

    @property
    def acked(self) -> bool:
        return any(status is not None and 200 <= status < 300 for status, _ in self.attempts)

    @property
    def first_ack_seconds(self) -> float:
        return self.attempts[0][1]


async def stream(url: str, rate: float, duration: float, channels: int) -> list[Event]:
    sender = SlackSender(url)
    total = int(rate * duration)
    base = int(time.time())
    events = [Event(n, f"CBENCH{n % channels:04d}", f"{base}.{n:06d}") for n in range(total)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def deliver(event: Event) -> None:
            body = sender.event_body({
                "type": "app_mention", "user": "U0BENCH001", "text": f"<@{BOT_USER_ID}> run {RUNBOOK} n={event.number}",
                "ts": event.ts, "event_ts": event.ts, "channel": event.channel}, event_id=f"EvB{event.number:08d}")
            event.sent_at = time.time()
            for retry in (None, *range(1, MAX_RETRIES + 1)):
                headers = sender.signed_headers(body, "application/json", retry_num=retry)
                started = time.perf_counter()
                status: int | None = None
                try:
                    async with asyncio.timeout(ACK_DEADLINE), http.post(sender.url, data=body, headers=headers) as answer:
                        status = answer.status
                        await answer.read()
                except (TimeoutError, aiohttp.ClientError):
                    status = None  # Slack counts a late or failed acknowledgement as no acknowledgement
                event.attempts.append((status, time.perf_counter() - started))
                if status is not None and 200 <= status < 300:
                    return

        tasks = []
        start = time.perf_counter() + 0.2
        for event in events:
            due = start + event.number / rate
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            event.lag = max(0.0, time.perf_counter() - due)
            tasks.append(asyncio.create_task(deliver(event)))
        await asyncio.gather(*tasks)
    return events



# -- a fake Slack in a process of its own ----------------------------------------------------------


def _fake_slack_worker(connection: Any) -> None:
    """Runs ``FakeSlack``; answers "report" with the calls it got, stops on "stop"."""
    fake = FakeSlack().start()
    connection.send(fake.api_url)
    while (command := connection.recv()) != "stop":
        assert command == "report"
        connection.send([(c.method, c.status, c.args.get("channel"), c.args.get("thread_ts"), c.at)
                         for c in fake.calls()])
    fake.stop()


class FakeSlackProcess:
    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._ours, theirs = context.Pipe()
        self._process = context.Process(target=_fake_slack_worker, args=(theirs,), daemon=True)
        self._process.start()
        self.api_url: str = self._ours.recv()

    def replies(self) -> list[tuple[str, str, float]]:
        """(channel, thread_ts, wall time) of every successful chat.postMessage."""
        self._ours.send("report")
        return [(channel, thread, at) for method, status, channel, thread, at in self._ours.recv()
                if method == "chat.postMessage" and status == 200]

    def stop(self) -> None:
        self._ours.send("stop")
        self._process.join(10)


# -- the naive Bolt app: the run inside the listener -------------------------------------------------


def serve_naive(port: int, api_url: str, workdir: Path) -> None:
    """``python -m bench.slack_ack --serve-naive PORT API_URL DIR`` (started by the bench)."""
    import uvicorn
    from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
    from slack_bolt.async_app import AsyncApp

    from bot import kit
    from bot.config import load_config
    from bot.registry import GraphRegistry
    from storage.checkpointer import open_checkpointer

    context = BareContext(load_config(write_config(workdir)))
    spec = GraphRegistry.discover().get("runbook")
    assert spec is not None
    runs: Counter[str] = Counter()
    in_flight = 0
    compiled: dict[str, Any] = {}
    bolt = AsyncApp(name="naive", token=BOT_TOKEN, signing_secret=SIGNING_SECRET, process_before_response=True)
    bolt.client.base_url = api_url

    @bolt.event("app_mention")
    async def mention(event: dict[str, Any]) -> None:
        nonlocal in_flight
        in_flight += 1
        try:
            number = re.search(r"n=(\d+)", event["text"]).group(1)  # type: ignore[union-attr]
            config = {"configurable": {"thread_id": uuid.uuid4().hex}}
            token = kit.bind(context)
            try:
                async for _ in compiled["graph"].astream({"runbook": RUNBOOK, "args": {"n": number}}, config,
                                                         stream_mode="custom", durability="sync"):
                    pass
            finally:
                kit.unbind(token)
            reply = (await compiled["graph"].aget_state(config)).values.get("reply", "")
            await bolt.client.chat_postMessage(channel=event["channel"], thread_ts=event["ts"], text=reply)
            runs[f"{event['channel']}:{event['ts']}"] += 1  # a run: the graph finished and its reply is out
        finally:
            in_flight -= 1

    async def lifespan(_app: FastAPI) -> Any:
        async with open_checkpointer(f"sqlite:///{workdir / 'naive.db'}") as checkpointer:
            compiled["graph"] = spec.compile(checkpointer)
            bolt.client.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
            yield
            await bolt.client.session.close()

    app = FastAPI(lifespan=lifespan)
    handler = AsyncSlackRequestHandler(bolt)

    @app.post("/slack/events")
    async def slack_events(request: Request) -> Any:
        return await handler.handle(request)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/runs")
    async def counted() -> dict[str, Any]:
        return {"runs": dict(runs), "in_flight": in_flight}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# -- one side: start, stream, wait for the work to finish, count -----------------------------------


@dataclass
class Side:
    name: str
    events: list[Event]
    runs: dict[str, int]  # event key -> finished runs
    replies: list[tuple[str, str, float]]
    drained_seconds: float | None  # from the end of the stream until every run and reply was done
    unfinished: str = ""  # what was still going on when the bench stopped waiting

    @property
    def lag_ms(self) -> float:
        return max(event.lag for event in self.events) * 1000

    def row(self) -> str:
        first = sorted(event.first_ack_seconds * 1000 for event in self.events)
        timeouts = sum(1 for event in self.events if event.attempts[0][0] is None)
        acked = sum(1 for event in self.events if event.acked)
        retries = sum(len(event.attempts) - 1 for event in self.events)
        counts = Counter(self.runs.get(event.key, 0) for event in self.events)
        per_thread = Counter((channel, thread) for channel, thread, _ in self.replies)
        answered = sum(1 for event in self.events if per_thread.get((event.channel, event.ts)) == 1)
        doubled = sum(1 for event in self.events if per_thread.get((event.channel, event.ts), 0) > 1)
        sent = {event.key: event.sent_at for event in self.events}
        to_reply = sorted(at - sent[f"{channel}:{thread}"] for channel, thread, at in self.replies
                          if f"{channel}:{thread}" in sent)
        max_ack = f"{first[-1]:.1f}" if not timeouts else f">= {ACK_DEADLINE * 1000:.0f} ({timeouts} timed out)"
        reply_times = (f"{percentile(to_reply, 50):.2f} / {percentile(to_reply, 99):.2f}" if to_reply else "n/a")
        return (f"| {self.name} | {len(self.events)} | {acked} | {retries} | {percentile(first, 50):.1f} | "
                f"{percentile(first, 99):.1f} | {max_ack} | {counts[1]} | "
                f"{sum(n for runs, n in counts.items() if runs > 1)} | {counts[0]} | {answered} | {doubled} | "
                f"{reply_times} | {self._drained()} |")

    def _drained(self) -> str:
        if self.drained_seconds is not None:
            return f"{self.drained_seconds:.1f}"
        return f"not done: {self.unfinished}"


SLACK_SIDE_NICENESS = -10  # the sender and the fake Slack stand for Slack's own servers


def give_slack_priority() -> bool:
    """Run this process (the sender) and what it starts at a higher CPU priority, if allowed.

    Slack's servers do not share Baton's two cores; here the sender and the fake Web API do, and
    a sender that waits for a core adds its own delay to every ack it times. The servers under
    test are put back to normal priority (``normal_priority``) right after they start.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, 0, SLACK_SIDE_NICENESS)
    except PermissionError:
        return False
    return True


def normal_priority(pid: int) -> None:
    """Every thread of ``pid`` back to niceness 0 (niceness is per thread on Linux)."""
    tasks = Path(f"/proc/{pid}/task")
    for tid in ([int(t.name) for t in tasks.iterdir()] if tasks.exists() else [pid]):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, 0)
        except (PermissionError, ProcessLookupError):
            pass


def percentile(values: list[float], p: float) -> float:
    """Nearest rank (p in 0..100) of sorted ``values``."""
    return values[max(1, min(len(values), math.ceil(p * len(values) / 100))) - 1]


def measure_baton(args: argparse.Namespace, workdir: Path) -> Side:
    fake = FakeSlackProcess()
    database = workdir / "baton.db"
    env = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET, "SLACK_API_URL": fake.api_url,
           "BATON_ADAPTERS": "slack", "BATON_LOG_LEVEL": "WARNING"}
    baton = BatonProcess(f"sqlite:///{database}", write_config(workdir), workdir, "baton-bench", env, exec_=True).start()
    assert baton.process is not None
    normal_priority(baton.process.pid)
    try:
        events = asyncio.run(stream(baton.url, args.rate, args.duration, args.channels))

        def unfinished() -> str:
            with sqlite3.connect(database) as db:
                pending = db.execute("SELECT count(*) FROM inbound_events WHERE status = 'pending'").fetchone()[0]
                unsent = db.execute("SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending')").fetchone()[0]
            return f"{pending} events pending, {unsent} replies unsent" if pending or unsent else ""

        drained = wait_drained(lambda: not unfinished(), args.drain_timeout)
        with sqlite3.connect(database) as db:
            runs = dict(db.execute("SELECT e.event_id, count(r.id) FROM inbound_events e "
                                   "JOIN runs r ON r.inbound_id = e.id GROUP BY e.id").fetchall())
        return Side("Baton (store, ack, run after)", events, runs, fake.replies(), drained, unfinished())
    finally:
        baton.stop()
        fake.stop()


def measure_naive(args: argparse.Namespace, workdir: Path) -> Side:
    fake = FakeSlackProcess()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(workdir / "naive.log", "ab") as log:
        server = subprocess.Popen([sys.executable, "-m", "bench.slack_ack", "--serve-naive", str(port), fake.api_url,
                                   str(workdir)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _answers(f"{url}/healthz"), 30, "the naive Bolt server to start")
        normal_priority(server.pid)
        events = asyncio.run(stream(url, args.rate, args.duration, args.channels))
        drained = wait_drained(lambda: httpx.get(f"{url}/runs", timeout=10).json()["in_flight"] == 0,
                               args.drain_timeout)
        state = httpx.get(f"{url}/runs", timeout=10).json()
        return Side("naive Bolt (run, reply, then ack)", events, state["runs"], fake.replies(), drained,
                    f"{state['in_flight']} listener runs still going")
    finally:
        server.terminate()  # uvicorn waits for the listeners still running: do not wait for them
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(15)
        fake.stop()


def wait_drained(done: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until ``done()``, or ``None`` when it is not done within ``timeout``."""
    started = time.monotonic()
    try:
        wait_for(done, timeout, "the backlog to drain")
    except AssertionError:
        return None
    return time.monotonic() - started


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# -- the report ------------------------------------------------------------------------------------


def report(args: argparse.Namespace, sides: list[Side], load_before: str) -> str:
    packages = ", ".join(f"{name} {_version(name.replace('_', '-'))}" for name in SLACK_PACKAGES)
    return "\n".join([
        "# Slack: acknowledgement latency under a steady stream of mentions",
        "",
        (f"`python -m bench.slack_ack --rate {args.rate:g} --duration {args.duration:g} --channels {args.channels}`: "
         f"{int(args.rate * args.duration):,} signed `app_mention` events (`run {RUNBOOK} n=<i>`, a low-risk runbook "
         f"running `/bin/true`), open loop at {args.rate:g}/s, to `POST /slack/events`; SQLite; replies to a fake "
         "Slack Web API in its own process. Like Slack, the sender gives up on an ack after 3 s and retries with "
         "`X-Slack-Retry-Num` (at once here; Slack waits ~1 min before its second retry). See the docstring of "
         "`bench/slack_ack.py`."),
        "",
        *environment(load_before),
        f"- {packages}",
        *(f"- {side.name}: the sender started each event at most {side.lag_ms:.1f} ms late (its own health)."
          for side in sides),
        ("- Slack's side (the sender and the fake Web API) ran at niceness "
         f"{SLACK_SIDE_NICENESS}, the server under test at 0: Slack's servers do not share Baton's cores."
         if getattr(args, "slack_priority", False) else
         "- Slack's side ran at the same CPU priority as the server under test (raising it was not permitted): "
         "its own waits for a core count in the ack times."),
        "",
        ("| side | events | acked | retries sent | ack p50 ms | ack p99 ms | ack max ms | ran once | ran 2+ times "
         "| never ran | one reply | 2+ replies | event -> reply p50 / p99 s | drain after stream s |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[side.row() for side in sides],
        "",
        ("Ack latency is the first delivery's, request to response, at the sender (a timed-out attempt counts "
         "as 3,000 ms). \"ran once / 2+ times / never\": Baton's `runs` rows per stored event; the naive server's "
         "own count of finished listener runs (graph done, reply posted). \"one reply\": events whose thread got "
         "exactly one `chat.postMessage` at the fake Slack. \"drain\": from the end of the stream until every run "
         f"finished and every reply was sent; a side not done after {args.drain_timeout:g} s (`--drain-timeout`) is "
         "counted as it was then."),
    ]) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.slack_ack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="events per second (default 100)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of stream per side (default 30)")
    parser.add_argument("--channels", type=int, default=250,
                        help="channels the events are spread over, round robin (default 250)")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="seconds to wait for the runs after the stream; then the counts are taken as they "
                             "are (default 300)")
    parser.add_argument("--skip-naive", action="store_true", help="measure Baton only")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"Markdown report (default {RESULTS})")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write the report")
    parser.add_argument("--serve-naive", nargs=3, metavar=("PORT", "API_URL", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.channels < 1:
        parser.error("--rate and --duration must be > 0, --channels >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_naive:
        port, api_url, directory = args.serve_naive
        serve_naive(int(port), api_url, Path(directory))
        return 0
    # Stopped with SIGTERM (kill, a CI timeout), the servers it started are stopped too: the
    # ``finally`` blocks run only for an exception, and a naive server left behind with thousands of
    # listener runs still going keeps a core busy for minutes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    load_before = _load()
    args.slack_priority = give_slack_priority()
    sides = []
    with tempfile.TemporaryDirectory(prefix="baton-bench-slack-") as directory:
        for name, measure in (("baton", measure_baton), ("naive", measure_naive)):
            if name == "naive" and args.skip_naive:
                continue
            workdir = Path(directory) / name
            workdir.mkdir()
            print(f"{name}: {args.rate:g} events/s for {args.duration:g} s...", file=sys.stderr, flush=True)
            sides.append(measure(args, workdir))
    publish(report(args, sides, load_before), None if args.no_write else args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
