"""How a request's words are read: shell-style, at every space and line break people type or paste.

One reading for chat (``bot.routing``) and for what baton.yaml says chat will take (a runbook's ``example:``,
``bot.config``): each read its own, and an ``example:`` whose words a no-break space parted was refused at load
though chat took the same request.
"""

from __future__ import annotations

import shlex

# The spaces other than ASCII's (Unicode's Zs): a no-break space pasted from a wiki page, or one of two spaces
# typed in Slack's editor, which sends them as "\u00a0 ". shlex splits on ASCII whitespace only, so
# `run restart\u00a0service=web` asked for a runbook called "restart service=web" (shown so, with its space).
# And the other breaks str.split() splits at, as the first word is read (a line or paragraph separator pasted from a
# web page): `run\u2028restart` was a run of restart, `run restart\u2028service=web` of a runbook of that name.
OTHER_SPACES = ("\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
                "\x0b\x0c\x1c\x1d\x1e\x1f\x85\u2028\u2029")

# Quotes as phones and word processors type them (iOS's Smart Punctuation, macOS's smart quotes): read as the
# shell's when a `run` request typed with them cannot be read otherwise.
TYPOGRAPHIC = "\u201c\u201d\u201e\u2018\u2019"
TYPOGRAPHIC_QUOTES = str.maketrans(TYPOGRAPHIC, "\"\"\"''")  # each as the shell's quote it stands for


def split_words(text: str) -> list[str]:
    """``shlex.split``, with any space between words as one (inside quotes, as written). ``ValueError`` as it."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace += OTHER_SPACES
    lexer.whitespace_split = True
    lexer.commenters = ""
    return list(lexer)
