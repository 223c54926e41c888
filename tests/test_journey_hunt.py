"""A coordinator's day through chat requests and the command line: typos, `run help`, telling approvals apart."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bot.config import BatonConfig, load_config
from bot.kit import Request
from bot.registry import GraphRegistry
from bot.routing import RouteError, route, runbook_named
from storage.db import Database
from storage.models import Approval, AuditEntry, Run, ThreadRecord
from tests.support import ROOT, run_cli

CONFIG: BatonConfig = load_config(ROOT / "baton.yaml")
REGISTRY = GraphRegistry.discover()
REQUEST = Request(platform="playground", channel="general", thread="1", user="alice", text="")


def refusal(text: str) -> str:
    with pytest.raises(RouteError) as error:
        route(REQUEST, text, REGISTRY, CONFIG)
    return str(error.value)


@pytest.mark.parametrize(("text", "meant"), [("run restrat service=web", "restart"), ("run Uptme", "uptime"),
                                             ("run dsik", "disk")])
def test_a_misspelt_runbook_gets_a_did_you_mean(text: str, meant: str) -> None:
    """"I don't know a runbook called `restrat`" listed every runbook, leaving the reader to spot the typo."""
    said = refusal(text)
    assert said.startswith("I don't know a runbook called") and f"Did you mean `{meant}`?" in said, said
    assert "Did you mean" not in refusal("run deploy")  # nothing close: no guess


@pytest.mark.parametrize("key", ["Service", "sevice", "SERVICE"])
def test_a_misspelt_argument_name_gets_a_did_you_mean(key: str) -> None:
    """`Run Restart Service=web` said "unknown argument `Service`; missing argument `service`" and nothing more."""
    said = refusal(f"run restart {key}=web")
    assert f"unknown argument `{key}`" in said and f"Did you mean `service=` for `{key}=`?" in said, said
    assert said.endswith("Nothing was run.")
    assert "Did you mean" not in refusal("run restart color=red service=web")


@pytest.mark.parametrize("text", ["run", "run help", "RUN HELP", "run ?"])
def test_run_alone_or_run_help_says_how_each_runbook_is_asked_for(text: str) -> None:
    """`run help` was "I don't know a runbook called `help`", and `run` alone named the runbooks without their
    arguments: which ones `restart` takes, and that it needs approval, was nowhere."""
    said = refusal(text)
    assert said.startswith("Which runbook?"), said
    assert "• `run restart service=<one of web, api, worker>` — Restart a service. (needs approval)" in said
    assert "• `run uptime` — How long the host has been up, and its load." in said


@pytest.mark.parametrize("text", ["run restart service = web", "run restart service= web", "run restart service =web",
                                  "run restart --service web", "run restart --service=web", "run restart service:web",
                                  "run restart service web"])
def test_an_argument_written_another_way_gets_the_request_as_it_was_meant(text: str) -> None:
    """`service = web`, `--service web`, `service:web` got "`service` is not a `key=value` argument; `=` is not a
    `key=value` argument; `web` is not ..." and the usage, never the request to write instead. Nothing runs on a guess."""
    said = refusal(text)
    assert "Did you mean `run restart service=web`?" in said and said.endswith("Nothing was run."), said
    assert "Did you mean" not in refusal("run restart service = db")  # read so, it is still no valid request


def echo_config(tmp_path: Path) -> BatonConfig:
    path = tmp_path / "baton.yaml"
    path.write_text('runbooks:\n  echo:\n    description: Echo.\n    command: ["echo", "{msg}"]\n'
                    '    args:\n      msg: {pattern: "^[A-Za-z\' ]{1,80}$"}\n      to: {pattern: "^[a-z]+$", default: "all"}\n')
    return load_config(path)


@pytest.mark.parametrize(("text", "msg"), [("run echo msg=\u201chello world\u201d", "hello world"),
                                           ("run echo msg=\u2018hello world\u2019 to=ops", "hello world"),
                                           ("run echo msg=\u201cit\u2019s here\u201d", "it's here"),
                                           ("run echo msg=\u201cit's here\u201d", "it's here"),  # ' in “”
                                           ("run echo msg=it\u2019s", None)])
def test_quotes_a_phone_typed_group_an_argument_as_plain_quotes_do(tmp_path: Path, text: str, msg: str | None) -> None:
    """iOS (Smart Punctuation) and macOS type `msg="hello world"` as `msg=“hello world”`: the request was refused
    ("`msg=“hello` does not match the allowed pattern; `world”` is not a `key=value` argument"), and typing it
    again on the phone typed the same quotes."""
    config = echo_config(tmp_path)
    if msg is None:  # an apostrophe that is no quote: the value as it was typed, which the pattern refuses
        with pytest.raises(RouteError, match="does not match the allowed pattern"):
            route(REQUEST, text, REGISTRY, config)
        return
    routed = route(REQUEST, text, REGISTRY, config)
    assert routed.input["args"]["msg"] == msg
    assert runbook_named(text) == "echo"


def baton_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, env={**os.environ, **env})


@pytest.mark.asyncio
async def test_approvals_say_which_request_each_is_for_and_where(database: Database, database_url: str,
                                                                 tmp_path: Path, config_path: Path) -> None:
    """Two cards of one runbook were two identical lines ("Run `restart`: Restart a service."): which one was for
    `service=api`, and in which thread to click it, `baton approvals` did not say."""
    async with database.session() as session:
        for number, (service, user) in enumerate([("web", "alice"), ("api", "bob")], start=1):
            record = ThreadRecord(platform="playground", channel="ops", thread=str(10 * number), graph="runbook",
                                  status="waiting")
            session.add(record)
            await session.flush()
            run = Run(thread_record_id=record.id, platform="playground", channel="ops", graph="runbook",  # type: ignore[arg-type]
                      status="waiting", requested_by=user, input_text=f"run restart service={service}",
                      correlation_id=f"c{number}")
            session.add(run)
            await session.flush()
            session.add(Approval(id=f"card{number}", run_id=run.id, thread_record_id=record.id,  # type: ignore[arg-type]
                                 interrupt_id=f"i{number}", graph="runbook", summary="Run `restart`: Restart a service.",
                                 approvers=["alice", "bob"], requested_by=user))
    result = baton_cli("approvals", cwd=tmp_path, env={"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    rows = {row.split()[2]: row for row in result.stdout.splitlines()[1:]}
    assert rows["card1"].endswith("Run `restart`: Restart a service. (asked: run restart service=web; in playground/ops/10)")
    assert rows["card2"].endswith("Run `restart`: Restart a service. (asked: run restart service=api; in playground/ops/20)")


@pytest.mark.asyncio
async def test_audit_details_show_lists_as_people_write_them(database: Database, database_url: str,
                                                            tmp_path: Path, config_path: Path) -> None:
    """An approval's approvers were shown as Python writes a list: `approvers=['alice', 'bob']`."""
    async with database.session() as session:
        session.add(AuditEntry(correlation_id="c1", kind="approval.requested", thread="7", user="alice", run_id=3,
                               approval_id="card1", detail={"approvers": ["alice", "bob"], "risk": "high",
                                                            "ephemeral": True}))
    result = baton_cli("audit", "7", cwd=tmp_path, env={"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].endswith("approval=card1 approvers=alice,bob risk=high ephemeral=yes"), result.stdout


def test_audit_usage_shows_its_optional_argument_in_one_pair_of_brackets(tmp_path: Path) -> None:
    """The metavar's own brackets doubled Typer's: `Usage: baton audit [OPTIONS] [[THREAD|CORRELATION]]`."""
    result = baton_cli("audit", "--help", cwd=tmp_path, env={"COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    assert "[OPTIONS] [THREAD|CORRELATION]" in result.stdout and "[[" not in result.stdout, result.stdout


def test_baton_says_its_version(tmp_path: Path) -> None:
    """Which Baton is this (replicas upgraded one by one, a database a newer Baton migrated)? `baton --version`
    was "No such option: --version", exit 2."""
    from importlib.metadata import version

    result = baton_cli("--version", cwd=tmp_path, env={})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Baton {version('baton')}"


@pytest.mark.asyncio
async def test_threads_say_why_a_thread_failed(database: Database, database_url: str, tmp_path: Path,
                                               config_path: Path) -> None:
    """`baton threads` said only "failed": whether a command exited 3, timed out or someone cancelled it took a
    `baton audit` per thread."""
    long_error = "The assistant needs a language model, and none is configured: set BATON_MODEL"
    async with database.session() as session:
        for thread, errors in (("1", ["exit code 1", "cancelled by alice"]), ("2", [long_error]), ("3", [None])):
            record = ThreadRecord(platform="playground", channel="ops", thread=thread, graph="runbook",
                                  status="failed" if errors[-1] else "done", title=f"run thing{thread}")
            session.add(record)
            await session.flush()
            for number, error in enumerate(errors):  # the thread's last run is the one that counts
                session.add(Run(thread_record_id=record.id, platform="playground", channel="ops", graph="runbook",  # type: ignore[arg-type]
                                status="failed" if error else "done", requested_by="alice", error=error,
                                correlation_id=f"c{thread}{number}"))
    result = baton_cli("threads", cwd=tmp_path, env={"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    rows = {row.split()[2]: " ".join(row.split()[3:]) for row in result.stdout.splitlines()[1:]}
    assert rows["playground/ops/1"] == "failed (cancelled by alice) runbook run thing1"
    assert rows["playground/ops/2"] == "failed (The assistant needs a language model, a…) runbook run thing2"
    assert rows["playground/ops/3"] == "done runbook run thing3"


@pytest.mark.asyncio
async def test_approvals_say_when_there_are_more_than_shown(database: Database, database_url: str, tmp_path: Path,
                                                           config_path: Path) -> None:
    """`baton approvals` showed the newest 100 as if they were all: the 101st card waiting was nowhere, and
    nothing said so (nor could more be asked for)."""
    async with database.session() as session:
        record = ThreadRecord(platform="playground", channel="ops", thread="1", graph="deploy", status="waiting")
        session.add(record)
        await session.flush()
        run = Run(thread_record_id=record.id, platform="playground", channel="ops", graph="deploy",  # type: ignore[arg-type]
                  status="waiting", requested_by="alice", input_text="deploy", correlation_id="c")
        session.add(run)
        await session.flush()
        for number in range(101):
            session.add(Approval(id=f"card{number:03d}", run_id=run.id, thread_record_id=record.id,  # type: ignore[arg-type]
                                 interrupt_id=f"i{number}", graph="deploy", summary=f"Step {number}?",
                                 approvers=["bob"], requested_by="alice"))
    env = {"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": database_url}
    shown = baton_cli("approvals", cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 102 and lines[-1] == "... and 1 older (101 in all; --limit 101 shows them).", lines[-3:]
    every = baton_cli("approvals", "--limit", "101", cwd=tmp_path, env=env).stdout.splitlines()
    assert len(every) == 102 and every[-1].startswith("20"), every[-1]


@pytest.mark.parametrize(("others", "said"), [
    (["bob"], "Only alice, who asked for it, or bob can cancel this run. It goes on."),
    (["bob", "dave"], "Only alice, who asked for it, or an approver (bob or dave) can cancel this run. It goes on."),
    ([], "Only alice, who asked for it, can cancel this run. It goes on."),
])
def test_who_may_cancel_reads_as_a_sentence(others: list[str], said: str) -> None:
    """With two approvers it read "Only carol, who asked for it, or alice or bob can cancel this run.", with none
    "Only carol, who asked for it can cancel this run."."""
    from bot import replies

    assert replies.cancel_refused("alice", others).parts[0].text == said  # type: ignore[union-attr]


def test_a_digest_cron_line_in_typographic_quotes_is_one_word() -> None:
    """`digest cron “0 9 * * 1-5” UTC` (typed on a phone) was "Unexpected words after the time zone: `* * 1-5” UTC`"."""
    routed = route(REQUEST, "digest cron \u201c0 9 * * 1-5\u201d UTC", REGISTRY, CONFIG)
    assert routed.input == {"words": ["cron", "0 9 * * 1-5", "UTC"]}
