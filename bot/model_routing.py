"""Plain words -> a graph, by the model (structured output), when no command or pattern matched."""

from __future__ import annotations

import json
import logging
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, Field

from bot.registry import GraphRegistry

log = logging.getLogger(__name__)

SURE = 0.7
NOT_ROUTABLE = {"runbook", "digest"}  # started by their own commands, never from plain words


class GraphGuess(BaseModel):
    """Which graph should handle the request."""

    graph: str = Field(description="the name of the best graph, or 'none' when no graph fits")
    confidence: float = Field(ge=0, le=1, description="how sure you are, 0 to 1")
    alternatives: list[str] = Field(default_factory=list, description="other plausible graph names, best first")


@dataclass(frozen=True)
class Guess:
    graph: str | None  # set when the model is sure
    options: list[str]  # otherwise: the likely graphs to offer as buttons (may be empty)
    raw: Any  # the model's reply, for token accounting


def candidates(registry: GraphRegistry) -> list[str]:
    return [spec.name for spec in registry if spec.name not in NOT_ROUTABLE]


async def guess(model: BaseChatModel, text: str, registry: GraphRegistry,
                redact: Callable[[str], str] | None = None) -> Guess:
    """``redact``: Baton's secrets out of the request before it goes to the model's provider, as ``bot.kit.chat``
    does for graphs (a token pasted into a plain-words request went out as written)."""
    names = candidates(registry)
    described = "\n".join(f"- {spec.name}: {spec.description}" for spec in registry if spec.name in names)
    result = await model.with_structured_output(GraphGuess, include_raw=True).ainvoke([
        SystemMessage(content="You route chat requests to one of these graphs. Answer with the graph's exact name.\n"
                              f"{described}"),
        HumanMessage(content=redact(text) if redact else text),
    ])
    parsed: GraphGuess | None = result.get("parsed")
    known = {name.lower(): name for name in names}
    if parsed is None:
        # Never run on an answer that does not fit (a confidence of 95, alternatives: null, the name as plain
        # text): the graphs it names are offered to the requester instead of the whole help text.
        log.warning("the model's routing answer did not fit GraphGuess, so its graphs are offered, not run: %s",
                    str(result.get("parsing_error") or "no answer in the schema").splitlines()[0][:300])
        return Guess(None, _ranked(known, _named_in(result.get("raw"))), result.get("raw"))
    graph = known.get(_bare(parsed.graph))
    if graph is not None and parsed.confidence >= SURE:
        return Guess(graph, [], result["raw"])
    return Guess(None, _ranked(known, [parsed.graph, *parsed.alternatives]), result["raw"])


def _ranked(known: dict[str, str], answers: list[str]) -> list[str]:
    """The routable graphs among a model's ``answers``, best first, each once, at most four."""
    return list(dict.fromkeys(known[bare] for bare in map(_bare, answers) if bare in known))[:4]


def _named_in(raw: Any) -> list[str]:
    """What a reply that did not fit ``GraphGuess`` names: the ``graph`` and ``alternatives`` of its call, or of
    the JSON object it wrote (a provider's JSON-schema mode answers in text), where they are text; or its text
    when it answered in words."""
    if not isinstance(raw, AIMessage):
        return []
    answers = [call.get("args") or {} for call in raw.tool_calls]
    try:
        written = json.loads(raw.text)
    except ValueError:
        written = None
    answers += [written] if isinstance(written, dict) else []
    named: list[Any] = []
    for answer in answers:
        alternatives = answer.get("alternatives")
        named += [answer.get("graph"), *(alternatives if isinstance(alternatives, list) else [])]
    return [name for name in named if isinstance(name, str)] + [raw.text]


def _bare(answer: str) -> str:
    """A graph name as a model may write it (``Status``, `` `status` ``, ``"status"``, ``Status.``), as the registry
    spells it (no graph's name holds a dot: bot.registry)."""
    return answer.strip(f"{string.whitespace}`'\".!?").lower()
