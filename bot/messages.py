"""The core's vocabulary: what adapters hand in, and the platform-neutral messages they render.

Adapters translate platform events into ``InboundMessage``/``InboundClick`` and render
``Message`` parts (text, code, thread links, approval buttons, notes) in their own format.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL, and surrogates (in a str only ever unpaired)


BIDI_CONTROLS = "\u202a-\u202e\u2066-\u2069"  # the embeddings, overrides and isolates, as a character class's ranges
_BIDI_CONTROLS = re.compile(f"[{BIDI_CONTROLS}]")
_LINE_BREAKS = re.compile("[ \t]*[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+[ \t]*")  # what str.splitlines() splits at


def quoted(text: str, limit: int = 60) -> str:
    """Part of what someone wrote, to quote back in a reply: at most ``limit`` characters, its invisible
    bidi controls shown as U+FFFD. They make a quote read as something else (U+202E shows
    `upt\u202eime` as "uptemi"), which in a bot's reply could pass off one command as another."""
    return _BIDI_CONTROLS.sub("\ufffd", text)[:limit]


def shown_value(value: Any) -> str:
    """A value as a card's detail shows it: text as it is, another value as JSON (accents and emoji as written)."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def validation_words(error: dict[str, Any]) -> str:
    """What one of pydantic's validation errors says, without the "Value error, " it puts before a validator's own
    words (``parts.1.image.data: Value error, is not base64`` was shown to a graph's author)."""
    return str(error.get("msg", "")).removeprefix("Value error, ")


# What Baton writes where it cut a text short and goes on on the same line ("… (12 more characters)", "…)."): the
# redaction (``bot.redaction``) takes a secret's start before it as the secret, cut.
CUT_MARK = "\u2026"


def cut(text: str, limit: int) -> str:
    """``text`` in its first ``limit`` characters, followed by ``CUT_MARK`` when there were more."""
    return text if len(text) <= limit else text[:limit] + CUT_MARK


def first_line(text: str, limit: int = 80) -> str:
    """The first line of ``text`` with words, cut at ``limit`` ("" for none: a graph may ask ``interrupt("")``)."""
    return next((line for line in text.splitlines() if line.strip()), "")[:limit]


def quoted_code(text: str, limit: int = 60) -> str:
    """``quoted``, for a quote put in `code`, on one line: a backtick of its own, which would end the code span
    and show what follows (**bold**, [a link](https://...)) as Baton's own words, is shown as U+02CB (ˋ), and
    its line breaks as spaces (a second line, ":white_check_mark: *Approved by bob*", read as Baton's own)."""
    return quoted(_LINE_BREAKS.sub(" ", text), limit).replace("`", "\u02cb")


def storable(value: str) -> str:
    """``value`` as every database takes it: each NUL (PostgreSQL's text refuses it) and each unpaired
    surrogate (it has no UTF-8) replaced by U+FFFD."""
    if value.isascii() and "\x00" not in value:
        return value
    return _UNSTORABLE.sub("\ufffd", value)


def storable_value(value: Any) -> Any:
    """``value`` whose texts are ``storable``, in dicts, lists and tuples too (keys included): ``value`` itself
    when none of them changes (a dict of a class of its own is left as it is)."""
    if isinstance(value, str):
        return storable(value)
    if type(value) is dict:
        pairs = [(storable_value(key), storable_value(item)) for key, item in value.items()]
        if len({key for key, _item in pairs}) < len(pairs):  # two keys made one ("a\x00", "a\ud800"): one was lost
            taken: set[Any] = set()
            for index, (key, shown) in enumerate(pairs):
                while key in taken:  # the later one told apart, as storable as the first
                    key = f"{key}\ufffd" if isinstance(key, str) else key
                    if not isinstance(key, str):
                        break
                taken.add(key)
                pairs[index] = (key, shown)
        changed = any(new is not key or shown is not item for (new, shown), (key, item) in zip(pairs, value.items()))
        return dict(pairs) if changed else value
    if type(value) in (list, tuple):  # a tuple stays one: it may be a key
        items = [storable_value(item) for item in value]
        return type(value)(items) if any(new is not old for new, old in zip(items, value)) else value
    return value


class Location(BaseModel):
    """Where something lives on a platform: a channel and (for replies) a thread."""

    model_config = ConfigDict(frozen=True)
    platform: str
    workspace: str = ""
    channel: str
    thread: str


class _Inbound(Location):
    """What a platform sent, made storable: a stray NUL or broken character in an event must not make
    storing it fail, or the platform's retries would fail the same way for ever."""

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: object) -> object:
        return storable(value) if isinstance(value, str) else value


class InboundMessage(_Inbound):
    """A chat message. ``addressed`` is true for a mention, a DM or a slash command. ``private``: only
    the sender and Baton see the conversation (a direct message), so nobody else can click a card there.
    ``mention_added``: an edit of the message ``event_id`` names, which now mentions the bot (Slack sends it as a
    mention of its own, Discord as the message edited): a request if the message, stored before without one, was
    people talking, or was never stored; else nothing new, however often it is edited."""

    event_id: str
    user: str
    text: str
    addressed: bool = True
    private: bool = False
    mention_added: bool = False


class InboundClick(_Inbound):
    """A button click: the button carried only ``approval_id``; ``action`` is the button's value
    (``approve``/``reject`` on approval cards, a graph name on a "which one did you mean?" card)."""

    event_id: str
    user: str
    approval_id: str
    action: str = Field(min_length=1, max_length=64)


class Text(BaseModel):
    kind: Literal["text"] = "text"
    text: str


class Code(BaseModel):
    """Text shown verbatim, in a monospaced block, whatever it contains (command output, a command)."""

    kind: Literal["code"] = "code"
    text: str


_BACKTICK_RUN = re.compile("`{3,}")


def fence_safe(code: str) -> str:
    """``code`` as it can sit between ``` fences in Slack's and Discord's markdown, which have no escape
    inside a fenced block: its first ``` closes the block, whatever follows. Every run of three or
    more backticks gets a zero-width space between its backticks (it looks the same; it is no fence)."""
    return _BACKTICK_RUN.sub(lambda run: "\u200b".join(run.group()), code)


class Note(BaseModel):
    kind: Literal["note"] = "note"
    text: str


class ThreadLink(BaseModel):
    kind: Literal["link"] = "link"
    label: str
    channel: str
    thread: str


class ButtonOption(BaseModel):
    value: str
    label: str
    style: Literal["primary", "danger", "default"] = "default"


APPROVE_REJECT = [ButtonOption(value="approve", label="Approve", style="primary"),
                  ButtonOption(value="reject", label="Reject", style="danger")]


class Buttons(BaseModel):
    """Buttons that all carry ``approval_id``; a click sends back the chosen option's ``value``.

    ``deciders``: who may decide them, as baton.yaml names them (``alice``, ``slack:U0123ABCD``,
    ``discord:123...``). A platform where the names on a card notify nobody (Discord shows a card as an embed)
    notifies those it can name when the card is first posted, as Slack's mentions do; never at its edits."""

    kind: Literal["buttons"] = "buttons"
    approval_id: str
    options: list[ButtonOption] = Field(default_factory=lambda: list(APPROVE_REJECT), max_length=5)
    deciders: list[str] = Field(default_factory=list)

    @field_validator("options")
    @classmethod
    def _values_differ(cls, options: list[ButtonOption]) -> list[ButtonOption]:
        """A click names its option by value, so two of one value would be one choice; and Slack (action_id) and
        Discord (custom_id) refuse a whole message whose buttons share one: it was never delivered. Checked when a
        graph's reply is read, so that its run fails saying which."""
        seen: set[str] = set()
        for option in options:
            if option.value in seen:
                raise ValueError(f"two buttons have the value {option.value!r}: a click names its button by value, "
                                 "so give each button its own")
            seen.add(option.value)
        return options

    @property
    def approve_label(self) -> str:
        return next((option.label for option in self.options if option.value == "approve"), "Approve")

    @property
    def reject_label(self) -> str:
        return next((option.label for option in self.options if option.value == "reject"), "Reject")


class Image(BaseModel):
    """A small picture (a chart): shown inline where the platform can, else attached as a file."""

    kind: Literal["image"] = "image"
    alt: str
    mime: str = "image/svg+xml"
    data: str  # base64
    filename: str = "chart.svg"

    @field_validator("data")
    @classmethod
    def _is_base64(cls, data: str) -> str:
        """Checked when a graph's reply is read, so that its run fails saying why: a data URL or the SVG text
        itself broke the reply where an adapter decoded it, and the outbox tried it again for twenty minutes."""
        try:
            base64.b64decode("".join(data.split()), validate=True)  # line breaks allowed: encodebytes wraps at 76
        except binascii.Error:
            raise ValueError("is not base64 (a data URL, or the picture itself?): give "
                             "base64.b64encode(picture_bytes).decode()") from None
        return data


Part = Annotated[Text | Code | Note | ThreadLink | Buttons | Image, Field(discriminator="kind")]
Tone = Literal["info", "progress", "success", "warning", "error", "approval"]


class Message(BaseModel):
    """A platform-neutral message. ``plain_text()`` is the fallback every platform can show.

    ``people``: the user ids the core wrote in the text as people (who asked, who decided, the approvers), as
    the core knows them (``U0123ABCD``, or ``slack:U0123ABCD`` from baton.yaml). Adapters show those as
    mentions, and no other word that merely looks like an id (a host ``WEBPROD01``, an order number). Stored
    with the message in the outbox, so a card rendered after a restart or by another replica still knows them."""

    title: str | None = None
    tone: Tone = "info"
    parts: list[Part] = Field(default_factory=list)
    people: list[str] = Field(default_factory=list)

    @classmethod
    def text(cls, text: str, *, tone: Tone = "info", title: str | None = None) -> Message:
        return cls(title=title, tone=tone, parts=[Text(text=text)])

    def naming(self, *people: str | None) -> Message:
        """This message, with ``people`` (ids it names as people; empty ones skipped) added to ``people``."""
        for person in people:
            if person and person not in self.people:
                self.people.append(person)
        return self

    def plain_text(self) -> str:
        lines = [f"*{self.title}*"] if self.title else []
        for part in self.parts:
            if isinstance(part, Code):
                lines.append(f"```\n{part.text}\n```")
            elif isinstance(part, ThreadLink):
                lines.append(part.label)
            elif isinstance(part, Buttons):
                lines.append(" ".join(f"[{option.label}]" for option in part.options))
            elif isinstance(part, Image):
                lines.append(f"[{part.alt}]")
            else:
                lines.append(part.text)
        return "\n".join(lines)


class Accepted(BaseModel):
    """What ``Baton.accept`` tells an adapter: stored and queued, a duplicate, or not for us."""

    status: Literal["accepted", "duplicate", "ignored"]
    correlation_id: str | None = None
    reason: str | None = None
