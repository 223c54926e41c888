"""Runs a runbook from ``baton.yaml``: plan, approval when its risk is high, then the command once."""

from __future__ import annotations

import asyncio
import codecs
import os
import re
import shutil
import signal
from collections.abc import Awaitable, Collection
from typing import TYPE_CHECKING, Any, TypedDict

from langgraph.graph import END, START, StateGraph

from bot.kit import Request, approve, command_environment, current, effect, progress, shown_argument

if TYPE_CHECKING:
    from bot.config import Runbook

DESCRIPTION = "Run a runbook from baton.yaml."
EXAMPLE = "run <runbook> key=value"
TIMEOUT = None  # each command has its runbook's own timeout (baton.yaml, up to 24 h)
MAX_OUTPUT_BYTES = 256 * 1024
STILL_RUNNING_AFTER = 2.0  # seconds a command runs before the thread is told it is running


class RunbookState(TypedDict, total=False):
    runbook: str
    args: dict[str, str]
    approved: bool
    decided_by: str
    command: list[str]  # as planned, and shown on the approval card: nothing else is run
    cwd: str | None  # the runbook's working directory and the variables it gets (env:), as planned: shown on the card
    env: list[str]
    reply: str | dict[str, Any]  # a message dict (a rejection is not a success; output is a code part)
    error: str


def make_input(_request: Request, _args: str) -> dict[str, Any]:
    raise ValueError("the runbook graph is started with `run <runbook> key=value`")


def plan(state: RunbookState) -> RunbookState:
    runbook = current().config.runbooks[state["runbook"]]
    argv = runbook.argv(state["args"])
    if runbook.risk == "high":
        inline = _inline(shown_command(argv))
        command = inline or "the command shown on the card below"  # the card shows it as code, verbatim
        progress(f"Plan: run {command} (timeout {runbook.timeout:g}s). This needs approval.")
    return {"approved": runbook.risk == "low", "decided_by": "", "command": argv, "cwd": runbook.cwd,
            "env": list(runbook.env), "reply": "", "error": ""}


def ask(state: RunbookState) -> RunbookState:
    config = current().config
    runbook = config.runbooks.get(state["runbook"])  # on a resume, baton.yaml may have changed: see execute
    argv = state.get("command") or (runbook.argv(state["args"]) if runbook else [])
    decision = approve(
        f"Run `{state['runbook']}`: {runbook.description if runbook else '(no longer in baton.yaml)'}",
        details={"command": shown_command(argv), "timeout": f"{runbook.timeout:g}s" if runbook else "?",
                 **_setting(state, runbook)},
        risk="high",
        # Its approvers as baton.yaml names them when the click comes; a runbook gone since has none.
        **({"runbook": state["runbook"]} if runbook else {"approvers": []}),
    )
    return {"approved": decision.approved, "decided_by": decision.by}


async def execute(state: RunbookState) -> RunbookState:
    if not state.get("approved"):
        return {"reply": {"tone": "info", "parts": [
            {"kind": "text", "text": f"Rejected by {state.get('decided_by') or 'an approver'}: nothing was run."}]}}
    runbook = current().config.runbooks.get(state["runbook"])
    changed = _changed_since_planned(state, runbook)
    if runbook is None or changed:
        return {"reply": {"tone": "error", "parts": [{"kind": "text", "text": changed}]},
                "error": "baton.yaml changed since it was asked for; nothing was run"}
    argv = runbook.argv(state["args"])
    result = await effect("command", lambda: _told_if_long(run_runbook(runbook, argv), argv, runbook.timeout))
    if not result.get("started", True):
        return {"reply": _outcome(argv, "could not be started", result["output"], "error"), "error": result["output"]}
    if result["timed_out"]:
        return {"reply": _outcome(argv, f"timed out after {runbook.timeout:g}s and was stopped", result["output"], "error"),
                "error": f"timed out after {runbook.timeout:g}s"}
    if result["exit_code"] != 0:
        failure = _failure(result["exit_code"])
        return {"reply": _outcome(argv, failure, result["output"], "error"),
                "error": failure.removeprefix("failed with ").removeprefix("was ")}
    return {"reply": _outcome(argv, "finished", result["output"], "success")}


def _changed_since_planned(state: RunbookState, runbook: Runbook | None) -> str:
    """Why the command cannot run as planned (and approved) since Baton restarted with another baton.yaml,
    or ``""``: an approval covers the command shown on its card, not whatever the runbook says now."""
    name = state["runbook"]
    if runbook is None:
        return f"The runbook `{name}` is no longer in baton.yaml, so nothing was run."
    try:
        argv = runbook.argv(runbook.validate_args(state["args"]))
    except ValueError as exc:
        return f"The runbook `{name}` changed in baton.yaml since it was asked for ({exc}), so nothing was run."
    if runbook.risk == "high" and not state.get("decided_by"):  # planned as low risk: nobody approved it
        return (f"The runbook `{name}` needs approval since baton.yaml changed after it was asked for, so nothing "
                "was run. Ask again to get an approval card.")
    planned = state.get("command")
    if planned is not None and argv != planned:
        now = _inline(shown_command(argv)) or "another command"
        then = _inline(shown_command(planned)) or "the command planned"
        return (f"The runbook `{name}` changed in baton.yaml since it was asked for: it would now run {now}, not "
                f"{then}, so nothing was run. Ask again to run the new command.")
    # A run planned before runbooks had a cwd and env (an older Baton's) was planned without them.
    if planned is not None and _setting(state, None) != _setting({}, runbook):
        return (f"The runbook `{name}` changed in baton.yaml since it was asked for: its working directory or the "
                "variables it gets (cwd, env) are not those planned, so nothing was run. Ask again to run it as it "
                "is now.")
    return ""


def _setting(state: RunbookState, runbook: Runbook | None) -> dict[str, str]:
    """Where the command runs and the variables of Baton's it gets besides the usual (names only), when the
    runbook sets them: as planned (``state``), or as ``runbook`` says when given."""
    cwd, env = (runbook.cwd, runbook.env) if runbook is not None else (state.get("cwd"), state.get("env") or [])
    return {**({"directory": cwd} if cwd else {}), **({"environment": ", ".join(env)} if env else {})}


def _failure(exit_code: int) -> str:
    """How a command ended that did not succeed; a negative code is the signal that killed it."""
    if exit_code >= 0:
        return f"failed with exit code {exit_code}"
    try:
        name = signal.Signals(-exit_code).name
    except ValueError:
        name = f"number {-exit_code}"
    return f"was killed by signal {name}"


def _outcome(argv: list[str], what: str, output: str, tone: str) -> dict[str, Any]:
    """The reply as a message dict: the output is a code part of its own, shown verbatim whatever it
    prints (a ``` or a user id included), never markup inside the reply's text."""
    inline = _inline(shown_command(argv))
    parts: list[dict[str, str]] = ([{"kind": "text", "text": f"{inline} {what}."}] if inline else
                                   [{"kind": "text", "text": f"This command {what}:"},
                                    {"kind": "code", "text": shown_command(argv)}])
    parts.append({"kind": "code", "text": output} if output else {"kind": "note", "text": "(no output)"})
    return {"tone": tone, "parts": parts}


def route_after_plan(state: RunbookState) -> str:
    return "execute" if state.get("approved") else "ask"


async def _told_if_long(command: Awaitable[dict[str, Any]], argv: list[str], timeout: float) -> dict[str, Any]:
    """``command``'s result; one that has not ended after ``STILL_RUNNING_AFTER`` seconds is said to be running.
    A low-risk runbook posts nothing before its result: a minute's command left the thread silent for a minute,
    and a silent bot reads as a broken one (asked again, or given up on)."""
    # A timer, not a task: the callback runs in this node's context (LangGraph's stream writer), and a cancel of
    # the run reaches the command as before.
    told = asyncio.get_running_loop().call_later(STILL_RUNNING_AFTER, lambda: progress(
        f"Running {_inline(shown_command(argv)) or 'the command'} (timeout {timeout:g}s). "
        "Write `cancel` in this thread to stop it."))
    try:
        return await command
    finally:
        told.cancel()


async def run_runbook(runbook: Runbook, argv: list[str]) -> dict[str, Any]:
    """Run ``argv``, a command of ``runbook``, as the runbook says: its timeout, its working directory, the
    variables of Baton's it names (``env:``)."""
    return await run_command(argv, runbook.timeout, cwd=runbook.cwd, env=runbook.env)


async def run_command(argv: list[str], timeout: float, *, cwd: str | None = None,
                      env: Collection[str] = ()) -> dict[str, Any]:
    """Run ``argv`` without a shell, stdin empty; capture stdout and stderr together.

    It runs in ``cwd`` (Baton's own working directory when ``None``), with Baton's environment less what is
    Baton's alone (``bot.kit.command_environment``), but for the variables ``env`` names.

    The command runs in a session of its own. When it outlasts ``timeout``, its whole session (its process
    group, children included, and a descendant's group of its own) gets SIGTERM, then SIGKILL
    ``KILL_GRACE_SECONDS`` later; when the run is stopped (Baton stopping), SIGKILL at once. Only the first
    ``MAX_OUTPUT_BYTES`` are kept: the rest is read and counted, so a command printing without end
    neither fills Baton's memory nor blocks on a full pipe. The run ends when the command does: a process
    it left running in the background (``worker &``) is left alone, and not waited for.
    """
    read_end, write_end = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=write_end, stderr=write_end, start_new_session=True,
            env=command_environment(env), cwd=cwd,
        )
    except (OSError, ValueError) as exc:  # ValueError: a NUL or an unencodable character in an argument
        os.close(read_end)
        why = _unusable_directory(cwd) or _why_not_started(argv[0], exc, cwd)
        return {"exit_code": 127, "output": f"could not start {argv[0]}: {why}", "timed_out": False, "started": False}
    finally:
        os.close(write_end)
    output = _Output()
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb", buffering=0))
    reading = asyncio.ensure_future(_read_all(reader, output))
    timed_out = False
    try:
        try:
            await asyncio.wait_for(process.wait(), timeout)  # a command may close its output early and go on
        except TimeoutError:
            timed_out = True
            await _stop_group(process)
        # what is left in the pipe; a process the command left running (`worker &`, or one that escaped the
        # group kill with setsid) may hold it open for good: the run does not wait for that one
        await asyncio.wait({reading}, timeout=KILL_GRACE_SECONDS)
        if not reading.done() and not timed_out:
            output.note("[a process it left running in the background holds the output open: it is not waited "
                        "for, and its next write there fails; give it an output of its own, as in "
                        "`worker >worker.log 2>&1 &`]")
    except BaseException:  # the run stopped (Baton stopping): the command must not outlive it
        _kill_group(process.pid)
        raise
    finally:
        reading.cancel()
        transport.close()
    return {"exit_code": process.returncode, "output": output.text(), "timed_out": timed_out}


def _unusable_directory(cwd: str | None) -> str:
    """Why the working directory cannot be used, or ``""``: checked when baton.yaml was read, it may have gone
    since, and the error said only "No such file or directory", as if of the program."""
    if cwd is None:
        return ""
    if not os.path.isdir(cwd):
        return f"its working directory {cwd} is not there (any more)"
    if not os.access(cwd, os.X_OK):
        return f"Baton's user may not enter its working directory {cwd}"
    return ""


def _why_not_started(program: str, exc: Exception, cwd: str | None = None) -> str:
    """``cwd``: the directory the command was started in, which a relative path is taken from."""
    if isinstance(exc, PermissionError):
        return "it is a directory, not a program" if os.path.isdir(os.path.join(cwd or "", program)) else \
            f"{exc.strerror} (is it executable, and may Baton's user run it?)"
    if isinstance(exc, FileNotFoundError):
        return _why_not_found(program, exc, cwd)
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _why_not_found(program: str, exc: FileNotFoundError, cwd: str | None) -> str:
    """Where a program that is not there was looked for; or, for a script that is there, that the interpreter
    its ``#!`` line names is not (a script saved with Windows line ends asks for ``/bin/sh\\r``)."""
    found = os.path.join(cwd or "", program) if "/" in program else shutil.which(program)
    if found and os.path.isfile(found):
        try:
            with open(found, "rb") as script:
                first = script.readline(200).rstrip(b"\n")
        except OSError:
            first = b""
        if first.startswith(b"#!"):
            line = first.decode(errors="replace").replace("\r", "\\r")
            windows = ": the file has Windows line ends (a \\r ends each line)" if first.endswith(b"\r") else ""
            return f"the program its first line names ({line}) is not there{windows}"
    if "/" not in program:
        return "it is in no directory of Baton's PATH (install it, or write its full path)"
    if not os.path.isabs(program):
        where = f"the runbook's working directory, {cwd}" if cwd else f"Baton's working directory, {os.getcwd()}"
        return f"{exc.strerror} (a relative path is taken from {where})"
    return exc.strerror or str(exc)


KILL_GRACE_SECONDS = 2.0
_CHUNK_BYTES = 64 * 1024


class _Output:
    """The first ``MAX_OUTPUT_BYTES`` of a command's output, and how many bytes it wrote in all."""

    def __init__(self) -> None:
        self.kept = bytearray()
        self.total = 0
        self.notes: list[str] = []

    def note(self, line: str) -> None:
        """A line said after the output, about it."""
        self.notes.append(line)

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.kept += chunk[:max(0, MAX_OUTPUT_BYTES - len(self.kept))]

    def text(self) -> str:
        truncated = self.total > MAX_OUTPUT_BYTES  # the cut may fall inside a character: its first bytes go
        decoded = codecs.getincrementaldecoder("utf-8")("replace").decode(bytes(self.kept), final=not truncated)
        if _binary(decoded):  # a wall of U+FFFD helps nobody, and would take many messages
            return f"[binary output: {self.total:,} bytes, not shown]"
        text = readable(decoded).rstrip()
        if truncated:
            text += f"\n[output truncated: {self.total:,} bytes, first {MAX_OUTPUT_BYTES:,} shown]"
        return "\n".join([text, *self.notes]) if text else "\n".join(self.notes)


def _binary(decoded: str) -> bool:
    """Whether output is not text: a NUL, or more than a tenth of it not characters or control codes."""
    if "\x00" in decoded:
        return True
    unreadable = sum(1 for char in decoded if char == "\ufffd" or (char < " " and char not in "\n\r\t\b\x1b"))
    return unreadable * 10 > len(decoded)


async def _read_all(reader: asyncio.StreamReader, output: _Output) -> None:
    while chunk := await reader.read(_CHUNK_BYTES):
        output.add(chunk)


async def _stop_group(process: asyncio.subprocess.Process) -> None:
    """Stop a command past its timeout as timeout(1) and systemd do: SIGTERM to its group first, so that it
    may clean up (a lock it holds, terraform's state lock), then SIGKILL to what is left of the group."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), KILL_GRACE_SECONDS)
    except TimeoutError:
        pass
    _kill_group(process.pid)
    await process.wait()


def _kill_group(pid: int) -> None:
    _signal_group(pid, signal.SIGKILL)


def _signal_group(pid: int, number: signal.Signals) -> None:
    """``number`` to the command's process group, and to the rest of its session: a descendant in a group of its
    own (GNU timeout(1) makes one, as a shell's job control does for each background job) is out of the group,
    not of the session. One that left the session (``setsid``) is not reached."""
    for member in _session_members(pid):
        try:
            os.kill(member, number)
        except (ProcessLookupError, PermissionError):  # it has ended already
            pass
    try:
        os.killpg(pid, number)
    except (ProcessLookupError, PermissionError):  # the group has ended already
        pass


def _session_members(session: int) -> list[int]:
    """The processes of ``session`` besides its first group, as Linux's ``/proc`` lists them (none elsewhere)."""
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    members = []
    for pid in pids:
        try:
            if os.getsid(pid) == session and os.getpgid(pid) != session:
                members.append(pid)
        except OSError:  # it has ended since
            pass
    return members


# CSI (colours, cursor), OSC (a title, a link), and the rest: ESC, intermediate bytes, one final byte (ESC ( B of
# `tput sgr0`, ESC 7 and ESC 8 that save and restore the cursor, ESC = and ESC >)
_TERMINAL_CODES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[ -/]*[0-~])")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def readable(text: str) -> str:
    """Output as a terminal would show it: colour and cursor codes dropped, a line rewritten after a
    carriage return (a progress bar) or a backspace (a spinner) shown as it was last written, other control
    characters as U+FFFD."""
    text = _TERMINAL_CODES.sub("", text).replace("\r\n", "\n")
    text = "\n".join(_last_written(line) for line in text.split("\n"))
    return _CONTROLS.sub("\ufffd", text)


def _last_written(line: str) -> str:
    """A line a carriage return or backspaces rewrote, as a terminal shows it: the last text written over the rest."""
    if "\r" not in line and "\b" not in line:
        return line
    shown: list[str] = []
    cursor = 0
    for char in line:
        if char == "\r":
            cursor = 0
        elif char == "\b":
            cursor = max(0, cursor - 1)
        else:
            shown[cursor:cursor + 1] = [char]
            cursor += 1
    return "".join(shown)


def shown_command(argv: list[str]) -> str:
    """``argv`` as a shell would take it, one line, every character what it looks like: an argument that could
    be read as another is written in bash's ``$'...'`` (``bot.kit.shown_argument``), so the plan and the approval
    card show the command that runs, not one that only looks like it."""
    return " ".join(shown_argument(arg) for arg in argv)


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
