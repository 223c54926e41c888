"""A run's services under its thread's lease: side effects start, and checkpoints are written, only while this
process holds the thread."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from bot import threads
from bot.kit import Request
from bot.runtime import RunServices, Services
from storage.db import Transaction


class LeaseLost(RuntimeError):
    """This process no longer holds the thread it was draining: its results are not written."""


class LeasedRunServices(RunServices):
    """A run's services whose side effects start only while this process holds the run's thread.

    A replica paused past its lease (SIGSTOP, a frozen VM) loses the thread to another replica, which
    answers it; resumed, its run went on making the side effects after the one it was paused in. The
    transaction that stores an effect's "started" entry now renews the lease first (one statement more, no
    transaction more), so the effect starts with a whole lease ahead of it, or not at all (``LeaseLost``).
    An effect under way when the heartbeat finds the thread taken over ends as it would have, and the run
    stops right after it (``stop_after_effect``).
    """

    def __init__(self, services: Services, request: Request, run_id: int | None, workspace: str,
                 correlation_id: str, *, leases: threads.Leases, record_id: int) -> None:
        super().__init__(services, request, run_id, workspace, correlation_id)
        self._leases = leases
        self._record_id = record_id
        self._effect_starting = False  # the next ``session`` stores an effect's start (``run_effect_once``)
        self._in_effect = False
        self._taken_over = False
        self.cut_off: str | None = None  # the side effect a cancellation stopped while it ran (its name)

    def stop_after_effect(self) -> bool:
        """The thread was taken over: stop after the side effect under way, if one is (true), else not at all."""
        self._taken_over = True
        return self._in_effect

    async def run_effect_once(self, key: str, name: str, fn: Any) -> Any:
        self._effect_starting = self._in_effect = True  # its first write is the "started" entry

        async def watched() -> Any:
            try:
                return await fn()
            except asyncio.CancelledError:
                self.cut_off = name
                raise

        try:
            result = await super().run_effect_once(key, name, watched)
        finally:
            self._in_effect = False
        if self._taken_over:
            raise LeaseLost(f"thread {self._record_id} was taken over while side effect '{name}' of run "
                            f"{self._run_id} ran; the run stops after it")
        return result

    def surely_held(self) -> bool:
        """A checkpoint may be written with no statement first (``storage.checkpointer``'s fence): the run's thread
        is surely still this process's, by its own clock, and no side effect's outcome waits to be written."""
        return not self._taken_over and not self.outcomes_unwritten() and self._leases.surely_held(self._record_id)

    async def confirm(self) -> None:
        """Before a checkpoint write after a side effect: write the outcomes of the effects settled since the run's
        last write (they happened, whoever holds the thread now). They ride on the run's next write, but once the
        step's checkpoint is written the step never runs again to find them: killed before a write of Baton's (the
        run taken up from that checkpoint), an effect that had ended stayed "started" in the ledger for good. After a
        stall: renew the lease, or stop the run with nothing written."""
        await self.write_outcomes()
        if not self._taken_over and (self._leases.surely_held(self._record_id) or
                                     await self._leases.renew(self._record_id)):
            return
        self._taken_over = True
        raise LeaseLost(f"thread {self._record_id} was taken over while run {self._run_id} was stalled; its "
                        "step's checkpoint is not written, and the run goes on where the thread is now")

    @contextlib.asynccontextmanager
    async def session(self, *, durable: bool = True) -> AsyncIterator[Transaction]:
        fenced, self._effect_starting = self._effect_starting, False
        async with super().session(durable=durable) as session:
            if fenced and not await self._leases.keep(session, self._record_id):
                raise LeaseLost(f"thread {self._record_id} was taken over; run {self._run_id} starts no side effect")
            yield session
