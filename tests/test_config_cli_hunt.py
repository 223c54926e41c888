"""``baton.yaml``, the settings and the ``baton`` command line as a demanding operator uses them: each
mistake is one clear message naming the line or the setting, never a traceback, never a password."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.config import ConfigError, load_config
from bot.settings import Settings
from tests.support import overrides, run_cli


def baton_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, env={**os.environ, **env})


@pytest.mark.parametrize(("text", "expected"), [
    # A control character: "unknown line", and PyYAML's own two lines with the character's offset.
    ("approvers: [alice]\nrunbooks:\n  up:\n    description: up\x07time\n    command: [uptime]\n",
     "baton.yaml: line 4: not valid YAML: the character U+0007 is not allowed"),
    # Said only "line 2: not valid YAML: second occurrence" (of what, and where was the first?).
    ("approvers: &ops [alice]\nrunbooks: &ops {}\n",
     "line 2: not valid YAML: found duplicate anchor 'ops'; first occurrence on line 1, second occurrence here"),
    ("approvers: [alice]\n---\napprovers: [bob]\n",
     "line 2: not valid YAML: expected a single document in the stream on line 1, but found another document here"),
    # The program with its arguments in one part: accepted, then "could not start" at every run.
    ("runbooks:\n  disk:\n    description: x\n    command: [\"df -h /\"]\n",
     "line 4: runbooks.disk: the program to run is 'df -h /', spaces and all: each argument is a part "
     "of its own, without spaces around it ([\"df\", \"-h\", \"/\"])"),
    ("runbooks:\n  up:\n    description: x\n    command: [' uptime']\n", "the program to run is ' uptime', spaces"),
    # a typo said only "Extra inputs are not permitted"
    ("aprovers: [alice]\n", "line 1: aprovers: Extra inputs are not permitted (did you mean 'approvers'?)"),
    ("runbooks:\n  up:\n    description: x\n    command: [a]\n    timout: 5\n",
     "line 5: runbooks.up.timout: Extra inputs are not permitted (did you mean 'timeout'?)"),
    # "Input should be a valid list", which says nothing of how to write one
    ("approvers: alice, bob\n", "line 1: approvers: approvers are a list of user ids: write it as [alice, bob]"),
    ("approvers: [bob]\nrunbooks:\n  up:\n    description: x\n    command: [a]\n    approvers: alice\n",
     "line 6: runbooks.up.approvers: approvers are a list of user ids: write it as [alice]"),
    # nobody's id: taken, and the high-risk runbook it was the only approver of could never be approved
    ("runbooks:\n  up:\n    description: x\n    command: [a]\n    risk: high\n    approvers: [\"\"]\n",
     "line 6: runbooks.up.approvers: an approver is empty: remove it, or write the user id"),
    ("approvers: [\" alice\"]\n", "line 1: approvers: the approver ' alice' has spaces around it: "
                                  "write 'alice'"),
    ("approvers: [\"bo\\u200bb\"]\n", "line 1: approvers: the approver 'bob' holds an invisible "
                                   "character (U+200B): write the id again by hand"),
    # an empty list of its own replaces the top-level one: it was said to have none "here or at the top"
    ("approvers: [alice, bob]\nrunbooks:\n  up:\n    description: x\n    command: [a]\n    risk: high\n"
     "    approvers: []\n", "line 7: runbook 'up' is high risk, and its empty approvers list replaces the top-level "
                          "one (alice, bob), so nobody could ever approve it: remove it to use those, or name its own"),
    # a channel written as chat shows it: '#' began a YAML comment ("Input should be a valid string"), or quoted, it
    # was told a regular expression
    ("digests:\n  - platform: playground\n    channel: #ops\n    cron: '0 9 * * *'\n",
     "line 3: digests.0.channel: the channel is empty: YAML reads a # after a space, and what follows it, as a "
     "comment: write the channel without its #"),
    ("digests:\n  - platform: playground\n    channel: '#ops'\n    cron: '0 9 * * *'\n",
     "line 3: digests.0.channel: write the channel without its #, as ops"),
    # a platform's prefix written with a space after its colon: YAML reads a mapping, "Input should be a valid string"
    ("approvers:\n  - alice\n  - slack: U0123ABCD\n", "line 3: approvers: the approver 'slack: U0123ABCD' is a "
                                                      "mapping to YAML (a colon and a space): write slack:U0123ABCD"),
    ("runbooks:\n  up:\n    description: x\n    command: [a]\n    approvers: [{discord: 1234}]\n",
     "line 5: runbooks.up.approvers: the approver 'discord: 1234' is a mapping to YAML (a colon and a space): "
     "write discord:1234"),
])
def test_a_config_mistake_is_named_with_its_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "baton.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)  # one line


def test_a_program_whose_path_holds_a_space_is_taken(tmp_path: Path) -> None:
    path = tmp_path / "baton.yaml"
    path.write_text("runbooks:\n  up:\n    description: x\n    command: ['/opt/My Tools/up', '--all']\n")
    assert load_config(path).runbooks["up"].argv({}) == ["/opt/My Tools/up", "--all"]


def test_a_config_that_only_begins_its_document_is_empty(tmp_path: Path) -> None:
    """A file with only comments was an empty configuration, but with YAML's '---' above them it was refused:
    "the top level must be a mapping"."""
    path = tmp_path / "baton.yaml"
    path.write_text("---\n# runbooks come later\n")
    assert load_config(path).runbooks == {}


@pytest.mark.parametrize("adapters", [",", " ", " , "])
def test_an_adapter_list_without_names_is_as_unset(adapters: str) -> None:
    """It started Baton with no adapter at all ("Baton is starting with: "), serving nobody."""
    assert Settings(_env_file=None, BATON_ADAPTERS=adapters).enabled_adapters() is None  # type: ignore[call-arg]
    assert Settings(_env_file=None, BATON_ADAPTERS=" playground, ").enabled_adapters() == {"playground"}  # type: ignore[call-arg]


@pytest.mark.parametrize(("env", "expected"), [
    # Path("") is ".": "Baton cannot start: . is not valid: .: cannot be read: Is a directory".
    ({"BATON_CONFIG": ""}, "BATON_CONFIG: is empty: name the file, or unset it"),
    # Without its scheme the playground refused every request, saying to set BATON_PUBLIC_URL.
    ({"BATON_PUBLIC_URL": "baton.example.com"}, "BATON_PUBLIC_URL: must be an http:// or https:// address"),
    ({"BATON_PUBLIC_URL": "http://[baton"}, "BATON_PUBLIC_URL: must be an http:// or https:// address"),
])
def test_an_unusable_setting_is_named(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    result = baton_cli("graphs", cwd=tmp_path, env=env)
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_public_url_with_its_scheme_is_taken() -> None:
    settings = Settings(_env_file=None, BATON_PUBLIC_URL="https://baton.example.com:8443/")  # type: ignore[call-arg]
    assert settings.base_url == "https://baton.example.com:8443"
    with pytest.raises(ValidationError):
        Settings(_env_file=None, BATON_PUBLIC_URL="localhost:8000")  # type: ignore[call-arg]


def test_approvals_lists_one_whose_question_is_empty(tmp_path: Path, config_path: Path) -> None:
    """A graph's ``interrupt("")`` is stored with an empty summary: `baton approvals` stopped on an IndexError."""
    env = {"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}"}
    assert baton_cli("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    with closing(sqlite3.connect(tmp_path / "a.db")) as connection, connection:
        for token, summary in (("quiet", ""), ("spaced", "\n\nDeploy web?")):
            connection.execute(
                "INSERT INTO approvals (id, run_id, thread_record_id, interrupt_id, graph, summary, details, risk, "
                "approvers, requested_by, kind, status, created_at) VALUES (?, 1, 1, ?, 'deploy', ?, '{}', 'high', "
                "'[\"bob\"]', 'alice', 'approval', 'pending', '2026-12-05 00:00:00')", (token, token, summary))
    result = baton_cli("approvals", cwd=tmp_path, env=env)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    rows = result.stdout.splitlines()[1:]
    assert any(" quiet " in row and row.rstrip().endswith("bob") for row in rows), rows
    assert any(" spaced " in row and row.endswith("Deploy web?") for row in rows), rows


@pytest.mark.parametrize("revision", ["", "+1", "head+1", "0003@head", "nosuchrev", "x\x1b]0;owned\x07"])
def test_db_upgrade_refuses_a_revision_it_cannot_take_before_opening_the_database(
        tmp_path: Path, config_path: Path, revision: str) -> None:
    """"" and "head+1" were tracebacks (an AssertionError in Alembic); "+1" and "0003@head" migrated, then said
    "'+1' is not ahead of it, so nothing changed"; an unknown one left an empty database file behind."""
    env = {"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'up.db'}"}
    result = baton_cli("db", "upgrade", "--", revision, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stdout
    assert "Can't locate revision: name one of 0001, 0002" in result.stderr and "Traceback" not in result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert not (tmp_path / "up.db").exists()


def test_db_upgrade_base_on_a_new_database_says_so(tmp_path: Path, config_path: Path) -> None:
    """It said "Database is at revision None"."""
    env = {"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'up.db'}"}
    result = baton_cli("db", "upgrade", "base", cwd=tmp_path, env=env)
    assert result.returncode == 0 and result.stdout.startswith("Database has no Baton tables yet"), result.stdout
    assert "None" not in result.stdout


@pytest.mark.parametrize("command", [["run"], ["threads"], ["db", "upgrade"]])
def test_a_password_given_in_the_url_query_is_not_shown(tmp_path: Path, config_path: Path, command: list[str]) -> None:
    """libpq takes the password as ``?password=`` too: the URL was shown with it when the database could not
    be reached (only the one before the host was hidden)."""
    env = {"BATON_CONFIG": str(config_path), "BATON_PORT": "0",
           "BATON_DATABASE_URL": "postgresql://baton@127.0.0.1:1/baton?sslmode=disable&password=hunter2"}  # port 1: closed
    result = baton_cli(*command, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert "Baton cannot use the database postgresql://baton@127.0.0.1:1/baton?password=***&sslmode=disable: " \
        in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_an_ipv6_host_is_taken_with_or_without_brackets() -> None:
    """``BATON_HOST=[::1]`` (as URLs write it) could not be bound ("Name or service not known"), and with
    ``::1`` the playground's address was printed as http://::1:8000/, which no browser opens."""
    from bot.cli import _listening_socket

    for host in ("::1", "[::1]"):
        settings = Settings(_env_file=None, BATON_HOST=host)  # type: ignore[call-arg]
        assert settings.host == "::1" and settings.base_url == "http://[::1]:8000"
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    listening = _listening_socket(Settings(_env_file=None, BATON_HOST="[::1]").host, 0)  # type: ignore[call-arg]
    try:
        assert listening.getsockname()[0] == "::1"
    finally:
        listening.close()


def test_what_baton_yaml_holds_reaches_the_terminal_without_its_control_codes(tmp_path: Path) -> None:
    """`baton graphs` printed a runbook's description as it was, and a config error the name it quotes: an
    escape sequence there acted on the operator's terminal (retitled it, cleared it)."""
    path = tmp_path / "baton.yaml"
    path.write_text('runbooks:\n  up:\n    description: "up\\e]0;owned\\a"\n    command: [uptime]\n')
    listed = baton_cli("graphs", cwd=tmp_path, env={"BATON_CONFIG": str(path)})
    assert listed.returncode == 0, listed.stderr
    assert "run up       up\ufffd]0;owned\ufffd  [risk low]" in listed.stdout and "\x1b" not in listed.stdout
    path.write_text('runbooks:\n  "\\e[2Jup":\n    description: x\n    command: [uptime]\n')
    refused = baton_cli("graphs", cwd=tmp_path, env={"BATON_CONFIG": str(path)})
    assert refused.returncode == 2 and "runbook name '\ufffd[2Jup' must match" in refused.stderr, refused.stderr
    assert "\x1b" not in refused.stderr and refused.stderr.count("\n") == 2  # the lines themselves are kept


def test_one_mistake_made_in_every_runbook_is_named_in_a_screen(tmp_path: Path) -> None:
    """``desc:`` for ``description:`` in 40 runbooks was 80 lines, the first ones scrolled away."""
    path = tmp_path / "baton.yaml"
    path.write_text("runbooks:\n" + "".join(f"  rb{i}:\n    desc: x\n    command: [a]\n" for i in range(40)))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    lines = str(error.value).split("\n")
    assert len(lines) == 13
    assert lines[0] == f"{path}: line 2: runbooks.rb0.description: Field required"
    assert lines[-1] == f"{path}: and 68 more problems"


@pytest.mark.parametrize("command", [["run"], ["db", "upgrade"], ["threads"]])
def test_a_sqlite_file_whose_place_is_wrong_is_named(tmp_path: Path, config_path: Path, command: list[str]) -> None:
    """SQLite says only "unable to open database file" for a directory, or a file in a directory that is not
    there (``sqlite:///~/baton.db``: no ``~`` is expanded)."""
    (tmp_path / "data").mkdir()
    env = {"BATON_CONFIG": str(config_path), "BATON_PORT": "0"}
    cases = [(f"sqlite:///{tmp_path / 'data'}", f"{tmp_path / 'data'} is a directory; name a file in it")]
    if command != ["threads"]:  # which says there is no such file
        cases.append(("sqlite:///~/baton.db", "there is no directory ~ for it"))
    for url, expected in cases:
        result = baton_cli(*command, cwd=tmp_path, env={**env, "BATON_DATABASE_URL": url})
        assert result.returncode == 2, result.stderr
        assert result.stderr == f"Baton cannot use the database {url}: {expected}\n"
    assert not (tmp_path / "~").exists()


def test_a_dotenv_that_cannot_be_read_is_one_line(tmp_path: Path, config_path: Path) -> None:
    """A .env Baton may not read (its permissions; here a file whose reading fails) was a traceback."""
    (tmp_path / ".env").symlink_to("/proc/self/mem")  # a file, whose read() fails with EIO
    result = baton_cli("graphs", cwd=tmp_path, env={"BATON_CONFIG": str(config_path)})
    assert result.returncode == 2 and result.stderr == "Baton's settings: .env cannot be read: Input/output error\n", \
        result.stderr


def test_baton_run_says_when_it_starts_without_a_baton_yaml(tmp_path: Path) -> None:
    """Started in another directory, Baton ran with no runbooks and no approvers, without a word: the first
    sign was "unknown runbook" in chat. The same with a `.env` copied from .env.example, whose live
    BATON_CONFIG=baton.yaml line made the missing file a refusal to start."""
    from tests.support import ROOT

    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    with closing(socket.socket()) as taken:  # so that it stops right after, where it would listen
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {"BATON_PORT": str(taken.getsockname()[1]), "BATON_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"}
        env = {name: value for name, value in {**os.environ, **env}.items() if name != "BATON_CONFIG"}
        result = run_cli("run", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "cannot listen" in result.stderr, result.stderr
    assert result.stdout == f"No baton.yaml in {tmp_path}: Baton starts without runbooks or approvers (BATON_CONFIG " \
        "names the file).\n"
    (tmp_path / "baton.yaml").write_text("approvers: [alice]\n")
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("run", cwd=tmp_path, env={**env, "BATON_PORT": str(taken.getsockname()[1])})
    assert result.returncode == 2 and result.stdout == ""


def test_a_config_path_in_the_home_directory_is_found_from_dotenv(tmp_path: Path) -> None:
    """No shell expands a .env line: ``BATON_CONFIG=~/baton.yaml`` was looked for in a directory named ``~``."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "ops.yaml").write_text("runbooks:\n  up:\n    description: Host uptime.\n    command: [uptime]\n")
    (tmp_path / ".env").write_text("BATON_CONFIG=~/ops.yaml\n")
    env = {name: value for name, value in os.environ.items() if name != "BATON_CONFIG"}
    result = run_cli("graphs", cwd=tmp_path, env={**env, "HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert "run up       Host uptime.  [risk low]" in result.stdout


def test_a_digest_for_a_discord_channel_takes_its_ids_bare(tmp_path: Path) -> None:
    """Approvers' bare Discord ids are read as text; a digest's were refused ("Input should be a valid string"),
    saying nothing of the quotes they needed."""
    path = tmp_path / "baton.yaml"
    path.write_text("digests:\n  - platform: discord\n    channel: 123456789012345678\n"
                    "    workspace: 987654321098765432\n    cron: '0 9 * * 1-5'\n")
    digest = load_config(path).digests[0]
    assert (digest.channel, digest.workspace) == ("123456789012345678", "987654321098765432")


def test_a_description_over_several_lines_is_listed_on_one(tmp_path: Path) -> None:
    path = tmp_path / "baton.yaml"
    path.write_text("runbooks:\n  up:\n    description: |\n      Host uptime,\n      and its load.\n    command: [uptime]\n")
    listed = baton_cli("graphs", cwd=tmp_path, env={"BATON_CONFIG": str(path)})
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[-1] == "run up       Host uptime, and its load.  [risk low]"


def test_a_database_server_that_never_answers_is_one_line_not_a_silent_hang(tmp_path: Path, config_path: Path) -> None:
    """A server that takes the connection and never answers (hung, or a wrong port whose program waits for
    the client to speak): libpq waits for ever without ``connect_timeout``, and `baton run` hung at start
    without a word. Baton gives every PostgreSQL connection 10 s unless the URL names its own."""
    import threading

    from storage.checkpointer import postgres_conninfo
    from storage.db import async_url, sync_url

    url = "postgresql://baton@db.example/baton"
    assert async_url(url).endswith("/baton?connect_timeout=10") and sync_url(url).endswith("/baton?connect_timeout=10")
    assert "connect_timeout=10" in postgres_conninfo(url)
    assert "connect_timeout=3" in postgres_conninfo(f"{url}?connect_timeout=3")
    assert async_url(f"{url}?connect_timeout=3").endswith("/baton?connect_timeout=3")

    silent = socket.create_server(("127.0.0.1", 0))
    taken: list[socket.socket] = []

    def take() -> None:
        try:
            while True:
                taken.append(silent.accept()[0])
        except OSError:  # closed at the end of the test
            pass

    threading.Thread(target=take, daemon=True).start()
    try:
        env = {"BATON_CONFIG": str(config_path), "BATON_PORT": "0",
               "BATON_DATABASE_URL": f"postgresql://baton@127.0.0.1:{silent.getsockname()[1]}/baton"}
        # Baton's own timeout, 2 s here (libpq's least) instead of 10: the URL names none, so only Baton's default
        # can end the wait.
        quick = overrides({"storage.db.PG_CONNECT_TIMEOUT_SECONDS": 2})
        result = baton_cli("run", cwd=tmp_path, env={**env, **quick})  # the old code: TimeoutExpired after 60 s
    finally:
        silent.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        silent.close()
        for connection in taken:
            connection.close()
    assert result.returncode == 2, result.stderr
    assert f"Baton cannot use the database {env['BATON_DATABASE_URL']}: connection timeout expired" in result.stderr
    assert "Traceback" not in result.stderr
