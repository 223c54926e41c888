"""Summarise this thread (or the channel's last N messages); without a model, the key messages."""

from __future__ import annotations

import re
from typing import Any, TypedDict

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.graph import END, START, StateGraph

from bot.kit import Request, chat, current, history
from bot.models import clipped

DESCRIPTION = "Summarise this thread, or `summarize channel 50` for the channel's last 50 messages."
EXAMPLE = "summarize"
DEDUPE = False
KEY_WORDS = re.compile(r"\b(approved|rejected|failed|error|done|decided|because|todo|next|\?)", re.IGNORECASE)


class SummarizeState(TypedDict, total=False):
    text: str
    reply: dict[str, Any]


def make_input(_request: Request, text: str) -> dict[str, Any]:
    return {"text": text, "reply": {}}


MAX_MESSAGES = 200
QUOTED_CHARS = 200
MESSAGE_CHARS = 2_000  # of one message, in the transcript the model reads (a runbook's output can be 150k)
TRANSCRIPT_CHARS = 60_000  # of the whole transcript: the newest messages that fit


def _shortened(text: str) -> str:
    return text if len(text) <= QUOTED_CHARS else text[:QUOTED_CHARS - 1].rstrip() + "…"


async def summarize(state: SummarizeState) -> SummarizeState:
    words = state.get("text", "").split()
    scope = "channel" if [word.lower() for word in words[:1]] == ["channel"] else "thread"
    limit = 50
    if scope == "channel" and len(words) > 1:
        if not (words[1].isdecimal() and 1 <= int(words[1]) <= MAX_MESSAGES):
            return {"reply": {"tone": "warning", "parts": [{"kind": "text", "text": (
                f"How many messages? `summarize channel <1 to {MAX_MESSAGES}>`, e.g. `summarize channel 50`.")}]}}
        limit = int(words[1])
    found = [m for m in await history(scope, limit + 2) if not is_this_request(m)]  # one more: is there more?
    messages = found[-limit:]
    where = _where(scope, len(messages), cut=len(found) > limit)
    if not messages:
        return {"reply": {"tone": "info", "parts": [{"kind": "text", "text": f"There is nothing to summarise in {where} yet."}]}}
    if current().model is None:
        key = extract(messages)
        lines = "\n".join(f"• {m['user']}: {_shortened(m['text'])}" for m in key)
        return {"reply": {"title": f"Extractive summary of {where}", "tone": "info", "parts": [
            {"kind": "note", "text": "No model is configured, so these are the key messages, not a written summary."},
            {"kind": "text", "text": lines}]}}
    read = _newest_that_fit(messages)
    if len(read) < len(messages):  # the title says what the model read, not what was fetched
        where = _where(scope, len(read), cut=True)
    reply = await chat([SystemMessage(content="Summarise this chat for someone who missed it: decisions, open "
                                               "questions, who does what. Five bullet points at most."),
                        HumanMessage(content=_transcript(read, len(messages) - len(read)))], what="Summarising")
    return {"reply": {"title": f"Summary of {where}", "tone": "info",
                      "parts": [{"kind": "text", "text": reply.text.strip() or "(the model gave no summary)"}]}}


def _where(scope: str, count: int, *, cut: bool) -> str:
    """What the summary covers: a thread longer than what was read is not "this thread", only its last messages."""
    messages = f"{count} message{'s' if count != 1 else ''}"
    if scope == "channel":
        return f"the channel's last {messages}"
    return f"this thread's last {messages}" if cut else "this thread"


def _newest_that_fit(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest ``messages`` whose lines, each clipped, fit in ``TRANSCRIPT_CHARS`` (at least one)."""
    size = 0
    for count, message in enumerate(reversed(messages)):
        size += len(_line(message)) + 1
        if count and size > TRANSCRIPT_CHARS:
            return messages[len(messages) - count:]
    return messages


def _transcript(messages: list[dict[str, Any]], left_out: int) -> str:
    """The messages as ``user: text`` lines, each clipped, after how many earlier ones were left out."""
    lines = [_line(message) for message in messages]
    return "\n".join([f"[{left_out} earlier messages left out]"] * bool(left_out) + lines)


def _line(message: dict[str, Any]) -> str:
    return f"{message['user']}: {clipped(message['text'], MESSAGE_CHARS)}"


def extract(messages: list[dict[str, Any]], most: int = 5) -> list[dict[str, Any]]:
    """The first message, the last one, and those that carry decisions, failures or questions."""
    keep = {0, len(messages) - 1}
    for index, message in enumerate(messages):
        if len(keep) >= most:
            break
        if KEY_WORDS.search(message["text"]):
            keep.add(index)
    return [messages[index] for index in sorted(keep)]


def is_this_request(message: dict[str, Any]) -> bool:
    """``message`` of a thread's history is the request this run answers (as the platform shows it: with the
    mention before it)."""
    request = current().request
    return not message["is_bot"] and message["user"] == request.user and request.text in message["text"] \
        and message["text"].strip().endswith(request.text)


builder = StateGraph(SummarizeState)
builder.add_node("summarize", summarize)
builder.add_edge(START, "summarize")
builder.add_edge("summarize", END)
graph = builder
