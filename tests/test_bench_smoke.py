"""The benchmarks still run end to end and report, at tiny sizes (no timing is asserted: the numbers
belong to ``make bench``). Nothing else runs them, and a report that crashes after a ten-minute
run is found late."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import ROOT


def _bench(module: str, *args: str, timeout: float = 300) -> None:
    finished = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, timeout=timeout)
    assert finished.returncode == 0, finished.stderr.decode()[-3000:]


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


def test_the_slack_benchmark_acks_runs_and_answers_every_event_once(tmp_path: Path) -> None:
    output = tmp_path / "slack_ack.md"
    _bench("bench.slack_ack", "--rate", "20", "--duration", "1", "--channels", "4", "--skip-naive",
           "--output", str(output))
    cells = _row(output.read_text(encoding="utf-8"), "Baton (store, ack, run after)")
    events, acked, _retries, _p50, _p99, _max, once, twice, never, one_reply, two_replies = cells[:11]
    assert (events, acked, once, twice, never, one_reply, two_replies) == ("20", "20", "20", "0", "0", "20", "0")
