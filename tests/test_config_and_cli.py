"""``baton.yaml`` validation (with line numbers) and the ``baton`` command line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from bot.config import ConfigError, load_config
from tests.support import ROOT, BatonProcess, run_cli, wait_for


def baton_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, env={**os.environ, **env})


def test_shipped_example_config_is_valid():
    config = load_config(ROOT / "baton.yaml")
    assert config.runbooks["restart"].risk == "high"
    assert config.runbooks["uptime"].argv({}) == ["uptime"]


@pytest.mark.parametrize(("text", "expected"), [
    ("runbooks:\n  up:\n    description: x\n    command: [uptime]\n    risk: medium\n", "line 5: runbooks.up.risk"),
    ("runbooks:\n  up:\n    command: [echo, '{who}']\n    description: x\n", "line 3: runbooks.up: command uses {who}"),  # the command's line, not the runbook's
    ("runbooks:\n  up:\n    description: x\n    command: [a]\n    args:\n      n:\n        pattern: '(['\n", "line 7: runbooks.up.args.n.pattern"),
    ("approvers: [alice\n", "line 1: not valid YAML"),  # where the bracket is left open (the file has no line 2)
    ("runbooks:\n  ok:\n    description: x\n    command: [a]\n  Bad Name:\n    description: x\n    command: [a]\n",
     "line 5: runbooks: runbook name 'Bad Name'"),
    ("runbook:\n  up: {}\n", "line 1: runbook: Extra inputs are not permitted"),
    ("runbooks:\n  up:\n    description: x\n    command: [a]\n  up:\n    description: y\n    command: [b]\n",
     "line 5: runbooks.up is given twice (first on line 2)"),  # YAML would keep the second silently
    # a format or conversion passed validation, then failed in chat ({n:{m}}, {n:d}) or changed the command ({n!r})
    *((f"runbooks:\n  up:\n    description: x\n    command: [echo, '{part}']\n    args:\n      n: {{pattern: '^[0-9]+$'}}\n",
       f"line 4: runbooks.up: command part '{part}': a placeholder is just {{n}}")
      for part in ("{n:{m}}", "{n:d}", "{n!r}")),
    ("runbooks:\n  up:\n    description: x\n    command: [awk, '{print $1}']\n", "a brace of its own is written {{ or }}"),
    ("runbooks:\n  up:\n    description: x\n    command: [echo, '{n}']\n    args:\n      n: {pattern: '^[0-9]+$', default: x}\n",
     "line 6: runbooks.up.args.n: the default 'x' does not match the pattern"),
    # each was accepted, then could not work: "could not start : Permission denied", a 1-second timeout,
    # an argument nobody can type in chat, a card only Reject could answer, a cost of infinity
    ("runbooks:\n  up:\n    description: x\n    command: ['']\n", "the program to run, is empty"),
    ("runbooks:\n  up:\n    description: x\n    command: [a]\n    timeout: true\n", "line 5: runbooks.up.timeout"),
    ("runbooks:\n  up:\n    description: x\n    command: [a]\n    args:\n      a b: {pattern: x}\n",
     "argument name 'a b' must match"),
    ("runbooks:\n  up:\n    description: x\n    command: [a]\n    risk: high\n",
     "line 2: runbook 'up' is high risk but has no approvers"),
    ("models:\n  prices:\n    m: {input: .inf, output: 1}\n", "line 3: models.prices.m.input: Input should be a finite"),
])
def test_invalid_config_names_the_line(tmp_path, text, expected):
    path = tmp_path / "baton.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert expected in str(error.value)


def test_aliases_work_but_cannot_loop_or_explode_and_deep_nesting_is_named(tmp_path):
    """An alias inside itself and very deep nesting were tracebacks; nested aliases ("billion laughs")
    kept Baton at 100% CPU, since every path through them was walked."""
    path = tmp_path / "baton.yaml"
    path.write_text("approvers: &ops [alice, bob]\nrunbooks:\n  up:\n    description: x\n    command: [uptime]\n"
                    "    approvers: *ops\n")
    assert load_config(path).runbooks["up"].approvers == ["alice", "bob"]
    laughs = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    laughs += [f"{name}: &{name} [{', '.join([f'*{chr(ord(name) - 1)}'] * 9)}]" for name in "bcdefghi"]
    for text, expected in (("approvers: &a [*a]\n", "line 1: an alias refers to the value it is in"),
                           ("approvers: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply to read"),
                           ("\n".join([*laughs, "approvers: *i"]) + "\n", "expands to more than 100,000 values")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=expected):
            load_config(path)


def test_a_config_that_cannot_be_read_is_named_with_the_reason(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"approvers: [alice]\n\x00\x01\xff\n")
    with pytest.raises(ConfigError, match=r"binary.yaml: line 2: not UTF-8 text \(byte 0xff\)"):
        load_config(binary)
    with pytest.raises(ConfigError, match="cannot be read: Is a directory"):
        load_config(tmp_path)
    assert load_config(tmp_path / "missing.yaml").runbooks == {}  # the default path: no runbooks yet
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml", required=True)  # BATON_CONFIG named it: a typo must not pass


def test_baton_run_with_its_port_taken_stops_before_starting_anything(tmp_path):
    """uvicorn binds after the app's start-up: Baton used to migrate, start its adapters and loops on the
    database, and only then stop."""
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([str(Path(sys.executable).parent / "baton"), "run"], cwd=tmp_path, capture_output=True,
                                text=True, timeout=60, env={**os.environ, "BATON_PORT": str(port),
                                                            "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"})
    assert result.returncode == 2
    assert f"Baton cannot listen on 127.0.0.1:{port} (BATON_HOST, BATON_PORT): Address already in use" in result.stderr
    assert not (tmp_path / "b.db").exists()


def test_baton_run_refuses_an_invalid_config(tmp_path):
    path = tmp_path / "baton.yaml"
    path.write_text("approvers: [alice]\nrunbooks:\n  up:\n    description: x\n    command: []\n")
    # The installed console script itself, started as a user would.
    result = subprocess.run([str(Path(sys.executable).parent / "baton"), "run"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "BATON_CONFIG": str(path),
                                                        "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"})
    assert result.returncode == 2
    assert "line 5: runbooks.up.command" in result.stderr
    assert not (tmp_path / "b.db").exists()
    # The console script is started as such above (and in the port test); the fork server's bot.cli will do here.
    named = baton_cli("graphs", cwd=tmp_path, env={"BATON_CONFIG": str(tmp_path / "bato.yaml")})
    assert named.returncode == 2 and "bato.yaml: no such file" in named.stderr


@pytest.mark.parametrize(("command", "env", "expected"), [
    ("run", {"BATON_PORT": "eighty"}, "BATON_PORT: Input should be a valid integer"),
    ("threads", {"BATON_LEASE_SECONDS": "0"}, "BATON_LEASE_SECONDS: Input should be greater than 0"),
    ("run", {"BATON_DATABASE_URL": "mysql://root:hunter2@db/baton"}, "BATON_DATABASE_URL: unsupported database 'mysql'"),
    ("db", {"BATON_DATABASE_URL": "sqlite://"}, "BATON_DATABASE_URL: Baton needs a SQLite file"),
    # "hunter2@x" was read as the password "hunter2" and the host "x@127.0.0.1", shown in the error
    ("run", {"BATON_DATABASE_URL": "postgresql://baton:hunter2@x@127.0.0.1/baton"}, "holds an '@': write it as %40"),
    ("run", {"BATON_DATABASE_URL": "postgresql://baton:pw@h:hunter2/baton"}, "BATON_DATABASE_URL: not a database URL"),
    # accepted once, then every request failed on a date out of range
    ("run", {"BATON_LEASE_SECONDS": "inf"}, "BATON_LEASE_SECONDS: Input should be a finite number"),
    ("run", {"BATON_DEDUPE_WINDOW_SECONDS": "99999999999999"}, "BATON_DEDUPE_WINDOW_SECONDS: Input should be less"),
    ("run", {"BATON_CHECKPOINT_RETENTION_HOURS": "1e300"}, "BATON_CHECKPOINT_RETENTION_HOURS: Input should be less"),
    ("run", {"BATON_LOG_LEVEL": "loud"}, "BATON_LOG_LEVEL: Input should be 'DEBUG', 'INFO'"),  # was a traceback
    ("run", {"BATON_HOST": ""}, "BATON_HOST: String should have at least 1 character"),  # was every interface
])
def test_invalid_settings_are_named_without_their_values(tmp_path, config_path, command, env, expected):
    args = ["db", "upgrade"] if command == "db" else [command]
    result = baton_cli(*args, cwd=tmp_path, env={"BATON_CONFIG": str(config_path), **env})
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
    assert not list(tmp_path.glob("*.db"))  # no database was made


def test_an_unusable_checkpoint_file_is_one_line(tmp_path, config_path):
    (tmp_path / "b.checkpoints.db").write_bytes(b"not a database, " * 400)
    result = baton_cli("run", cwd=tmp_path, env={"BATON_CONFIG": str(config_path), "BATON_PORT": "0",
                                                 "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"Baton cannot use its checkpoint database {tmp_path / 'b.checkpoints.db'}: file is not a database" \
        in result.stderr


def test_odd_cli_arguments_are_one_line(tmp_path, config_path):
    env = {"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"}
    unknown = baton_cli("db", "upgrade", "nosuchrev", cwd=tmp_path, env=env)
    assert unknown.returncode == 2 and "Baton cannot upgrade to 'nosuchrev': Can't locate revision" in unknown.stderr
    for limit in ("-1", "99999999999999999999"):
        refused = baton_cli("threads", "--limit", limit, cwd=tmp_path, env=env)
        assert refused.returncode == 2 and "Invalid value for '--limit'" in refused.stderr
    for result in (unknown, refused):
        assert "Traceback" not in result.stderr


def test_a_dotenv_that_is_not_utf8_is_named(tmp_path, config_path):
    (tmp_path / ".env").write_bytes(b"BATON_PORT=81\xe920\n")
    result = baton_cli("graphs", cwd=tmp_path, env={"BATON_CONFIG": str(config_path)})
    assert result.returncode == 2 and ".env is not UTF-8 text (byte 0xe9 at offset 13)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("dotenv", "lines"), [
    ("BATON_PORT=8001\nSLACK_BOT_TOKEN: xoxb-hunter2\n", "line 2"),  # YAML's colon instead of =
    ("SLACK_BOT_TOKEN='xoxb-hunter2\nBATON_PORT=8001\n# a comment\nDISCORD_TOKEN hunter2\n", "lines 1, 4"),  # unclosed quote
])
def test_a_dotenv_line_that_cannot_be_read_stops_baton_without_showing_it(tmp_path, config_path, dotenv, lines):
    """python-dotenv skipped the line with a warning, and Baton started with that setting at its default (a
    token mistyped in .env: the playground instead of Slack)."""
    (tmp_path / ".env").write_text(dotenv)
    result = baton_cli("run", cwd=tmp_path, env={"BATON_CONFIG": str(config_path),
                                                 "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"})
    assert result.returncode == 2, result.stderr
    assert f"  .env: {lines} cannot be read as NAME=value\n" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
    assert "python-dotenv could not parse" not in result.stderr  # Baton's line only, before python-dotenv reads it
    assert not (tmp_path / "b.db").exists()


def test_a_database_that_cannot_be_reached_is_one_line_without_its_password(tmp_path, config_path):
    unreachable = "postgresql://baton:hunter2@127.0.0.1:1/baton"  # port 1: nothing listens there
    for command in (["run"], ["approvals"]):
        result = baton_cli(*command, cwd=tmp_path, env={"BATON_CONFIG": str(config_path), "BATON_PORT": "0",
                                                         "BATON_DATABASE_URL": unreachable})
        assert result.returncode == 2, result.stderr
        assert "Baton cannot use the database postgresql://baton:***@127.0.0.1:1/baton: " in result.stderr
        assert "Traceback" not in result.stderr and "hunter2" not in result.stderr


def test_cli_lists_graphs_threads_and_approvals(tmp_path, config_path):
    env = {"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    upgrade = baton_cli("db", "upgrade", cwd=tmp_path, env=env)
    assert upgrade.returncode == 0 and "up to date" in upgrade.stdout
    graphs = baton_cli("graphs", cwd=tmp_path, env=env).stdout
    for name in ("help", "status", "runbook", "announce", "run restart"):
        assert name in graphs
    assert "Nothing is waiting" in baton_cli("approvals", cwd=tmp_path, env=env).stdout
    assert "No threads yet" in baton_cli("threads", cwd=tmp_path, env=env).stdout

    # From the fork server: `python -m bot.cli run` itself is started by test_playground_api's stop test.
    server = BatonProcess(env["BATON_DATABASE_URL"], config_path, tmp_path).start()
    try:
        pg = server.client()
        thread = pg.ask("@baton run restart service=web")
        card = pg.wait_card(thread)
        approvals = baton_cli("approvals", cwd=tmp_path, env=env).stdout
        header, row = approvals.splitlines()
        assert header.split() == ["asked", "(UTC)", "id", "status", "risk", "asked", "by", "may", "approve", "what"]
        assert "pending" in row and "Run `restart`" in row and "alice" in row
        assert row.split()[5:8] == ["alice", "bob", "Run"]  # asked by alice; may approve: bob only, as on the card
        header, *rows = baton_cli("threads", cwd=tmp_path, env=env).stdout.splitlines()
        assert header.startswith("updated (UTC)") and len(rows) == 1
        assert f"playground/general/{thread}" in rows[0] and "waiting" in rows[0]
        # The columns line up under the header.
        assert rows[0].index(f"playground/general/{thread}") == header.index("thread")
        pg.click(card, "bob")
        pg.wait_reply(thread, "did restart web")
        wait_for(lambda: "approved by bob" in baton_cli("approvals", "--all", cwd=tmp_path, env=env).stdout,
                 what="the decided approval in `baton approvals --all`")
        # A thread whose only request was refused says so, with the request, instead of a blank "idle".
        refused = pg.ask("@baton run restart service=web;rm")
        pg.wait_reply(refused, "Nothing was run")
        rows = baton_cli("threads", cwd=tmp_path, env=env).stdout.splitlines()[1:]
        row = next(row for row in rows if f"playground/general/{refused}" in row)
        assert "answered (rejected input)" in row and "run restart service=web;rm" in row, row
        assert any(f"playground/general/{thread}" in row and " done " in row for row in rows), rows
    finally:
        server.stop()


def test_numeric_platform_ids_are_read_as_text(tmp_path):
    path = tmp_path / "baton.yaml"
    path.write_text("approvers: [123456789012345678, alice]\nrunbooks:\n  up:\n    description: x\n"
                    "    command: [uptime]\n    approvers: [987654321098765432]\n")
    config = load_config(path)
    assert config.approvers == ["123456789012345678", "alice"]
    assert config.approvers_for_runbook("up") == ["987654321098765432"]
