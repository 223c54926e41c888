"""``python -m bench.digest_build``: building a channel digest over 1,000,000 runs, against a plain count.

The channel has ``--rows`` runs (default 1,000,000) spread over 100 days; the digest covers the
last day and, in a second measurement, the last week. Both sides read the same SQLite file; the
baseline is ``SELECT count(*)`` over the window's rows (what any digest must at least touch).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func
from sqlmodel import select

from bot.digest_stats import collect
from storage.db import Database
from storage.migrate import upgrade
from storage.models import Run

RESULTS = Path(__file__).parent / "results" / "digest_build.md"
END = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
DAYS = 100
GRAPHS = ["runbook", "deploy", "announce", "help"]


def populate(path: Path, rows: int) -> None:
    """Synthetic runs: most done, some failed (one in 25 of those cancelled) or waiting, two channels."""
    connection = sqlite3.connect(path)
    # Marked as Baton marks them since migration 0014 (runs.cancelled); before it, told by their error alone.
    marks = any(column[1] == "cancelled" for column in connection.execute("PRAGMA table_info(runs)"))
    rng = random.Random(7)
    connection.execute("INSERT INTO thread_records (id, platform, workspace, channel, thread, lg_thread_id, status, "
                       "created_at, updated_at) VALUES (1, 'playground', '', 'ops', '1', 'lg1', 'done', ?, ?)",
                       (END.isoformat(" "), END.isoformat(" ")))
    batch = []
    start = END - timedelta(days=DAYS)
    for n in range(rows):
        started = start + timedelta(seconds=rng.uniform(0, DAYS * 86400))
        status = rng.choices(["done", "failed", "running", "waiting"], [90, 6, 2, 2])[0]
        turnaround = int(rng.lognormvariate(8, 1.2)) if status in ("done", "failed") else None
        finished = (started + timedelta(milliseconds=turnaround)).isoformat(" ") if turnaround is not None else None
        cancelled = status == "failed" and n % 25 == 0
        error = ("cancelled by bob" if cancelled else "exit code 1") if status == "failed" else None
        batch.append((1, "playground", "ops" if n % 10 else "general", rng.choice(GRAPHS), status, "alice", "",
                      f"c{n}", started.replace(tzinfo=None).isoformat(" "),
                      finished[:26] if finished else None, rng.choice([0.0, 0.0, 12.5]), turnaround, error,
                      *((cancelled,) if marks else ())))
        if len(batch) == 50_000:
            _insert(connection, batch, marks)
            batch.clear()
    _insert(connection, batch, marks)
    connection.commit()
    connection.execute("ANALYZE")
    connection.close()


def _insert(connection: sqlite3.Connection, batch: list[tuple[object, ...]], marks: bool) -> None:
    connection.executemany(
        "INSERT INTO runs (thread_record_id, platform, channel, graph, status, requested_by, input_text, correlation_id,"
        " started_at, finished_at, waited_seconds, turnaround_ms, error" + (", cancelled" if marks else "") + ") "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?" + (",?" if marks else "") + ")", batch)


async def measure(url: str, window: timedelta, repeats: int) -> dict[str, float]:
    database = Database(url)
    start = END - window
    digest_ms, count_ms = [], []
    try:
        for _ in range(repeats):
            began = time.perf_counter()
            async with database.scan() as session:
                stats = await collect(session, "playground", "ops", start, END, [], END)
            digest_ms.append((time.perf_counter() - began) * 1000)
            began = time.perf_counter()
            async with database.scan() as session:
                rows = (await session.exec(select(func.count()).where(
                    Run.platform == "playground", Run.channel == "ops", Run.started_at >= start,
                    Run.started_at < END))).one()
            count_ms.append((time.perf_counter() - began) * 1000)
    finally:
        await database.dispose()
    assert rows == stats["requests"], (rows, stats["requests"])
    assert stats["cancelled_count"] and stats["failure_count"], stats  # both kinds of failed runs are in the window
    return {"rows": rows, "digest_p50": statistics.median(digest_ms), "digest_max": max(digest_ms),
            "count_p50": statistics.median(count_ms), "count_max": max(count_ms)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.digest_build", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "digest.db"
        url = f"sqlite:///{path}"
        upgrade(url)
        began = time.perf_counter()
        populate(path, args.rows)
        print(f"populated {args.rows:,} runs in {time.perf_counter() - began:.1f}s")
        results = {name: asyncio.run(measure(url, window, args.repeats))
                   for name, window in (("last day", timedelta(days=1)), ("last week", timedelta(days=7)))}
    lines = [
        "# Building a digest over 1,000,000 runs (SQLite)",
        "",
        f"`python -m bench.digest_build --rows {args.rows} --repeats {args.repeats}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. "
        f"{args.rows:,} runs over {DAYS} days (90% in the digest's channel; 6% failed, 1 in 25 of them cancelled). Baseline: `SELECT count(*)` over the "
        "window's rows in the same run. The digest: per-graph counts, exact p50/p95 turnaround, waiting time, "
        "failures, approvals, requests per day.",
        "",
        "| window | runs in window | digest p50 ms | digest max ms | count(*) p50 ms | ratio (p50) | goal < 200 ms |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, result in results.items():
        ratio = result["digest_p50"] / result["count_p50"] if result["count_p50"] else float("nan")
        verdict = "met" if result["digest_p50"] < 200 else "**not met**"
        lines.append(f"| {name} | {result['rows']:,} | {result['digest_p50']:.1f} | {result['digest_max']:.1f} | "
                     f"{result['count_p50']:.1f} | {ratio:.1f}x | {verdict} |")
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(report)


if __name__ == "__main__":
    main()
