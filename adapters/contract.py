"""What every adapter shares: the outbox delivery loop (retries, Retry-After, pacing) and its hooks."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any, ClassVar

from fastapi import FastAPI

from bot.app import StartFailed as StartFailed  # what ``start`` raises when the platform will not have Baton
from bot.messages import Location, Message
from bot.outbox import Delivery, Unreachable
from bot.recent import REMEMBERED, forget_oldest
from bot.settings import Settings

if TYPE_CHECKING:
    from bot.app import Baton

log = logging.getLogger("baton.adapters")


# A line that opens a fenced code block in a text (as a model writes one): ``` and a language (one short word), or
# nothing, after it.
FENCE_OPEN = re.compile(r" {0,3}```[\w+#.-]{0,32}[ \t]{0,8}$")


# What a renderer shows as written, never given mentions or markup: inline code, and a link's address (an id in its
# query, ``?var-host=WEBPROD01``, became a mention in the middle of the address, and the link ended there).
AS_WRITTEN = re.compile(r"(`[^`\n]*`|\bhttps?://[^\s<>)\]]+)")


def people_of(message: Message, prefix: str) -> frozenset[str]:
    """The platform's user ids ``message`` names as people (``slack:U0123ABCD`` from baton.yaml as ``U0123ABCD``)."""
    return frozenset(person.removeprefix(prefix) for person in message.people)


def with_mentions(text: str, user_id: re.Pattern[str], people: Collection[str],
                  prose: Callable[[str], str] = lambda piece: piece) -> str:
    """Outside ``AS_WRITTEN``, each word ``user_id`` matches (groups: a prefix that makes it a person, the id)
    becomes ``<@id>`` when it is one of ``people`` or has the prefix; any other word of that shape (a host, an
    order number) stays as written. ``prose`` renders the rest of each piece (Discord's bold)."""

    def mention(found: re.Match[str]) -> str:
        prefix, user = found.groups()
        return f"<@{user}>" if prefix or user in people else found.group()

    pieces = AS_WRITTEN.split(text)
    return "".join(piece if index % 2 else prose(user_id.sub(mention, piece)) for index, piece in enumerate(pieces))


def link_words(label: str, user_id: re.Pattern[str], people: Collection[str]) -> tuple[str, str]:
    """A thread link's label on one line, as (the words that are the link, what follows them). The link ends
    before the first person the label names (as ``with_mentions`` tells them), who is shown after it as a
    mention: inside a link a platform shows the id, not the name (Slack's ``<url|label>`` holds no mention), and
    ``status`` listed "run deploy — waiting for approval (asked by U0ALICE001, 5m)". A label that begins with a
    person stays one link (a link needs words)."""
    line = " ".join(label.split())
    offset = 0
    for index, piece in enumerate(AS_WRITTEN.split(line)):
        for found in [] if index % 2 else user_id.finditer(piece):
            prefix, user = found.groups()
            if prefix or user in people:
                start = offset + found.start()
                linked = line[:start].rstrip()
                return (linked, line[len(linked):]) if linked else (line, "")
        offset += len(piece)
    return line, ""


def fenced_segments(text: str) -> list[tuple[str | None, str]]:
    """``text`` as prose ``(None, text)`` and fenced code ``(opening line, code)``, in order, for a renderer that
    shows code as written (an id in a log is no mention, ``*args*`` no bold) and splits it over messages that each
    open and close the fence. The code keeps its line ends; a last line that ends in the closing fence
    (``last line```) is the code's. A fence never closed is prose, as platforms show it."""
    segments: list[tuple[str | None, str]] = []
    prose: list[str] = []
    opening: str | None = None  # the fence's line as written, while inside a block
    code: list[str] = []
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\r\n")
        if opening is None:
            if FENCE_OPEN.match(bare):
                opening, code = line, []
            else:
                prose.append(line)
            continue
        if bare.rstrip().endswith("```") and bare.count("```") == 1:
            if prose:
                segments.append((None, "".join(prose)))
                prose = []
            before = bare[:bare.rfind("```")]
            if before.strip():
                code.append(before + "\n")
            segments.append((opening.rstrip("\r\n"), "".join(code)))
            opening = None
        else:
            code.append(line)
    if opening is not None:  # never closed
        prose += [opening, *code]
    if prose:
        segments.append((None, "".join(prose)))
    return segments


def split_text(text: str, limit: int, size: Callable[[str], int] = len, *,
               keep: re.Pattern[str] | None = None) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` (as measured by ``size``), at line ends when possible.

    ``"".join(split_text(text, limit)) == text``: nothing is lost or reordered. ``size`` is how
    the platform counts (Slack counts the escaped text: ``&`` is five characters there). A line longer
    than a piece is split after a space in its second half, when it has one: split anywhere, a word was
    cut in two, and a `code` span too (``help``'s list of further runbooks showed the names as prose
    and the commas between them as code from the cut on). Nor is it split inside a character as people see
    one (an emoji of several, a letter and its accent: each piece showed half of it) or inside what ``keep``
    matches, when the piece can end before it (a mention cut in two showed as ``<@1234`` and ``5678>``).
    """
    if limit < 1:  # no piece could hold a character: the loop below would never end
        raise ValueError(f"split_text needs a limit of at least 1, not {limit}")
    pieces: list[str] = []
    current, used = "", 0
    for line in text.splitlines(keepends=True):
        cost = size(line)
        if used + cost <= limit:
            current, used = current + line, used + cost
            continue
        if current:
            pieces.append(current)
        while size(line) > limit:  # one line longer than a piece: split it, after a space where one is near
            cut = _fitting_prefix(line, limit, size)
            after_space = line.rfind(" ", 0, cut) + 1
            if line[cut:cut + 1] != " " and after_space > cut // 2:  # a word (a `name` of a list) is not cut in two
                cut = after_space
            cut = _unbroken(line, cut, keep)
            pieces.append(line[:cut])
            line = line[cut:]
        current, used = line, size(line)
    if current or not pieces:
        pieces.append(current)
    return pieces


# Characters that belong to the one before them, as people see one character (Unicode's grapheme clusters, UAX #29,
# for the marks, joiners and modifiers chat text has): combining marks, variation selectors, emoji skin tones and
# tags, the zero-width (non-)joiners, Hangul's vowel and final jamo.
_EXTENDING = re.compile("[\u200c\u200d\ufe00-\ufe0f\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f"
                        "\U000e0100-\U000e01ef\u1160-\u11ff\ud7b0-\ud7fb]")
_REGIONAL = re.compile("[\U0001f1e6-\U0001f1ff]")  # two make a flag
_UNBROKEN_REACH = 1024  # how far before a cut a token ``keep`` keeps whole may begin (longer than any one)


def _unbroken(line: str, cut: int, keep: re.Pattern[str] | None) -> int:
    """``cut``, or the nearest place before it that splits neither a token ``keep`` matches nor a character as
    people see one; ``cut`` itself when the line begins with either (a piece must hold something)."""
    start = max(cut - _UNBROKEN_REACH, 0)
    for found in keep.finditer(line, start, min(cut + _UNBROKEN_REACH, len(line))) if keep else []:
        if found.start() >= cut:
            break
        if found.end() > cut and found.start() > 0:
            cut = found.start()
            break
    safe = cut
    while safe > 0 and _joined(line, safe):
        safe -= 1
    return safe or cut


def fitting(text: str, limit: int, keep: re.Pattern[str] | None = None) -> str:
    """The longest beginning of ``text`` in ``limit`` characters that ends between characters as people see them
    and, when it can, outside ``keep``'s tokens."""
    return text if len(text) <= limit else text[:_unbroken(text, limit, keep)]


def shortened(text: str, limit: int, keep: re.Pattern[str] | None = None) -> str:
    """``text``, or as much of its beginning as fits in ``limit`` with "…", cut between characters as people see
    them (a button's label ended in half an emoji, or an accent without its letter) and outside ``keep``'s tokens."""
    return text if len(text) <= limit else fitting(text, limit - 1, keep).rstrip() + "…"


def _joined(line: str, index: int) -> bool:
    """Whether ``line[index]`` is part of the character people see in ``line[index - 1]``."""
    before, char = line[index - 1], line[index]
    if before == "\r" and char == "\n" or before == "\u200d" or _EXTENDING.match(char):
        return True
    if unicodedata.category(char) in ("Mn", "Me", "Mc"):
        return True
    if _REGIONAL.match(char) and _REGIONAL.match(before):
        run = index - 1
        while run > 0 and _REGIONAL.match(line[run - 1]):
            run -= 1
        return (index - run) % 2 == 1  # the second of a pair
    return False


def _fitting_prefix(line: str, limit: int, size: Callable[[str], int]) -> int:
    if size is len:
        return limit
    used = 0
    for index, char in enumerate(line):
        used += size(char)
        if used > limit:
            return max(index, 1)
    return len(line)


# What a person is told, on every platform, when Baton's database cannot take their request or click: a platform that
# sends it again (Slack's events) needs no word, but a click or a command is sent once, and was lost unsaid.
DATABASE_AWAY_ANSWER = ("⚠️ I could not take this just now: my database cannot be reached, so nothing was run. "
                        "Please ask again in a few minutes.")
DATABASE_AWAY_CLICK = ("⚠️ I could not take your click just now: my database cannot be reached, so nothing was "
                       "changed. Please click again in a few minutes.")

# Deliveries whose steps made so far are kept for their retry (``Adapter.send_steps``), the oldest forgotten first: one
# whose retry another replica took is never settled here.
STEPS_KEPT = REMEMBERED
STOP_GRACE_SECONDS = 5.0  # at a stop, how long a send in flight may take to finish before it is cut off
AUTH_RETRY_SECONDS = 300.0  # a refused token: its messages wait, tried again this often, until it works again


class RetryLater(Exception):
    """The platform asked us to wait (HTTP 429 with Retry-After) or is briefly unavailable.

    ``warn``: the operator must act (the platform refuses Baton's token): logged as a warning, not in passing.
    ``hold_channel``: no other message goes to the channel before then either (a 429 asks for quiet there:
    the next message of another thread went out into the same 429).
    """

    def __init__(self, seconds: float, reason: str, *, warn: bool = False, hold_channel: bool = True) -> None:
        super().__init__(reason)
        self.seconds = seconds
        self.warn = warn
        self.hold_channel = hold_channel

    @classmethod
    def token_refused(cls, refusal: str, setting: str) -> RetryLater:
        """The platform refuses Baton's token itself (revoked, reset, the app uninstalled): no message is at
        fault, so none is given up; each waits, tried again every ``AUTH_RETRY_SECONDS``, with a warning."""
        return cls(AUTH_RETRY_SECONDS, f"{refusal}: the message waits until {setting} works again", warn=True,
                   hold_channel=False)  # nothing of the channel's: each message finds out when the token works


class DeliveryRejected(Exception):
    """The platform refused the message for good (bad request, unknown channel): do not retry.

    ``unreachable``: the refusal is the channel's, not the message's (one of ``bot.outbox.UNREACHABLE``): Baton was
    removed from it, it is gone, archived or locked. Every later message there is refused alike, until someone lets
    Baton in again; the core says so once a channel, and ends a run whose card could not be posted there.
    ``thread_only``: what cannot be reached is the message's thread (a Discord thread is a channel of its own), not
    necessarily its channel."""

    def __init__(self, reason: str, *, unreachable: Unreachable | None = None, thread_only: bool = False) -> None:
        super().__init__(reason)
        self.unreachable = unreachable
        self.thread_only = thread_only


Step = Callable[[], Awaitable[str | None]]


class Adapter(ABC):
    name: ClassVar[str]
    channel_pace_seconds: ClassVar[float] = 0.0  # minimum gap between two messages in one channel
    max_attempts: ClassVar[int] = 12
    idle_poll_seconds: ClassVar[float] = 0.5
    # The channels a platform has whatever its workspace (the playground's), which baton.yaml's digests are checked
    # against at start; ``None``: a workspace's own, known once connected.
    known_channels: ClassVar[tuple[str, ...] | None] = None
    # True for a platform whose messages are rows in Baton's own database (the playground): its
    # ``send`` marks the delivery in the transaction that stores the message (``Outbox.record_delivery``),
    # so a message is delivered exactly once, even across a crash.
    send_records_delivery: ClassVar[bool] = False

    def __init__(self, baton: Baton) -> None:
        self.baton = baton
        self._pump: asyncio.Task[None] | None = None
        self._stopping = False
        self._steps_done: dict[int, list[str | None]] = {}  # delivery id -> results of the steps already made
        self._token_refused: tuple[str, float] | None = None  # (what the platform said, since: time.monotonic)

    @classmethod
    def is_configured(cls, settings: Settings) -> bool:
        """True when the settings hold what this platform needs (its tokens)."""
        return False

    def mount(self, app: FastAPI) -> None:
        """Add this adapter's HTTP routes to the server (if it has any)."""

    async def start(self) -> None:
        self.baton.outbox.attach(self.name, self.channel_pace_seconds)
        self._pump = asyncio.create_task(self._deliver_forever(), name=f"outbox-{self.name}")

    async def stop(self) -> None:
        """Stop delivering. A send in flight is let finish (up to ``STOP_GRACE_SECONDS``): cut off, it may
        have reached the platform unrecorded, and be posted again by whoever sends the row next."""
        self._stopping = True
        self.baton.outbox.detach(self.name)
        self.baton.outbox.wake(self.name)
        if self._pump is not None:
            _finished, running = await asyncio.wait({self._pump}, timeout=STOP_GRACE_SECONDS)
            if running:
                log.warning("%s: a message was still being sent %gs into the stop; it is cut off (where the "
                            "platform gives no way to look for it, it may be posted twice)", self.name, STOP_GRACE_SECONDS)
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)

    def problem(self) -> str | None:
        """What keeps this adapter from working now, for ``/healthz`` (``None``: nothing)."""
        if self._pump is not None and self._pump.done():
            return "its outbox delivery loop has stopped"
        if self._token_refused is not None:  # events still come (signed otherwise), and every reply waits unseen
            said, since = self._token_refused
            return f"for {time.monotonic() - since:.0f} s: {said}; replies are not posted"
        return None

    async def history(self, location: Location, limit: int) -> list[dict[str, Any]] | None:
        """Recent messages of a thread (``location.thread``) or of the channel (``thread == ""``),
        oldest first, as ``{"user", "text", "is_bot"}``; ``None`` when the platform offers none
        (the core then uses what it saw itself)."""
        return None

    @abstractmethod
    async def send(self, delivery: Delivery) -> str | None:
        """Deliver one message; return the platform's id for it (used to edit it later).

        With ``send_records_delivery``, also mark it delivered, in the same transaction."""

    async def send_steps(self, delivery: Delivery, steps: list[Step]) -> list[str | None]:
        """Make a delivery that takes several platform calls (a message split in three, then a file).

        The results of the calls already made are kept until the delivery is settled, so when the
        third call hits a rate limit, the retry makes only the third call: nothing is posted twice.
        (Kept in this process: a retry taken over by another replica starts again from the first, unless
        its adapter looks for what the platform already shows, as Slack's does.)
        """
        done = self._steps_done.setdefault(delivery.id, [])
        forget_oldest(self._steps_done, STEPS_KEPT)
        for step in steps[len(done):]:
            done.append(await step())
        return list(done)

    async def _deliver_forever(self) -> None:
        """Send what the core hands over, and what the outbox holds when woken or polled.

        Handed-over deliveries go first: a stored row of the same thread may be waiting behind one.
        """
        outbox = self.baton.outbox
        while not self._stopping:
            handed = outbox.handed_over(self.name)
            if not await self._deliver_until_stopped(handed):
                break
            try:
                claimed = await outbox.claim_if_wanted(self.name, pace_seconds=self.channel_pace_seconds)
            except Exception as exc:
                if not self.baton.db.health.explains(exc):  # the database away: logged once, by storage.db
                    log.exception("claiming %s outbox rows failed", self.name)
                claimed = []
            if not await self._deliver_until_stopped(claimed):
                break
            if not handed and not claimed:
                await outbox.wait(self.name, self.idle_poll_seconds)

    async def _deliver_until_stopped(self, deliveries: list[Delivery]) -> bool:
        """Deliver one after another while no stop is asked for; false when one was."""
        for delivery in deliveries:
            if self._stopping:
                return False
            await self._deliver_and_carry_on(delivery)
        return not self._stopping

    async def _deliver_and_carry_on(self, delivery: Delivery) -> None:
        """``_deliver``; if recording its outcome fails (the database briefly unreachable), the loop goes on.

        The row keeps its claim, which expires, and it is delivered again then (a delivery of
        several steps resumes after the steps already made). Without this, one failed write
        ended the loop and the platform got no more messages until a restart.
        """
        try:
            await self._deliver(delivery)
        except Exception as exc:
            if self.baton.db.health.explains(exc):
                log.warning("recording %s message %s failed, the database being away; it is sent again when its "
                            "claim expires", self.name, delivery.id)
            elif (reason := self.baton.db.health.unusable(exc)) is not None:  # SQLite's disk full, say
                log.warning("recording %s message %s failed: Baton's database cannot be written (%s): %s; it is sent "
                            "again when its claim expires", self.name, delivery.id, reason,
                            self.baton.db.health.advice(exc))
            else:
                log.exception("recording %s message %s failed; it is sent again when its claim expires",
                              self.name, delivery.id)

    async def _deliver(self, delivery: Delivery) -> None:
        outbox = self.baton.outbox
        if outbox.held(delivery.location):  # a 429 earlier in this batch asked for quiet in its channel
            return await outbox.put_back(delivery.id)
        outbox.begin(delivery.id)
        try:
            platform_id = await self.send(delivery)
        except RetryLater as exc:
            log.log(logging.WARNING if exc.warn else logging.INFO, "%s asked to retry message %s in %.1fs: %s",
                    self.name, delivery.id, exc.seconds, exc)
            if exc.warn and self._token_refused is None:  # the platform refuses Baton's token: /healthz says so
                self._token_refused = (str(exc), time.monotonic())
            # Nothing of this try posted (no step made): the platform only put it off, no failure of the message.
            failed = bool(self._steps_done.get(delivery.id))
            await self._record(lambda: outbox.retry(delivery.id, exc.seconds, str(exc), hold_channel=exc.hold_channel,
                                                    failed=failed))
            return
        except DeliveryRejected as exc:
            if exc.unreachable is None:  # a channel Baton cannot reach is told by the outbox, once a channel
                log.error("%s rejected message %s (%s in channel %s%s): %s", self.name, delivery.id, delivery.kind,
                          delivery.location.channel,
                          f", thread {delivery.location.thread}" if delivery.location.thread else "", exc)
            await self._record(lambda: outbox.failed(delivery.id, str(exc), reason=exc.unreachable or "refused",
                                                     thread_only=exc.thread_only))
        except Exception as exc:
            said = f"{type(exc).__name__}: {exc}"
            if delivery.failures < self.max_attempts:  # a 429's put-off is no failure: it neither counts nor backs off
                await self._record(lambda: outbox.retry(delivery.id, min(2.0 ** delivery.failures, 120.0), said))
                return
            log.error("giving up on %s message %s (%s in channel %s) after %d failed attempts: %s", self.name,
                      delivery.id, delivery.kind, delivery.location.channel, delivery.failures, exc)
            await self._record(lambda: outbox.failed(delivery.id, said, reason="gave_up"))
        else:
            self._token_refused = None  # it works (again)
            if delivery.kind != "ephemeral":  # Discord's goes as a click's follow-up or a DM: not through the thread
                outbox.reached(delivery.location)
            if not self.send_records_delivery:
                await self._record_sent(delivery, platform_id)
        self.settled(delivery.id)

    def settled(self, delivery_id: int) -> None:
        """Forget what this adapter kept for the retries of ``delivery_id``: it is settled, and none will come."""
        self._steps_done.pop(delivery_id, None)

    async def _record_sent(self, delivery: Delivery, platform_id: str | None) -> None:
        await self._record(lambda: self.baton.outbox.delivered(delivery.id, platform_id))

    async def _record(self, write: Callable[[], Awaitable[None]]) -> None:
        """Record a try's outcome (sent, to try again, given up); while the database is away, try again for up to half
        the delivery's claim.

        Given up at once, the row kept its claim: the thread's next messages (a run's answer, say) waited behind it
        until the claim expired, 30 s by default, though the database was back in a second, and then the message was
        sent again: a second time, when it had been sent; a refused one posted after all, where the platform took it
        then; a 429's put-off counted as a failed try. Past half the claim the record is given up as before
        (``_deliver_and_carry_on``): by then the claim may run out, and another replica may send it."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.baton.outbox.claim_seconds / 2
        pause = 0.1
        while True:
            try:
                return await write()
            except Exception as exc:
                health = self.baton.db.health
                if self._stopping or loop.time() + pause > give_up_at or (
                        not health.explains(exc) and health.unusable(exc) is None):
                    raise
            await asyncio.sleep(pause)  # the database away: its next connection is checked before use
            pause = min(pause * 2, 2.0)
