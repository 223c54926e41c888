"""Core messages as Slack Block Kit: sections, code, notes, thread links, approval buttons.

Slack's limits shape this: a section holds at most 3,000 characters, a message at most 50 blocks
and (in practice, ``msg_blocks_too_long``) about 13,000 characters of block text. Nothing is cut:
long text is split over several sections and, when needed, several messages; long command output
is shown as a preview and attached in full as a file (when the message can carry files).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, assert_never

from adapters import contract
from adapters.contract import fenced_segments, shortened, split_text
from bot.messages import Buttons, Code, Image, Message, Note, Text, ThreadLink, fence_safe

BUTTON_ACTION_PREFIX = "baton:"  # a button's action_id is this and the option's value; its value is the approval id
SECTION_CHARS = 2900  # of a section's 3,000, leaving room for code fences and <@U...> mentions
MESSAGE_BLOCKS = 50
MESSAGE_CHARS = 12_000
CODE_INLINE_CHARS = 8_000  # longer output becomes a preview plus the whole text as a file
FALLBACK_CHARS = 300  # the notification text; the blocks carry everything
BUTTON_LABEL_CHARS = 75
TONE_EMOJI = {"success": ":white_check_mark:", "error": ":x:", "warning": ":warning:",
              "approval": ":raised_hand:", "progress": ":hourglass_flowing_sand:"}
# A word shaped as a Slack user id ("U0123ABCD"; it must contain a digit, so plain words never match), outside
# `code`. It is rendered as a mention only when it is a person: one of the message's ``people`` (the core marks
# whom it names; a host "WEBPROD01" in prose has the same shape), "slack:U0123ABCD" (baton.yaml's form), or
# "@U0123ABCD" (how ``typed_text`` gives the core a mention a person typed).
USER_ID = re.compile(r"(?<![\w@<|/])(slack:|@)?((?=[UW][A-Z0-9]*[0-9])[UW][A-Z0-9]{8,11})(?![\w])")
# What a line too long for a section is not cut inside, when the piece can end before it: a user id (cut in two, it
# was a mention no more) and an address (two links, neither of them the page).
UNBROKEN = re.compile(rf"{USER_ID.pattern}|\bhttps?://[^\s<>()\[\]]{{1,500}}")
PLATFORM_PREFIX = "slack:"
MENTION_GROWTH = 3  # "U0123ABCD" -> "<@U0123ABCD>"
FENCE_CHARS = len("```\n\n```")
LINE_BREAK = re.compile("[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")  # where str.splitlines() splits
# Slack's markup in what people write: <@U0123|name>, <#C0123|name>, <!here>, <!subteam^S0123|@team>,
# <https://x.io|label>. A "<" a person typed arrives as "&lt;", so every "<...>" is markup.
MARKUP = re.compile(r"<([^<>\n]*)>")
SPECIAL_MENTIONS = {"here", "channel", "everyone"}

Permalink = Callable[[str, str], str]  # (channel, thread ts) -> URL
# Every chat.postMessage of an outbox delivery carries this message metadata, naming the outbox row and
# the step (a long message is several Slack messages): a later try of a post whose answer was lost
# finds it in the thread (``include_all_metadata``) instead of posting it again.
DELIVERY_EVENT_TYPE = "baton_delivery"


@dataclass(frozen=True)
class Upload:
    """A file to share in the thread after the message."""

    filename: str
    content: bytes
    title: str


@dataclass
class Rendered:
    """One core message as one or more Slack messages (``{"blocks", "text"}``) and files."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)


def escape(text: str) -> str:
    """Slack mrkdwn needs only these three escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def typed_text(mrkdwn: str) -> str:
    """What a person typed, from the text Slack sends: an address as typed (Slack makes ``db1.example.com``
    a link), a mention as ``@U0123ABCD`` (shown as a mention again in Baton's replies), ``#channel``."""
    return unescape(MARKUP.sub(_as_typed, mrkdwn))


def _as_typed(markup: re.Match[str]) -> str:
    target, _, label = markup.group(1).partition("|")
    if target.startswith("@"):
        return target
    if target.startswith("#"):
        return f"#{label}" if label else target
    if target.startswith("!"):  # @here, a user group (its label is its @handle), a date (its label)
        name, _, detail = target[1:].partition("^")
        if name in SPECIAL_MENTIONS:
            return f"@{name}"
        return label or f"@{detail.split('^', 1)[0] or name}"
    if not label or label == re.sub(r"^(?:https?://|mailto:)", "", target):
        return label or target
    return f"{label} ({target})"


def people_of(message: Message) -> frozenset[str]:
    """The Slack user ids ``message`` names as people (``slack:U0123ABCD`` from baton.yaml as ``U0123ABCD``)."""
    return contract.people_of(message, PLATFORM_PREFIX)


def with_mentions(escaped: str, people: Collection[str] = frozenset()) -> str:
    """Outside inline code and links, the user ids of ``people`` become mentions (``U0123ABCD`` ->
    ``<@U0123ABCD>``), as do ``slack:U0123ABCD`` and ``@U0123ABCD``; any other word of that shape stays as written."""
    return contract.with_mentions(escaped, USER_ID, people)


def chunks(text: str, limit: int, *, mentions: bool = False) -> list[str]:
    """Split ``text`` into pieces whose escaped length is at most ``limit``, at line ends when possible.

    ``mentions``: the pieces are shown ``with_mentions``, so each may grow by the ids it holds."""
    return split_text(text, limit, _with_mentions_length if mentions else _escaped_length, keep=UNBROKEN)


def _escaped_length(text: str) -> int:
    return len(escape(text))


def _with_mentions_length(text: str) -> int:
    """An upper bound on ``len(with_mentions(escape(text)))``, counted on any piece, even one character of
    a line split by characters: every ``U`` or ``W`` may start a user id that becomes a mention."""
    return len(escape(text)) + MENTION_GROWTH * (text.count("U") + text.count("W"))


def render(message: Message, permalink: Permalink, *, files: bool = True) -> Rendered:
    """``files=False`` (ephemeral messages cannot carry files): long output is split over messages instead."""
    rendered = Rendered()
    blocks: list[dict[str, Any]] = []
    emoji = TONE_EMOJI.get(message.tone)
    for piece in split_text(message.title, SECTION_CHARS - 2, _title_length, keep=UNBROKEN) if message.title else []:
        blocks.append(_section(_bold(piece), emoji))
        emoji = None
    people = people_of(message)
    for part in message.parts:
        if isinstance(part, Text):
            for piece in mrkdwn_pieces(part.text, people):
                blocks.append(_section(piece, emoji))
                emoji = None
        elif isinstance(part, Code):
            blocks += _code(part.text, rendered, files)
        elif isinstance(part, Note):
            blocks += [_context(piece) for piece in mrkdwn_pieces(part.text, people)]
        elif isinstance(part, ThreadLink):
            blocks += _link(permalink(part.channel, part.thread), part.label, people)
        elif isinstance(part, Buttons):
            blocks.append(_buttons(part))
        elif isinstance(part, Image):
            blocks += _image(part, rendered, files)
        else:
            assert_never(part)
    rendered.messages = _pack(blocks or [_section(escape(message.plain_text()))], _fallback(message))
    return rendered


def _bold(title: str) -> str:
    """A title's mrkdwn: each of its lines bold, without the spaces around it. Slack's ``*bold*`` ends with its line,
    and does not end after a space: the asterisks of ``*Deploy\nprod*``, and of a long title's first section
    (``*... the *``, split after a space), showed as written."""
    return "\n".join(f"*{escape(line.strip())}*" if line.strip() else "" for line in title.splitlines())


def _title_length(title: str) -> int:
    """``len(_bold(title))`` at most, but for the last line's two asterisks."""
    return len(escape(title)) + 2 * len(LINE_BREAK.findall(title))


def _section(mrkdwn: str, emoji: str | None = None) -> dict[str, Any]:
    text = f"{emoji} {mrkdwn}" if emoji else mrkdwn
    return {"type": "section", "text": {"type": "mrkdwn", "text": text or " "}}


def _context(mrkdwn: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": mrkdwn or " "}]}


def _fenced(code: str) -> dict[str, Any]:
    """A fenced block of ``code`` that is ``fence_safe`` already (see ``_code``)."""
    return _section(_fence(code))


def _fence(code: str) -> str:
    body = escape(code.removesuffix("\n")) or " "
    return f"```\n{body}\n```"


def mrkdwn_pieces(text: str, people: Collection[str] = frozenset()) -> list[str]:
    """A text's mrkdwn in pieces of at most ``SECTION_CHARS`` (a section's, or a note's). Its prose is escaped,
    the ids of ``people`` made mentions (``with_mentions``), and split at line ends; a fenced code block in it (a
    model quoting a command's output) is code, as a ``Code`` part is: shown as written (an id in a log is no
    mention) and split over pieces that each open and close the fence. Split anywhere, one section opened a
    block the next did not close, so both showed their backticks and the log as prose, mentions and bold in
    it. Pieces are joined again as far as they fit: a short text is one piece, as before."""
    rendered: list[tuple[str, str]] = []  # each piece, and what joins it to the next: a line break, or none
    for opening, segment in fenced_segments(text):
        if opening is not None:  # Slack shows no language after the fence: it would be the code's first line
            rendered += [(_fence(piece), "\n") for piece in chunks(fence_safe(segment), SECTION_CHARS - FENCE_CHARS)]
        else:  # a line split by characters goes on without a break
            rendered += [(with_mentions(escape(piece.removesuffix("\n")), people), "\n" if piece.endswith("\n") else "")
                         for piece in chunks(segment, SECTION_CHARS, mentions=True)]
    joined: list[str] = []
    between = ""
    for piece, after in rendered:
        if joined and len(joined[-1]) + len(between) + len(piece) <= SECTION_CHARS:
            joined[-1] += between + piece
        else:
            joined.append(piece)
        between = after
    return joined or [""]


def _code(text: str, rendered: Rendered, files: bool) -> list[dict[str, Any]]:
    """Code in fenced sections (split after ``fence_safe``, whose zero-width spaces count too); long
    output as a preview plus the whole text, untouched, as a file."""
    pieces = chunks(fence_safe(text), SECTION_CHARS)
    if not files or len(escape(text)) <= CODE_INLINE_CHARS:
        return [_fenced(piece) for piece in pieces]
    number = len(rendered.uploads) + 1
    filename = "output.txt" if number == 1 else f"output-{number}.txt"
    rendered.uploads.append(Upload(filename=filename, content=text.encode("utf-8"), title=filename))
    note = (f"Showing the first {_lines(pieces[0]):,} of {_lines(text):,} lines ({len(text):,} characters): "
            f"the whole output is attached below as `{filename}`.")
    return [_fenced(pieces[0]), _context(note)]


def _lines(text: str) -> int:
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)


def _image(part: Image, rendered: Rendered, files: bool) -> list[dict[str, Any]]:
    """A note saying where the image is; a description too long for one note goes on in the next ones."""
    content = _picture(part.data) if files else None
    if content is not None:
        rendered.uploads.append(Upload(filename=part.filename, content=content, title=part.alt))
        said = f"{part.alt}: attached below as `{part.filename}`."
    elif files:
        said = f"{part.alt}: the picture's data could not be read, so it is not attached."
    else:
        said = f"[{part.alt}] (an image; it cannot be attached to this message)"
    return [_context(escape(piece)) for piece in chunks(said, SECTION_CHARS)]


def _picture(data: str) -> bytes | None:
    """An image's bytes; ``None`` for data that is not base64 (a data URL, or the SVG itself, which b64decode
    read as bytes no viewer opens or refused, losing the whole reply). Line breaks (``encodebytes``) are fine."""
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except ValueError:  # binascii.Error
        return None


def _link(url: str, label: str, people: Collection[str] = frozenset()) -> list[dict[str, Any]]:
    """The label's first section is the link; a label too long for one section goes on after it. The people it
    names follow the link as mentions (``contract.link_words``): a link's words show an id as the id."""
    linked, after = contract.link_words(label, USER_ID, people)  # a link is one line
    first, *rest = chunks(linked.replace("|", "¦"), SECTION_CHARS - len(url))
    texts = [f"<{url}|{escape(first)}>", *(escape(piece) for piece in rest)]
    for piece in chunks(after, SECTION_CHARS, mentions=True) if after else []:
        shown = with_mentions(escape(piece), people)
        if len(texts[-1]) + len(shown) <= SECTION_CHARS:
            texts[-1] += shown
        else:
            texts.append(shown)
    return [_section(text) for text in texts]


def _buttons(part: Buttons) -> dict[str, Any]:
    """One button per option; the click comes back as ``baton:<option value>`` with the approval id."""
    elements = []
    for option in part.options:
        button = {"type": "button", "action_id": f"{BUTTON_ACTION_PREFIX}{option.value}", "value": part.approval_id,
                  "text": {"type": "plain_text", "text": _label(option.label or option.value), "emoji": True}}
        if option.style in ("primary", "danger"):
            button["style"] = option.style
        elements.append(button)
    return {"type": "actions", "block_id": f"baton_buttons:{part.approval_id}"[:255], "elements": elements}


def _label(label: str) -> str:
    """Slack refuses a button label over 75 characters (the full label is in the message above it), and an empty one:
    a button without a label says its value, as on Discord."""
    return shortened(label, BUTTON_LABEL_CHARS)


def delivery_metadata(delivery_id: int, step: int, stored: datetime | None = None) -> dict[str, Any]:
    """The metadata that names step ``step`` of outbox row ``delivery_id`` (stored at ``stored``) on the Slack
    message it became."""
    payload: dict[str, Any] = {"delivery_id": delivery_id, "step": step}
    if stored is not None:
        payload["stored"] = _stamp(stored)
    return {"event_type": DELIVERY_EVENT_TYPE, "event_payload": payload}


def delivery_step(message: dict[str, Any], delivery_id: int, stored: datetime | None = None) -> int | None:
    """Which step of outbox row ``delivery_id`` (stored at ``stored``) a Slack message (as ``conversations.*``
    return it with ``include_all_metadata``) is; ``None`` when it is none of that row's. The time tells the
    row from another database's with the same id (baton.db made anew, a backup restored): the id alone took
    that row's message for this one's, which was then never posted."""
    metadata = message.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("event_type") != DELIVERY_EVENT_TYPE:
        return None
    payload = metadata.get("event_payload")
    if not isinstance(payload, dict) or str(payload.get("delivery_id")) != str(delivery_id):
        return None
    # No stamp: posted by a Baton from before it had one (an upgrade between two tries); only messages from
    # shortly before the row was stored are read, where another database's row of the same id is unlikely.
    if stored is not None and payload.get("stored") not in (None, _stamp(stored)):
        return None
    try:
        return int(payload.get("step"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _stamp(stored: datetime) -> str:
    """``stored`` to the microsecond, as the same text whichever way the row was read (naive is UTC)."""
    return f"{(stored if stored.tzinfo else stored.replace(tzinfo=UTC)).timestamp():.6f}"


def shown_text(message: dict[str, Any]) -> str:
    """What a Slack message shows, as mrkdwn: its blocks' text (sections and their fields, headers, notes),
    else its text; then its attachments, where alerting bots (deploys, monitors) put what they say."""
    lines = [text for block in message.get("blocks") or [] for text in _block_texts(block)]
    if not lines:
        lines.append(_text_of(message))
    for attachment in message.get("attachments") or []:
        if isinstance(attachment, dict):
            said = [_text_of(attachment, key) for key in ("pretext", "title", "text")]
            lines += [text for text in said if text] or [_text_of(attachment, "fallback")]
    return "\n".join(line for line in lines if line)


def _block_texts(block: Any) -> list[str]:
    if not isinstance(block, dict):
        return []
    if block.get("type") in ("section", "header"):
        fields = block.get("fields") if isinstance(block.get("fields"), list) else []
        return [_text_of(item) for item in [block.get("text"), *fields] if isinstance(item, dict)]
    if block.get("type") == "context" and isinstance(block.get("elements"), list):
        return [_text_of(element) for element in block["elements"] if isinstance(element, dict)]
    return []


def _text_of(item: dict[str, Any], key: str = "text") -> str:
    value = item.get(key)
    return value if isinstance(value, str) else ""


def _block_chars(block: dict[str, Any]) -> int:
    if block["type"] == "section":
        return len(block["text"]["text"])
    if block["type"] == "context":
        return sum(len(element["text"]) for element in block["elements"])
    return 200  # buttons: labels and ids


def _pack(blocks: list[dict[str, Any]], fallback: str) -> list[dict[str, Any]]:
    """Blocks into as few messages as Slack's per-message limits allow, in order."""
    messages: list[list[dict[str, Any]]] = [[]]
    size = 0
    for block in blocks:
        cost = _block_chars(block)
        if messages[-1] and (len(messages[-1]) >= MESSAGE_BLOCKS or size + cost > MESSAGE_CHARS):
            messages.append([])
            size = 0
        messages[-1].append(block)
        size += cost
    if len(messages) == 1:
        return [{"blocks": messages[0], "text": fallback}]
    return [{"blocks": group, "text": f"{fallback} ({index} of {len(messages)})"}
            for index, group in enumerate(messages, start=1)]


def _fallback(message: Message) -> str:
    """The notification text (the blocks carry the whole message), its people as mentions: Slack shows
    ``<@U0123ABCD>`` as their name there too, where "U0BOB00002 rejected the same request ..." showed the id."""
    first = message.title or next((part.text for part in message.parts if isinstance(part, Text)), "")
    first = first or message.plain_text()
    line = " ".join(first.split())
    line = shortened(line, FALLBACK_CHARS, UNBROKEN)
    return with_mentions(escape(line), people_of(message)) or "Baton"
