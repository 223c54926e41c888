"""Cron expressions and time zones: validation, chat grammar, and which firing is due.

APScheduler's ``CronTrigger`` does the calendar arithmetic (time zones, daylight-saving changes);
this module only asks it questions, so the scheduler and the tests agree on every fire time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from apscheduler.triggers.cron import CronTrigger

from bot.messages import quoted_code

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
CRONTAB_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab's numbering: 0 (and 7) is Sunday
MAX_STEPS = 200_000
MIN_DIGEST_GAP = timedelta(minutes=15)  # more often than this, a digest is noise in its channel
LOOKBACK_SPANS = tuple(timedelta(days=days) for days in (2, 9, 33, 367, 8 * 366 + 1))  # a day, week, month, year
CHECKED_FIRINGS = 100  # the gaps between this many coming firings are checked (a cron repeats within days)
CLOCK_CHANGE_MARGIN = timedelta(hours=12)  # and the gaps of the firings this near each clock change of the year


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message is shown to the user as is."""


def zone(name: str) -> ZoneInfo:
    return ZoneInfo(zone_name(name))


def zone_name(name: str) -> str:
    """The IANA name of the time zone ``name``, which may be written in any case (``utc``, ``europe/paris``):
    the zone files are found by name on a case-sensitive disk, and a person typing a zone seldom minds case."""
    try:
        ZoneInfo(name)
        return name
    except (ZoneInfoNotFoundError, ValueError):
        pass
    known = _zone_names().get(name.lower())
    if known is None:
        raise ScheduleError(f"I don't know the time zone `{quoted_code(name)}`. Use an IANA name like `Europe/Paris` or `UTC`.")
    return known


@cache
def _zone_names() -> dict[str, str]:
    return {known.lower(): known for known in sorted(available_timezones())}


def trigger(cron: str, timezone: str) -> CronTrigger:
    tz = zone(timezone)
    fields = cron.split()
    if len(fields) != 5:
        raise ScheduleError(f"`{quoted_code(cron, 80)}` is not a cron expression: it needs five fields (minute hour day month weekday).")
    minute, hour, day, month, weekday = fields
    if day != "*" and weekday != "*":
        # crontab fires when either matches, APScheduler only when both do: refused rather than guessed
        raise ScheduleError(f"`{quoted_code(cron, 80)}` sets both a day of the month and a weekday; set one of them and "
                            "leave the other `*`.")
    try:
        weekdays = _weekday_names(weekday)
    except ScheduleError as exc:
        raise ScheduleError(f"`{quoted_code(cron, 80)}` is not a valid cron expression: {exc}") from None
    try:
        return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=weekdays, timezone=tz)
    except ValueError as exc:
        raise ScheduleError(f"`{quoted_code(cron, 80)}` is not a valid cron expression: {exc}.") from None


def _weekday_names(field: str) -> str:
    """A crontab weekday field (0 and 7 are Sunday; names too) as APScheduler reads it: day names.

    APScheduler numbers the weekdays from Monday = 0, so handed over as it is, ``1-5`` (Monday to
    Friday in crontab) would fire Tuesday to Saturday.
    """
    if field == "*":
        return field
    days: set[int] = set()
    for part in field.lower().split(","):
        span, slash, step_text = part.partition("/")
        if slash and not (step_text.isdigit() and int(step_text) > 0):
            raise ScheduleError(f"in the weekday field `{quoted_code(field, 40)}`, `/` needs a positive step.")
        first_text, dash, last_text = span.partition("-")
        if span == "*":
            first, last = 0, 6
        else:
            first = _crontab_day(first_text, field)
            last = _crontab_day(last_text, field) if dash else (6 if slash else first)
        if last < first:
            raise ScheduleError(f"in the weekday field `{quoted_code(field, 40)}`, a range goes from the earlier day.")
        days.update(day % 7 for day in range(first, last + 1, int(step_text) if slash else 1))
    return ",".join(CRONTAB_DAYS[day] for day in sorted(days, key=lambda day: (day - 1) % 7))  # Monday first


def _crontab_day(text: str, field: str) -> int:
    if text.isdecimal() and int(text) <= 7:  # not isdigit(): "¹" is a digit int() cannot read
        return int(text)
    if text in CRONTAB_DAYS:
        return CRONTAB_DAYS.index(text)
    raise ScheduleError(f"the weekday field `{quoted_code(field, 40)}` takes 0-7 (0 and 7 are Sunday) or "
                        f"{', '.join(DAYS)}.")


def check_schedule(cron: str, timezone: str, now: datetime | None = None) -> None:
    """Refuse a schedule that never fires (``0 0 31 2 *``) or would flood its channel (``* * * * *``)."""
    cron_trigger = trigger(cron, timezone)
    fire = _following(cron_trigger, (now or datetime.now(UTC)) - timedelta(microseconds=1))
    if fire is None:
        raise ScheduleError(f"`{quoted_code(cron, 80)}` never fires: no date matches it.")
    # The coming firings, and those around the zone's clock changes of the coming year: a change shortens the
    # gap across it (made in June, `5,55 1,3 * * *` in New York posted at 01:55 and 03:05 on the spring day).
    starts = [(fire, ""), *((change, f" when the clocks change on {change.astimezone(cron_trigger.timezone):%Y-%m-%d}")
                            for change in _clock_changes(cron_trigger.timezone, fire))]
    for start, when in starts:
        fire = start if not when else _following(cron_trigger, start - CLOCK_CHANGE_MARGIN)
        for _ in range(CHECKED_FIRINGS):
            following = _following(cron_trigger, fire) if fire is not None else None
            if following is None or (when and following > start + CLOCK_CHANGE_MARGIN):
                break
            if following - fire < MIN_DIGEST_GAP:  # type: ignore[operator]
                minutes = max(1, int((following - fire).total_seconds() // 60))  # type: ignore[operator]
                raise ScheduleError(
                    f"`{quoted_code(cron, 80)}` would post a digest {minutes} minute{'s' if minutes > 1 else ''} after "
                    f"another{when}; a channel gets one at most every {int(MIN_DIGEST_GAP.total_seconds() // 60)} "
                    "minutes (hourly is `0 * * * *`).")
            fire = following


def _clock_changes(zone: tzinfo, start: datetime) -> list[datetime]:
    """When ``zone``'s clocks change in the year after ``start`` (to the hour after each change)."""
    changes, day = [], start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    offset = day.astimezone(zone).utcoffset()
    for _ in range(366):  # a day at a time, then the hour within a day whose offset changed (a zone every config
        following = day + timedelta(days=1)  # load checks: 8,784 hours each took ~15 ms a schedule)
        if following.astimezone(zone).utcoffset() != offset:
            at = day
            while (at := at + timedelta(hours=1)) <= following:
                if (now_offset := at.astimezone(zone).utcoffset()) != offset:
                    changes.append(at)
                    offset = now_offset
        day = following
    return changes


def latest_due(cron: str, timezone: str, since: datetime, now: datetime) -> datetime | None:
    """The last fire time in ``(since, now]``, or ``None``. Missed firings coalesce into this one."""
    cron_trigger = trigger(cron, timezone)
    latest = None
    fire = _following(cron_trigger, since)
    steps = 0
    while fire is not None and fire <= now and steps < MAX_STEPS:
        latest = fire
        fire = _following(cron_trigger, fire)
        steps += 1
    return latest


def previous_fire(cron: str, timezone: str, moment: datetime) -> datetime | None:
    """The last firing before ``moment`` (in UTC), or ``None`` when there is none within 8 years (February 29th's
    is found). Looked for a few days back first: a frequent cron's are not stepped through for years."""
    for back in LOOKBACK_SPANS:
        found = latest_due(cron, timezone, moment - back, moment - timedelta(microseconds=1))
        if found is not None:
            return found
    return None


def next_fire(cron: str, timezone: str, now: datetime) -> datetime | None:
    """The first firing at or after ``now`` (in UTC)."""
    return _following(trigger(cron, timezone), now - timedelta(microseconds=1))


def _following(cron_trigger: CronTrigger, moment: datetime) -> datetime | None:
    """The first firing after ``moment``, in UTC; a wall-clock time that comes twice fires once, as in crontab.

    When the clocks go back, 02:30 happens twice: APScheduler fires both (a nightly digest twice that
    night). The arithmetic is done in UTC: one microsecond added to the second 02:30 as a local time
    lands on the first (Python's ``fold`` is lost), and the next firing found was the same one again.
    """
    local = cron_trigger.timezone
    wall_clock = moment.astimezone(local).replace(tzinfo=None)
    fire = cron_trigger.get_next_fire_time(None, moment.astimezone(UTC) + timedelta(microseconds=1))
    while fire is not None and fire.astimezone(local).replace(tzinfo=None) <= wall_clock:  # the repeated hour
        fire = cron_trigger.get_next_fire_time(None, fire.astimezone(UTC) + timedelta(microseconds=1))
    return fire.astimezone(UTC) if fire is not None else None


def parse_when(words: list[str]) -> tuple[str, str]:
    """Chat grammar after ``digest``: ``daily 09:00 [tz]``, ``weekly mon 08:30 [tz]``, ``cron "<expr>" [tz]``."""
    if not words:
        raise ScheduleError("Say when: `digest daily 09:00 Europe/Paris`, `digest weekly mon 08:30` or `digest cron \"0 9 * * 1-5\" UTC`.")
    kind, rest = words[0].lower(), words[1:]
    if kind == "daily" and rest:
        hour, minute = _clock(rest[0])
        cron, rest = f"{minute} {hour} * * *", rest[1:]
    elif kind == "weekly" and len(rest) >= 2:
        day = rest[0].lower()
        day = day[:3] if day in DAY_NAMES else day
        if day not in DAYS:
            raise ScheduleError(f"`{quoted_code(rest[0], 20)}` is not a weekday; use one of {', '.join(DAYS)} "
                                "(for several days, `digest cron \"30 8 * * mon,thu\"`).")
        hour, minute = _clock(rest[1])
        cron, rest = f"{minute} {hour} * * {day}", rest[2:]
    elif kind == "cron" and rest:
        cron, rest = rest[0], rest[1:]
    else:
        raise ScheduleError("I understand `digest daily HH:MM [zone]`, `digest weekly <day> HH:MM [zone]`, "
                            "`digest cron \"<expression>\" [zone]`, `digest now`, `digest list` and `digest off`.")
    if len(rest) > 1:
        raise ScheduleError(f"Unexpected words after the time zone: `{quoted_code(' '.join(rest[1:]))}`.")
    timezone = zone_name(rest[0]) if rest else "UTC"
    check_schedule(cron, timezone)
    return cron, timezone


def _clock(text: str) -> tuple[int, int]:
    hour, sep, minute = text.partition(":")
    if not (sep and hour.isdecimal() and minute.isdecimal() and int(hour) < 24 and int(minute) < 60 and len(minute) == 2):
        raise ScheduleError(f"`{text[:20]}` is not a time of day; use HH:MM, e.g. 09:00.")
    return int(hour), int(minute)


def describe(cron: str, timezone: str) -> str:
    fields = cron.split()
    if fields[2:4] == ["*", "*"] and fields[0].isdecimal() and fields[1].isdecimal():
        at = f"{int(fields[1]):02d}:{int(fields[0]):02d} {timezone}"
        if fields[4] == "*":
            return f"daily at {at}"
        if fields[4] in DAYS:
            return f"every {fields[4]} at {at}"
    return f"cron `{cron}` ({timezone})"
