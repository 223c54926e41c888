"""What Baton cuts before it posts (a progress line past its length, a model's error past its length) and marks
with "…": a secret the cut fell inside lost its end, so the redaction, looking for the whole secret, or for its
start at a line's end, let its first characters through."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TypedDict

import pytest
from langgraph.graph import END, START, StateGraph
from sqlmodel import select

from bot.app import Baton
from bot.kit import progress
from bot.messages import InboundMessage
from bot.orchestrator import PROGRESS_LINE_CHARS
from bot.redaction import MIN_SECRET_CHARS, REDACTED, Redactor
from bot.registry import GraphSpec
from bot.settings import Settings
from storage.models import PlaygroundMessage

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
