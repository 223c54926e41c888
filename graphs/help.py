"""What Baton can do: its graphs and runbooks, with one example each."""

from __future__ import annotations

from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

from bot.kit import Request, current, quoted

DESCRIPTION = "What I can do, with an example of each."
EXAMPLE = "help"
DEDUPE = False


class HelpState(TypedDict, total=False):
    text: str
    reply: dict[str, Any]


def make_input(_request: Request, args: str) -> dict[str, Any]:
    return {"text": args, "reply": {}}


def answer(state: HelpState) -> HelpState:
    catalog = current().catalog()
    lines = []
    for entry in catalog:
        risk = " (needs approval)" if entry.get("risk") == "high" else ""
        described = f" — {entry['description']}" if entry["description"] else ""  # a graph may have none
        lines.append(f"• `{entry['example']}`{described}{risk}")
    intro = "Here is what I can do (in a channel, mention me first):"
    unknown = state.get("text", "").strip()
    if unknown:
        intro = f"I don't know how to handle “{quoted(unknown, 200)}” yet. " + intro
    parts = [
        {"kind": "text", "text": intro},
        {"kind": "text", "text": "\n".join(lines)},
        {"kind": "note", "text": "Add `force` as the first or last word of a request to run it again even if the same one ran recently."},
        {"kind": "note", "text": "Write `cancel` in a run's thread to stop it (whoever asked for it, or an approver)."},
    ]
    return {"reply": {"title": "Baton help", "tone": "info", "parts": parts}}


builder = StateGraph(HelpState)
builder.add_node("answer", answer)
builder.add_edge(START, "answer")
builder.add_edge("answer", END)
graph = builder
