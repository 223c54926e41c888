"""What every adapter shares: the outbox delivery loop (retries, Retry-After, pacing) and its hooks."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from fastapi import FastAPI

from bot.outbox import Delivery
from bot.settings import Settings

if TYPE_CHECKING:
    from bot.app import Baton

log = logging.getLogger("baton.adapters")


class RetryLater(Exception):
    """The platform asked us to wait (HTTP 429 with Retry-After) or is briefly unavailable."""

    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(reason)
        self.seconds = seconds


class DeliveryRejected(Exception):
    """The platform refused the message for good (bad request, unknown channel): do not retry."""


class Adapter(ABC):
    name: ClassVar[str]
    channel_pace_seconds: ClassVar[float] = 0.0  # minimum gap between two messages in one channel
    max_attempts: ClassVar[int] = 12
    idle_poll_seconds: ClassVar[float] = 0.5

    def __init__(self, baton: Baton) -> None:
        self.baton = baton
        self._pump: asyncio.Task[None] | None = None

    @classmethod
    def is_configured(cls, settings: Settings) -> bool:
        """True when the settings hold what this platform needs (its tokens)."""
        return False

    def mount(self, app: FastAPI) -> None:
        """Add this adapter's HTTP routes to the server (if it has any)."""

    async def start(self) -> None:
        self._pump = asyncio.create_task(self._deliver_forever(), name=f"outbox-{self.name}")

    async def stop(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)

    @abstractmethod
    async def send(self, delivery: Delivery) -> str | None:
        """Deliver one message; return the platform's id for it (used to edit it later)."""

    async def _deliver_forever(self) -> None:
        outbox = self.baton.outbox
        while True:
            try:
                deliveries = await outbox.claim(self.name, self.baton.instance, pace_seconds=self.channel_pace_seconds)
            except Exception:
                log.exception("claiming %s outbox rows failed", self.name)
                deliveries = []
            for delivery in deliveries:
                await self._deliver(delivery)
            if not deliveries:
                await outbox.wait(self.name, self.idle_poll_seconds)

    async def _deliver(self, delivery: Delivery) -> None:
        outbox = self.baton.outbox
        try:
            platform_id = await self.send(delivery)
        except RetryLater as exc:
            log.info("%s asked to retry message %s in %.1fs: %s", self.name, delivery.id, exc.seconds, exc)
            await outbox.retry(delivery.id, exc.seconds, str(exc))
        except DeliveryRejected as exc:
            log.error("%s rejected message %s: %s", self.name, delivery.id, exc)
            await outbox.failed(delivery.id, str(exc))
        except Exception as exc:
            if delivery.attempts >= self.max_attempts:
                log.error("giving up on %s message %s after %d attempts: %s", self.name, delivery.id, delivery.attempts, exc)
                await outbox.failed(delivery.id, f"{type(exc).__name__}: {exc}")
            else:
                await outbox.retry(delivery.id, min(2.0 ** delivery.attempts, 120.0), f"{type(exc).__name__}: {exc}")
        else:
            await outbox.delivered(delivery.id, platform_id)
