"""Runbook commands as operators write them, second hunt: a command leaving a process in the background,
terminal output from scripts (tput, spinners), and baton.yaml slips (an argument the command never uses,
a timeout written as `5m`)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from graphs.runbook import run_command
from tests.support import alive


def _kill(pidfile: Path) -> None:
    if pidfile.exists() and pidfile.read_text().strip() and alive(pid := int(pidfile.read_text())):
        os.kill(pid, signal.SIGKILL)


def test_a_command_that_leaves_a_process_in_the_background_finishes_when_it_exits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`start-worker` ran `worker &` and exited 0; the worker kept the output open, so the run waited for
    it until the runbook's timeout, said "timed out ... and was stopped", and killed the worker it started."""
    monkeypatch.setattr("graphs.runbook.KILL_GRACE_SECONDS", 0.3)
    pidfile = tmp_path / "worker"
    script = f"sleep 60 & echo $! > {pidfile}; echo worker started"
    try:
        result = asyncio.run(asyncio.wait_for(run_command(["sh", "-c", script], 30), 20))
        assert not result["timed_out"] and result["exit_code"] == 0, result
        assert result["output"].startswith("worker started\n[a process it left running"), result["output"]
        assert alive(int(pidfile.read_text()))  # what it started in the background is its business
    finally:
        _kill(pidfile)


def test_escape_sequences_scripts_print_with_tput_are_dropped() -> None:
    """A script coloured with tput (RESET=$(tput sgr0) writes ESC ( B, a character set choice) or saving the
    cursor (ESC 7, ESC 8, as apt's progress does) posted "\ufffd(B" and "\ufffd7" in its output."""
    from graphs.runbook import readable
    assert readable("\x1b[32mok\x1b(B\x1b[m done") == "ok done"
    assert readable("\x1b7\x1b[0;24r\x1b8Progress: 40%\x1b=\x1b>") == "Progress: 40%"
    assert readable("\x1b#8\x1b%G\x1b)0end") == "end"


def test_a_spinner_drawn_with_backspaces_reads_as_a_terminal_shows_it() -> None:
    """A spinner (|, backspace, /, backspace, ...) made a fifth of the output backspaces: the whole output
    was posted as "[binary output: N bytes, not shown]"; shorter, each backspace was a "\ufffd"."""
    spinner = "".join(f"{char}\\b" for char in "|/-" * 6)
    result = asyncio.run(run_command(["printf", f"backing up... {spinner}done\\nbold: b\\bbo\\bol\\bld\\b\\n"], 10))
    assert result["output"] == "backing up... done\nbold: bold", result["output"]



def test_a_command_past_its_timeout_is_asked_to_stop_before_it_is_killed() -> None:
    """At its timeout the command was killed outright (SIGKILL): a script's `trap ... TERM` never ran, so the
    lock it held (a deploy lock, terraform's state lock) stayed, and the next run found it taken. It gets
    SIGTERM first, as timeout(1) and systemd give, and is killed when it has not ended a moment later."""
    script = "trap 'echo lock released; exit 143' TERM; echo working; sleep 30 & wait"
    result = asyncio.run(asyncio.wait_for(run_command(["sh", "-c", script], 1), 20))
    assert result["timed_out"] and result["output"] == "working\nlock released", result


def test_a_command_ignoring_sigterm_is_still_killed_at_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("graphs.runbook.KILL_GRACE_SECONDS", 0.2)
    result = asyncio.run(asyncio.wait_for(run_command(["sh", "-c", "trap '' TERM; echo stubborn; sleep 30"], 0.5), 20))
    assert result["timed_out"] and result["exit_code"] == -signal.SIGKILL and result["output"] == "stubborn"


@pytest.mark.parametrize(("timeout", "said"), [
    ("5m", "the timeout is a number of seconds: write 300, not '5m'"),  # said "unable to parse string as a number"
    ("90s", "the timeout is a number of seconds: write 90, not '90s'"),
    ("1 h", "the timeout is a number of seconds: write 3600, not '1 h'"),
    ("soon", "the timeout is a number of seconds (at most 86400, a day), not 'soon'"),
    (".nan", "the timeout is a number of seconds (at most 86400, a day), not nan"),  # said "less than or equal to"
])
def test_a_timeout_that_is_no_number_of_seconds_says_how_to_write_it(tmp_path: Path, timeout: str, said: str) -> None:
    from bot.config import ConfigError, load_config
    path = tmp_path / "baton.yaml"
    path.write_text(f"runbooks:\n  backup:\n    description: Back up.\n    command: [backup]\n    timeout: {timeout}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value) == f"{path}: line 5: runbooks.backup.timeout: {said}", str(refused.value)


@pytest.mark.parametrize(("program", "said"), [
    # each said only "No such file or directory"
    ("baton-no-such-tool", "could not start baton-no-such-tool: it is in no directory of Baton's PATH (install it, "
                           "or write its full path)"),
    ("./no-such-script.sh", "could not start ./no-such-script.sh: No such file or directory (a relative path is taken "
                            "from Baton's working directory, {cwd})"),
    ("{tmp}/windows.sh", "could not start {tmp}/windows.sh: the program its first line names (#!/bin/sh\\r) is not "
                         "there: the file has Windows line ends (a \\r ends each line)"),
    ("{tmp}/gone.sh", "could not start {tmp}/gone.sh: the program its first line names (#!/nonexistent/sh) is not "
                      "there"),
])
def test_a_program_not_found_says_where_it_was_looked_for(tmp_path: Path, program: str, said: str) -> None:
    (tmp_path / "windows.sh").write_bytes(b"#!/bin/sh\r\necho hi\r\n")
    (tmp_path / "gone.sh").write_text("#!/nonexistent/sh\necho hi\n")
    for script in ("windows.sh", "gone.sh"):
        (tmp_path / script).chmod(0o755)
    program, said = program.format(tmp=tmp_path), said.format(tmp=tmp_path, cwd=os.getcwd())
    result = asyncio.run(run_command([program], 5))
    assert result["output"] == said and result["started"] is False


@pytest.mark.parametrize(("example", "said"), [
    # help listed each as "how to ask", and plain words naming the runbook got "Did you mean ...?" with it
    ("run restart service=db", "`service=db` does not match the allowed pattern `^(web|api)$`"),
    ("run restrat service=web", "it is not a request for this runbook: write it as `run restart ...`"),
    ("restart the web service", "it is not a request for this runbook: write it as `run restart ...`"),
    ("run restart web", "'web' is not a key=value argument"),
    ("run restart service='web", "it cannot be read (No closing quotation)"),
])
def test_an_example_that_would_be_refused_is_named_with_its_line(tmp_path: Path, example: str, said: str) -> None:
    from bot.config import ConfigError, load_config
    path = tmp_path / "baton.yaml"
    path.write_text('runbooks:\n  restart:\n    description: Restart a service.\n'
                    '    command: ["systemctl", "restart", "{service}"]\n'
                    f'    args:\n      service: {{pattern: "^(web|api)$"}}\n    example: "{example}"\n')
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value) == (f"{path}: line 7: runbook 'restart': its example `{example}` "
                                  f"would be refused if asked: {said}"), str(refused.value)


def test_an_example_typed_with_a_phones_quotes_is_taken_as_chat_takes_it(tmp_path: Path) -> None:
    """Chat reads `msg=“hello world”` as `msg="hello world"` when it cannot be read as typed; an ``example:``
    pasted so was refused at load ("'world”' is not a key=value argument"), though asked in chat it ran."""
    from bot.config import ConfigError, load_config
    from bot.routing import RouteError, route
    from tests.test_parse_properties import REGISTRY, REQUEST
    path = tmp_path / "baton.yaml"

    def written(example: str) -> str:
        path.write_text('runbooks:\n  say:\n    description: Say something.\n    command: ["echo", "{msg}"]\n'
                        f'    args:\n      msg: {{pattern: "^[a-z ]+$"}}\n    example: \'{example}\'\n',
                        encoding="utf-8")
        return example

    example = written("run say msg=“hello world”")
    config = load_config(path)
    assert config.runbooks["say"].example == example
    assert route(REQUEST, example, REGISTRY, config).input == {"runbook": "say", "args": {"msg": "hello world"}}
    refused = written("run say msg=“Hello world”")  # either way: named as chat names it, as typed
    with pytest.raises(ConfigError, match="'world”' is not a key=value argument"):
        load_config(path)
    with pytest.raises(RouteError, match="`world”` is not a `key=value` argument"):
        route(REQUEST, refused, REGISTRY, config)


def test_an_example_as_a_teammate_would_ask_it_is_taken(tmp_path: Path) -> None:
    from bot.config import load_config
    path = tmp_path / "baton.yaml"
    path.write_text('runbooks:\n  restart:\n    description: Restart a service.\n'
                    '    command: ["systemctl", "restart", "{service}"]\n'
                    '    args:\n      service: {pattern: "^(web|api)$", default: web}\n'
                    '    example: "RUN restart service=api force"\n')
    assert load_config(path).runbooks["restart"].example == "RUN restart service=api force"
    assert load_config(Path(__file__).parent.parent / "baton.yaml").runbooks["restart"].example


def test_output_cut_at_the_limit_ends_on_a_whole_character() -> None:
    """The cut at 256 KiB fell inside a character (€ is three bytes): the output shown ended in a "\ufffd"."""
    from graphs.runbook import MAX_OUTPUT_BYTES
    result = asyncio.run(run_command([sys.executable, "-c", f"print('€' * {MAX_OUTPUT_BYTES})"], 20))
    shown, _, note = result["output"].rpartition("\n")
    assert note.startswith("[output truncated:") and "\ufffd" not in shown and shown.endswith("€")


@pytest.mark.parametrize(("lines", "where"), [
    # YAML reads {service} without quotes as a mapping: each said only "Input should be a valid string"
    ("    command:\n      - systemctl\n      - {service}\n    args:\n      service: {pattern: ^web$}\n",
     "line 6: runbooks.restart.command: part 1: "),
    ("    command: [systemctl, {service}]\n    args:\n      service: {pattern: ^web$}\n",
     "line 4: runbooks.restart.command: part 1: "),
    ('    command: [systemctl, "{service}"]\n    args:\n      service: {pattern: ^web$, default: {service}}\n',
     "line 6: runbooks.restart.args.service.default: "),
])
def test_a_placeholder_written_without_quotes_says_to_quote_it(tmp_path: Path, lines: str, where: str) -> None:
    from bot.config import ConfigError, load_config
    path = tmp_path / "baton.yaml"
    path.write_text(f"runbooks:\n  restart:\n    description: Restart.\n{lines}")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value) == (f"{path}: {where}YAML reads {{service}} without quotes as a mapping, not as text: "
                                  'put it in quotes, "{service}"'), str(refused.value)


def test_an_argument_description_folded_over_lines_reads_on_one_line(tmp_path: Path) -> None:
    """`description: >` (YAML's folded text) ends in a line break: the usage shown in chat as inline code,
    `run restart service=<one of web or api⏎>`, broke over two lines (Slack then shows the backticks), and
    the usage pasted back was not recognised as one."""
    from bot.config import load_config
    path = tmp_path / "baton.yaml"
    path.write_text('runbooks:\n  restart:\n    description: Restart.\n    command: [systemctl, restart, "{service}"]\n'
                    '    args:\n      service:\n        pattern: "^(web|api)$"\n        description: >\n'
                    '          one of web\n          or api\n')
    runbook = load_config(path).runbooks["restart"]
    assert runbook.usage_args() == "service=<one of web or api>"
    with pytest.raises(ValueError) as refused:
        runbook.validate_args({})
    assert str(refused.value) == "missing argument `service` (one of web or api)"
