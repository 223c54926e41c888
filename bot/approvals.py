"""Who may decide an approval, and the atomic "first valid decision wins"."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from sqlalchemy import update

from bot import tool_review
from storage.db import Transaction
from storage.models import Approval


EXPIRED_BY = "Baton"  # who decided a card that nobody decided: it expired, or its run ended otherwise


def is_approver(approvers: list[str], platform: str, user: str) -> bool:
    """``alice`` matches alice on every platform; ``slack:U1`` only on Slack."""
    return user in approvers or f"{platform}:{user}" in approvers


def approvers_besides_requester(approval: Approval) -> list[str]:
    """Who may approve a high-risk ``approval``: its approvers without the requester (under any
    platform's prefix: the card that shows them does not know the platform)."""
    return _besides(approval.approvers, approval.requested_by)


def who_may_approve(approvers: list[str], requested_by: str, risk: str) -> list[str]:
    """Who may approve a pending approval (as status and digests list them): on a high-risk one,
    everyone but the requester."""
    return _besides(approvers, requested_by) if risk == "high" else list(approvers)


def waiting_for(approvers: list[str], requested_by: str, risk: str) -> str:
    """Who a waiting card waits for, in words: "waiting 3m for nobody" told no one what to do."""
    allowed = who_may_approve(approvers, requested_by, risk)
    if allowed:
        return ", ".join(allowed)
    if approvers:
        return f"an approver other than {requested_by}, who asked (baton.yaml names no other)"
    return "an approver (baton.yaml names none)"


def nobody_may_approve(approval: Approval, platform: str) -> bool:
    """Whether no click on ``platform``, where its card would be, could ever approve ``approval``: none of its
    approvers is of that platform, or (high-risk) the only ones there are who asked. Its card waited for nobody,
    a day, holding its thread, unless baton.yaml was changed meanwhile: the requester is told at once instead."""
    return not may_click(approval.approvers, approval.requested_by, approval.risk, platform)


def may_click(approvers: list[str], requested_by: str, risk: str, platform: str) -> list[str]:
    """``who_may_approve`` of those who can click on ``platform``."""
    return who_may_approve(clicking_on(approvers, platform), requested_by, risk)


def clicking_on(approvers: list[str], platform: str) -> list[str]:
    """The approvers who can click on ``platform`` (``alice`` on every one, ``slack:U1`` on Slack only)."""
    return [name for name in approvers if ":" not in name or name.startswith(f"{platform}:")]


def _besides(approvers: list[str], asked: str) -> list[str]:
    return [name for name in approvers if name != asked and not name.endswith(f":{asked}")]


def refusal(approval: Approval, platform: str, user: str, action: str = "approve") -> str | None:
    """Why ``user`` may not ``action`` (approve or reject) ``approval``, or ``None`` when they may.

    Whoever asked may always reject: that withdraws their own request, and stops nothing but it.
    """
    if user == approval.requested_by:
        if action == "reject":
            return None
        if approval.risk == "high" and not approvers_besides_requester(approval):  # else told to wait for nobody
            return ("You asked for this high-risk action, and nobody else may approve it: baton.yaml names no other "
                    "approver (add one there, or Reject to withdraw it).")
        if approval.risk == "high":
            return "You asked for this high-risk action, so someone else has to approve it (Reject withdraws it)."
    if not approval.approvers:
        return "Nobody is configured to approve this (add `approvers` in baton.yaml)."
    if not is_approver(approval.approvers, platform, user):
        if action == "approve":  # as the card lists them: on a high-risk request, not who asked
            may = who_may_approve(approval.approvers, approval.requested_by, approval.risk)
            if not may:  # the requester is its only approver
                return (f"Nobody can approve this: its only approver is {approval.requested_by}, who asked for it "
                        "(add approvers in baton.yaml).")
            return f"Only {one_of(may)} can approve this."
        return f"Only {one_of(approval.approvers)} can decide this."
    return None


def one_of(names: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


async def decide(session: Transaction, approval_id: str, approved: bool, user: str, at: datetime, event_id: int) -> bool:
    """Record the decision only if nobody decided first; true when this decision won."""
    result = await session.exec(
        update(Approval)
        .where(Approval.id == approval_id, Approval.status == "pending")  # type: ignore[arg-type]
        .values(status="approved" if approved else "rejected", decided_by=user, decided_at=at, decided_event_id=event_id)
    )
    return bool(result.rowcount)


async def choose(session: Transaction, approval_id: str, choice: str, user: str, at: datetime, event_id: int) -> bool:
    """Record a choice card's pick only if nobody picked first."""
    result = await session.exec(
        update(Approval)
        .where(Approval.id == approval_id, Approval.status == "pending")  # type: ignore[arg-type]
        .values(status="approved", choice=choice, decided_by=user, decided_at=at, decided_event_id=event_id)
    )
    return bool(result.rowcount)


class Answer(dict[str, Any]):
    """A card's decision as a plain graph's ``interrupt()`` returns it: ``{"approved", "by", "at", "approval_id"}``,
    and false when the card was rejected. LangGraph's own pattern, ``if interrupt(...):``, went on after a Reject:
    a dict with keys is true."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return self.get("approved") is True


_ANSWER_KEYS = frozenset(("approved", "by", "at", "approval_id"))


def _revived(value: Any) -> Any:
    return Answer(value) if type(value) is dict and value.keys() == _ANSWER_KEYS else value


class AnswerKeepingSerializer(JsonPlusSerializer):
    """The checkpointer's serializer, which reads a card's answer back as an ``Answer``. A node's answers so
    far are read back from its checkpoint when the node runs again (it asks a second question; a replica takes
    its run over): stored, an ``Answer`` is a plain dict, which is true after a Reject. What is stored is
    LangGraph's own, so any Baton reads the checkpoints of any other."""

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        value = super().loads_typed(data)
        if type(value) is list and any(type(item) is dict for item in value):  # a node's answers (RESUME)
            return [_revived(item) for item in value]
        return _revived(value)


def resume_value(approval: Approval, schema: object = None, asked: object = None) -> object:
    """What ``interrupt(asked)`` returns to the graph (``bot.kit.Decision.from_resume`` reads it): ``True`` or
    ``False`` to a plain graph's ``interrupt(..., response_schema=bool)`` (``schema``, as LangGraph surfaces it:
    JSON Schema), which refuses the dict; a LangChain agent's tool review its own decisions (``bot.tool_review``)."""
    assert approval.decided_at is not None
    if isinstance(schema, dict) and schema.get("type") == "boolean":
        return approval.status == "approved"
    if tool_review.is_review(asked):
        return tool_review.answer(asked, approval.status == "approved", approval.decided_by or "an approver")
    return Answer(approved=approval.status == "approved", by=approval.decided_by, at=approval.decided_at.isoformat(),
                  approval_id=approval.id)
