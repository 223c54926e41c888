"""Runs a runbook from ``baton.yaml``: plan, approval when its risk is high, then the command once."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

from bot.kit import Request, approve, command_environment, current, effect, progress

DESCRIPTION = "Run a runbook from baton.yaml."
EXAMPLE = "run <runbook> key=value"
TIMEOUT = None  # each command has its runbook's own timeout (baton.yaml, up to 24 h)
MAX_OUTPUT_BYTES = 256 * 1024


class RunbookState(TypedDict, total=False):
    runbook: str
    args: dict[str, str]
    approved: bool
    decided_by: str
    reply: str | dict[str, Any]  # a message dict (a rejection is not a success; output is a code part)
    error: str


def make_input(_request: Request, _args: str) -> dict[str, Any]:
    raise ValueError("the runbook graph is started with `run <runbook> key=value`")


def plan(state: RunbookState) -> RunbookState:
    runbook = current().config.runbooks[state["runbook"]]
    if runbook.risk == "high":
        inline = _inline(_shown(runbook.argv(state["args"])))
        command = inline or "the command shown on the card below"  # the card shows it as code, verbatim
        progress(f"Plan: run {command} (timeout {runbook.timeout:g}s). This needs approval.")
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
    if result["timed_out"]:
        return {"reply": _outcome(argv, f"timed out after {runbook.timeout:g}s and was stopped", result["output"], "error"),
                "error": f"timed out after {runbook.timeout:g}s"}
    if result["exit_code"] != 0:
        return {"reply": _outcome(argv, f"failed with exit code {result['exit_code']}", result["output"], "error"),
                "error": f"exit code {result['exit_code']}"}
    return {"reply": _outcome(argv, "finished", result["output"], "success")}


def _outcome(argv: list[str], what: str, output: str, tone: str) -> dict[str, Any]:
    """The reply as a message dict: the output is a code part of its own, shown verbatim whatever it
    prints (a ``` or a user id included), never markup inside the reply's text."""
    inline = _inline(_shown(argv))
    parts: list[dict[str, str]] = ([{"kind": "text", "text": f"{inline} {what}."}] if inline else
                                   [{"kind": "text", "text": f"This command {what}:"},
                                    {"kind": "code", "text": _shown(argv)}])
    parts.append({"kind": "code", "text": output} if output else {"kind": "note", "text": "(no output)"})
    return {"tone": tone, "parts": parts}


def route_after_plan(state: RunbookState) -> str:
    return "execute" if state.get("approved") else "ask"


async def run_command(argv: list[str], timeout: float) -> dict[str, Any]:
    """Run ``argv`` without a shell; capture stdout and stderr together."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            env=command_environment(),
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


def _inline(command: str) -> str | None:
    """``command`` as inline code, or None when inline code cannot hold it verbatim (a backtick ends
    inline code on every platform, and inline code is one line): then it is shown as a code part."""
    return None if any(char in command for char in "`\r\n") else f"`{command}`"


builder = StateGraph(RunbookState)
builder.add_node("plan", plan)
builder.add_node("ask", ask)
builder.add_node("execute", execute)
builder.add_edge(START, "plan")
builder.add_conditional_edges("plan", route_after_plan, ["ask", "execute"])
builder.add_edge("ask", "execute")
builder.add_edge("execute", END)
graph = builder
