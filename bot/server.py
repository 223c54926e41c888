"""The HTTP server: one FastAPI app; each adapter mounts its routes (playground, Slack events, ...)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from bot.app import Baton
from bot.config import BatonConfig
from bot.settings import Settings


# asyncio's own loop, not uvloop (which uvicorn picks when it is installed, as uvicorn[standard]
# installs it). uvloop starts a subprocess with libuv's fork(), which holds the GIL, and so the
# whole process, until the child execs; it costs more the larger the process is. Here one
# runbook command (/bin/true) took 7.2 ms on uvloop inside Baton's process against 0.9 ms on
# asyncio's loop (Python's own subprocess, vfork where it can), and bench/request_path.py ran
# 2.4 times slower on uvloop.
EVENT_LOOP = "asyncio"


def settle_garbage_collector() -> None:
    """Keep what start-up built (modules, mappers, compiled graphs) out of every later collection.

    Measured under a burst of Slack events: each full (generation 2) collection walked those
    objects again and stopped the event loop for ~140 ms, the whole tail of the ack latency.
    Frozen, they are never scanned; what the running server allocates is collected as before.
    """
    gc.collect()
    gc.freeze()


def create_app(settings: Settings, config: BatonConfig | None = None) -> FastAPI:
    baton = Baton(settings, config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with baton:
            settle_garbage_collector()
            yield

    app = FastAPI(title="Baton", lifespan=lifespan)
    app.state.baton = baton
    for adapter in baton.adapters:
        adapter.mount(app)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, object]:
        return {"ok": True, "instance": baton.instance, "adapters": [adapter.name for adapter in baton.adapters],
                "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0]}

    return app
