"""Runs graphs with the checkpointer: streams progress, reports interrupts or the final state.

Also implements ``bot.kit.RunContext``: what a running graph may ask of the core (catalog,
channel activity, the effects ledger).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.pregel import Pregel
from langgraph.types import Command, Interrupt
from sqlalchemy import update
from sqlmodel import select

from bot import kit
from bot.config import BatonConfig
from bot.registry import GraphRegistry, GraphSpec
from bot.replies import age
from storage.db import Database, insert_ignore
from storage.models import Approval, Effect, ThreadRecord, utcnow

T = TypeVar("T")
ProgressSink = Callable[[str], Awaitable[None]]


class EffectInDoubt(RuntimeError):
    """A side effect started before a crash and its outcome is unknown: it is not run again."""


@dataclass
class GraphOutcome:
    interrupts: list[Interrupt] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def waiting(self) -> bool:
        return bool(self.interrupts)


class GraphRuntime:
    def __init__(self, registry: GraphRegistry, checkpointer: BaseCheckpointSaver) -> None:
        self.registry = registry
        self.checkpointer = checkpointer
        self._compiled: dict[str, Pregel] = {}

    def compiled(self, spec: GraphSpec) -> Pregel:
        if spec.name not in self._compiled:
            self._compiled[spec.name] = spec.compile(self.checkpointer)
        return self._compiled[spec.name]

    @staticmethod
    def config_for(lg_thread_id: str, graph: str) -> dict[str, Any]:
        # One LangGraph thread per (chat thread, graph): different graphs never share state channels.
        return {"configurable": {"thread_id": f"{lg_thread_id}:{graph}"}}

    async def run(
        self, spec: GraphSpec, lg_thread_id: str, payload: dict[str, Any] | Command | None,
        context: kit.RunContext, on_progress: ProgressSink,
    ) -> GraphOutcome:
        """Run (``payload`` a dict), resume (a ``Command``) or continue (``None``) until done or interrupted."""
        graph = self.compiled(spec)
        config = self.config_for(lg_thread_id, spec.name)
        token = kit.bind(context)
        try:
            async for chunk in graph.astream(payload, config, stream_mode="custom", durability="sync"):
                if isinstance(chunk, dict) and chunk.get("baton") == kit.PROGRESS_MARK:
                    await on_progress(str(chunk.get("text", "")))
        finally:
            kit.unbind(token)
        return await self.state(spec, lg_thread_id)

    async def state(self, spec: GraphSpec, lg_thread_id: str) -> GraphOutcome:
        snapshot = await self.compiled(spec).aget_state(self.config_for(lg_thread_id, spec.name))
        return GraphOutcome(interrupts=list(snapshot.interrupts), values=dict(snapshot.values or {}))

    async def forget(self, lg_thread_id: str) -> None:
        for name in self.registry.names():
            await self.checkpointer.adelete_thread(f"{lg_thread_id}:{name}")


class RunServices:
    """The ``kit.RunContext`` of one run."""

    def __init__(self, db: Database, config: BatonConfig, registry: GraphRegistry, request: kit.Request,
                 run_id: int | None) -> None:
        self._db = db
        self._registry = registry
        self._run_id = run_id
        self.config = config
        self.request = request

    def catalog(self) -> list[dict[str, Any]]:
        entries = [
            {"name": spec.name, "kind": "graph", "description": spec.description, "example": spec.example,
             "risk": self.config.policy_for_graph(spec.name).risk if spec.name in self.config.graphs else "low"}
            for spec in self._registry if spec.name != "runbook"
        ]
        for name, runbook in self.config.runbooks.items():
            example = runbook.example or f"run {name} {runbook.usage_args()}".strip()
            entries.append({"name": name, "kind": "runbook", "description": runbook.description,
                            "example": example, "risk": runbook.risk})
        return entries

    async def channel_activity(self) -> list[dict[str, Any]]:
        now = utcnow()
        async with self._db.read() as session:
            records = (await session.exec(
                select(ThreadRecord).where(
                    ThreadRecord.platform == self.request.platform,
                    ThreadRecord.channel == self.request.channel,
                    ThreadRecord.status.in_(("running", "waiting")),  # type: ignore[attr-defined]
                ).order_by(ThreadRecord.updated_at)  # type: ignore[arg-type]
            )).all()
            approvals = (await session.exec(
                select(Approval).where(
                    Approval.thread_record_id.in_([r.id for r in records]),  # type: ignore[attr-defined]
                    Approval.status == "pending",
                )
            )).all() if records else []
        activity = []
        for record in records:
            if record.thread == self.request.thread:
                continue
            activity.append({
                "channel": record.channel,
                "thread": record.thread,
                "title": record.title or record.graph or "request",
                "status": record.status,
                "status_text": "waiting for approval" if record.status == "waiting" else "running",
                "requested_by": record.requested_by or "someone",
                "age": age(record.updated_at, now),
                "approvals": [
                    {"summary": a.summary, "approvers": ", ".join(a.approvers), "age": age(a.created_at, now)}
                    for a in approvals if a.thread_record_id == record.id
                ],
            })
        return activity

    async def run_effect_once(self, key: str, name: str, fn: Callable[[], Awaitable[T]]) -> T:
        async with self._db.session() as session:
            fresh = await insert_ignore(session, Effect, {"key": key, "name": name, "run_id": self._run_id,
                                                          "status": "started", "started_at": utcnow()}, ["key"])
            if not fresh:
                existing = (await session.exec(select(Effect).where(Effect.key == key))).one()
        if not fresh:
            if existing.status == "done":
                return existing.result  # type: ignore[no-any-return]
            if existing.status == "failed":
                raise RuntimeError(f"side effect '{name}' failed before ({existing.result}); it is not run again")
            raise EffectInDoubt(f"side effect '{name}' was started before and its outcome is unknown; "
                                "it was not run again")
        try:
            result = await fn()
        except BaseException as exc:
            await self._finish_effect(key, "failed", {"error": f"{type(exc).__name__}: {exc}"})
            raise
        await self._finish_effect(key, "done", result)
        return result

    async def _finish_effect(self, key: str, status: str, result: Any) -> None:
        async with self._db.session() as session:
            await session.exec(
                update(Effect).where(Effect.key == key).values(status=status, result=result, finished_at=utcnow())  # type: ignore[arg-type]
            )
