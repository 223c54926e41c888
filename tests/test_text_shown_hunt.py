"""What a graph says, and what people wrote, as chat and the command line show it: characters no database stores,
control characters and invisible ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph.types import interrupt

from bot.app import Baton
from bot.kit import approve
from bot.registry import GraphSpec
from tests.test_cli_hunt2 import _cli
from tests.test_graph_modules import State, _one_node

BROKEN = "a\x00b\ud800c"  # a NUL (a command's output), a lone surrogate (a file name os.listdir read)
SHOWN = "a\ufffdb\ufffdc"


@asynccontextmanager
async def _playground(database_url: str, config_path: Path,
                      *specs: GraphSpec) -> AsyncIterator[tuple[httpx.AsyncClient, Baton]]:
    """Baton's app with the playground and ``specs``, started in this process: a client of its HTTP API."""
    from bot.server import create_app
    from bot.settings import Settings

    settings = Settings(BATON_DATABASE_URL=database_url, BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1", timeout=15) as http:
        for spec in specs:
            app.state.baton.registry.add(spec)
        yield http, app.state.baton


async def _bot_message(http: httpx.AsyncClient, text: str, timeout: float = 20) -> dict[str, Any]:
    """The bot's first message in the thread ``text`` (asked by alice in #general) starts, as the API serves it."""
    asked = await http.post("/api/messages", json={"channel": "general", "user": "alice", "text": text})
    assert asked.status_code == 201, asked.text
    thread = asked.json()["thread_id"]
    async with asyncio.timeout(timeout):
        while True:
            listed = await http.get(f"/api/threads/{thread}/messages")
            assert listed.status_code == 200, listed.text
            said = [message for message in listed.json()["replies"] if message["is_bot"]]
            if said:
                return said[0]
            await asyncio.sleep(0.05)


def _says(state: State) -> dict[str, Any]:
    """A graph whose text holds ``BROKEN`` wherever a graph's text reaches the thread."""
    asked = state["text"]
    if asked == "reply":
        return {"reply": BROKEN}
    if asked == "message":
        return {"reply": {"title": f"title {BROKEN}", "parts": [{"kind": "text", "text": f"text {BROKEN}"}]}}
    if asked == "approve":
        return {"reply": str(approve(f"card {BROKEN}", details={f"key {BROKEN}": f"value {BROKEN}"}, risk="low"))}
    if asked == "question":
        return {"reply": str(interrupt({"question": f"question {BROKEN}", "output": f"value {BROKEN}"}))}
    return {"reply": str(interrupt(f"plain {BROKEN}"))}


async def test_text_no_database_stores_is_shown_as_replacement_characters_everywhere(
        database_url: str, config_path: Path) -> None:
    """README: a NUL or a lone surrogate is shown as U+FFFD "there and on a card". Only ``progress()`` did: a reply
    was served as "a\\u0000b?c" on SQLite (the NUL kept, the surrogate made "?" by the checkpoint's msgpack) and
    failed the run on PostgreSQL (its checkpoint is jsonb); a card had "?" for the surrogate."""
    async with _playground(database_url, config_path, GraphSpec(name="says", graph=_one_node(_says))) as (http, _):
        reply = await _bot_message(http, "@baton says reply")
        message = await _bot_message(http, "@baton says message")
        approval = await _bot_message(http, "@baton says approve")
        question = await _bot_message(http, "@baton says question")
        plain = await _bot_message(http, "@baton says plain")
    assert reply["text"] == SHOWN, reply
    assert message["text"] == f"*title {SHOWN}*\ntext {SHOWN}", message
    assert approval["text"].startswith(f"*Approval needed*\ncard {SHOWN}\n```\nkey {SHOWN}: value {SHOWN}\n```"), \
        approval
    assert question["text"].startswith(f"*Approval needed*\nquestion {SHOWN}\n```\noutput: value {SHOWN}\n```"), \
        question
    assert plain["text"].startswith(f"*Approval needed*\nplain {SHOWN}\n"), plain


async def test_a_plain_graphs_question_shows_its_control_characters_escaped(sqlite_url: str, config_path: Path) -> None:
    """A plain LangGraph graph's ``interrupt()`` of text holding an escape sequence (a command's output, what
    someone wrote) was shown raw on its card, ESC and BEL as they were: read in a terminal (the playground's API,
    a log) it retitled or cleared it. A runbook's card shows such characters escaped, as bash writes them."""
    def ask(state: State) -> dict[str, Any]:
        if state["text"] == "question":
            return {"reply": str(interrupt({"question": "vote \x1b]0;pwned\x07 now", "log": "done\x1b[2J\r"}))}
        return {"reply": str(interrupt("vote \x1b]0;pwned\x07 \x1b[2J now\nsecond\tline \u202eenod ton"))}

    async with _playground(sqlite_url, config_path, GraphSpec(name="vote", graph=_one_node(ask))) as (http, _):
        plain = await _bot_message(http, "@baton vote plain")
        question = await _bot_message(http, "@baton vote question")
    assert plain["text"].startswith("*Approval needed*\nvote \\x1b]0;pwned\\x07 \\x1b[2J now\nsecond\tline "
                                    "\\u202eenod ton\n"), plain
    assert question["text"].startswith(
        "*Approval needed*\nvote \\x1b]0;pwned\\x07 now\n```\nlog: done\\x1b[2J\\r\n```"), question


async def test_the_command_line_shows_bidi_and_invisible_characters_as_chat_does(
        sqlite_url: str, config_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`baton threads` showed U+202E raw, which turned the rest of its line around in the terminal, and U+200B
    raw ("web\\u200b" read as "web"), while ESC and BEL there were U+FFFD and chat shows U+FFFD for U+202E;
    `baton approvals` and `baton audit` the same. Each is shown as U+FFFD; emoji joined by U+200D stay whole."""
    def ask(state: State) -> dict[str, Any]:
        return {"reply": str(approve(f"Deploy {state['text']}?", risk="low"))}

    async with _playground(sqlite_url, config_path, GraphSpec(name="ship", graph=_one_node(ask))) as (http, _):
        refused = await _bot_message(http, "\u202e@baton run disk")
        await _bot_message(http, "@baton run restart service=web\u200b")
        card = await _bot_message(http, "@baton ship web\u200b \u202eenod ton \U0001f469\u200d\U0001f4bb")
    assert "\ufffd" in refused["text"] and "\u202e" not in refused["text"], refused  # chat's way
    assert "Deploy web\u200b \u202eenod ton" in card["text"], card  # approve()'s question is the graph's own
    monkeypatch.chdir(tmp_path)
    env = {"BATON_CONFIG": str(config_path), "BATON_DATABASE_URL": sqlite_url}
    shown = {command: await asyncio.to_thread(_cli, env, command) for command in ("threads", "approvals", "audit")}
    for command, result in shown.items():
        assert result.exit_code == 0, result.output
        assert "\u202e" not in result.stdout and "\u200b" not in result.stdout, (command, result.stdout)
    assert "\ufffdrun disk" in shown["threads"].stdout, shown["threads"].stdout
    assert "run restart service=web\ufffd" in shown["threads"].stdout, shown["threads"].stdout
    assert "Deploy web\ufffd \ufffdenod ton \U0001f469\u200d\U0001f4bb?" in shown["approvals"].stdout, \
        shown["approvals"].stdout
