"""LangChain agents' tool reviews (``HumanInTheLoopMiddleware``) as approval cards.

An agent made with ``langchain.agents.create_agent(..., middleware=[HumanInTheLoopMiddleware(...)])`` asks
with ``interrupt()`` before a gated tool call runs, and takes its own decisions back, not Baton's answer:

* ``interrupt_mode="batched"`` (its default): one question a model turn,
  ``{"action_requests": [{"name", "args", "description"?}, ...], "review_configs": [{"action_name",
  "allowed_decisions"}, ...]}``, answered with ``{"decisions": [{"type": "approve"} | {"type": "reject",
  "message"}, ...]}``, one a call, in order;
* ``interrupt_mode="per_call"``: one question a call, ``{"type": "tool_approval", "tool_call_id", "name",
  "args", "description"}`` with a ``response_schema`` of the decisions allowed, answered with one decision.

A card decides all the calls it shows: Approve runs them, Reject tells the model who rejected them. A tool
that allows neither approve nor reject (only ``edit`` or ``respond``) cannot be decided on a card.
"""

from __future__ import annotations

from typing import Any

from bot.messages import shown_value

CARD_DECISIONS = ("approve", "reject")


def is_review(value: Any) -> bool:
    """Whether an ``interrupt()`` value is a tool review of ``HumanInTheLoopMiddleware``'s."""
    if not isinstance(value, dict):
        return False
    if value.get("type") == "tool_approval":
        return isinstance(value.get("name"), str)
    return isinstance(value.get("action_requests"), list) and isinstance(value.get("review_configs"), list)


def _calls(value: dict[str, Any]) -> list[dict[str, Any]]:
    requests = [value] if value.get("type") == "tool_approval" else value["action_requests"]
    return [call if isinstance(call, dict) else {"name": str(call)} for call in requests]


def question(value: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """A review's card: what the agent wants to run (each call's description, else its name) and, in the details,
    each call's arguments one a line, as a runbook's card shows its command (text as it is, other values as JSON)."""
    calls = _calls(value)
    names = [str(call.get("name", "?")) for call in calls]
    described = [_described(call, name) for call, name in zip(calls, names)]
    if len(calls) == 1:
        summary = f"The agent wants to run `{names[0]}`." + (f"\n\n{described[0]}" if described[0] else "")
    else:
        summary = f"The agent wants to run {len(calls)} tools: " + ", ".join(f"`{name}`" for name in names) + "."
        summary += "".join(f"\n\n{index}. {text or f'`{name}`'}"
                           for index, (text, name) in enumerate(zip(described, names), start=1))
    details = {}
    for index, (call, name) in enumerate(zip(calls, names), start=1):
        args = call.get("args")
        for arg, given in (args.items() if isinstance(args, dict) else [("arguments", args)] if args else []):
            key = str(arg) if len(calls) == 1 else f"{index}. {name} {arg}"
            details[key] = shown_value(given)
    return summary, details


def _described(call: dict[str, Any], name: str) -> str:
    """A call's description without the middleware's own "Tool: <name>\\nArgs: <args>" (the card shows the
    arguments below)."""
    text = str(call.get("description") or "").strip()
    return text.split(f"\n\nTool: {name}\nArgs: ", 1)[0].strip()


def unanswerable(value: dict[str, Any], schema: Any) -> str | None:
    """Why no card can decide this review (a tool allows neither decision a card gives), or ``None``."""
    if value.get("type") == "tool_approval":
        allowed = _decision_types(schema)
        names = [str(value.get("name"))]
        lacking = [] if not allowed else [decision for decision in CARD_DECISIONS if decision not in allowed]
        return _why(names[0], lacking, sorted(allowed)) if lacking else None
    for config in value["review_configs"]:
        if not isinstance(config, dict):
            continue
        allowed = config.get("allowed_decisions") or []
        lacking = [decision for decision in CARD_DECISIONS if decision not in allowed]
        if lacking:
            return _why(str(config.get("action_name", "?")), lacking, list(allowed))
    return None


def _why(tool: str, lacking: list[str], allowed: list[str]) -> str:
    return (f"the tool `{tool}` is reviewed with {', '.join(allowed) or 'no decision'} allowed, not "
            f"{' and '.join(lacking)}: a card gives approve or reject (allow both in HumanInTheLoopMiddleware's "
            "interrupt_on)")


def _decision_types(schema: Any) -> set[str]:
    """The ``type`` values a per-call review's ``response_schema`` (JSON Schema) admits."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            kind = (node.get("properties") or {}).get("type") if isinstance(node.get("properties"), dict) else None
            if isinstance(kind, dict):
                if isinstance(kind.get("const"), str):
                    found.add(kind["const"])
                found.update(item for item in kind.get("enum", []) if isinstance(item, str))
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(schema)
    return found


def answer(value: dict[str, Any], approved: bool, by: str) -> dict[str, Any]:
    """The middleware's own decision(s) for a card's Approve or Reject."""
    decision: dict[str, Any] = {"type": "approve"} if approved else {
        "type": "reject", "message": f"{by} rejected this in the chat, so it was not run."}
    if value.get("type") == "tool_approval":
        return decision
    return {"decisions": [dict(decision) for _ in value["action_requests"]]}
