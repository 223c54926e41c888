"""The audit log: append-only, one correlation id from chat event to run, approval and effect."""

from __future__ import annotations

import logging
from typing import Any

from storage.db import Transaction, prepared, when_committed
from storage.models import AuditEntry, utcnow

log = logging.getLogger("baton.audit")
_INSERT = prepared(AuditEntry.__table__.insert())  # type: ignore[attr-defined]


async def record(
    session: Transaction,
    kind: str,
    correlation_id: str,
    *,
    platform: str | None = None,
    channel: str | None = None,
    thread: str | None = None,
    user: str | None = None,
    run_id: int | None = None,
    approval_id: str | None = None,
    **detail: Any,
) -> None:
    """Write an audit entry in the caller's transaction (it lands or vanishes with that work), and log it once that
    transaction has committed: logged at the insert, a transaction that then failed (a full disk) left lines such as
    ``run.failed`` and ``request.answered`` in the log for what was never stored nor answered."""
    # A plain dict, not an AuditEntry: building a table model costs more than the INSERT (three per request).
    await session.exec(_INSERT, params={  # type: ignore[call-overload]
        "at": utcnow(), "kind": kind, "correlation_id": correlation_id, "platform": platform, "channel": channel,
        "thread": thread, "user": user, "run_id": run_id, "approval_id": approval_id, "detail": detail})
    when_committed(session, lambda: log.info("%s correlation=%s run=%s approval=%s", kind, correlation_id, run_id,
                                             approval_id))
