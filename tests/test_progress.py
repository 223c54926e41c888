"""Progress from inside a graph: one message per run, edited in place, not a flood of messages."""

from __future__ import annotations

import asyncio
from typing import TypedDict

import pytest
from langgraph.graph import END, START, StateGraph
from sqlalchemy import String, cast
from sqlmodel import func, select

from bot.app import Baton
from bot.kit import progress
from bot.messages import InboundMessage
from bot.orchestrator import continued_progress
from bot.registry import GraphSpec
from bot.settings import Settings
from storage.models import OutboxMessage, PlaygroundMessage


class StepsState(TypedDict, total=False):
    text: str
    reply: str


def _three_steps(_state: StepsState) -> StepsState:
    for step in ("copying files", "restarting web", "checking health"):
        progress(f"Step: {step}")
    return {"reply": "All three steps done."}


def _steps_graph() -> StateGraph:
    graph = StateGraph(StepsState)
    graph.add_node("work", _three_steps)
    graph.add_edge(START, "work")
    graph.add_edge("work", END)
    return graph


async def test_a_long_step_edits_one_progress_message_in_place(tmp_path, config_path) -> None:
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'p.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        baton.registry.add(GraphSpec(name="steps", graph=_steps_graph(), description="Three steps."))
        accepted = await baton.accept_message(InboundMessage(
            platform="playground", channel="general", thread="1", event_id="e1", user="alice", text="steps"))
        assert accepted.status == "accepted"

        async def bot_messages() -> list[PlaygroundMessage]:
            async with baton.db.read() as session:
                return list((await session.exec(select(PlaygroundMessage).where(
                    PlaygroundMessage.thread_id == "1", PlaygroundMessage.is_bot).order_by(PlaygroundMessage.id))).all())

        async def settled() -> list[PlaygroundMessage]:
            while True:
                found = await bot_messages()
                if any("All three steps done." in m.text for m in found) and any(m.revision == 3 for m in found):
                    return found
                await baton.outbox.wait("playground-test-never-woken", 0.05)

        progress_message, final = await asyncio.wait_for(settled(), 20)
        assert progress_message.text.split("\n")[-3:] == [
            "Step: copying files", "Step: restarting web", "Step: checking health"]
        assert progress_message.revision == 3  # posted once, edited twice
        assert "All three steps done." in final.text


@pytest.mark.parametrize(("shown", "posted", "expected"), [
    (["plan"], ["plan"], ["plan"]),  # the cut-short node posted its first line again
    (["a", "b1"], ["b1", "b2"], ["a", "b1", "b2"]),  # "a"'s node had finished: only "b"'s node ran again
    (["a", "b"], ["c"], ["a", "b", "c"]),  # the stop came between two nodes: nothing repeated
    (["a", "b", "c"], ["b"], ["a", "b", "c"]),  # the repeat has not got past what the message shows yet
    (["a", "a"], ["a", "b"], ["a", "a", "b"]),
])
def test_a_continued_run_shows_the_lines_its_cut_short_node_posts_again_once(
        shown: list[str], posted: list[str], expected: list[str]) -> None:
    assert continued_progress(shown, posted) == expected


def _loud(_state: StepsState) -> StepsState:
    for step in range(30):
        progress(f"step {step}: " + "x" * 100_000)  # a graph handing a whole log to progress()
    return {"reply": "Done loudly."}


async def test_a_huge_progress_line_is_cut_so_that_every_edit_stays_small(tmp_path, config_path) -> None:
    """Every edit of the progress message stores the whole message: 50 lines of 100 KB stored 81 MB of outbox
    rows (found by the authoring hunt). A line is cut at 1,000 characters, saying how much more there was."""
    graph = StateGraph(StepsState)
    graph.add_node("work", _loud)
    graph.add_edge(START, "work")
    graph.add_edge("work", END)
    settings = Settings(BATON_DATABASE_URL=f"sqlite:///{tmp_path / 'p.db'}", BATON_CONFIG=config_path,  # type: ignore[call-arg]
                        BATON_ADAPTERS="playground")
    async with Baton(settings) as baton:
        baton.registry.add(GraphSpec(name="loud", graph=graph, description="Loud."))
        await baton.accept_message(InboundMessage(
            platform="playground", channel="general", thread="1", event_id="e1", user="alice", text="loud"))

        async def settled() -> list[PlaygroundMessage]:
            while True:
                async with baton.db.read() as session:
                    found = list((await session.exec(select(PlaygroundMessage).where(
                        PlaygroundMessage.thread_id == "1", PlaygroundMessage.is_bot)
                        .order_by(PlaygroundMessage.id))).all())  # type: ignore[arg-type]
                if any("Done loudly." in m.text for m in found) and any("step 29:" in m.text for m in found):
                    return found
                await baton.outbox.wait("playground-test-never-woken", 0.05)

        progress_message, _final = await asyncio.wait_for(settled(), 30)
        async with baton.db.read() as session:
            stored = (await session.exec(select(func.max(func.length(cast(OutboxMessage.payload, String)))))).one()
    lines = progress_message.text.split("\n")
    assert len(lines) == 20 and lines[-1] == "step 29: " + "x" * 991 + "… (99,009 more characters)", lines[-1][-60:]
    assert stored < 30_000, stored  # each edit's row, not 2 MB


def test_a_progress_line_cut_in_its_code_block_closes_it_and_the_next_block_stays_code() -> None:
    """A graph handing its log to progress() as a fenced block: the cut dropped the closing fence, so the note and
    the lines after it showed as code, and the next line's block was turned inside out (found by the render hunt)."""
    from adapters.contract import fenced_segments
    from bot.replies import cut_line

    log = "```\n" + "\n".join(f"line {i} *ok*" for i in range(4000)) + "\n```"
    joined = "\n".join([cut_line(log, 1000), "checking `web`", "```\nstep two *fine*\n```"])
    segments = fenced_segments(joined)
    assert [opening for opening, _ in segments] == ["```", None, "```"], segments
    assert segments[1][1].startswith("… (") and segments[2][1] == "step two *fine*\n"
    assert cut_line("copying `" + "a" * 2000 + "`", 1000).endswith("a`… (1,010 more characters)")
    assert cut_line("x" * 2000, 1000).endswith("x… (1,000 more characters)")
    assert cut_line("short", 1000) == "short"
