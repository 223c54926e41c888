"""What Baton can do: its graphs and runbooks, with one example each."""

from __future__ import annotations

import re
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

from bot.kit import Request, current, quoted, quoted_code

DESCRIPTION = "What I can do, with an example of each."
EXAMPLE = "help"
DEDUPE = False
RUNBOOKS_SHOWN = 30  # with their example, as `run` lists them; the rest by name (300 made help a dozen messages)
DESCRIPTION_SHOWN = 200  # characters of a description in the list: a paragraph each made help pages long


class HelpState(TypedDict, total=False):
    text: str
    reply: dict[str, Any]


def make_input(_request: Request, args: str) -> dict[str, Any]:
    return {"text": args, "reply": {}}


def answer(state: HelpState) -> HelpState:
    context = current()
    catalog = context.catalog()
    lines = []
    private = context.request.private  # a direct message: no mention needed, and no approver sees a card there
    needs_approval = " (needs approval: ask in a channel, where an approver sees the card)" if private \
        else " (needs approval)"
    runbooks = [entry for entry in catalog if entry["kind"] == "runbook"]
    for entry in [entry for entry in catalog if entry["kind"] != "runbook"] + runbooks[:RUNBOOKS_SHOWN]:
        risk = needs_approval if entry.get("risk") == "high" else ""
        described = _shown(entry["description"] or "")  # a graph may have none
        described = f" — {described}" if described else ""
        lines.append(f"• `{entry['example']}`{described}{risk}")
    if not runbooks:  # else nobody could tell that none was set up from one they had missed
        lines.append("No runbooks are set up yet (`run` has nothing to run): baton.yaml lists them.")
    if len(runbooks) > RUNBOOKS_SHOWN:
        lines.append(f"…and {len(runbooks) - RUNBOOKS_SHOWN} more runbooks: "
                     + ", ".join(f"`{entry['name']}`" for entry in runbooks[RUNBOOKS_SHOWN:]))
    intro = ("Here is what I can do (no mention needed here):" if private
             else "Here is what I can do (in a channel, mention me first):")
    unknown = state.get("text", "").strip()
    parts: list[dict[str, Any]] = []
    if unknown:
        named = _named_in(unknown, catalog)
        shown = [f"`{example}`" for example in named]
        meant = f" Did you mean {' or '.join([', '.join(shown[:-1]), shown[-1]] if len(shown) > 1 else shown)}?" \
            if named else ""
        # as code, on one line: quoted as written, a line of it could pass for Baton's own ("*Approved by bob*")
        parts.append({"kind": "text", "text": f"I don't know how to handle `{quoted_code(unknown, 200)}` yet.{meant}"})
        if context.model is None:  # plain words are the model's to read: without one, only the commands below work
            parts.append({"kind": "note", "text": "Requests in plain language need a language model, and none is "
                                                  "configured (`BATON_MODEL`); the commands below work without one."})
    parts += [
        {"kind": "text", "text": intro},
        {"kind": "text", "text": "\n".join(lines)},
        {"kind": "note", "text": "Add `force` as the first or last word of a request to run it again even if the same one ran recently."},
        {"kind": "note", "text": "Write `cancel` (or `stop`) in a run's thread to stop it (whoever asked for it, or an approver)."},
    ]
    return {"reply": {"title": "Baton help", "tone": "info", "parts": parts}}


def _shown(description: str) -> str:
    """A description on its bullet's line (a YAML block's lines joined), cut after about ``DESCRIPTION_SHOWN``
    characters at a word, saying so, and with its `code` closed."""
    text = quoted(" ".join(description.split()), len(description))
    if len(text) <= DESCRIPTION_SHOWN:
        return text
    cut = text[:DESCRIPTION_SHOWN].rsplit(" ", 1)[0].rstrip(" ,;:.")
    return cut + ("`" if cut.count("`") % 2 else "") + "…"


def _named_in(text: str, catalog: list[dict[str, Any]], most: int = 3) -> list[str]:
    """The examples of the runbooks and graphs ``text`` names by a word of its own ("restart the web service
    please": `run restart service=<...>`), in the order it names them; help itself is no pointer."""
    words = re.findall(r"[a-z0-9_-]+", text.lower())
    named = sorted((entry for entry in catalog if entry["name"] in words and entry["name"] != "help"),
                   key=lambda entry: words.index(entry["name"]))
    return [entry["example"] for entry in named[:most]]


builder = StateGraph(HelpState)
builder.add_node("answer", answer)
builder.add_edge(START, "answer")
builder.add_edge("answer", END)
graph = builder
