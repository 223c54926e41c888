"""A runbook's environment and working directory (``env:``, ``cwd:`` in ``baton.yaml``), and arguments its
command never uses.

Every command got Baton's whole environment but for Baton's own tokens and database URL: the model's key and
whatever else ``.env`` held reached each runbook (``printenv`` showed them, redacted or not). What Baton put
there from ``.env``, and the model providers' keys, are now kept from commands unless a runbook names them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import bot.settings
from bot.config import ConfigError, load_config
from bot.kit import command_environment
from bot.settings import Settings, export_env_file
from graphs.runbook import run_command
from tests.support import BatonProcess, run_cli, wait_for
from tests.test_config_lines import marked

MODEL_KEY = "sk-live-0123456789abcdef"
FROM_ENV_FILE = {"DEPLOY_REGION": "eu-west-1", "OPENAI_API_KEY": MODEL_KEY, "SHELL_ALSO": "from-env-file"}
PRESENT = "import os; print(os.getcwd()); print(sorted(n for n in {names!r} if n in os.environ))"


@pytest.fixture
def env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A ``.env`` in the working directory, exported as ``baton`` does; the environment is put back after."""
    for name in [*FROM_ENV_FILE, "ANTHROPIC_API_KEY", "KUBECONFIG"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(bot.settings, "_exported", frozenset(), raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("".join(f"{name}={value}\n" for name, value in FROM_ENV_FILE.items()))
    monkeypatch.setenv("SHELL_ALSO", "from-the-shell")  # the shell's wins, and it is the operator's: kept
    monkeypatch.setenv("KUBECONFIG", "/home/ops/.kube/config")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-the-shell")  # a model's key, wherever it was set
    export_env_file(Settings())
    yield tmp_path / ".env"


def test_commands_do_not_get_what_baton_put_in_its_environment_nor_model_keys(env_file: Path) -> None:
    assert os.environ["DEPLOY_REGION"] == "eu-west-1"  # still Baton's own: LangChain reads the key there
    environment = command_environment()
    assert {"DEPLOY_REGION", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"}.isdisjoint(environment)
    assert environment["SHELL_ALSO"] == "from-the-shell" and environment["KUBECONFIG"] == "/home/ops/.kube/config"
    assert environment["PATH"] == os.environ["PATH"]


def test_a_command_gets_the_variables_named_for_it_but_never_batons_own_secrets(env_file: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1111-2222-secretvalue")
    environment = command_environment(["DEPLOY_REGION", "ANTHROPIC_API_KEY", "SLACK_BOT_TOKEN"])
    assert environment["DEPLOY_REGION"] == "eu-west-1" and environment["ANTHROPIC_API_KEY"] == "sk-ant-from-the-shell"
    assert "SLACK_BOT_TOKEN" not in environment and "OPENAI_API_KEY" not in environment


def test_a_change_of_batons_environment_reaches_the_next_command(env_file: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """What is left out is cached; the environment itself is read at each command."""
    command_environment()
    monkeypatch.setenv("RELEASE", "2026.12")
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("GROQ_API_KEY", "gsk-0123456789")
    environment = command_environment()
    assert environment["RELEASE"] == "2026.12" and "KUBECONFIG" not in environment and "GROQ_API_KEY" not in environment
    (env_file.parent / ".env").write_text("LATER=1\n")
    export_env_file(Settings())  # exported again: what it put there is left out too
    assert os.environ["LATER"] == "1" and "LATER" not in command_environment()
    monkeypatch.delenv("LATER")


def test_a_command_runs_in_its_runbooks_directory_with_its_variables(env_file: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    script = PRESENT.format(names=("DEPLOY_REGION", "OPENAI_API_KEY", "KUBECONFIG"))
    result = asyncio.run(run_command([sys.executable, "-c", script], 10, cwd=str(work), env=["DEPLOY_REGION"]))
    assert result["exit_code"] == 0 and result["output"].splitlines() == [str(work), "['DEPLOY_REGION', 'KUBECONFIG']"]


def test_a_working_directory_gone_since_baton_yaml_was_read_is_named(tmp_path: Path) -> None:
    """It said "could not start ./deploy.sh: No such file or directory", as if the program were missing."""
    gone = tmp_path / "release"
    result = asyncio.run(run_command(["./deploy.sh"], 10, cwd=str(gone)))
    assert not result["started"]
    assert result["output"] == f"could not start ./deploy.sh: its working directory {gone} is not there (any more)"


def test_a_relative_program_is_looked_for_in_the_runbooks_directory(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    result = asyncio.run(run_command(["./deploy.sh"], 10, cwd=str(tmp_path / "work")))
    assert result["output"].endswith(
        f"(a relative path is taken from the runbook's working directory, {tmp_path / 'work'})")


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "baton.yaml"
    path.write_text(text)
    return path


def test_env_and_cwd_are_read_from_baton_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "deploy").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(_config(tmp_path, """
runbooks:
  deploy:
    description: Deploy.
    command: [./deploy.sh]
    env: [DEPLOY_REGION, OPENAI_API_KEY]
    cwd: deploy
  home:
    description: At home.
    command: [ls]
    cwd: ~/deploy
  plain:
    description: As before.
    command: [uptime]
"""))
    deploy, home, plain = config.runbooks["deploy"], config.runbooks["home"], config.runbooks["plain"]
    assert deploy.env == ["DEPLOY_REGION", "OPENAI_API_KEY"] and deploy.cwd == str(tmp_path / "deploy")
    assert home.cwd == str(tmp_path / "deploy")  # relative and ~ are read when the file is: Baton's directory then
    assert plain.env == [] and plain.cwd is None
    assert config.warnings == []


RUNBOOK = """
runbooks:
  deploy:
    description: Deploy.
    command: [./deploy.sh]
"""
# Each refused on the marked line (``#<``) saying what is wrong; a value written in env is never quoted back.
BAD = {
    "a value after the name": (RUNBOOK + """    env:
      - DEPLOY_REGION
      - OPENAI_API_KEY=sk-live-0123456789abcdef #<
""", "env lists variable names only: the values come from Baton's environment (.env or the shell): write just "
     "OPENAI_API_KEY"),
    "a name and its value, as docker-compose writes them": (RUNBOOK + """    env:
      - OPENAI_API_KEY: sk-live-0123456789abcdef #<
""", "write just OPENAI_API_KEY"),
    "a mapping of names and values": (RUNBOOK + """    env: #<
      OPENAI_API_KEY: sk-live-0123456789abcdef
""", "write it as [OPENAI_API_KEY]"),
    "one name, not a list": (RUNBOOK + """    env: DEPLOY_REGION #<
""", "env is a list of variable names: write it as [DEPLOY_REGION]"),
    "nothing": (RUNBOOK + """    env: #<
""", "env is empty"),
    "not a name": (RUNBOOK + """    env:
      - DEPLOY-REGION #<
""", "entry 0 is not a variable name: a name has only letters, digits and _"),
    "a number": (RUNBOOK + """    env: [DEPLOY_REGION,
          5] #<
""", "entry 1 is not a variable name"),
    "baton's own secret": (RUNBOOK + """    env:
      - SLACK_BOT_TOKEN #<
""", "SLACK_BOT_TOKEN is Baton's own secret"),
    "baton's database": (RUNBOOK + """    env:
      - baton_database_url #<
""", "baton_database_url is Baton's own secret"),
    "a name twice": (RUNBOOK + """    env:
      - DEPLOY_REGION
      - DEPLOY_REGION #<
""", "DEPLOY_REGION is listed twice"),
    "a directory that is not there": (RUNBOOK + """    cwd: /nowhere/at/all #<
""", "the directory /nowhere/at/all does not exist"),
    "a relative directory that is not there": (RUNBOOK + """    cwd: releases/current #<
""", "does not exist (a relative path is taken from Baton's working directory, "),
    "a file, not a directory": (RUNBOOK + """    cwd: baton.yaml #<
""", "baton.yaml is not a directory"),
    "an empty directory name": (RUNBOOK + """    cwd: '' #<
""", "cwd is empty"),
    "a number for a directory": (RUNBOOK + """    cwd: 2026 #<
""", "YAML reads this as a number (2026), not as text"),
    # A list or a mapping was called "a number (['/srv/ops'])", and told to be put in quotes as '5' is
    "a list for a directory": (RUNBOOK + """    cwd: [/srv/ops] #<
""", "YAML reads this as a list ([/srv/ops]), not as text: write one directory"),
    "a placeholder for a directory": (RUNBOOK + """    cwd: {workdir} #<
""", "YAML reads {workdir} without quotes as a mapping, not as text"),
    "a list among the names": (RUNBOOK + """    env: [[DEPLOY_REGION]] #<
""", "entry 0 is not a variable name (YAML reads this as a list ([DEPLOY_REGION]), not as text"),
    # The README says ~ is Baton's home directory: YAML reads a bare ~ as null, which was refused as "cwd is empty"
    "a bare ~ for the home directory": (RUNBOOK + """    cwd: ~ #<
""", "YAML reads a bare ~ as null, not as the home directory: write '~' in quotes"),
    "docker-compose's name for the directory": (RUNBOOK + """    working_dir: /tmp #<
""", "did you mean 'cwd'?"),
    "docker-compose's name for the variables": (RUNBOOK + """    environment: [DEPLOY_REGION] #<
""", "did you mean 'env'?"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_wrong_env_or_cwd_is_refused_on_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    monkeypatch.chdir(tmp_path)
    text, wrong = marked(BAD[case][0])
    path = _config(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert re.fullmatch(rf"{re.escape(str(path))}: line {wrong}: runbooks\.deploy\.\S+: .*", message), message
    assert BAD[case][1] in message and MODEL_KEY not in message


def test_a_directory_baton_may_not_enter_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:  # root enters every directory
        monkeypatch.setattr(os, "access", lambda path, mode, **_: mode != os.X_OK)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o600)
    with pytest.raises(ConfigError, match=re.escape(f"line 6: runbooks.deploy.cwd: Baton's user may not "
                                                    f"enter the directory {locked} (its permissions)")):
        load_config(_config(tmp_path, RUNBOOK + f"    cwd: {locked}\n"))


UNUSED = """
runbooks:
  restart:
    description: Restart a service.
    command: [systemctl, restart, web]
    args:
      service: {pattern: '^(web|api)$'}
      ticket:
        pattern: '^[A-Z]+-[0-9]+$'
  uptime:
    description: Uptime.
    command: [uptime, '{verbose}']
    args:
      verbose: {pattern: '^-p$', default: '-p'}
"""


def test_an_argument_the_command_never_uses_is_a_warning_with_its_line(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """``service`` was asked for and checked, then dropped: ``run restart service=api`` restarted web."""
    path = _config(tmp_path, UNUSED)
    with caplog.at_level(logging.WARNING, logger="bot.config"):
        config = load_config(path)
    assert set(config.runbooks) == {"restart", "uptime"}  # not refused
    assert config.warnings == [
        f"{path}: line 7: runbooks.restart.args.service: the command never uses {{service}}: a value given for it is "
        "checked, then not used (write \"{service}\" in the command, or remove the argument; one kept only for the "
        "record, a ticket number, may stay)",
        f"{path}: line 8: runbooks.restart.args.ticket: the command never uses {{ticket}}: a value given for it is "
        "checked, then not used (write \"{ticket}\" in the command, or remove the argument; one kept only for the "
        "record, a ticket number, may stay)"]
    assert [record.getMessage() for record in caplog.records if record.name == "bot.config"] == config.warnings


def test_baton_graphs_shows_an_unused_argument(tmp_path: Path) -> None:
    path = _config(tmp_path, UNUSED)
    result = run_cli("graphs", cwd=tmp_path, env={**os.environ, "BATON_CONFIG": str(path),
                                                  "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"})
    assert result.returncode == 0, result.stderr
    assert "run restart" in result.stdout
    assert f"{path}: line 7: runbooks.restart.args.service: the command never uses {{service}}" in result.stderr


def test_a_runbook_gets_its_directory_and_only_the_variables_it_names(tmp_path: Path, sqlite_url: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Through ``baton run``, whose ``.env`` holds a model key and a deploy setting: a runbook without ``env:``
    gets neither, one that names them gets them, in its own directory; an approval card says both."""
    (tmp_path / ".env").write_text("".join(f"{name}={value}\n" for name, value in FROM_ENV_FILE.items()))
    work = tmp_path / "work"
    work.mkdir()
    script = PRESENT.format(names=("DEPLOY_REGION", "OPENAI_API_KEY", "SHELL_ALSO"))
    command = [sys.executable, "-c", script]
    config = tmp_path / "baton.yaml"
    runbooks: dict[str, dict[str, object]] = {
        "plain": {"description": "Without env.", "command": command, "timeout": 10},
        "named": {"description": "With env.", "command": command, "timeout": 10, "cwd": str(work),
                  "env": ["DEPLOY_REGION", "OPENAI_API_KEY"]},
        "guarded": {"description": "Approved first.", "command": command, "timeout": 10, "cwd": str(work),
                    "env": ["DEPLOY_REGION"], "risk": "high"}}
    config.write_text(yaml.safe_dump({"approvers": ["bob"], "runbooks": runbooks}))
    for name in FROM_ENV_FILE:  # none of .env's names in the environment baton starts with
        monkeypatch.delenv(name, raising=False)
    baton = BatonProcess(sqlite_url, config, tmp_path, env={"SHELL_ALSO": "from-the-shell"}).start()
    try:
        pg = baton.client()
        plain = pg.wait_reply(pg.ask("@baton run plain"), "finished")
        assert _output(plain) == f"{tmp_path}\n['SHELL_ALSO']", plain["text"]
        named = pg.wait_reply(pg.ask("@baton run named"), "finished")
        assert _output(named) == f"{work}\n['DEPLOY_REGION', 'OPENAI_API_KEY', 'SHELL_ALSO']", named["text"]
        thread = pg.ask("@baton run guarded")
        card = pg.wait_card(thread)
        assert f"directory: {work}" in card["text"] and "environment: DEPLOY_REGION" in card["text"], card["text"]
        assert pg.click(card, "bob").status_code == 202
        guarded = pg.wait_reply(thread, "finished")
        assert _output(guarded) == f"{work}\n['DEPLOY_REGION', 'SHELL_ALSO']", guarded["text"]

        # An approval covers the directory and the variables its card showed: baton.yaml changed them since.
        thread = pg.ask("@baton run guarded force")  # not a link to the run just done
        card = pg.wait_card(thread)
        runbooks["guarded"]["env"] = ["DEPLOY_REGION", "OPENAI_API_KEY"]
        config.write_text(yaml.safe_dump({"approvers": ["bob"], "runbooks": runbooks}))
        read_again = baton.log.read_text().count("read again")
        assert baton.process is not None
        baton.process.send_signal(signal.SIGHUP)
        wait_for(lambda: baton.log.read_text().count("read again") > read_again, what="baton.yaml read again")
        assert pg.click(card, "bob").status_code == 202
        refused = pg.wait_reply(thread, "nothing was run")
        assert "its working directory or the variables it gets (cwd, env) are not those planned" in refused["text"]
        assert "finished" not in str(pg.bot_replies(thread))
    finally:
        baton.stop()
    assert MODEL_KEY not in baton.log.read_text()


def _output(reply: dict[str, object]) -> str:
    """The command's output a runbook's reply shows (its code part)."""
    return next(part["text"] for part in reply["content"]["parts"] if part["kind"] == "code")  # type: ignore[index]
