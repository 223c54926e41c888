"""The ``digest ...`` chat command: what its words ask of the digest schedules, and the answer the thread gets."""

from __future__ import annotations

from bot import replies, schedules
from bot.digests import Digests
from bot.messages import Location, Message, Text, quoted_code
from storage.models import utcnow

# The command's outcome (the event's, as the audit log and ``baton threads`` show it) and its reply, if any.
Answer = tuple[str, Message | None]


async def answer(digests: Digests, location: Location, words: list[str], *, user: str, event_id: str,
                 correlation_id: str) -> Answer:
    """Do what ``digest <words>`` asks in ``location``: post one now, list, turn off or set the channel's schedule.
    Bad input changes nothing and is answered with the reason."""
    action = words[0].lower() if words else ""
    try:
        if action in ("now", "list", "off") and words[1:]:
            # "digest off for a week" turned the schedule off for good, saying nothing of the week
            raise schedules.ScheduleError(f"Unexpected words after `digest {action}`: "
                                          f"`{quoted_code(' '.join(words[1:]))}` (it takes none).")
        if action == "now":
            await digests.run_now(location, event_id, user)
            return "digest posted", None
        if action == "list":
            return "digest list", await listed(digests, location)
        if action == "off":
            removed = await digests.disable_chat_schedule(location, user, correlation_id)
            text = ("Done: this channel's digest schedule is off." if removed else
                    "This channel has no digest schedule made in chat (schedules in baton.yaml stay).")
            return "digest off", Message.text(text, tone="success" if removed else "info")
        cron, timezone = schedules.parse_when(words)
        replaced = await digests.set_chat_schedule(location, cron, timezone, user, correlation_id)
        upcoming = schedules.next_fire(cron, timezone, utcnow())
        instead = (f" It replaces the one {schedules.describe(replaced.cron, replaced.timezone)} that "
                   f"{replaced.created_by} set: a channel has one made in chat.") if replaced is not None else ""
        text = (f"Digest scheduled {schedules.describe(cron, timezone)} in this channel; the next one is at "
                f"{replies.when_in(upcoming, timezone)}.{instead}")
        return "digest scheduled", Message.text(text, tone="success").naming(
            replaced.created_by if replaced is not None else None)
    except schedules.ScheduleError as exc:
        return "rejected input", Message.text(f"{exc} Nothing was changed.", tone="warning")


async def listed(digests: Digests, location: Location) -> Message:
    """``digest list``: the channel's schedules, each with where it comes from and when it fires next."""
    found = await digests.in_channel(location)
    if not found:
        return Message.text("No digests are scheduled in this channel. Try `digest daily 09:00 Europe/Paris`.")
    refused = await digests.refused_cards(found)  # a channel that invites Baton back hears what it missed
    now = utcnow()
    lines = []
    for schedule in found:
        source = "from baton.yaml" if schedule.source == "config" else f"set by {schedule.created_by}"
        try:
            upcoming = replies.when_in(schedules.next_fire(schedule.cron, schedule.timezone, now), schedule.timezone)
        except schedules.ScheduleError as exc:  # stored before a rule it breaks: the scheduler skips it
            upcoming = f"never, it cannot be used any more ({exc}); set a new one"
        line = f"• {schedules.describe(schedule.cron, schedule.timezone)} ({source}); next: {upcoming}"
        if schedule.key in refused:
            line += f"; {refused[schedule.key].describe(schedule.timezone)}"
        lines.append(line)
    return Message(title="Digests in this channel", parts=[Text(text="\n".join(lines))]).naming(
        *(schedule.created_by for schedule in found if schedule.source != "config"))
