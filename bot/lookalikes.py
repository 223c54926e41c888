"""Text that reads as other text, shown as what it is: bash's ``$'...'`` with each such character an escape.

A value pasted from a document or typed to deceive (``wеb`` with a Cyrillic ``е``, ``worker`` with a zero-width
space, a fullwidth ``ｗ``) looks like an allowed one on a card or in a refusal; written ``$'w\\u0435b'`` it does
not.
"""

from __future__ import annotations

import re
import shlex
import unicodedata

from bot.messages import BIDI_CONTROLS, quoted_code


def shown_argument(arg: str) -> str:
    """``arg`` as a shell would take it, every character what it looks like: ``$'...'`` when it could be read
    as another, else ``shlex.quote``."""
    return ansi_c_quoted(arg) if misleading(arg) else shlex.quote(arg)


def quoted_as_is(value: str, limit: int = 60) -> str:
    """``value`` as a refusal quotes it in `code`: one that reads as another ("worker\u200b" as "worker") in
    bash's ``$'...'``, cut when long between whole characters, its quote closed and "…" after it (cut as text, it
    lost its closing quote or ended inside an escape, which bash reads as another character); any other as
    ``bot.messages.quoted_code`` quotes it."""
    if not misleading(value):
        return quoted_code(value, limit)
    pieces: list[str] = []
    room = limit - len("$''…")
    for char in value:
        piece = ansi_c_quoted(char)[2:-1]
        if len(piece) > room:
            shown = "$'" + "".join(pieces) + "'…"
            break
        pieces.append(piece)
        room -= len(piece)
    else:
        shown = ansi_c_quoted(value)
    return quoted_code(shown, len(shown))  # a backtick of the value's own would end the code span


def controls_escaped(text: str) -> str:
    """``text`` for a card, its control characters (but line breaks and tabs) and bidi controls written as bash's
    ``$'...'`` writes them (``\\x1b``, ``\\u202e``), as a runbook's card shows its command: raw, an escape
    sequence retitled or cleared the terminal of whoever read it there, and U+202E turned the rest around."""
    return _CONTROLS.sub(lambda found: ansi_c_quoted(found.group())[2:-1], text)


def misleading(arg: str) -> bool:
    """Whether ``arg`` holds a character that shows as nothing or as another (a line break, a zero-width space,
    a bidi override that turns the rest of the line around, a no-break space), one drawn like an ASCII one (a
    digit other than 0-9, ``٨`` is an 8; a fullwidth ``ｗ``, a mathematical ``𝐰``), or letters of two scripts
    (``wеb`` with a Cyrillic ``е``)."""
    return not arg.isprintable() or bool(_DRAWN_AS_NOTHING.search(arg)) or any(map(_like_ascii, arg)) \
        or len(_scripts(arg)) > 1


# What Unicode calls ignorable (Default_Ignorable_Code_Point: drawn as nothing) that Python counts printable (the
# rest, format characters such as a zero-width space, it does not): the Hangul fillers, letters that ``(?u)\w``
# takes; the combining grapheme joiner; the variation selectors; Khmer's inherent vowels; Mongolian's free
# variation selectors. And the Braille pattern blank, drawn as a space.
_DRAWN_AS_NOTHING = re.compile("[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f\u2800\u3164\ufe00-\ufe0f"
                               "\uffa0\U000e0100-\U000e01ef]")


def _like_ascii(char: str) -> bool:
    return not char.isascii() and (char.isdigit() or unicodedata.normalize("NFKC", char).isascii())


# Written together: Chinese and Japanese mix Han, kana and Latin; Korean Hangul with them (as Unicode's UTS #39).
_EAST_ASIAN = {"CJK", "IDEOGRAPHIC", "HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA", "HALFWIDTH", "BOPOMOFO", "HANGUL"}


def _scripts(arg: str) -> set[str]:
    """The scripts of ``arg``'s letters, each the first word of the letter's Unicode name (LATIN, CYRILLIC,
    GREEK); digits and punctuation have none."""
    scripts = {unicodedata.name(char, "?").split()[0] for char in arg if char.isalpha()}
    if scripts & _EAST_ASIAN:
        scripts = (scripts - _EAST_ASIAN - {"LATIN"}) | {"EAST ASIAN"}
    return scripts


def ansi_c_quoted(arg: str) -> str:
    """``arg`` in bash's ``$'...'``: printable ASCII as it is, every other character an escape."""
    return "$'" + "".join(_ANSI_C_ESCAPES.get(char) or (char if char.isascii() and char.isprintable()
                                                       else _code_point(char)) for char in arg) + "'"


_CONTROLS = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{BIDI_CONTROLS}]")  # but line breaks and tabs
_ANSI_C_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _code_point(char: str) -> str:
    """``char`` as bash's ``$'...'`` writes it: ``\\x`` is a byte, so only an ASCII one (``\\xa0`` is the byte
    0xA0, not a no-break space, which is ``\\u00a0``)."""
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
