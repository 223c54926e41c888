"""What Baton cuts before it posts (a progress line past its length, a model's error past its length) and marks
with "…": a secret the cut fell inside lost its end, so the redaction, looking for the whole secret, or for its
start at a line's end, let its first characters through."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TypedDict

import pytest
from langgraph.graph import END, START, StateGraph
from sqlmodel import select

from bot.app import Baton
from bot.config import BatonConfig
from bot.digests import Digests
from bot.kit import progress
from bot.messages import InboundMessage, Message
from bot.models import ModelFailed
from bot.orchestrator import PROGRESS_LINE_CHARS
from bot.outbox import Outbox
from bot.redaction import MIN_SECRET_CHARS, REDACTED, Redactor
from bot.registry import GraphRegistry, GraphSpec
from bot.replies import model_error
from bot.runtime import GraphRuntime, Services
from bot.settings import Settings
from storage.checkpointer import open_checkpointer
from storage.db import Database
from storage.migrate import upgrade
from storage.models import PlaygroundMessage
from tests.fake_models import ScriptedModel, script
from tests.test_digests import PARIS_DAILY, Clock, posted_messages
from tests.test_digests_hunt import seed_busy_day

SECRET = "ghp_0123456789abcdefDEPLOYtoken"  # a deploy token, in Baton's environment


class State(TypedDict, total=False):
    text: str
    reply: str


def _long_line_then_done(_state: State) -> State:
    # a graph showing a request it makes, headers and all: the cut falls 12 characters into the token
    before = "calling the deploy API: ... Authorization: Bearer "
    progress(before.replace("...", "h" * (PROGRESS_LINE_CHARS - len(before) - 12)) + SECRET)
    return {"reply": "Deployed."}


async def test_a_progress_line_cut_inside_a_secret_shows_none_of_it(tmp_path: Path, config_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOY_TOKEN", SECRET)
    graph = StateGraph(State)
    graph.add_node("work", _long_line_then_done)
    graph.add_edge(START, "work")
    graph.add_edge("work", END)
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'p.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        baton.registry.add(GraphSpec(name="deploy", graph=graph, description="Deploy."))
        await baton.accept_message(InboundMessage(platform="playground", channel="general", thread="1",
                                                  event_id="e1", user="alice", text="deploy"))

        async def posted() -> list[str]:
            while True:
                async with baton.db.read() as session:
                    texts = [message.text for message in (await session.exec(select(PlaygroundMessage).where(
                        PlaygroundMessage.thread_id == "1", PlaygroundMessage.is_bot))).all()]
                if any("Deployed." in text for text in texts) and any("more characters" in text for text in texts):
                    return texts
                await baton.outbox.wait("never-woken", 0.05)

        texts = await asyncio.wait_for(posted(), 20)
    shown = "\n".join(texts)
    assert SECRET[:MIN_SECRET_CHARS] not in shown, shown[-200:]
    assert f"Bearer {REDACTED}…" in shown


def test_the_start_of_a_secret_a_marked_cut_left_is_redacted_but_not_the_same_start_elsewhere() -> None:
    redactor = Redactor([SECRET])
    assert redactor.text(f"token {SECRET[:12]}… (19 more characters)") == f"token {REDACTED}… (19 more characters)"
    assert redactor.text(f"{SECRET[:12]}…, then {SECRET}") == f"{REDACTED}…, then {REDACTED}"
    # the start of a secret that goes on otherwise is some other text, not a cut secret
    assert redactor.text(f"{SECRET[:12]}xyz… and more") == f"{SECRET[:12]}xyz… and more"


def _model_failed(cause: BaseException) -> ModelFailed:
    try:
        raise ModelFailed(str(cause)) from cause
    except ModelFailed as error:
        return error


def test_a_model_error_cut_inside_a_secret_shows_none_of_it() -> None:
    """The thread is told a model's error in its first 300 characters, then "). The run stopped; ...": the
    secret the cut fell in was neither whole nor at the line's end."""
    said = "Client error '400 Bad Request' for url 'https://models.example.com/v1/" + "m" * 200 + f"?key={SECRET}'"
    message = Redactor([SECRET]).message(model_error(_model_failed(RuntimeError(said))))
    shown = message.plain_text()
    assert said.index(SECRET) + len("RuntimeError: ") + MIN_SECRET_CHARS < 300 < said.index(SECRET) + 14 + len(SECRET)
    assert SECRET[:MIN_SECRET_CHARS] not in shown and "The run stopped; try again later." in shown, shown


async def test_a_digest_whose_summary_failed_with_a_secret_in_its_error_shows_none_of_it(sqlite_url: str,
                                                                                          tmp_path: Path) -> None:
    """A digest posts its numbers when the written summary fails, saying why in the first 200 characters of the
    model's error, then ")."."""
    said = "upstream refused the call to https://models.example.com/v1/" + "m" * 120 + f"?key={SECRET} (quota)"
    assert said.index(SECRET) + MIN_SECRET_CHARS < 200 < said.index(SECRET) + len(SECRET)
    clock = Clock(datetime(2026, 6, 1, 6, 0, tzinfo=UTC))
    script_path = tmp_path / "script.json"
    script(script_path, [{"error": said}])
    model = ScriptedModel(messages=iter(()), script_path=str(script_path))
    await asyncio.to_thread(upgrade, sqlite_url)
    db = Database(sqlite_url)
    try:
        async with open_checkpointer(sqlite_url) as checkpointer:
            registry = GraphRegistry.discover()
            services = Services(db, BatonConfig(digests=[PARIS_DAILY]), registry, model=model,
                                model_name="fake:model", model_deadline=5)
            digests = Digests(services, GraphRuntime(registry, checkpointer), Outbox(db, redactor=Redactor([SECRET])),
                              "a", clock)
            await digests.sync_config()
            await seed_busy_day(digests.db, datetime(2026, 6, 1, 6, 10, tzinfo=UTC), decided=2, waiting=0)
            clock.now = datetime(2026, 6, 1, 7, 0, tzinfo=UTC)
            assert await digests.run_due(clock.now) == 1
            [message] = await posted_messages(digests)
    finally:
        await db.dispose()
    text = Message.model_validate(message.payload).plain_text()
    assert "No written summary: the model failed (upstream refused" in text
    assert SECRET[:MIN_SECRET_CHARS] not in text, text


def test_a_secret_written_as_json_writes_it_is_redacted() -> None:
    """A command printing JSON (``docker inspect``, ``terraform output -json``, a Python tool's ``json.dumps``)
    writes a secret's ``"`` and ``\\`` escaped, a character beyond ASCII as ``\\u00e9``, and, as Go does, ``&``,
    ``<`` and ``>`` as ``\\u0026``, ``\\u003c``, ``\\u003e``: the secret, no longer as written, was posted whole."""
    password = 'Zürich&"back\\slash<9>'
    redactor = Redactor.for_settings(Settings(_env_file=None), environ={"DB_PASSWORD": password})  # type: ignore[call-arg]
    python = json.dumps({"Env": [f"DB_PASSWORD={password}"]})
    go = python.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    unicode = json.dumps({"Env": [f"DB_PASSWORD={password}"]}, ensure_ascii=False)
    for printed in (python, go, unicode):
        assert redactor.text(printed) == '{"Env": ["DB_PASSWORD=[redacted]"]}', printed
    assert redactor.text(f"as written: {password}") == "as written: [redacted]"
