"""The benchmarks still run end to end and report, at tiny sizes (no timing is asserted: the numbers
belong to ``make bench``). Nothing else runs them, and a report that crashes after a ten-minute
run is found late."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT


def _bench(module: str, *args: str, timeout: float = 300) -> None:
    finished = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, timeout=timeout)
    assert finished.returncode == 0, finished.stderr.decode()[-3000:]
    assert "baton.yaml: line" not in finished.stderr.decode(), finished.stderr.decode()[-3000:]  # its config is sound


def _row(report: str, first_cell: str) -> list[str]:
    """The cells of the report's table row that starts with ``first_cell`` (the rest of the row)."""
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == first_cell:
            return cells[1:]
    raise AssertionError(f"no row '{first_cell}' in:\n{report}")


def test_the_request_path_benchmark_runs_both_sides_on_the_loop_baton_serves_on(tmp_path: Path) -> None:
    output = tmp_path / "request_path.md"
    _bench("bench", "--runs", "4", "--rounds", "2", "--warmup", "1", "--concurrency", "2", "--output", str(output))
    report = output.read_text(encoding="utf-8")
    for mode in ("sequential", "concurrent (2 in flight)"):
        for side in ("bare LangGraph", "Baton"):
            assert any(line.startswith(f"| {mode} | {side} | 4 |") for line in report.splitlines()), report
    assert "- Event loop: asyncio, the one `baton run` serves on" in report
    assert "**total: accept -> final reply delivered**" in report  # the breakdown's live table
    overhead = next(line for line in report.splitlines() if line.startswith("| sequential | ") and " .. " in line)
    low, high = overhead.split("|")[3].strip().split(" .. ")  # the p50 overhead's interval over the rounds
    assert float(low.rstrip("%")) <= float(high.rstrip("%"))


def test_the_overhead_interval_resamples_whole_rounds() -> None:
    """Rounds that disagree widen the interval; rounds that agree give the ratio itself."""
    from bench.__main__ import p50_interval
    from bench.request_path import Result

    def rounds(side: str, *medians_ms: float) -> list[Result]:
        return [Result(side, "sequential", 1, [int(median * 1e6)] * 5, 1) for median in medians_ms]

    assert p50_interval(rounds("bare", 10, 10, 10, 10), rounds("Baton", 12, 12, 12, 12)) == \
        (pytest.approx(0.2), pytest.approx(0.2))
    low, high = p50_interval(rounds("bare", 10, 10, 10, 10), rounds("Baton", 11, 11, 14, 14))
    assert low == pytest.approx(0.1) and high == pytest.approx(0.4)


def test_the_slack_benchmark_acks_runs_and_answers_every_event_once(tmp_path: Path) -> None:
    output = tmp_path / "slack_ack.md"
    # 10 channels, two events each: Baton paces replies at one a second per channel, as Slack asks (4 channels,
    # five events each, had the bench wait ~4 s of pace for its replies)
    _bench("bench.slack_ack", "--rate", "20", "--duration", "1", "--channels", "10", "--skip-naive",
           "--output", str(output))
    cells = _row(output.read_text(encoding="utf-8"), "Baton (store, ack, run after)")
    events, acked, _retries, _p50, _p99, _max, once, twice, never, one_reply, two_replies = cells[:11]
    assert (events, acked, once, twice, never, one_reply, two_replies) == ("20", "20", "20", "0", "0", "20", "0")
