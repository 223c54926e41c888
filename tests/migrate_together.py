"""What each process of ``test_replicas_hunt``'s "started together" test runs: in a module of its own, so that
a ``spawn`` child imports only the migrations (0.7 s), not the test module and all of Baton with it (2.2 s)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize

from storage.migrate import upgrade


def upgrade_together(url: str, start: multiprocessing.synchronize.Barrier, outcomes: multiprocessing.Queue) -> None:
    start.wait()
    try:
        upgrade(url)
        outcomes.put("migrated")
    except Exception as exc:  # noqa: BLE001 - the outcome is what the test checks
        outcomes.put(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
