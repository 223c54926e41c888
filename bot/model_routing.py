"""Plain words -> a graph, by the model (structured output), when no command or pattern matched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, Field

from bot.registry import GraphRegistry

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


async def guess(model: BaseChatModel, text: str, registry: GraphRegistry) -> Guess:
    names = candidates(registry)
    described = "\n".join(f"- {spec.name}: {spec.description}" for spec in registry if spec.name in names)
    result = await model.with_structured_output(GraphGuess, include_raw=True).ainvoke([
        SystemMessage(content="You route chat requests to one of these graphs. Answer with the graph's exact name.\n"
                              f"{described}"),
        HumanMessage(content=text),
    ])
    parsed: GraphGuess | None = result.get("parsed")
    if parsed is None:
        return Guess(None, [], result.get("raw"))
    known = {name.lower(): name for name in names}
    graph = known.get(_bare(parsed.graph))
    ranked = list(dict.fromkeys(known[bare] for bare in map(_bare, [parsed.graph, *parsed.alternatives]) if bare in known))
    if graph is not None and parsed.confidence >= SURE:
        return Guess(graph, [], result["raw"])
    return Guess(None, ranked[:4], result["raw"])


def _bare(answer: str) -> str:
    """A graph name as a model may write it (``Status``, `` `status` ``, ``"status"``), as the registry spells it."""
    return answer.strip().strip("`'\"").strip().lower()
