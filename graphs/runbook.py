"""Runs a runbook from ``baton.yaml``: plan, approval when its risk is high, then the command once."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

from bot.kit import Request, approve, current, effect, progress

DESCRIPTION = "Run a runbook from baton.yaml."
EXAMPLE = "run <runbook> key=value"
MAX_OUTPUT_BYTES = 256 * 1024


class RunbookState(TypedDict, total=False):
    runbook: str
    args: dict[str, str]
    approved: bool
    decided_by: str
    reply: str | dict[str, Any]  # text, or a message dict (a rejection is not a success)
    error: str


def make_input(_request: Request, _args: str) -> dict[str, Any]:
    raise ValueError("the runbook graph is started with `run <runbook> key=value`")


def plan(state: RunbookState) -> RunbookState:
    runbook = current().config.runbooks[state["runbook"]]
    if runbook.risk == "high":
        progress(f"Plan: run `{_shown(runbook.argv(state['args']))}` (timeout {runbook.timeout:g}s). This needs approval.")
    return {"approved": runbook.risk == "low", "decided_by": "", "reply": "", "error": ""}


def ask(state: RunbookState) -> RunbookState:
    config = current().config
    runbook = config.runbooks[state["runbook"]]
    decision = approve(
        f"Run `{state['runbook']}`: {runbook.description}",
        details={"command": _shown(runbook.argv(state["args"])), "timeout": f"{runbook.timeout:g}s"},
        risk="high",
        approvers=config.approvers_for_runbook(state["runbook"]),
    )
    return {"approved": decision.approved, "decided_by": decision.by}


async def execute(state: RunbookState) -> RunbookState:
    if not state.get("approved"):
        return {"reply": {"tone": "info", "parts": [
            {"kind": "text", "text": f"Rejected by {state.get('decided_by') or 'an approver'}: nothing was run."}]}}
    runbook = current().config.runbooks[state["runbook"]]
    argv = runbook.argv(state["args"])
    result = await effect("command", lambda: run_command(argv, runbook.timeout))
    shown = _shown(argv)
    if result["timed_out"]:
        return {"reply": f"`{shown}` timed out after {runbook.timeout:g}s and was stopped.\n```\n{result['output']}\n```",
                "error": f"timed out after {runbook.timeout:g}s"}
    if result["exit_code"] != 0:
        return {"reply": f"`{shown}` failed with exit code {result['exit_code']}.\n```\n{result['output']}\n```",
                "error": f"exit code {result['exit_code']}"}
    return {"reply": f"`{shown}` finished.\n```\n{result['output'] or '(no output)'}\n```"}


def route_after_plan(state: RunbookState) -> str:
    return "execute" if state.get("approved") else "ask"


async def run_command(argv: list[str], timeout: float) -> dict[str, Any]:
    """Run ``argv`` without a shell; capture stdout and stderr together."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True
        )
    except OSError as exc:
        return {"exit_code": 127, "output": f"could not start {argv[0]}: {exc.strerror}", "timed_out": False}
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
        timed_out = False
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = await process.communicate()
        timed_out = True
    text = output[:MAX_OUTPUT_BYTES].decode("utf-8", errors="replace").rstrip()
    if len(output) > MAX_OUTPUT_BYTES:
        text += f"\n[output truncated: {len(output):,} bytes, first {MAX_OUTPUT_BYTES:,} shown]"
    return {"exit_code": process.returncode, "output": text, "timed_out": timed_out}


def _shown(argv: list[str]) -> str:
    return shlex.join(argv)


builder = StateGraph(RunbookState)
builder.add_node("plan", plan)
builder.add_node("ask", ask)
builder.add_node("execute", execute)
builder.add_edge(START, "plan")
builder.add_conditional_edges("plan", route_after_plan, ["ask", "execute"])
builder.add_edge("ask", "execute")
builder.add_edge("execute", END)
graph = builder
