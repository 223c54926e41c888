"""The HTTP server: one FastAPI app; each adapter mounts its routes (playground, Slack events, ...)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from bot.app import Baton
from bot.config import BatonConfig
from bot.settings import Settings


def create_app(settings: Settings, config: BatonConfig | None = None) -> FastAPI:
    baton = Baton(settings, config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with baton:
            yield

    app = FastAPI(title="Baton", lifespan=lifespan)
    app.state.baton = baton
    for adapter in baton.adapters:
        adapter.mount(app)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, object]:
        return {"ok": True, "instance": baton.instance, "adapters": [adapter.name for adapter in baton.adapters]}

    return app
