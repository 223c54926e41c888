"""Properties of how any message is rendered for Slack and Discord: what their documentation says they take, and
that what the reader sees is what was written, split or not.

The limits, as the platforms' own documentation gives them:

* Slack (docs.slack.dev/reference/block-kit): a section's or a context's text object 1 to 3,000 characters, at most
  10 elements in a context, 50 blocks a message, a button's text 75, its action_id and a block_id 255, its value
  2,000; chat.postMessage's ``text`` is cut at 40,000 (api.slack.com/changelog/2018-04-truncating-really-long-
  messages). Baton keeps a message's blocks to 12,000 characters of text (``msg_blocks_too_long`` comes near 13,000).
* Discord (docs.discord.com/developers/resources/message, /components/reference): content 2,000 characters, 10
  embeds, an embed's title 256, its description 4,096, all of its text 6,000; a button's label 80, its custom_id
  1 to 100, 5 buttons a row.

Defects these found: a long line was cut inside a character as people see one (an emoji of several code points,
a letter and its accent, a flag), on both platforms, and so were a shortened button label, Slack's notification and
the beginning of a Discord progress message too long for one; inside a mention (on Discord ``<@1234`` ending one
message and ``5678>`` starting the next; on Slack an id cut in two, a mention no more) or a masked link. On Discord
a ``` inside a fenced block of a text closed the block there, and a backslash in a thread link's words escaped the
``]`` ending them. On Slack a title of two lines, or split after a space, showed its asterisks, and a button with
no label was refused.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters import discord_render, slack_blocks
from adapters.discord_adapter import card_view
from bot.messages import ButtonOption, Buttons, Code, Message, Note, Text, ThreadLink

FAST = settings(max_examples=60)
SLOW = settings(max_examples=40)  # whole messages, of every part
ZWSP = "\u200b"
SLACK_USER, DISCORD_USER = "U0ALICE001", "123456789012345678"
# Characters as people see them, each of several code points: a family (joined by ZWJ), a thumb with a skin tone,
# a flag (two regional indicators), an e and its accent, an a with two marks, a heart with its emoji selector,
# Scotland's flag (tags), a Hangul syllable from its jamo.
CLUSTERS = ["👨\u200d👩\u200d👧", "👍🏽", "🇫🇷", "🇩🇪", "e\u0301", "a\u0308\u0323", "❤\ufe0f",
            "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f", "\u1100\u1161\u11a8"]
CLUSTER = re.compile("|".join(sorted(map(re.escape, CLUSTERS), key=len, reverse=True)))
# What people write that means something to Slack or Discord, or to Baton's renderers.
MARKUP = ["*", "_", "~", ">", "<", "&", "|", "`", "\t", "\r\n", "\n", "\u202e", "<!channel>", "<!here>", "@everyone",
          "@here", "<@U0123ABCD>", "<@&123456789012345678>", SLACK_USER, DISCORD_USER, f"slack:{SLACK_USER}",
          f"discord:{DISCORD_USER}", "https://grafana.example.com/d/x?var-host=U0ALICE001&x=1", "[link](https://e.x)",
          "&amp;", "&lt;", "**", "# ", "-# ", "> ", "\\", " ", "a", "é", *CLUSTERS]


def _runs(least: int, most: int) -> st.SearchStrategy[str]:
    """Long words, and long lines of words (drawn as a few characters repeated: drawing each one is slow)."""
    return st.builds(lambda unit, times: (unit * times)[:most], st.sampled_from(["ab ", "a-b", "x", "word  "]),
                     st.integers(least, most))


words = st.one_of(st.sampled_from(MARKUP), st.text(max_size=4).map(lambda text: text.replace("\x00", "")),
                  _runs(50, 600))
texts = st.lists(words, max_size=20).map("".join)
long_texts = st.one_of(texts, st.builds(lambda text, times: (text * times)[:20_000], texts, st.integers(1, 40)))
people = st.lists(st.sampled_from([SLACK_USER, f"slack:{SLACK_USER}", DISCORD_USER]), max_size=2)


def _part() -> st.SearchStrategy[Any]:
    return st.one_of(st.builds(Text, text=long_texts), st.builds(Code, text=long_texts),
                     st.builds(Note, text=long_texts),
                     st.builds(ThreadLink, label=long_texts, channel=st.just("C0OPS"), thread=st.just("1712.0001")))


options = st.lists(st.builds(ButtonOption, value=st.from_regex(r"[a-z_]{1,30}", fullmatch=True), label=long_texts),
                   min_size=1, max_size=5, unique_by=lambda option: option.value)
buttons = st.builds(Buttons, approval_id=st.from_regex(r"[A-Za-z0-9_-]{16,43}", fullmatch=True), options=options,
                    deciders=st.lists(st.sampled_from(["alice", f"discord:{DISCORD_USER}", "slack:U0BOB00002"])))
messages = st.builds(Message, title=st.none() | long_texts, tone=st.sampled_from(["info", "approval", "error"]),
                     parts=st.lists(_part(), max_size=6).flatmap(
                         lambda parts: st.just(parts) | buttons.map(lambda card: [*parts, card])),
                     people=people)


def _permalink(channel: str, thread: str) -> str:
    return f"https://baton.slack.com/archives/{channel}/p{thread.replace('.', '')}"


# -- the platforms' limits ---------------------------------------------------------------------------------


@SLOW
@given(messages)
def test_every_slack_message_is_within_what_block_kit_takes(message: Message) -> None:
    for files in (True, False):
        for posted in slack_blocks.render(message, _permalink, files=files).messages:
            assert len(posted["blocks"]) <= 50 and 1 <= len(posted["text"]) <= 40_000
            texts = []
            for block in posted["blocks"]:
                if block["type"] == "section":
                    texts.append(block["text"]["text"])
                elif block["type"] == "context":
                    assert 1 <= len(block["elements"]) <= 10
                    texts += [element["text"] for element in block["elements"]]
                else:
                    assert block["type"] == "actions" and len(block["block_id"]) <= 255
                    for button in block["elements"]:
                        assert 1 <= len(button["text"]["text"]) <= 75
                        assert len(button["action_id"]) <= 255 and len(button["value"]) <= 2000
                    assert len({button["action_id"] for button in block["elements"]}) == len(block["elements"])
            assert all(1 <= len(text) <= 3000 for text in texts)
            assert sum(map(len, texts)) <= slack_blocks.MESSAGE_CHARS


@SLOW
@given(messages)
def test_every_discord_message_is_within_what_discord_takes(message: Message) -> None:
    for one_message in (False, True):
        for outgoing in discord_render.render(message, "42", one_message=one_message):
            assert outgoing.content is None or len(outgoing.content) <= 2000
            assert len(outgoing.files) <= 10
            if outgoing.embed is not None:
                title, description = outgoing.embed.title or "", outgoing.embed.description or ""
                assert len(title) <= 256 and len(description) <= 4096 and len(title) + len(description) <= 6000
            if outgoing.approval is not None:
                view = card_view(outgoing.approval)
                assert len(view.children) <= 5  # one row
                for button in view.children:
                    assert 1 <= len(button.item.label or "") <= 80  # type: ignore[attr-defined]
                    assert 1 <= len(button.item.custom_id or "") <= 100  # type: ignore[attr-defined]
            assert set(outgoing.pinged) <= {DISCORD_USER} and (not outgoing.pinged or outgoing.approval is not None)


# -- nothing lost, nothing added ----------------------------------------------------------------------------

plain_words = st.one_of(st.sampled_from([word for word in MARKUP if not re.search(r"[*`@]|U0ALICE|1234|-#", word)]),
                        st.text(alphabet=st.characters(blacklist_characters="*`@#\x00"), max_size=4),
                        _runs(100, 3000))
plain_texts = st.lists(plain_words, max_size=30).map("".join).filter(str.strip)


def _seen(text: str) -> str:
    return "".join(text.split())


@FAST
@given(plain_texts)
def test_a_text_split_over_sections_and_messages_reads_as_written(text: str) -> None:
    """Escaped once (Slack's ``&amp;`` shows ``&``; a ``&amp;`` written shows as written), and nothing dropped:
    the pieces read as the text, but for where the lines break."""
    rendered = slack_blocks.render(Message(parts=[Text(text=text), Note(text=text)]), _permalink)
    blocks = [block for posted in rendered.messages for block in posted["blocks"]]
    sections = "".join(block["text"]["text"] for block in blocks if block["type"] == "section")
    notes = "".join(element["text"] for block in blocks if block["type"] == "context" for element in block["elements"])
    assert _seen(slack_blocks.unescape(sections)) == _seen(slack_blocks.unescape(notes)) == _seen(text)

    outgoing = discord_render.render(Message(parts=[Text(text=text), Note(text=text)]), "42")
    shown = "".join(each.content or "" for each in outgoing).replace("-# ", "")  # a note's lines are small print
    assert _seen(shown) == _seen(text + text)


# -- splits cut between what people see as one ---------------------------------------------------------------

cluster_texts = st.builds(lambda lead, clusters, more: "a" * lead + "".join(clusters) * (more + 6000 // len(
                          "".join(clusters))), st.integers(0, 40),
                          st.lists(st.sampled_from([*CLUSTERS, "b", " "]), min_size=1, max_size=30), st.integers(0, 9))


def _cut_inside(pieces: list[str], whole: str, spans: list[tuple[int, int]]) -> list[str]:
    """The spans of ``whole`` (in which ``pieces`` are, in order) that a boundary between two pieces falls inside."""
    assert "".join(pieces) == whole
    cuts, at = set(), 0
    for piece in pieces[:-1]:
        at += len(piece)
        cuts.add(at)
    return [whole[start:end] for start, end in spans if any(start < cut < end for cut in cuts)]


@FAST
@given(cluster_texts)
def test_a_long_line_is_never_cut_inside_an_emoji_or_a_letter_and_its_accent(text: str) -> None:
    spans = [found.span() for found in CLUSTER.finditer(text)]
    rendered = slack_blocks.render(Message(parts=[Text(text=text)]), _permalink)
    sections = [block["text"]["text"] for posted in rendered.messages for block in posted["blocks"]]
    assert len(sections) > 1 and _cut_inside(sections, text, spans) == []

    contents = [outgoing.content or "" for outgoing in discord_render.render(Message(parts=[Text(text=text)]), "42")]
    assert len(contents) > 1 and _cut_inside(contents, text, spans) == []


def _ends_whole(shown: str, written: str) -> bool:
    """Whether ``shown`` is ``written``, or its beginning and "…" with no character as people see one cut in two."""
    kept = shown.removesuffix("…")
    return written.startswith(kept) and not any(start < len(kept) < end for start, end in
                                                 (found.span() for found in CLUSTER.finditer(written)))


@FAST
@given(cluster_texts.map(lambda text: text[:120]))
def test_a_shortened_button_label_or_notification_ends_with_a_whole_character(label: str) -> None:
    card = Buttons(approval_id="a1b2c3d4e5f6g7h8", options=[ButtonOption(value="go", label=label)])
    (slack_button,) = slack_blocks.render(Message(parts=[card]), _permalink).messages[0]["blocks"][0]["elements"]
    assert _ends_whole(slack_button["text"]["text"], label)
    (discord_button,) = card_view(card).children
    assert _ends_whole(discord_button.item.label or "", label)  # type: ignore[attr-defined]
    title = "y" * 230 + label
    notification = slack_blocks.render(Message(title=title), _permalink).messages[0]["text"]
    assert _ends_whole(notification, " ".join(title.split()))  # on one line


@FAST
@given(long_texts.filter(str.strip))
def test_on_slack_every_line_of_a_title_is_bold_whole(title: str) -> None:
    """Slack's ``*bold*`` ends with its line and never after a space: a title of two lines, or split after a space
    over two sections, showed its asterisks."""
    rendered = slack_blocks.render(Message(title=title, tone="success"), _permalink)
    sections = [block["text"]["text"] for posted in rendered.messages for block in posted["blocks"]]
    lines = [line for section in sections for line in section.removeprefix(":white_check_mark: ").split("\n") if line]
    assert all(re.fullmatch(r"\*\S(.*\S)?\*", line) for line in lines), lines
    assert _seen("".join(slack_blocks.unescape(line[1:-1]) for line in lines)) == _seen(title)


@FAST
@given(long_texts)
def test_on_discord_a_thread_link_s_words_end_where_its_bracket_does(label: str) -> None:
    """Discord reads a backslash as an escape in a link's words too: "[backup C:\\](https://...)" was no link, its
    markdown shown as written; so was "[](https://...)", for a label with no words."""
    url = discord_render.jump_url("42", "1712.0001")
    (first, *_) = discord_render.render(Message(parts=[ThreadLink(label=label, channel="C0OPS", thread="1712.0001")]),
                                        "42")
    found = re.match(r"\[((?:[^\\\[\]]|\\.)+)\]\(" + re.escape(url) + r"\)", first.content or "")
    assert found, (first.content or "")[:300]
    words = re.sub(r"\\(.)", r"\1", found.group(1))  # as Discord shows them
    assert words == "open" or " ".join(label.split()).replace("[", "(").replace("]", ")").startswith(words)


# -- mentions -----------------------------------------------------------------------------------------------

def _long_line(words: list[str], more: int) -> str:
    """``words`` on one line as long as several pieces, joined by ")" (which ends an address, as a space would, but
    gives no place to split a line at)."""
    line = ")".join(words) + ")"
    return line * (more + 7000 // len(line))


@FAST
@given(st.lists(st.sampled_from([DISCORD_USER, f"discord:{DISCORD_USER}", "<#123456789012345679>",
                                 "https://example.com/runs/" + "r" * 40, "[the run](https://e.x/r/1)", "-",
                                 "x" * 37]), min_size=1, max_size=40), st.integers(0, 9))
def test_on_discord_a_long_line_is_never_cut_inside_a_mention_or_a_link(words: list[str], more: int) -> None:
    text = _long_line(words, more)
    contents = [outgoing.content or "" for outgoing in discord_render.render(
        Message(parts=[Text(text=text)], people=[DISCORD_USER]), "42")]
    pieces = [piece for content in contents for piece in content.split("\n")]  # blocks joined in one message
    whole = discord_render.with_mentions(text, [DISCORD_USER])
    tokens = re.compile(r"<[@#]\d+>|\[[^\]]*\]\([^)]*\)|https://[^\s)]+")
    assert len(pieces) > 1
    assert _cut_inside(pieces, whole, [found.span() for found in tokens.finditer(whole)]) == []


def test_on_discord_a_long_line_is_not_cut_inside_a_long_dashboard_link() -> None:
    """A masked link to a dashboard, its address long with its query, beginning well before the cut: the line was
    cut inside it, at its address, leaving '[the board of ...](' at the end of one message."""
    link = "[the board of " + "w" * 280 + "](https://grafana.example.com/d/x?" + "var-host=web&" * 35 + "to=now)"
    text = "-" * 1300 + link + "-" * 900
    contents = [outgoing.content or "" for outgoing in discord_render.render(Message(parts=[Text(text=text)]), "42")]
    assert contents == ["-" * 1300, link + "-" * 900]


@FAST
@given(st.lists(st.sampled_from([SLACK_USER, f"slack:{SLACK_USER}", f"@{SLACK_USER}", "https://e.x/" + "r" * 30,
                                 "-", "x" * 41]), min_size=1, max_size=40), st.integers(0, 9))
def test_on_slack_a_long_line_is_never_cut_inside_a_mention_or_an_address(words: list[str], more: int) -> None:
    text = _long_line(words, more)
    rendered = slack_blocks.render(Message(parts=[Text(text=text)], people=[SLACK_USER]), _permalink)
    sections = [block["text"]["text"] for posted in rendered.messages for block in posted["blocks"]]
    whole = slack_blocks.with_mentions(slack_blocks.escape(text), [SLACK_USER])
    tokens = re.compile(r"<@U\w+>|https://[^\s)]+")
    assert len(sections) > 1
    assert _cut_inside(sections, whole, [found.span() for found in tokens.finditer(whole)]) == []


@FAST
@given(st.lists(st.sampled_from([DISCORD_USER, *CLUSTERS, "-", "x" * 29]), min_size=1, max_size=30), st.integers(0, 9))
def test_on_discord_the_beginning_of_a_progress_message_too_long_for_one_ends_whole(words: list[str],
                                                                                     more: int) -> None:
    """A run's progress is one message, edited (``one_message``): too long, it shows its beginning and says so."""
    text = _long_line(words, more)
    first, *_ = discord_render.render(Message(parts=[Text(text=text)], people=[DISCORD_USER], tone="progress"),
                                      "42", one_message=True)
    shown, _, notice = (first.content or "").removeprefix("⏳ ").partition("\n-# This message is longer")
    whole = discord_render.with_mentions(text, [DISCORD_USER])
    spans = [found.span() for pattern in (CLUSTER, re.compile(r"<@\d+>")) for found in pattern.finditer(whole)]
    assert notice and whole.startswith(shown) and _cut_inside([shown, whole[len(shown):]], whole, spans) == []


@FAST
@given(long_texts, people)
def test_user_text_mentions_nobody_baton_did_not_name_and_never_everyone(text: str, named: list[str]) -> None:
    """Slack: every ``<@id>`` is one of the message's people, or written as a mention (``@U...``, ``slack:U...``);
    no ``<!here>``/``<!channel>``, whatever the text says. Discord: a message pings nobody but a new card's
    deciders (``allowed_mentions``); its ``<@id>`` are people, ``discord:`` ids, or mentions written as such."""
    message = Message(title=text[:50] or None, parts=[Text(text=text), Note(text=text),
                                                      ThreadLink(label=text, channel="C0OPS", thread="1.2")],
                      people=named)
    rendered = slack_blocks.render(message, _permalink)
    shown = [posted["text"] for posted in rendered.messages] + [
        text for posted in rendered.messages for block in posted["blocks"]
        for text in ([block["text"]["text"]] if block["type"] == "section" else
                     [element["text"] for element in block["elements"]])]
    named_slack = {person.removeprefix("slack:") for person in named}
    typed = set(re.findall(r"(?:@|slack:)(U[A-Z0-9]{8,11})", text))
    for said in shown:
        assert "<!" not in said
        assert set(re.findall(r"<@(\w+)>", said)) <= named_slack | typed

    outgoing = discord_render.render(message, "42")
    assert all(not each.pinged for each in outgoing)
    written = set(re.findall(r"(?:discord:|<@)(\d{17,20})", text))
    for each in outgoing:
        said = (each.content or "") + (each.embed.description or "" if each.embed is not None else "")
        assert set(re.findall(r"<@(\d+)>", said)) <= set(named) | written


# -- code -----------------------------------------------------------------------------------------------------

code_lines = st.lists(st.sampled_from(["a ``` b", "````x````", "x```y```", "`", "``", DISCORD_USER, "*not bold*",
                                       "<@U0ALICE001>", "& < >", "   ```", "ok"]), min_size=1, max_size=8).map(" ".join)


def _discord_blocks(content: str) -> list[str]:
    """The code blocks of Discord content as Discord reads them: from ``` to the next ```, wherever it is."""
    return [body.replace(ZWSP, "") for body in re.findall(r"```[^\n`]*\n(.*?)\n?```", content, flags=re.DOTALL)]


@FAST
@given(st.lists(code_lines.filter(lambda line: not line.rstrip().endswith("`")), min_size=1, max_size=200))
def test_a_fenced_block_in_a_text_is_shown_as_written_whatever_backticks_it_holds(lines: list[str]) -> None:
    code = "\n".join(lines)
    text = f"Here is what it printed:\n```\n{code}\n```\nDone."
    contents = [outgoing.content or "" for outgoing in discord_render.render(
        Message(parts=[Text(text=text)], people=[DISCORD_USER]), "42")]
    assert "\n".join(body for content in contents for body in _discord_blocks(content)) == code

    rendered = slack_blocks.render(Message(parts=[Text(text=text)], people=[SLACK_USER]), _permalink)
    sections = "\n".join(block["text"]["text"] for posted in rendered.messages for block in posted["blocks"])
    shown = [slack_blocks.unescape(body) for body in re.findall(r"```\n(.*?)\n```", sections, flags=re.DOTALL)]
    assert "\n".join(shown).replace(ZWSP, "") == code


@FAST
@given(st.text(alphabet="&<>;ltgamp|@!#U0 é👍🏽\n", max_size=40))
def test_what_a_person_types_on_slack_reaches_baton_as_typed_and_is_shown_back_as_typed(typed: str) -> None:
    """Slack sends ``&``, ``<`` and ``>`` escaped, once; they are read back once (``&amp;lt;`` is the ``&lt;``
    typed, not ``<``). Shown again, they are escaped once (``test_a_text_split_over_...``)."""
    sent = slack_blocks.escape(typed)  # what Slack sends of words typed (a "<" typed is never markup)
    assert slack_blocks.typed_text(sent) == typed
