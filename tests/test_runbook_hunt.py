"""Runbook commands as an operator runs them: output without end, a command reading stdin, children
that outlive a timeout, Baton stopping mid-command, terminal output (colours, progress bars), signals."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

from graphs.runbook import MAX_OUTPUT_BYTES, readable, run_command
from tests.support import ON_SQLITE_ONLY, alive, runs_in, wait_for


def test_output_without_end_does_not_fill_memory():
    """`yes` for 3 seconds: Baton kept everything it printed (1.7 GB) and cut it only afterwards."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = asyncio.run(run_command(["yes"], 3))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert result["timed_out"] and grown_mb < 200, grown_mb
    assert result["output"].startswith("y\ny\n") and "[output truncated:" in result["output"]
    assert len(result["output"]) < MAX_OUTPUT_BYTES + 200


def test_output_past_the_limit_is_counted_and_the_command_finishes():
    script = f"import sys; sys.stdout.write('x' * {MAX_OUTPUT_BYTES * 4})"
    result = asyncio.run(run_command([sys.executable, "-c", script], 20))
    assert result["exit_code"] == 0 and not result["timed_out"]
    assert result["output"].endswith(f"[output truncated: {MAX_OUTPUT_BYTES * 4:,} bytes, first {MAX_OUTPUT_BYTES:,} shown]")


def test_a_command_reading_stdin_gets_nothing(tmp_path: Path):
    """A command reading stdin read Baton's own (a terminal: it waited there for the operator's keys)."""
    read, write = os.pipe()
    saved = os.dup(0)
    os.dup2(read, 0)  # Baton's stdin: a pipe nobody writes to, as a terminal nobody types in
    try:
        result = asyncio.run(run_command(["cat"], 3))
    finally:
        os.dup2(saved, 0)
        for fd in (read, write, saved):
            os.close(fd)
    assert not result["timed_out"] and result["exit_code"] == 0 and result["output"] == ""


def test_a_timeout_ends_on_time_though_a_descendant_holds_the_output(tmp_path: Path):
    """A descendant in a session of its own (setsid) escapes the group kill and keeps the output open:
    the run waited for it for ever after its timeout."""
    pidfile = tmp_path / "escaped"
    script = f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 30' & echo started; sleep 100"
    started = time.monotonic()
    try:
        result = asyncio.run(asyncio.wait_for(run_command(["sh", "-c", script], 1), 15))
        assert result["timed_out"] and "started" in result["output"]
        assert time.monotonic() - started < 10
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_a_stopped_run_kills_its_command_and_children(tmp_path: Path):
    """Baton stopping cancels the run: the command and its children were left running."""
    pidfile = tmp_path / "pids"
    script = f"sleep 100 & echo $$ $! > {pidfile}; wait"

    async def stop_mid_command() -> None:
        task = asyncio.create_task(run_command(["sh", "-c", script], 60))
        while not pidfile.exists() or len(pidfile.read_text().split()) < 2:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(stop_mid_command())
    pids = [int(pid) for pid in pidfile.read_text().split()]
    try:
        wait_for(lambda: not any(alive(pid) for pid in pids), 10, "the command and its child to end")
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_command_closing_its_output_early_is_still_timed():
    result = asyncio.run(run_command(["sh", "-c", "echo bye; exec >&- 2>&-; sleep 100"], 1))
    assert result["timed_out"] and result["output"] == "bye"


def test_an_argument_that_cannot_be_passed_is_a_failure_to_start():
    result = asyncio.run(run_command(["echo", "a\x00b"], 5))
    assert result["exit_code"] == 127 and result["output"].startswith("could not start echo:")


def test_terminal_output_reads_as_a_terminal_shows_it():
    assert readable("\x1b[1;31mred\x1b[0m plain \x1b]0;title\x07done") == "red plain done"
    assert readable("  0%\r 50%\r100%\nnext\r\n") == "100%\nnext\n"
    assert readable("abcdef\rXY") == "XYcdef"
    assert readable("nul\x00bell\x07") == "nul\ufffdbell\ufffd"
    assert readable("tab\tkept\nline") == "tab\tkept\nline"


# -- through chat ---------------------------------------------------------------------------------


@pytest.fixture
def config_path(tmp_path: Path, counter: Path) -> Path:
    from tests.support import write_config
    path = write_config(tmp_path, counter)
    config = yaml.safe_load(path.read_text())
    progress = "import sys; sys.stdout.write('\\x1b[32mok\\x1b[0m\\n  0%\\r 50%\\r100%\\n'); sys.stdout.flush()"
    config["runbooks"]["progress"] = {"description": "A progress bar.", "command": [sys.executable, "-c", progress],
                                      "risk": "low", "timeout": 10}
    config["runbooks"]["segfault"] = {"description": "Killed by a signal.",
                                      "command": [sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"],
                                      "risk": "low", "timeout": 10}
    path.write_text(yaml.safe_dump(config))
    return path


@ON_SQLITE_ONLY
def test_terminal_output_and_a_signal_read_clearly_in_chat(baton):
    pg = baton.client()
    reply = pg.wait_reply(pg.ask("@baton run progress"), "finished")
    code = next(part["text"] for part in reply["content"]["parts"] if part["kind"] == "code")
    assert code == "ok\n100%"
    killed = pg.wait_reply(pg.ask("@baton run segfault"), "killed by signal SIGKILL")
    assert "exit code -9" not in killed["text"]


# -- patterns that take forever ---------------------------------------------------------------------

SLOW_PATTERNS = [r"^(a+)+$", r"^(\w+\s?)*$", r"^(.*,)*$", r"^(?:[a-z]*)*$", r"(?i)^([a-z]+A)+$"]
SAFE_PATTERNS = [r"^([a-z]+-)*[a-z]+$", r"^([a-z0-9]+(-[a-z0-9]+)*)$", r"^(\d+\.)+\d+$", r"^([^,]+,)*[^,]+$",
                 r"^(\d{1,3}\.){3}\d{1,3}$", r"^(?>[a-z]+)+$", r"^([a-z]++)+$", r"^(web|api|worker)$", r"^[0-9]+$"]


@pytest.mark.parametrize("pattern", SLOW_PATTERNS)
def test_a_pattern_repeating_a_repetition_is_refused_with_its_line(tmp_path: Path, pattern: str):
    """`^(a+)+$` was accepted, and `run x v=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!` in chat froze Baton: checking
    the value tries 2^n splits, in the event loop, so no channel got an answer and its leases lapsed."""
    from bot.config import ConfigError, load_config
    path = tmp_path / "baton.yaml"
    path.write_text(yaml.safe_dump({"runbooks": {"x": {"description": "x", "command": ["echo", "{v}"],
                                                       "args": {"v": {"pattern": pattern}}}}}))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    message = str(refused.value)
    assert "line 5: runbooks.x.args.v.pattern" in message and "repeats a repetition" in message, message


@pytest.mark.parametrize("pattern", SAFE_PATTERNS)
def test_patterns_that_cannot_take_forever_are_kept(pattern: str):
    from bot.config import Argument
    assert Argument(pattern=pattern).pattern == pattern


# -- odd shapes of a runbook ------------------------------------------------------------------------

ODD_SHAPES = {
    # the most usual slip: said only "Input should be a valid list"
    'command: "systemctl restart web"': ('line 4: runbooks.x.command', 'write it as ["systemctl", "restart", "web"]'),
    # YAML reads these as a number (0755 as 493), a boolean, nothing: said only "Input should be a valid string"
    "command:\n      - chmod\n      - 0755": ("line 6: runbooks.x.command", "a number (493), not as text: put it in quotes"),
    "command: [systemctl, yes]": ("line 4: runbooks.x.command", "part 1: YAML reads this as true or false"),
    "command: [echo, ~]": ("line 4: runbooks.x.command", "part 1: YAML reads this as nothing"),
    'command: [head, -n, "{n}"]\n    args: {n: {pattern: "^[0-9]+$", default: 10}}':
        ("line 5: runbooks.x.args.n.default", "a number (10), not as text: put it in quotes"),
}


@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_a_command_or_default_of_the_wrong_shape_says_how_to_write_it(tmp_path: Path, shape: str):
    from bot.config import ConfigError, load_config
    path = tmp_path / "baton.yaml"
    path.write_text(f"runbooks:\n  x:\n    description: d\n    {shape}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    where, what = ODD_SHAPES[shape]
    assert where in str(refused.value) and what in str(refused.value), str(refused.value)


# -- baton.yaml changed while a runbook waited for its approval ------------------------------------

CHANGES = {
    # the approver approved `... restart web` on the card; Baton ran the new command instead
    "command": (lambda config: config["runbooks"]["restart"]["command"].append("--hard"), "it would now run"),
    # failed with "KeyError: 'restart'"
    "removed": (lambda config: config["runbooks"].pop("restart"), "is no longer in baton.yaml"),
    # `web`, no longer allowed, was run anyway
    "narrowed": (lambda config: config["runbooks"]["restart"]["args"]["service"].update(pattern="^api$"),
                 "does not match the allowed pattern `^api$`"),
}


@pytest.mark.parametrize("change", CHANGES)
def test_an_approval_runs_nothing_when_baton_yaml_changed_meanwhile(start_baton, sqlite_url, config_path, counter,
                                                                    change):
    first = start_baton(sqlite_url)
    pg = first.client()
    thread = pg.ask("@baton run restart service=web")
    card = pg.wait_card(thread)
    first.stop()
    config = yaml.safe_load(config_path.read_text())
    edit, said = CHANGES[change]
    edit(config)
    config_path.write_text(yaml.safe_dump(config))
    pg = start_baton(sqlite_url, name="after").client()
    assert pg.click(card, "bob").status_code == 202
    reply = pg.wait_reply(thread, "nothing was run")
    assert said in reply["text"] and "baton.yaml" in reply["text"], reply["text"]
    assert runs_in(counter) == []


def test_binary_output_is_not_posted_as_replacement_characters():
    """`cat` of a binary file posted up to 256 KiB of U+FFFD and control characters."""
    script = "import os, sys; sys.stdout.buffer.write(bytes(range(256)) * 64)"
    result = asyncio.run(run_command([sys.executable, "-c", script], 20))
    assert result["output"] == "[binary output: 16,384 bytes, not shown]"
    text = asyncio.run(run_command(["printf", "caf\\xc3\\xa9 ok \\xff\\n"], 20))
    assert text["output"] == "café ok \ufffd"


def test_a_value_too_long_to_check_quickly_is_refused_before_its_pattern(tmp_path: Path):
    """`^.+@.+\\..+$` is a fair pattern, but on a 4,000-character value that almost matches it took 13 s,
    in the event loop: every channel waited."""
    from bot.config import MAX_VALUE_CHARS, Runbook
    runbook = Runbook(description="d", command=["notify", "{to}"], args={"to": {"pattern": r"^.+@.+\..+$"}})
    started = time.monotonic()
    with pytest.raises(ValueError) as refused:
        runbook.validate_args({"to": "@." * 1999 + "\n"})
    assert time.monotonic() - started < 1
    assert str(refused.value) == f"`to` is 3,999 characters long; an argument may have {MAX_VALUE_CHARS:,}"
    assert runbook.validate_args({"to": "ops@example.com"}) == {"to": "ops@example.com"}


@pytest.mark.parametrize(("program", "said"), [
    ("/tmp", "could not start /tmp: it is a directory, not a program"),  # said "Permission denied"
    ("{tmp}/script.sh", "could not start {tmp}/script.sh: Permission denied (is it executable"),
    ("/nonexistent/tool", "could not start /nonexistent/tool: No such file or directory"),
])
def test_a_program_that_cannot_start_says_why(tmp_path: Path, program: str, said: str):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    program, said = program.format(tmp=tmp_path), said.format(tmp=tmp_path)
    result = asyncio.run(run_command([program], 5))
    assert result["output"].startswith(said) and result["started"] is False and result["exit_code"] == 127


@ON_SQLITE_ONLY
def test_a_command_that_could_not_start_is_not_said_to_have_failed_with_an_exit_code(tmp_path: Path, baton):
    """The reply read "`/nonexistent/baton-test-tool --version` failed with exit code 127", a code it never had."""
    pg = baton.client()
    reply = pg.wait_reply(pg.ask("@baton run missing"), "could not be started")
    assert "exit code" not in reply["text"] and "No such file or directory" in reply["text"]


def test_a_runbook_made_high_risk_after_its_plan_does_not_run_unapproved(tmp_path: Path) -> None:
    """``plan`` took the runbook as low risk (approved at once); baton.yaml read again (SIGHUP) or a takeover
    after a restart with the runbook now high risk, and ``execute`` ran it without a card: it checked that the
    command was the same, not that it still needed nobody's approval."""
    from bot.config import load_config
    from graphs.runbook import _changed_since_planned

    path = tmp_path / "baton.yaml"
    path.write_text('approvers: [bob]\nrunbooks:\n  purge:\n    description: Purge.\n    command: ["true"]\n'
                    '    risk: high\n')
    runbook = load_config(path).runbooks["purge"]
    planned_low = {"runbook": "purge", "args": {}, "command": ["true"], "approved": True, "decided_by": ""}
    assert "needs approval since baton.yaml changed" in _changed_since_planned(planned_low, runbook)  # type: ignore[arg-type]
    approved = {**planned_low, "decided_by": "bob"}
    assert _changed_since_planned(approved, runbook) == ""  # type: ignore[arg-type]
