"""What is running or waiting for approval in this channel, with links to the threads."""

from __future__ import annotations

from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

from bot.kit import Request, current, quoted_code

DESCRIPTION = "What is running or waiting for approval in this channel."
EXAMPLE = "status"
DEDUPE = False
MAX_SHOWN = 20  # threads listed; a busy channel's status is still one message, not pages of them


class StatusState(TypedDict, total=False):
    text: str
    reply: dict[str, Any]


def make_input(request: Request, args: str) -> dict[str, Any]:
    """``text``: what was written after ``status``. A model's routing (or a choice card) hands over the whole
    request ("what is going on in here?"), which is no words after it."""
    return {"text": "" if args.strip() == request.text.strip() else args, "reply": {}}


async def report(state: StatusState) -> StatusState:
    threads = await current().channel_activity()
    # "status ops" asked in #general: it was answered with #general's status as if nothing had been said
    asked = state.get("text", "").strip()
    unused = [{"kind": "note", "text": f"`status` shows this channel only; `{quoted_code(asked, 100)}` was not used."}] \
        if asked else []
    if not threads:
        return {"reply": {"title": "Status", "tone": "info", "parts": [
            {"kind": "text", "text": "Nothing is running or waiting for approval in this channel."}, *unused]}}
    parts: list[dict[str, Any]] = [*unused]
    for thread in threads[:MAX_SHOWN]:  # the longest-waiting first
        label = f"{thread['title']} — {thread['status_text']} (asked by {thread['requested_by']}, {thread['age']})"
        parts.append({"kind": "link", "label": label, "channel": thread["channel"], "thread": thread["thread"]})
        for approval in thread["approvals"]:
            when = approval.get("expires_in")
            expires = "" if not when else ", expires now" if when == "now" else f", expires in {when}"
            parts.append({"kind": "note", "text": f"waiting {approval['age']} for {approval['approvers']}{expires}: "
                                                  f"{approval['summary']}"})
    if len(threads) > MAX_SHOWN:
        parts.append({"kind": "note", "text": f"…and {len(threads) - MAX_SHOWN} more (the {MAX_SHOWN} that have "
                                              "waited longest are listed)."})
    title = f"Status: {len(threads)} active thread{'s' if len(threads) != 1 else ''}"
    return {"reply": {"title": title, "tone": "info", "parts": parts}}


builder = StateGraph(StatusState)
builder.add_node("report", report)
builder.add_edge(START, "report")
builder.add_edge("report", END)
graph = builder
