"""Core messages as Discord messages: markdown content, or one embed with approval buttons, and files.

Discord's limits shape this: a message holds 2,000 characters of content and 10 files; an
embed's title 256 characters, its description 4,096, all of its text 6,000. Nothing is cut:

* A message with a title or approval buttons becomes a message with an embed; a longer text goes on in
  the embeds of the next messages. A card is edited in place after the decision, so it must stay one
  message: when its text does not fit, the embed shows the beginning and says so, and the whole text
  is attached as ``message.txt``.
* Any other message is markdown content, split at line ends over as many messages as needed.
* Command output longer than about two messages is shown as a preview and attached in full as a
  file (a 3,000-line log is one file, not 80 messages); images (charts) are attached as files.
* A message's files stay within what Discord takes in any server (``UPLOAD_BYTES``; it refuses
  more with a 413, and the message would be lost): a longer text is attached up to the last line
  that fits, saying so, and a picture too big is named instead of attached.

The people a message names (``Message.people``: ``123456789012345678``, or ``discord:123...`` from
baton.yaml) become mentions outside code; any other number, an order or a trace id, stays a number.
Baton pings nobody with them: the adapter sends every message with ``allowed_mentions`` off. One exception: a new
card pings those who may decide it (its ``Buttons.deciders`` that are Discord users), once, on a line of content
above its embed (mentions in an embed never notify, where Slack's on a card do): ``Outgoing.pinged``. Its edits
(who decided, or that it expired) ping nobody, and leave that line out.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Collection
from dataclasses import dataclass, field

import discord

from adapters import contract
from adapters.contract import FENCE_OPEN, fenced_segments, fitting, split_text
from bot.messages import Buttons, Code, Image, Message, Note, Text, ThreadLink, fence_safe

BACKSLASH = "\\"
CONTENT_CHARS = 2000
PIECE_CHARS = 1900  # one block of a message: leaves room for the tone emoji and the joining newlines
FENCE_CHARS = len("```\n\n```")
EMBED_TITLE_CHARS = 256
EMBED_DESCRIPTION_CHARS = 4096
FILES_PER_MESSAGE = 10
UPLOAD_BYTES = 8 * 1024 * 1024  # the files of one message, in any server (boosted ones take more)
CODE_INLINE_CHARS = 3800  # longer output: a preview and the whole text as a file
CUSTOM_ID_CHARS = 100
BUTTON_LABEL_CHARS = 80
PINGED_AT_MOST = 50  # deciders a card pings (Discord's allowed_mentions takes 100 users; 50 mentions fit a message)
# A button's custom_id carries the option's value (approve, reject, or a graph's name on a "which
# one?" card) and the approval's opaque id (token_urlsafe): ``baton:<value>:<approval id>``. A value
# that is not plain (a graph's module may be named in any letters: ``mise_à_jour``) is carried as
# ``~`` and its UTF-8 in URL-safe base64.
PLAIN_VALUE = re.compile(r"[A-Za-z0-9_-]{1,64}")
ENCODED_VALUE = "~"
CUSTOM_ID_TEMPLATE = r"baton:(?P<action>[A-Za-z0-9_-]{1,64}|~[A-Za-z0-9_-]{1,90}):(?P<approval_id>[A-Za-z0-9_-]{1,86})"
BUTTON_STYLE = {"primary": discord.ButtonStyle.primary, "danger": discord.ButtonStyle.danger,
                "default": discord.ButtonStyle.secondary}
TONE_EMOJI = {"success": "✅", "error": "❌", "warning": "⚠️", "approval": "✋", "progress": "⏳"}
TONE_COLOUR = {"info": 0x5865F2, "progress": 0x99AAB5, "success": 0x57F287, "warning": 0xFEE75C,
               "error": 0xED4245, "approval": 0xEB459E}
# A number shaped as a Discord user id (a snowflake), outside `code` and not already in <@...> or a URL. It is
# rendered as a mention only when it is a person: one of the message's ``people`` (an order id in prose has the
# same shape), or ``discord:123...`` (baton.yaml's form). A mention a person typed reaches the core as <@123...>
# and stays one.
USER_ID = re.compile(r"(?<![\w/<@#:!&.])(discord:)?([0-9]{17,20})(?![\w>])")
PLATFORM_PREFIX = "discord:"
# What Discord takes for a way to hide something in a masked link's words, showing the whole link as its markdown
# instead: an address ("https://" and two more characters, discord/discord-api-docs#7721), and its own markup (a
# mention, a channel, an emoji, a timestamp, a command: "hidden mentions", discord/discord-api-docs#6088).
UNLINKABLE = re.compile(r"https?://\S\S|<(?:@[!&]?|#|a?:\w+:|t:|/)")
# What a line of rendered markdown too long for a message is not cut inside, when the piece can end before it: a
# mention, a channel, an emoji, a timestamp (``<...>``), a masked link, an address (half of each showed as its
# markup: ``<@1234`` at the end of one message and ``5678>`` at the start of the next).
UNBROKEN = re.compile(r"<[^<>\s]{1,100}>|\[[^\[\]\n]{0,300}\]\([^()\s]{0,500}\)"
                      r"|\bhttps?://[^\s<>()\[\]]{1,500}")
# ``*words*`` with no star or word character around it (so ``**bold**``, ``a*b*c`` and ``2 * 3`` stay).
SINGLE_STAR_BOLD = re.compile(r"(?<![*\w])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?![*\w])")


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes


@dataclass
class Outgoing:
    """One Discord message: content and/or one embed, files, and the approval buttons if any. ``pinged``: the
    users its content mentions whom Discord may notify when it is posted (a new card's deciders); nobody else."""

    content: str | None = None
    embed: discord.Embed | None = None
    files: list[Attachment] = field(default_factory=list)
    approval: Buttons | None = None
    pinged: list[str] = field(default_factory=list)


def custom_id(action: str, approval_id: str) -> str:
    """The custom_id of the button for the option ``action`` (its value, encoded when it is not plain)."""
    value = f"baton:{_carried(action)}:{approval_id}"
    if len(value) > CUSTOM_ID_CHARS or not re.fullmatch(CUSTOM_ID_TEMPLATE, value):
        raise ValueError(f"button {action!r} of approval {approval_id!r} does not fit a Discord custom_id "
                         f"({CUSTOM_ID_CHARS} characters of letters, digits, '_' and '-')")
    return value


def option_value(carried: str) -> str:
    """The option's value from the action part of a custom_id (``_carried`` undone). ``ValueError`` when it is
    no value Baton encoded (broken base64, or bytes that are no UTF-8): a tampered or foreign custom_id."""
    if not carried.startswith(ENCODED_VALUE):
        return carried
    encoded = carried.removeprefix(ENCODED_VALUE)
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError
        raise ValueError(f"{carried[:100]!r} is not a button value Baton encoded") from None


def _carried(value: str) -> str:
    if PLAIN_VALUE.fullmatch(value):
        return value
    return ENCODED_VALUE + base64.urlsafe_b64encode(value.encode("utf-8")).decode("ascii").rstrip("=")


def jump_url(guild: str, channel: str) -> str:
    """The link to a channel or thread (``@me`` for a direct message)."""
    return f"https://discord.com/channels/{guild or '@me'}/{channel}"


def with_mentions(text: str, people: Collection[str] = frozenset()) -> str:
    """Outside inline code and links: the user ids of ``people`` and ``discord:123...`` become mentions
    (``123...`` -> ``<@123...>``; any other number stays as written) and the core's ``*bold*`` (Slack's
    markup, which Discord would show in italics) becomes ``**bold**``."""
    return contract.with_mentions(text, USER_ID, people, lambda piece: SINGLE_STAR_BOLD.sub(r"**\1**", piece))


def render(message: Message, guild: str, *, one_message: bool = False) -> list[Outgoing]:
    """The Discord messages for one core message, in order. ``guild`` is the location's workspace.

    ``one_message``: the text stays in one Discord message, as an edit must (an edit replaces one
    message; the rest of a longer text would be posted anew at every edit): when it does not fit,
    the message shows the beginning and says so, and the whole text is attached."""
    blocks: list[str] = []
    files: list[Attachment] = []
    buttons: Buttons | None = None
    people = contract.people_of(message, PLATFORM_PREFIX)
    for part in message.parts:
        if isinstance(part, Text):
            blocks += _text_blocks(part.text, people)
        elif isinstance(part, Code):
            blocks += _code(part.text, files)
        elif isinstance(part, Note):
            blocks += _note_pieces(part.text, people)
        elif isinstance(part, ThreadLink):
            blocks += _link(jump_url(guild, part.thread or part.channel), part.label, people)
        elif isinstance(part, Buttons):
            for option in part.options:  # fail here, not when Discord rejects the message
                custom_id(option.value, part.approval_id)
            buttons = part
        elif isinstance(part, Image):
            blocks += _note_pieces(_image(part, files))
        else:
            raise ValueError(f"the Discord adapter cannot show a '{part.kind}' part")
    if message.title or buttons is not None:
        return _embed_message(message, blocks, files, buttons, one_message)
    return _content_messages(message, blocks, files, one_message)


def _text_blocks(text: str, people: Collection[str] = frozenset()) -> list[str]:
    """A text's markdown in blocks that each fit a message. Its prose is rendered (mentions, bold) and
    split at line ends; a fenced code block in it is code: shown as written (an id in a log is no
    mention, ``*args*`` no bold), and split over blocks that each open and close the fence (split
    anywhere, one message opened a block the next did not close: the rest showed as code, or not)."""
    blocks: list[str] = []
    for opening, body in fenced_segments(text):
        if opening is None:
            blocks += _pieces(with_mentions(body, people)) if body else []
            continue
        body, closing = fence_safe(body.removesuffix("\n")), "```"  # a ``` inside would close the block there
        pieces = split_text(body, PIECE_CHARS - len(opening) - max(len(closing), FENCE_CHARS) - 2)
        for index, piece in enumerate(pieces):
            end = closing if index == len(pieces) - 1 else "```"
            blocks.append(f"{opening}\n{piece.removesuffix(chr(10))}\n{end}" if piece else f"{opening}\n{end}")
    return blocks


def _pieces(markdown: str) -> list[str]:
    """Rendered markdown in blocks that each fit a message (split after rendering: mentions and
    subtext markers make a line longer, and lines are where it is split)."""
    return [piece.removesuffix("\n") for piece in split_text(markdown, PIECE_CHARS, keep=UNBROKEN)]


def _note(text: str, people: Collection[str] = frozenset()) -> str:
    """Discord's subtext (small grey lines)."""
    return "\n".join(f"-# {line}" if line.strip() else line for line in with_mentions(text, people).split("\n"))


def _note_pieces(text: str, people: Collection[str] = frozenset()) -> list[str]:
    """A note in blocks that each fit a message; a line too long for one goes on as subtext in the next (one
    block, it made the message longer than Discord's 2,000 characters, and Discord refused it whole)."""
    return [piece if not piece.strip() or piece.startswith("-# ") else f"-# {piece}"
            for piece in _pieces(_note(text, people))]


def _link(url: str, label: str, people: Collection[str] = frozenset()) -> list[str]:
    """A thread link as markdown blocks, on one line (a line break ended the link, and what followed was markdown
    of its own, a "# heading"). The people its label names follow the link as mentions (``contract.link_words``);
    a label too long for one message goes on after the link, as Slack's does. So does the rest of a label from an
    address or a mention on (``UNLINKABLE``): ``status`` of "run check url=https://api.example.com" showed
    "[run check url=https://api.example.com — running (asked by](https://discord.com/channels/...)"."""
    linked, after = contract.link_words(label, USER_ID, people)
    if (unlinkable := UNLINKABLE.search(linked)) is not None:
        words = linked[:unlinkable.start()].rstrip()
        linked, after = (words, linked[len(words):] + after) if words else ("open", f" {linked}{after}")
    linked = linked or "open"  # "[](...)" is no link: Discord shows it as written
    first, *rest = split_text(linked.replace("[", "(").replace("]", ")"), PIECE_CHARS - len(url) - len("[]()"),
                              _link_words_length)
    link = f"[{first.replace(BACKSLASH, BACKSLASH * 2)}]({url})"  # "C:\" would escape the "]" ending the words
    tail = "".join(rest) + with_mentions(after, people)
    if len(link) + len(tail) <= PIECE_CHARS:
        return [link + tail]
    return [link, *_pieces(tail)]


def _link_words_length(words: str) -> int:
    """The length of a link's words as its markdown: a backslash, Discord's escape, is written twice."""
    return len(words) + words.count(BACKSLASH)


def _fenced(code: str) -> str:
    return "```\n" + code.rstrip("\n") + "\n```"


def _code(text: str, files: list[Attachment]) -> list[str]:
    """Code as fenced blocks (``fence_safe``: a ``` inside cannot close the block); long output as a
    preview plus the whole text, untouched, as a file."""
    pieces = split_text(fence_safe(text), PIECE_CHARS - FENCE_CHARS)
    if len(text) <= CODE_INLINE_CHARS:
        return [_fenced(piece) for piece in pieces]
    filename = _unique("output.txt", files)
    attached = _uploadable(text)
    files.append(Attachment(filename, attached.encode("utf-8")))
    lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    shown = pieces[0].count("\n") + (0 if pieces[0].endswith("\n") else 1)
    kept = attached.count("\n")
    where = (f"the whole output is attached as `{filename}`" if attached == text else
             f"the first {kept:,} lines of it are attached as `{filename}` ({_cut_reason(text)})")
    return [_fenced(pieces[0]), _note(f"Showing the first {shown:,} of {lines:,} lines ({len(text):,} characters): "
                                      f"{where}.")]


def _uploadable(text: str) -> str:
    """``text``, or as many of its first lines as fit in the files Discord takes with one message."""
    data = text.encode("utf-8")
    if len(data) <= UPLOAD_BYTES:
        return text
    head = data[:UPLOAD_BYTES].decode("utf-8", errors="ignore")
    cut = head.rfind("\n")
    return head[:cut + 1] if cut > 0 else head


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def _cut_reason(text: str) -> str:
    return f"it has {_megabytes(len(text.encode('utf-8')))}; Discord takes {_megabytes(UPLOAD_BYTES)} in one message"


def _image(image: Image, files: list[Attachment]) -> str:
    """Attach a picture; what the message says about it (one too big for Discord is named, not sent)."""
    data = base64.b64decode(image.data)
    if len(data) > UPLOAD_BYTES:
        return (f"{image.alt}: not attached: it has {_megabytes(len(data))}, and Discord takes "
                f"{_megabytes(UPLOAD_BYTES)} in one message.")
    files.append(Attachment(_unique(image.filename, files), data))
    return f"{image.alt}: attached as `{files[-1].filename}`."


def _unique(filename: str, files: list[Attachment]) -> str:
    taken = {attachment.filename for attachment in files}
    stem, dot, suffix = filename.rpartition(".")
    stem, suffix = (stem, f".{suffix}") if dot else (filename, "")
    candidate, number = filename, 1
    while candidate in taken:
        number += 1
        candidate = f"{stem}-{number}{suffix}"
    return candidate


def _embed_message(message: Message, blocks: list[str], files: list[Attachment],
                   buttons: Buttons | None, one_message: bool) -> list[Outgoing]:
    """One embed; a text longer than an embed holds goes on in the embeds of the next messages, but in a card
    (its buttons; its edit after the decision), which must stay one message (``_beginning``). Cut to one embed,
    ``status`` showed 15 of the 20 threads it lists and ``help`` half of a team's runbooks, the rest in a file
    with neither links nor names, where Slack shows them all."""
    title = message.title or None
    colour = TONE_COLOUR.get(message.tone)
    if title and len(title) > EMBED_TITLE_CHARS:
        blocks, title = [f"**{title}**", *blocks], None
    description = "\n".join(blocks)
    if len(description) > EMBED_DESCRIPTION_CHARS and buttons is None and not one_message:
        first, *rest = _file_groups(files)
        outgoing = [Outgoing(embed=discord.Embed(title=title if index == 0 else None, description=piece,
                                                 colour=colour))
                    for index, piece in enumerate(_packed(blocks, EMBED_DESCRIPTION_CHARS))]
        outgoing[-1].files = first
        return outgoing + [Outgoing(files=group) for group in rest]
    if len(description) > EMBED_DESCRIPTION_CHARS:
        description, files = _beginning(message, blocks, files, "card", EMBED_DESCRIPTION_CHARS)
    embed = discord.Embed(title=title, description=description or None, colour=colour)
    first, *rest = _file_groups(files)
    pinged = _pingable(buttons.deciders) if buttons is not None else []
    card = Outgoing(content=_calling(pinged), embed=embed, files=first, approval=buttons, pinged=pinged)
    return [card, *(Outgoing(files=group) for group in rest)]


def _pingable(deciders: list[str]) -> list[str]:
    """The Discord user ids among a card's deciders (``discord:123...`` or the bare id; not ``alice`` nor
    ``slack:U1``), each once, at most ``PINGED_AT_MOST``."""
    users = [found[2] for decider in deciders if (found := USER_ID.fullmatch(decider))]
    return list(dict.fromkeys(users))[:PINGED_AT_MOST]


def _calling(users: list[str]) -> str | None:
    """The line above a card that notifies those who may decide it (an embed's mentions notify nobody)."""
    return f"{' '.join(f'<@{user}>' for user in users)}: this waits for your decision" if users else None


def _packed(blocks: list[str], limit: int) -> list[str]:
    """The blocks joined by line breaks into as few texts of at most ``limit`` as they go in, in order; a block is
    split only when it is longer than that (a code block split elsewhere showed the rest of the message as code)."""
    texts: list[str] = []
    for block in blocks:
        for piece in split_text(block, limit) if len(block) > limit else [block]:
            if texts and len(texts[-1]) + 1 + len(piece) <= limit:
                texts[-1] += "\n" + piece
            else:
                texts.append(piece)
    return texts


def _beginning(message: Message, blocks: list[str], files: list[Attachment], shape: str,
               limit: int) -> tuple[str, list[Attachment]]:
    """The blocks that fit in ``limit`` and a line saying so; the files with the whole text added."""
    filename = _unique("message.txt", files)
    whole = message.plain_text()
    attached = _uploadable(whole)
    kept = attached.count("\n")
    what = ("all of it is attached" if attached == whole else
            f"its first {kept:,} lines are attached ({_cut_reason(whole)})")
    notice = _note(f"This message is longer than Discord shows in one {shape}: {what} as `{filename}`.")
    shown: list[str] = []
    room = limit - len(notice) - 1
    for block in blocks:
        if len(block) + 1 > room:
            if not shown:  # one long line: its beginning, rather than nothing but the notice
                shown.append(_block_start(block, room - 1))
            break
        shown.append(block)
        room -= len(block) + 1
    return "\n".join([*shown, notice]), [*files, Attachment(filename, attached.encode("utf-8"))]


def _block_start(block: str, room: int) -> str:
    """The beginning of a block in ``room`` characters, cut at a line end when there is one; a code
    block stays closed (else the rest of the message would show as code)."""
    opening, _, rest = block.partition("\n")
    fenced = bool(FENCE_OPEN.match(opening)) and rest.endswith("\n```")
    text = rest[:-4] if fenced else block
    limit = max(room - len(opening) - len("\n\n```"), 0) if fenced else room
    cut = fitting(text, limit, UNBROKEN)  # no half emoji, no half mention
    if len(text) > limit and "\n" in cut:
        cut = cut[:cut.rfind("\n")]
    return f"{opening}\n{cut}\n```" if fenced else cut


def _content_messages(message: Message, blocks: list[str], files: list[Attachment],
                      one_message: bool) -> list[Outgoing]:
    emoji = TONE_EMOJI.get(message.tone)
    prefix = f"{emoji} " if emoji else ""
    if one_message and len(prefix) + len("\n".join(blocks)) > CONTENT_CHARS:
        content, files = _beginning(message, blocks, files, "message", CONTENT_CHARS - len(prefix))
        first, *rest = _file_groups(files)
        return [Outgoing(content=prefix + content, files=first), *(Outgoing(files=group) for group in rest)]
    contents: list[str] = []
    for block in blocks:
        if contents and len(prefix) + len(contents[-1]) + 1 + len(block) <= CONTENT_CHARS:
            contents[-1] += "\n" + block
        else:
            contents.append(block)
    if contents:
        contents[0] = prefix + contents[0]
    elif not files:
        contents.append(message.plain_text() or "\u200b")
    outgoing = [Outgoing(content=content) for content in contents]
    groups = _file_groups(files)
    if outgoing:
        outgoing[-1].files = groups.pop(0)
    return outgoing + [Outgoing(files=group) for group in groups if group]


def _file_groups(files: list[Attachment]) -> list[list[Attachment]]:
    """The files by message: at most ``FILES_PER_MESSAGE``, and ``UPLOAD_BYTES`` together, in each."""
    groups: list[list[Attachment]] = [[]]
    size = 0
    for attachment in files:
        if groups[-1] and (len(groups[-1]) == FILES_PER_MESSAGE or size + len(attachment.content) > UPLOAD_BYTES):
            groups.append([])
            size = 0
        groups[-1].append(attachment)
        size += len(attachment.content)
    return groups
