"""``Baton``: the hub that wires settings, storage, graphs, the request path and the adapters."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from importlib.metadata import entry_points
from typing import Any

from sqlalchemy import bindparam, exists, update
from sqlmodel import select

from bot.approvals import AnswerKeepingSerializer
from bot.config import BatonConfig, ConfigError, check_digest_platforms, load_config, load_config_again, printable
from bot.digests import Digests
from bot.leased_run import LeaseLost
from bot.messages import Accepted, InboundClick, InboundMessage, storable
from bot.orchestrator import Orchestrator
from bot.outbox import Outbox
from bot.redaction import Redactor
from bot.registry import GraphRegistry
from bot.retention import Retention
from bot.models import create_model
from bot.runtime import GraphRuntime, Services
from bot.scheduler import DigestScheduler
from bot.settings import Settings
from bot.threads import Leases, lease_run_out, run_out_params
from storage.checkpointer import checkpoint_fence, open_checkpointer
from storage.db import Database, prepared
from storage.migrate import upgrade
from storage.models import InboundEvent, Run, ThreadRecord, utcnow

log = logging.getLogger("baton")


class StartFailed(RuntimeError):
    """Baton cannot start as configured (a platform refused its token, or cannot be reached): the
    message says why in one line, shown as such instead of a traceback."""
SWEEP_INTERVAL = 1.0
EXPIRY_CHECK_SECONDS = 30.0
RETENTION_INTERVAL = 600.0
FIRST_PRUNE_AFTER = 60.0  # a replica restarted more often than the interval prunes too
PRUNE_BATCH = 500  # threads per transaction of the pruning; a pass goes on until none is due
_EVENT_RECEIVED = prepared(select(InboundEvent.id).where(
    InboundEvent.platform == bindparam("platform"), InboundEvent.event_id == bindparam("event_id")).limit(1))


def _prunable(now: datetime) -> tuple[Any, ...]:
    """A thread whose checkpoints may go: finished, not pruned yet, nothing queued on it, nobody holding it."""
    return (ThreadRecord.status.in_(("done", "failed", "idle")), ThreadRecord.pruned_at.is_(None),  # type: ignore[attr-defined,union-attr]
            lease_run_out(**run_out_params(now)),
            ~exists().where(InboundEvent.thread_record_id == ThreadRecord.id, InboundEvent.status == "pending"))


class _PruningHold:
    """The pruning's lease on a thread, as the ``checkpoint_fence`` of its deletions (``storage.checkpointer``): each
    deletes only while the lease is surely held, or once it is renewed. A replica stalled past it (SIGSTOP, a frozen
    VM) while a follow-up took the thread and began a run deleted, once going again, that run's checkpoints, and its
    approval card turned stale."""

    def __init__(self, leases: Leases, record_id: int) -> None:
        self._leases = leases
        self._record_id = record_id

    def surely_held(self) -> bool:
        return self._leases.surely_held(self._record_id)

    async def confirm(self) -> None:
        if not await self._leases.renew(self._record_id):
            raise LeaseLost(f"thread {self._record_id} was taken while its checkpoints were being pruned (a stall "
                            "past the pruning's lease): the pruning stops, and what the thread holds now stays")


def discover_adapters(names: set[str] | None = None) -> dict[str, type[Any]]:
    """Adapter classes registered under the ``baton.adapters`` entry point (the core imports none).

    With ``names``, only those are loaded, and one that fails to load is an error. Without, an
    adapter whose module fails to import is logged and left out, so one broken plugin does not
    take every platform down.
    """
    found: dict[str, type[Any]] = {}
    for point in entry_points(group="baton.adapters"):
        if names is not None and point.name not in names:
            continue
        try:
            found[point.name] = point.load()
        except Exception as exc:
            if names is not None:
                raise ValueError(f"adapter '{point.name}' cannot be loaded: {exc}") from exc
            log.error("adapter %s cannot be loaded and is left out: %s", point.name, exc)
    return found


class Baton:
    """One Baton process. ``async with Baton(settings) as baton:`` starts it; adapters attach to it."""

    def __init__(self, settings: Settings, config: BatonConfig | None = None) -> None:
        self.settings = settings
        config = config if config is not None else load_config(settings.config_path, required=settings.config_named)
        self.instance = settings.instance_name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.db = Database(settings.database_url)
        self.registry = GraphRegistry.discover()
        redactor = Redactor.for_settings(settings)
        self.outbox = Outbox(self.db, self.instance, claim_seconds=settings.lease_seconds, redactor=redactor)
        self.retention = Retention(self.db, settings.retention_days, keep_threads_seconds=settings.dedupe_window_seconds)
        check_digest_platforms(config, settings.config_path)
        self.adapters: list[Any] = [adapter_class(self) for adapter_class in self._selected_adapters()]
        self._warn_about(config)
        self.services = Services(
            self.db, config, self.registry,
            model=create_model(settings.model, timeout=settings.model_timeout_seconds, retries=settings.model_retries),
            model_name=settings.model,
            model_deadline=settings.model_timeout_seconds * (settings.model_retries + 1),
            histories={adapter.name: adapter.history for adapter in self.adapters}, redactor=redactor,
            approval_expiry=settings.approval_expiry_seconds, retention_days=settings.retention_days)
        self._stack = AsyncExitStack()
        self._loops: list[asyncio.Task[None]] = []
        self._started: list[Any] = []  # the adapters whose start was begun, the one that failed included
        self.orchestrator: Orchestrator | None = None
        self.scheduler: DigestScheduler | None = None
        self.stopping = False  # set when the server is asked to stop: long-lived responses end
        self._reloading = asyncio.Lock()

    async def __aenter__(self) -> Baton:
        try:
            await self._start()
        except BaseException:
            # ``__aexit__`` is not called when this raises: Discord, started before Slack refused its token, stayed
            # connected (its gateway taking events, its delivery loop polling) in a Baton that said it cannot start.
            await self._stop_after_failed_start()
            raise
        return self

    async def _start(self) -> None:
        await asyncio.to_thread(upgrade, self.settings.database_url)
        checkpointer = await self._stack.enter_async_context(open_checkpointer(
            self.settings.database_url, serde=AnswerKeepingSerializer()))
        self.runtime = GraphRuntime(self.registry, checkpointer, self.settings.run_timeout_seconds)
        self.digests = Digests(self.services, self.runtime, self.outbox, self.instance)
        self.orchestrator = Orchestrator(self.settings, self.services, self.runtime, self.outbox, self.instance,
                                         self.digests)
        for adapter in self.adapters:
            self._started.append(adapter)  # before: one that fails part-way has its connection closed too
            await adapter.start()
        # Diagnostics and tidying (messages no adapter here sends; cards posted before baton.yaml's approvers
        # changed): neither may keep Baton from starting.
        for check in (self.outbox.report_unserved, self.orchestrator.refresh_approvers):
            try:
                await check()
            except Exception:
                log.exception("start-up step %s failed; Baton starts anyway", check.__name__)
        self.scheduler = DigestScheduler(self.digests)
        await self.scheduler.start()
        self._loops = [asyncio.create_task(self._every(SWEEP_INTERVAL, self.orchestrator.sweep)),
                       asyncio.create_task(self._every(RETENTION_INTERVAL, self.prune_due_checkpoints,
                                                       first=FIRST_PRUNE_AFTER)),
                       asyncio.create_task(self._every(RETENTION_INTERVAL, self.retention.delete_expired,
                                                       first=FIRST_PRUNE_AFTER)),
                       asyncio.create_task(self._every(self.outbox.claim_seconds / 3, self.outbox.keep_claims))]
        if self.settings.approval_expiry_seconds:  # looked for a tenth as often as its time, at most every 30 s
            every = min(EXPIRY_CHECK_SECONDS, max(SWEEP_INTERVAL, self.settings.approval_expiry_seconds / 10))
            self._loops.append(asyncio.create_task(self._every(every, self.orchestrator.expire_approvals)))
        log.info("Baton %s started with adapters: %s", self.instance, ", ".join(a.name for a in self.adapters) or "none")

    async def _stop_after_failed_start(self) -> None:
        """Stop what a start that failed had started; the start's own error is the one the caller sees."""
        try:
            await self.__aexit__(None, None, None)
        except Exception:
            log.exception("the start failed, and stopping what it had started failed too")

    async def __aexit__(self, *exc: object) -> None:
        if self.scheduler is not None:
            await self._stop_part("the digest scheduler", self.scheduler.stop)
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        for adapter in reversed(self._started):
            await self._stop_part(f"the {adapter.name} adapter", adapter.stop)
        if self.orchestrator:
            await self._stop_part("the orchestrator", self.orchestrator.stop)
        try:
            await self.outbox.give_back_unsent()
        except Exception as exc:  # the claims run out by themselves; the rest must still be closed
            if not self.db.health.explains(exc):
                log.exception("giving the unsent outbox rows back failed")
        await self._stack.aclose()
        await self.db.dispose()

    @staticmethod
    async def _stop_part(what: str, stop: Callable[[], Awaitable[None]]) -> None:
        """Stop one part; one that raises is logged and the others are stopped still (the first adapter's stop that
        raised left the later ones connected, the runs' commands running, the database open)."""
        try:
            await stop()
        except Exception:
            log.exception("stopping %s failed; the rest of Baton is stopped still", what)

    @property
    def config(self) -> BatonConfig:
        """``baton.yaml`` as read last (``reload_config``): the one copy, which every part reads from ``Services``."""
        return self.services.config

    async def reload_config(self) -> bool:
        """Read ``baton.yaml`` again (``baton run`` does on SIGHUP): what comes next follows its runbooks,
        approvers, policies, digests and prices; waiting cards are edited to name the approvers it gives.
        A file that is not valid, or not there, is refused with its reason in the log, and the configuration
        in use stays. Whether the new one was taken."""
        path = self.settings.config_path
        if self.orchestrator is None or self.scheduler is None or self.stopping:
            log.warning("%s was not read again: Baton is starting or stopping", path)
            return False
        async with self._reloading:  # signals in a row are read one after the other, the last one last
            try:
                config = await asyncio.to_thread(load_config_again, path)
                check_digest_platforms(config, path)
            except ConfigError as exc:
                log.error("%s was not read again, Baton goes on with the configuration it has: %s", path,
                          printable(str(exc), lines=True))
                return False
            self.services.config = config
            self._warn_about(config)
            for step in (self.digests.sync_config, self.scheduler.reconcile, self.orchestrator.refresh_approvers):
                try:
                    await step()
                except Exception as exc:  # the configuration is taken; the next minute's reconcile catches up
                    if not self.db.health.explains(exc):
                        log.exception("after reading %s again, %s failed", path, step.__name__)
            # Last: who waits for this line finds the schedules and the cards as the file has them.
            log.info("%s read again: %d runbooks, %d approvers, %d digests", path, len(config.runbooks),
                     len(config.approvers), len(config.digests))
            return True

    def _warn_about(self, config: BatonConfig) -> None:
        """What in ``config`` is most likely a mistake, though Baton can run with it."""
        path = self.settings.config_path
        for graph in sorted(set(config.graphs) - set(self.registry.names())):
            log.warning("%s sets a policy for the graph %s, which is not installed (graphs/): a typo?", path, graph)
        for index, digest in enumerate(config.digests):
            unknown = sorted(set(digest.graphs) - set(self.registry.names()))
            if unknown:  # counts nothing unless that graph ran here once: most likely a typo
                log.warning("%s: digests.%d (%s #%s) counts the graphs %s, which are not installed "
                            "(graphs/): a typo?", path, index, digest.platform, digest.channel, ", ".join(unknown))
        prices = config.models.prices
        if prices and self.settings.model and self.settings.model not in prices:
            log.warning("%s has model prices for %s but BATON_MODEL is %s: its runs record tokens and no "
                        "cost (a price is found by the exact BATON_MODEL value)", path,
                        ", ".join(sorted(prices)), self.settings.model)
        for platform in sorted({digest.platform for digest in config.digests} - {a.name for a in self.adapters}):
            log.warning("%s has digests for %s, which this Baton does not serve: a replica serving %s "
                        "posts them, or nobody does", path, platform, platform)

    def _selected_adapters(self) -> list[type[Any]]:
        wanted = self.settings.enabled_adapters()
        available = discover_adapters(wanted)
        if wanted is not None:
            unknown = wanted - set(available)
            if unknown:
                known = sorted({point.name for point in entry_points(group="baton.adapters")})
                raise ValueError(f"BATON_ADAPTERS names unknown adapters: {', '.join(sorted(unknown))} "
                                 f"(Baton has {', '.join(known)})")
            return [available[name] for name in sorted(wanted)]
        configured = [cls for name, cls in available.items() if name != "playground" and cls.is_configured(self.settings)]
        # With no platform configured, the playground is the zero-config default. It trusts the
        # user name it is given, so it is never served beside a real platform unless asked for.
        return configured or [available["playground"]]

    async def accept_message(self, message: InboundMessage) -> Accepted:
        assert self.orchestrator is not None, "Baton is not started"
        return await self.orchestrator.accept_message(message)

    async def event_received(self, platform: str, event_id: str) -> bool:
        """Whether this platform event is stored already: for an adapter that must act before handing an
        event over (a slash command's thread is a message Baton posts first), so a redelivery acts once."""
        return (await self.db.fetch(_EVENT_RECEIVED, {"platform": platform, "event_id": storable(event_id)})).first() \
            is not None

    async def accept_click(self, click: InboundClick) -> Accepted:
        assert self.orchestrator is not None, "Baton is not started"
        return await self.orchestrator.accept_click(click)

    async def prune_due_checkpoints(self, batch: int = PRUNE_BATCH) -> int:
        """``prune_checkpoints`` in batches until none is due: one batch per interval fell behind a busy
        team (500 threads every 10 minutes, and the checkpoint file grew for good). Returns how many."""
        total = 0
        while pruned := await self.prune_checkpoints(batch):
            total += pruned
            if pruned < batch:
                break
        return total

    async def prune_checkpoints(self, limit: int = PRUNE_BATCH) -> int:
        """Delete the checkpoints of up to ``limit`` threads finished longer ago than the retention setting;
        how many were pruned (a thread taken up again meanwhile is left as it is)."""
        now = self.db.now()  # leases are compared on the database's clock (bot.threads)
        cutoff = utcnow() - timedelta(hours=self.settings.checkpoint_retention_hours)
        async with self.db.session() as session:
            records = (await session.exec(select(ThreadRecord).where(
                ThreadRecord.updated_at < cutoff, *_prunable(now)).limit(limit))).all()  # type: ignore[arg-type]
        return sum([await self._prune_thread(record) for record in records])

    async def _prune_thread(self, record: ThreadRecord) -> bool:
        """Delete one finished thread's checkpoints while holding its lease, so that no run starts on it
        meanwhile: a follow-up's run started between picking the thread and deleting lost its checkpoints
        (its approval turned stale). False, and nothing deleted, when the thread is no longer finished and
        free. A follow-up stored meanwhile waits for the lease; the sweeper drains it once it is given back.
        Each deletion makes sure the lease is still held first (``_PruningHold``): a pruning stalled past it
        stops there."""
        pruner = f"{self.instance} (pruning)"  # not the drains' name: they count their own name's lease as free
        now = self.db.now()  # the lease's end as every replica reads it: on the database's clock, not ours
        async with self.db.session() as session:
            taken = await session.exec(update(ThreadRecord).where(  # type: ignore[call-overload]
                ThreadRecord.id == record.id, ThreadRecord.updated_at == record.updated_at, *_prunable(now),
            ).values(lease_owner=pruner, lease_until=now + timedelta(seconds=self.settings.lease_seconds)))
            if not taken.rowcount:
                return False
        pruned: dict[str, Any] = {}
        leases = Leases(self.db, pruner, self.settings.lease_seconds)
        hold = checkpoint_fence.set(_PruningHold(leases, record.id))  # type: ignore[arg-type]
        try:
            async with self.db.read() as session:  # one uninstalled since it ran is no installed graph
                ran = (await session.exec(select(Run.graph).where(Run.thread_record_id == record.id).distinct())).all()
            await self.runtime.forget(record.lg_thread_id, {*self.registry.names(), *ran})
            pruned = {"pruned_at": utcnow()}
        except LeaseLost as exc:  # what the thread holds now is its new holder's
            log.warning("%s", exc)
            return False
        finally:
            checkpoint_fence.reset(hold)
            async with self.db.session() as session:
                await session.exec(update(ThreadRecord).where(  # type: ignore[call-overload]
                    ThreadRecord.id == record.id, ThreadRecord.lease_owner == pruner,
                ).values(lease_owner=None, lease_until=None, **pruned))
        return True

    async def _every(self, seconds: float, job: Any, first: float | None = None) -> None:
        pause = seconds if first is None else first
        while True:
            await asyncio.sleep(pause)
            pause = seconds
            try:
                await job()
            except Exception as exc:
                if not self.db.health.explains(exc):  # the database away: logged once, by storage.db
                    log.exception("background job %s failed", getattr(job, "__name__", job))
