"""APScheduler (3.x, ``AsyncIOScheduler``) fires the digest schedules inside the Baton process.

Each schedule is a cron job in its own time zone. APScheduler's job store lives in memory and is
never shared: exactly-once comes from ``bot.digests`` claiming each (schedule, fire time) in the
database, so every replica may run the same jobs. At start, and every minute, the jobs are
reconciled with the database (chat-made schedules of other replicas) and anything overdue is
posted as one catch-up digest. That minute is counted on the event loop's clock, which is never set:
an APScheduler interval job's next run is a wall-clock time, and with the clock set back three
hours (NTP correcting a resumed VM) it did not run for three hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot import schedules
from bot.digests import Digests

log = logging.getLogger("baton.scheduler")
RECONCILE_SECONDS = 60


class DigestScheduler:
    def __init__(self, digests: Digests) -> None:
        self.digests = digests
        self._skipped: set[tuple[str, str, str]] = set()  # (key, cron, zone) of schedules named as broken once
        self._looking: asyncio.Task[None] | None = None
        self.scheduler = AsyncIOScheduler(timezone="UTC", job_defaults={"coalesce": True, "misfire_grace_time": None,
                                                                        "max_instances": 1})

    async def start(self) -> None:
        await self.digests.sync_config()
        self.scheduler.start()
        await self.reconcile()
        self._looking = asyncio.create_task(self._reconcile_every_minute())

    async def stop(self) -> None:
        if self._looking is not None:
            self._looking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._looking
        if self.scheduler.running:  # not when its start failed before it (a start of Baton that failed)
            self.scheduler.shutdown(wait=False)

    async def _reconcile_every_minute(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_SECONDS)
            try:
                await self.reconcile()
            except Exception as exc:  # a database blip: the next minute tries again
                if self.digests.db.health.explains(exc):  # the outage is logged once (storage.db), not each minute
                    continue
                log.exception("looking for due digests failed; trying again in %d s", RECONCILE_SECONDS)

    async def reconcile(self) -> None:
        """Match the cron jobs to the enabled schedules, then post whatever is due (catch-up)."""
        wanted = {schedule.key: schedule for schedule in await self.digests.enabled()}
        for job in self.scheduler.get_jobs():
            if job.id not in wanted:
                job.remove()
        for key, schedule in wanted.items():
            try:
                trigger = schedules.trigger(schedule.cron, schedule.timezone)
            except schedules.ScheduleError as exc:  # stored before a rule it breaks (``digest list`` says so too)
                if (key, schedule.cron, schedule.timezone) not in self._skipped:
                    self._skipped.add((key, schedule.cron, schedule.timezone))
                    log.warning("digest schedule %s is skipped: %s", key, exc)
                continue
            job = self.scheduler.get_job(key)
            if job is None or repr(job.trigger) != repr(trigger):  # str() leaves out the time zone
                self.scheduler.add_job(self.digests.run_due, trigger, id=key, replace_existing=True)
        await self.digests.run_due()

    def next_runs(self) -> dict[str, object]:
        return {job.id: job.next_run_time for job in self.scheduler.get_jobs()}
