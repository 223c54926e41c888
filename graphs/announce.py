"""Draft an announcement and post it once a human approves: a plain LangGraph graph (``interrupt()``,
not ``bot.kit.approve()``).

It shows that any compiled graph that calls ``interrupt()`` works in Baton: the interrupt's
value is shown on the approval card, and the decision comes back as
``{"approved": bool, "by": str, "at": iso-time, "approval_id": str}``.
"""

from __future__ import annotations

from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from bot.kit import APPROVAL_TEXT_LIMIT

DESCRIPTION = "Draft an announcement; once approved, it is posted in its thread."
EXAMPLE = "announce Maintenance tonight at 22:00 UTC"
ASKS_APPROVAL = True


class AnnounceState(TypedDict, total=False):
    text: str
    draft: str
    decision: dict[str, Any]
    reply: str


def draft(state: AnnounceState) -> AnnounceState:
    text = _tidied(state.get("text", ""))
    return {"draft": f"📣 {text}" if text else "", "reply": ""}


def confirm(state: AnnounceState) -> AnnounceState:
    if not state["draft"] or len(_question(state["draft"])) > APPROVAL_TEXT_LIMIT:
        return {"decision": {"approved": False, "by": "nobody"}}
    return {"decision": interrupt(_question(state["draft"]))}


def publish(state: AnnounceState) -> AnnounceState:
    if not state["draft"]:
        return {"reply": "What should I announce? Try `announce Maintenance tonight at 22:00 UTC`."}
    if len(_question(state["draft"])) > APPROVAL_TEXT_LIMIT:  # its approvers would not see all they approve
        return {"reply": f"That announcement is {len(state['draft']):,} characters, too long for an approval card "
                         f"(up to {APPROVAL_TEXT_LIMIT - len(_question('')):,}): shorten it or split it. "
                         "Nothing was posted."}
    decision = state["decision"]
    if not decision.get("approved"):
        return {"reply": f"Announcement dropped ({decision.get('by')} rejected it)."}
    return {"reply": f"{state['draft']}\n(approved by {decision['by']})"}


def _question(draft: str) -> str:
    return f"Post this announcement?\n\n{draft}"


def _tidied(text: str) -> str:
    """Spaces tidied in each line; the author's line breaks kept (a list of points stays a list), at most
    one blank line in a row."""
    lines = [" ".join(line.split()) for line in text.strip().splitlines()]
    return "\n".join(line for index, line in enumerate(lines) if line or lines[index - 1])


builder = StateGraph(AnnounceState)
builder.add_node("draft", draft)
builder.add_node("confirm", confirm)
builder.add_node("publish", publish)
builder.add_edge(START, "draft")
builder.add_edge("draft", "confirm")
builder.add_edge("confirm", "publish")
builder.add_edge("publish", END)
graph = builder.compile()
