"""``python -m bench``: Baton's request path against bare LangGraph, side by side. See bench/README.md."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import sqlite3
import sys
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench.request_path import COMMAND, Result, combined, cpu_count, measure, run_command_only
from bot.server import EVENT_LOOP

GOAL = 0.25  # Baton may add at most 25% over bare LangGraph
RESAMPLES = 2000  # bootstrap resamples of the rounds for the overhead's interval
RESULTS = Path(__file__).parent / "results" / "request_path.md"
PACKAGES = ["langgraph", "langgraph-checkpoint", "langgraph-checkpoint-sqlite", "SQLAlchemy", "aiosqlite", "sqlmodel"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=200, help="measured requests per side and mode (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests first (default 20)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="split each side's runs into this many rounds, the sides taking turns (default 4): "
                             "a slow spell of the machine then weighs on both sides alike")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="requests in flight in the concurrent mode; 0 skips it (default 8)")
    parser.add_argument("--breakdown", action=argparse.BooleanOptionalAction, default=True,
                        help="also split Baton's sequential request into its steps (default on; adds ~15 s)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"Markdown report (default {RESULTS})")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write the report")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.concurrency < 0 or not 1 <= args.rounds <= args.runs:
        parser.error("--runs must be >= 1, --warmup and --concurrency >= 0, --rounds between 1 and --runs")
    return args


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def environment(load_before: str) -> list[str]:
    packages = ", ".join(f"{name} {_version(name)}" for name in PACKAGES)
    return [
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {cpu_count()} CPU cores available ({_cpu_model()}), {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()} ({sys.implementation.name}), SQLite {sqlite3.sqlite_version}",
        f"- {packages}",
        (f"- Load average (1 min) before / after the run: {load_before} / {_load()} "
         "(other work on the machine skews the numbers; compare runs made under the same load)"),
    ]


def event_loop() -> str:
    """The loop this benchmark runs on (call it inside that loop)."""
    return (f"- Event loop: {type(asyncio.get_running_loop()).__module__.split('.')[0]}, the one `baton run` serves on "
            f"(`bot.server.EVENT_LOOP` = {EVENT_LOOP!r}; uvloop's fork() per command made both sides 2.4 times slower)")


def table(results: list[Result]) -> list[str]:
    lines = ["| mode | side | runs | runs/s | p50 ms | p99 ms | mean ms | CPU ms/run |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for result in results:
        mode = result.mode if result.concurrency == 1 else f"{result.mode} ({result.concurrency} in flight)"
        lines.append(f"| {mode} | {result.side} | {result.runs} | {result.runs_per_second:.1f} | "
                     f"{result.percentile_ms(50):.2f} | {result.percentile_ms(99):.2f} | {result.mean_ms:.2f} | "
                     f"{result.cpu_ms_per_run:.2f} |")
    return lines


def overhead(bare: Result, baton: Result) -> dict[str, float]:
    """Baton over bare: latency ratios minus one; throughput as extra wall time per run."""
    return {
        "p50": baton.percentile_ms(50) / bare.percentile_ms(50) - 1,
        "p99": baton.percentile_ms(99) / bare.percentile_ms(99) - 1,
        "throughput": bare.runs_per_second / baton.runs_per_second - 1,
    }


def p50_interval(bare_rounds: list[Result], baton_rounds: list[Result], level: float = 0.9) -> tuple[float, float]:
    """A bootstrap interval of the pooled p50 overhead: the rounds (each a bare and a Baton one made
    back to back) resampled with replacement, since the machine's drift from round to round, not
    the spread within one, is what moves the ratio."""
    chance = random.Random(0)  # the same report for the same measurements
    pairs = list(zip(bare_rounds, baton_rounds))
    ratios = sorted(overhead(combined([pair[0] for pair in chosen]), combined([pair[1] for pair in chosen]))["p50"]
                    for chosen in ([chance.choice(pairs) for _ in pairs] for _ in range(RESAMPLES)))
    tail = (1 - level) / 2
    return ratios[int(tail * RESAMPLES)], ratios[int((1 - tail) * RESAMPLES) - 1]


def overhead_table(pairs: list[tuple[Result, Result]], intervals: list[tuple[float, float]]) -> list[str]:
    lines = ["| mode | p50 overhead | 90% interval (rounds resampled) | p99 overhead | throughput overhead | goal (<= 25%) |",
             "|---|---:|---:|---:|---:|---|"]
    for (bare, baton), (low, high) in zip(pairs, intervals):
        ratio = overhead(bare, baton)
        met = ratio["p50"] <= GOAL and ratio["throughput"] <= GOAL
        verdict = "met" if met else "**not met**"
        if low <= GOAL < high:
            verdict += " (the interval spans the goal: not settled by this run)"
        mode = bare.mode if bare.concurrency == 1 else f"{bare.mode} ({bare.concurrency} in flight)"
        lines.append(f"| {mode} | {ratio['p50']:+.0%} | {low:+.0%} .. {high:+.0%} | {ratio['p99']:+.0%} | "
                     f"{ratio['throughput']:+.0%} | {verdict} |")
    return lines


async def run(args: argparse.Namespace) -> str:
    load_before = _load()
    modes = [("sequential", 1)] + ([("concurrent", args.concurrency)] if args.concurrency > 1 else [])
    results: list[Result] = []
    pairs: list[tuple[Result, Result]] = []
    intervals: list[tuple[float, float]] = []
    spreads: list[str] = []
    for mode, concurrency in modes:
        rounds: dict[str, list[Result]] = {"bare": [], "baton": []}
        for number in range(args.rounds):
            runs = args.runs // args.rounds + (1 if number < args.runs % args.rounds else 0)
            for side in ("bare", "baton") if number % 2 == 0 else ("baton", "bare"):  # each goes first in turn
                print(f"{mode}, round {number + 1} of {args.rounds}: {side} ({args.warmup} warm-up + {runs} runs, "
                      f"{concurrency} in flight)...", file=sys.stderr, flush=True)
                gc.collect()
                rounds[side].append(await measure(side, mode, runs, args.warmup, concurrency))
        bare, baton = combined(rounds["bare"]), combined(rounds["baton"])
        results += [bare, baton]
        pairs.append((bare, baton))
        intervals.append(p50_interval(rounds["bare"], rounds["baton"]))
        per_round = ", ".join(f"{overhead(b, t)['p50']:+.0%}" for b, t in zip(rounds["bare"], rounds["baton"]))
        spreads.append(f"- {mode}: {per_round}")
    floor = await run_command_only("sequential", args.runs, args.warmup, 1)

    report = [
        "# Request path: Baton vs bare LangGraph",
        "",
        (f"`python -m bench --runs {args.runs} --rounds {args.rounds} --warmup {args.warmup} "
         f"--concurrency {args.concurrency}{'' if args.breakdown else ' --no-breakdown'}`: "
         f"the `runbook` graph for a low-risk runbook running `{' '.join(COMMAND)}`, SQLite files in a temporary "
         f"directory (one per side, mode and round, same settings). The runs of each side are made in {args.rounds} "
         "rounds, the sides taking turns (and turns at going first), and pooled: a slow spell of the machine weighs "
         "on both. Warm-up runs are made in each round and not counted. "
         "Latency: Baton from `accept_message` to the final reply "
         "stored by the playground adapter's `send`; bare from `astream` to the reply read with `aget_state`. "
         "Overhead: Baton / bare - 1 (throughput: bare runs/s / Baton runs/s - 1, i.e. extra wall time per run)."),
        "",
        *environment(load_before),
        event_loop(),
        "",
        *table(results),
        "",
        (f"For reference, spawning `{' '.join(COMMAND)}` alone (asyncio subprocess): "
         f"p50 {floor.percentile_ms(50):.2f} ms, p99 {floor.percentile_ms(99):.2f} ms."),
        "",
        *overhead_table(pairs, intervals),
        "",
        "p50 overhead of each round on its own (how much the machine moved during the run):",
        "",
        *spreads,
    ]
    if args.breakdown:
        from bench.breakdown import breakdown

        print("breakdown: bare and Baton, one request at a time...", file=sys.stderr, flush=True)
        report += ["", "## Where Baton's time goes (sequential)", "",
                   await breakdown(max(50, args.runs // 2), args.warmup), "",
                   f"Load average (1 min) after the breakdown: {_load()}"]
    return "\n".join(report) + "\n"


def publish(report: str, output: Path | None) -> None:
    """Print the report and, unless ``output`` is None, replace that file with it in one step."""
    print(report)
    if output is None:
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".tmp")
    partial.write_text(report, encoding="utf-8")
    partial.replace(output)
    print(f"written to {output}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    publish(asyncio.run(run(args)), None if args.no_write else args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
