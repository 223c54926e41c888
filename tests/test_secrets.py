"""Secrets never reach a chat message or a log line, whatever text carries them (``bot.redaction``)."""

from __future__ import annotations

import io
import logging
import sqlite3
import sys
from pathlib import Path

import yaml
from langchain_core.messages import HumanMessage
from langgraph.graph import END, START, StateGraph
from pydantic import SecretStr

from bot.app import Baton
from bot.kit import chat, command_environment
from bot.messages import Code, InboundMessage, Message, Text
from bot.redaction import MIN_SECRET_CHARS, REDACTED, RedactingFilter, Redactor
from bot.registry import GraphSpec
from bot.settings import Settings
from storage.db import check_url
from tests.fake_models import calls, script
from tests.support import BatonProcess
from tests.test_graph_modules import State, _reply

API_KEY = "sk-live-0123456789abcdef"  # a model provider's key, as LangChain reads it from the environment
TOKEN = "xoxb-1111-2222-secretvalue"


def test_secrets_are_found_in_the_settings_the_environment_and_the_database_url() -> None:
    settings = Settings(SLACK_BOT_TOKEN=TOKEN, BATON_DATABASE_URL="postgresql://baton:pa%40ss-w0rd-1@db/baton",
                        _env_file=None)  # type: ignore[call-arg]
    redactor = Redactor.for_settings(settings, environ={"OPENAI_API_KEY": API_KEY, "HOME": "/home/someone-long",
                                                        "SHORT_TOKEN": "1"})
    message = Message(title=f"about {TOKEN}", tone="error", parts=[
        Text(text=f"the key {API_KEY} and the password pa@ss-w0rd-1"), Code(text=f"{TOKEN}\n/home/someone-long")])
    shown = redactor.message(message)
    assert shown.title == f"about {REDACTED}"
    assert shown.plain_text().count(REDACTED) == 4 and "/home/someone-long" in shown.plain_text()
    assert isinstance(settings.slack_bot_token, SecretStr)
    plain = Message.text("nothing secret in here")
    assert redactor.message(plain) is plain  # unchanged messages are not rebuilt


def test_a_database_password_given_as_a_query_parameter_is_a_secret_too() -> None:
    """libpq takes ``?password=``: only the one before the host was kept from logs and chat."""
    settings = Settings(BATON_DATABASE_URL="postgresql://baton@db/baton?sslmode=require&password=hunter2-long",
                        _env_file=None)  # type: ignore[call-arg]
    assert Redactor.for_settings(settings, environ={}).text("auth failed for hunter2-long") == f"auth failed for {REDACTED}"
    assert check_url(settings.database_url) == "postgresql://baton@db/baton?password=***&sslmode=require"


def test_log_lines_and_tracebacks_are_redacted() -> None:
    logger = logging.getLogger("baton.test_secrets")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)  # whatever level the root logger was left at by what ran before in this worker
    try:
        Redactor([API_KEY]).install_in_logging()
        logger.warning("calling the model with %s failed", API_KEY)
        try:
            raise RuntimeError(f"401: bad key {API_KEY}")
        except RuntimeError:
            logger.exception("the model said no")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    logged = stream.getvalue()
    assert API_KEY not in logged
    assert f"calling the model with {REDACTED} failed" in logged and f"RuntimeError: 401: bad key {REDACTED}" in logged


def test_a_runbook_printing_a_secret_posts_it_redacted_and_logs_it_nowhere(tmp_path: Path, sqlite_url: str) -> None:
    config = tmp_path / "secrets.yaml"
    config.write_text(yaml.safe_dump({"approvers": ["bob"], "runbooks": {"env": {
        "description": "Print the deploy key (a careless runbook).", "command": ["printenv", "DEPLOY_API_KEY"],
        "risk": "low", "timeout": 10}}}))
    baton = BatonProcess(sqlite_url, config, tmp_path, env={"DEPLOY_API_KEY": API_KEY}).start()
    try:
        pg = baton.client()
        thread = pg.ask("@baton run env")
        reply = pg.wait_reply(thread, "finished")
        assert REDACTED in reply["text"] and API_KEY not in str(reply)
    finally:
        baton.stop()
    with sqlite3.connect(tmp_path / "baton.db") as connection:
        rows = [str(row) for table in ("outbox", "playground_messages")  # what was posted
                for row in connection.execute(f"SELECT * FROM {table}")]
    assert rows and not any(API_KEY in row for row in rows)
    assert API_KEY not in baton.log.read_text()


def test_commands_run_without_batons_own_secrets(monkeypatch) -> None:
    for name, value in {"SLACK_BOT_TOKEN": TOKEN, "discord_token": "a-discord-token-value", "HOME": "/root",
                        "BATON_DATABASE_URL": "postgresql://baton:pw@db/baton", "DEPLOY_API_KEY": API_KEY}.items():
        monkeypatch.setenv(name, value)
    environment = command_environment()
    assert {"SLACK_BOT_TOKEN", "discord_token", "BATON_DATABASE_URL"}.isdisjoint(environment)
    assert environment["HOME"] == "/root" and environment["DEPLOY_API_KEY"] == API_KEY  # the runbook's own


def test_a_runbook_does_not_see_the_database_url(tmp_path: Path, sqlite_url: str) -> None:
    """The command inherited Baton's whole environment: ``printenv BATON_DATABASE_URL`` posted the
    database's address (and its password, on PostgreSQL)."""
    config = tmp_path / "secrets.yaml"
    config.write_text(yaml.safe_dump({"approvers": ["bob"], "runbooks": {"where": {
        "description": "Print Baton's database URL.", "command": ["printenv", "BATON_DATABASE_URL"],
        "risk": "low", "timeout": 10}}}))
    baton = BatonProcess(sqlite_url, config, tmp_path).start()
    try:
        pg = baton.client()
        thread = pg.ask("@baton run where")
        reply = pg.wait_reply(thread, "exit code 1")  # printenv: no such variable
        assert "baton.db" not in str(reply)
    finally:
        baton.stop()


def test_a_log_call_whose_arguments_do_not_fit_is_left_to_logging() -> None:
    """The redacting filter formats each record: one that cannot be formatted passes as it is (the handler
    reports it as logging does), instead of raising into the code that logged."""
    record = logging.LogRecord("baton", logging.WARNING, __file__, 1, "needs a number: %d", ("x",), None)
    assert RedactingFilter(Redactor([API_KEY])).filter(record)
    assert (record.msg, record.args) == ("needs a number: %d", ("x",))


def test_a_secret_cut_by_the_output_limit_is_not_shown_in_part(tmp_path: Path, sqlite_url: str) -> None:
    """Output over the runbook's limit (256 kB) is cut, then posted: a secret the cut fell in was no
    longer the whole secret, so it was not found, and its first part was posted as it was."""
    from graphs.runbook import MAX_OUTPUT_BYTES

    cut_at = 20  # characters of the key before the limit
    script = f"import os, sys; sys.stdout.write('x' * {MAX_OUTPUT_BYTES - cut_at} + os.environ['DEPLOY_API_KEY'] * 2)"
    config = tmp_path / "secrets.yaml"
    config.write_text(yaml.safe_dump({"approvers": ["bob"], "runbooks": {"dump": {
        "description": "Dump the configuration (a careless runbook).", "command": [sys.executable, "-c", script],
        "risk": "low", "timeout": 10}}}))
    baton = BatonProcess(sqlite_url, config, tmp_path, env={"DEPLOY_API_KEY": API_KEY}).start()
    try:
        pg = baton.client()
        reply = pg.wait_reply(pg.ask("@baton run dump"), "finished")
    finally:
        baton.stop()
    shown = str(reply)
    assert "output truncated" in shown and API_KEY[:cut_at] not in shown
    assert API_KEY[:MIN_SECRET_CHARS] not in shown


def test_what_a_cut_leaves_of_a_secret_at_either_end_of_a_line_is_redacted() -> None:
    redactor = Redactor([API_KEY])
    error = f"Error: bad key {API_KEY}"[:30]  # an error shown up to a length
    tail = f"log: {API_KEY}\nnext line"[12:]  # the last characters of a log
    assert redactor.text(error) == f"Error: bad key {REDACTED}"
    assert redactor.text(tail) == f"{REDACTED}\nnext line"
    assert redactor.text("sk-live- is how the keys start") == "sk-live- is how the keys start"  # too short to tell


async def test_what_a_graph_sends_to_the_model_has_batons_secrets_redacted(tmp_path, config_path, monkeypatch) -> None:
    """Chat got '[redacted]', but a graph passing a command's output (or an error) to kit.chat sent the secret
    itself to the model's provider, outside."""
    secret = "ghp_0123456789abcdefDEPLOY"
    monkeypatch.setenv("DEPLOY_TOKEN", secret)
    script_path = tmp_path / "script.json"
    monkeypatch.setenv("BATON_TEST_MODEL_SCRIPT", str(script_path))
    script(script_path, [{"content": "It printed a token, which I will not repeat."}])

    async def explain(_state: State) -> State:
        answer = await chat([HumanMessage(content=f"Explain this output:\nDEPLOY_TOKEN={secret}\nok")])
        return {"reply": str(answer.content)}

    graph = StateGraph(State)
    graph.add_node("explain", explain)
    graph.add_edge(START, "explain")
    graph.add_edge("explain", END)
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'm.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground", BATON_MODEL="python:tests.fake_models:scripted")
    async with Baton(settings) as baton:
        baton.registry.add(GraphSpec(name="explain", graph=graph))
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="explain", addressed=True))
        assert "will not repeat" in await _reply(baton, "1")
    (sent,) = calls(script_path)
    assert secret not in sent["last"] and "DEPLOY_TOKEN=[redacted]" in sent["last"], sent
