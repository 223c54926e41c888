"""Killed (SIGKILL) at points of the one request path found by a sweep of kill points, then taken over by a new
``baton run`` on the same database: what the new process finds must be whole (the kill point is chosen by a
condition, never a time)."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from tests.support import ROOT, BatonProcess, wait_for
from tests.test_cancel import rows

# A side effect, then a step that waits for the test (as a check of what the effect did would take its time).
AFTER_EFFECT = '''
"""Deploys once, then checks on the deploy."""
import os, time
from pathlib import Path
from typing import TypedDict
from langgraph.graph import END, START, StateGraph
from bot.kit import effect

HERE = Path(os.environ["CRASH_HUNT_DIR"])


class State(TypedDict, total=False):
    text: str
    reply: str


async def deploy(state: State) -> State:
    def act() -> str:
        with open(HERE / "deployed", "a") as out:
            out.write("deployed\\n")
        return "deployed v2"
    return {"reply": await effect("deploy", act)}


def check(state: State) -> State:
    (HERE / "checking").touch()
    while not (HERE / "checked").exists():
        time.sleep(0.01)
    return {"reply": state["reply"] + ", checked"}


graph = StateGraph(State)
graph.add_node("deploy", deploy)
graph.add_node("check", check)
graph.add_edge(START, "deploy")
graph.add_edge("deploy", "check")
graph.add_edge("check", END)
'''


@pytest.fixture
def crash_baton(tmp_path: Path, config_path: Path):  # type: ignore[no-untyped-def]
    """``baton run`` in a directory whose ``graphs`` holds Baton's and ours, with a short lease (a takeover soon)."""
    shutil.copytree(ROOT / "graphs", tmp_path / "graphs", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "graphs" / "aftereffect.py").write_text(AFTER_EFFECT)
    started: list[BatonProcess] = []

    def start(database_url: str, name: str) -> BatonProcess:
        process = BatonProcess(database_url, config_path, tmp_path, name,
                               {"CRASH_HUNT_DIR": str(tmp_path), "BATON_LEASE_SECONDS": "2"})
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


def test_killed_after_an_effect_ended_and_its_step_was_checkpointed_the_ledger_has_its_outcome(
        crash_baton, database_url, tmp_path) -> None:
    """The effect's outcome rode on the run's next write of Baton's, and its step's checkpoint came first: killed
    between them, the run was taken up from that checkpoint (the step never ran again) and ended "Done" with the
    effect's result, while the ledger said "started" for good and the audit log had no outcome for it."""
    first = crash_baton(database_url, "killed")
    thread = first.client().ask("@baton aftereffect")
    wait_for(lambda: (tmp_path / "checking").exists(), what="the step after the effect to begin")
    first.stop(signal.SIGKILL)
    (tmp_path / "checked").touch()

    second = crash_baton(database_url, "taker")
    reply = second.client().wait_reply(thread, "deployed v2, checked", timeout=30)
    assert reply["content"]["tone"] == "success"
    assert (tmp_path / "deployed").read_text() == "deployed\n"  # once
    [(name, status, result)] = rows(database_url, "SELECT name, status, result FROM effects")
    assert (name, status, "deployed v2" in str(result)) == ("deploy", "done", True), (name, status, result)
    audited = [kind for (kind,) in rows(database_url, "SELECT kind FROM audit_log ORDER BY id")]
    assert [kind for kind in audited if kind.startswith("effect.")] == ["effect.started", "effect.done"], audited
