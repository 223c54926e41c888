"""The messages the core posts: approval cards, results, refusals and errors."""

from __future__ import annotations

import json
import pprint
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from bot import approvals, schedules
from bot.models import ModelRequired
from bot.kit import duration
from bot.messages import (CUT_MARK, ButtonOption, Buttons, Code, Message, Note, Text, ThreadLink, cut, first_line, quoted,
                          quoted_code, shown_value, storable, validation_words)
from storage.models import Approval

# A longer text in a graph's reply goes as long command output does, a preview and the whole as a file:
# as text it was split over as many messages as it took (a 1 MB reply, 80 on Slack and 500 on Discord).
LONG_TEXT_CHARS = 12_000


def when(at: datetime) -> str:
    """``at`` in UTC; a naive time is taken as UTC already (as the database stores times)."""
    if at.tzinfo is not None:
        at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def when_in(at: datetime | None, timezone: str) -> str:
    """A schedule's firing: in UTC, and on the clock of the schedule's own zone when that is another."""
    if at is None:
        return "never"
    if timezone == "UTC":
        return when(at)
    local = at.astimezone(schedules.zone(timezone))
    return f"{when(at)} ({local:%a %H:%M} in {timezone})"


def age(since: datetime, now: datetime) -> str:
    """How long ago ``since`` was, as ``duration`` writes it (from the whole span: cut to whole seconds first,
    ``status`` said a request asked 0.9 s ago was asked "0ms" ago, and one of 2.9 s "2.0s")."""
    return duration((now - since).total_seconds())


def _approvers_shown(approval: Approval) -> str:
    """The approvers; on a high-risk card without the requester, who may not approve it (only withdraw it)."""
    if not approval.approvers:
        return "none configured"
    others = approvals.approvers_besides_requester(approval)
    if approval.risk != "high" or len(others) == len(approval.approvers):
        return ", ".join(approval.approvers)
    return f"{', '.join(others) or 'nobody else'} (not {approval.requested_by}, who asked)"


def approval_card(approval: Approval) -> Message:
    """The card while waiting (with buttons) and after a decision (buttons gone, who and when)."""
    parts: list[Any] = [Text(text=approval.summary)]
    if approval.details:
        parts.append(Code(text="\n".join(_detail_line(key, value) for key, value in approval.details.items())))
    parts.append(Note(text=f"Requested by {approval.requested_by} · risk {approval.risk} · "
                           f"approvers: {_approvers_shown(approval)}"))
    if approval.status == "pending":
        parts.append(Buttons(approval_id=approval.id, deciders=approvals.who_may_approve(
            approval.approvers, approval.requested_by, approval.risk)))
        return Message(title="Approval needed", tone="approval", parts=parts).naming(
            approval.requested_by, *approval.approvers)
    assert approval.decided_at is not None
    verdict = {"approved": "Approved", "rejected": "Rejected", "stale": _ended(approval)}[approval.status]
    parts.append(Note(text=f"{verdict} by {approval.decided_by} at {when(approval.decided_at)}"))
    tone = "success" if approval.status == "approved" else "warning"
    return Message(title=f"{verdict}", tone=tone, parts=parts).naming(
        approval.requested_by, *approval.approvers, approval.decided_by)


def approval_out_of_sight(approval: Approval) -> Message:
    """A request made where only the requester sees the card (a direct message), which they may not approve."""
    others = approvals.who_may_approve(approval.approvers, approval.requested_by, approval.risk)
    asked = f"{', '.join(others)} to approve it" if others else "an approver"
    return Message.text(
        f"{approval.summary}\n\nThis needs {asked}, and only you can see this direct message, so I stopped "
        "before it: nothing was run. Ask me in a channel where an approver can see the card.", tone="warning"
    ).naming(*others)


def approval_nobody_may_give(approval: Approval, platform: str) -> Message:
    """A request whose approval no click on ``platform`` could ever give (``approvals.nobody_may_approve``)."""
    if approvals.clicking_on(approval.approvers, platform):  # high-risk, and its only approvers here are who asked
        why = ("it is high-risk, so someone other than you has to approve it, and its only approver in baton.yaml "
               "is you. Have someone else ask for it (you may approve theirs), or add another approver in baton.yaml.")
    elif approval.approvers:
        why = (f"none of its approvers in baton.yaml ({', '.join(approval.approvers)}) can click on {platform}, "
               "where its card would be. Add an approver who is here.")
    else:
        why = "baton.yaml names nobody who may approve it. Add `approvers` there."
    return Message.text(f"{approval.summary}\n\nI stopped before this: nothing was run. Nobody could ever approve "
                        f"it: {why}", tone="warning").naming(approval.requested_by)


def _ended(approval: Approval) -> str:
    """How a card nobody decided ended: it expired (its time, or its run ended), or someone's ``cancel`` ended its
    run ("Expired by Baton" said of dave's cancel)."""
    return "Expired" if approval.decided_by == approvals.EXPIRED_BY else "Cancelled"


def already_decided(approval: Approval) -> Message:
    if approval.status == "stale":
        return Message.text("This approval is no longer current; nothing was changed.", tone="warning")
    verdict = "approved" if approval.status == "approved" else "rejected"
    at = when(approval.decided_at) if approval.decided_at else "earlier"
    return Message.text(f"Already {verdict} by {approval.decided_by} at {at}; nothing was changed.",
                        tone="info").naming(approval.decided_by)


class ReplyNotShown(ValueError):
    """A graph's ``reply`` looks like a message (it has ``parts``) but is not one: its run fails, saying why."""


def result(reply: Any, *, failed: bool, error: Any = None) -> Message:
    """A graph's final ``reply`` (text or a message dict; other values are shown as they are) as a message;
    without one, the graph's ``error`` when it failed. ``ReplyNotShown`` for a message dict that is not valid."""
    if isinstance(reply, dict) and reply.get("parts"):
        try:
            return Message.model_validate(reply)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            raise ReplyNotShown(f"its reply is not a message: {where}: {validation_words(problem)}") from None
    tone = "error" if failed else "success"
    if isinstance(reply, set | frozenset):  # no JSON of its own: its items, in a stable order
        reply = sorted(reply, key=str)
    if isinstance(reply, list | tuple | dict) and reply:  # data: shown as it is, not "Done."
        return Message(tone=tone, parts=[Code(text=json.dumps(reply, indent=2, ensure_ascii=False, default=str))])
    if isinstance(reply, str) and reply:
        text = reply
    elif isinstance(reply, int | float):  # a count, a flag
        text = str(reply)
    elif isinstance(reply, bytes | bytearray) and reply:  # a command's output: its NUL stored by no database
        text = storable(reply.decode("utf-8", errors="replace"))
    elif reply is not None and not isinstance(reply, str | bytes | bytearray | list | tuple | dict):  # (sets: lists)
        text = storable(str(reply))  # a datetime, a dataclass: as Python shows it (it was "Done.", the reply lost)
    elif failed:
        text = f"The run failed: {str(error)[:1000]}" if error not in (None, True) else "The run failed."
    else:
        text = "Done."
    return _text_with_code(text, tone=tone)


def _shown_question(value: Any, graph: str) -> str:
    """A plain graph's ``interrupt(value)`` as its card's question: text as it is, anything else as JSON (with
    accents and emoji as written, not \\u00e9), or as Python writes it when it is no JSON (a tuple as a key)."""
    if value is None or (isinstance(value, str) and not value.strip()):  # else a card with no question, or "null"
        return f"The `{graph}` graph asks to go on (its interrupt() gave no question to show)."
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, indent=2, default=str, ensure_ascii=False)
    except (TypeError, ValueError):  # else handling the run broke off: "Something went wrong while handling this"
        return pprint.pformat(value)


def card_question(value: Any, graph: str) -> tuple[str, dict[str, str]]:
    """A plain graph's ``interrupt(value)`` as its card: the question and the details below it. LangGraph's docs ask
    ``interrupt({"question": "Do you want to proceed with this action?", "details": ...})``: its ``question`` is the
    card's and the other keys its details, each a line (text as it is, other values as JSON), as ``approve()``'s
    are; the card showed the whole dict as one block of JSON, the question inside it."""
    question = value.get("question") if isinstance(value, dict) else None
    if not isinstance(question, str) or not question.strip():
        return _shown_question(value, graph), {}
    return question, {str(key): shown_value(given) for key, given in value.items() if key != "question"}


def choice_card(approval: Approval) -> Message:
    """"Which one did you mean?": one button per likely graph; after the pick, who chose what."""
    options = list(approval.details.get("options", []))
    if approval.status == "pending":
        return Message(title="Which one?", tone="approval", parts=[
            Text(text=approval.summary),
            Note(text="I was not sure which graph you meant, so I'm asking rather than guessing."),
            Buttons(approval_id=approval.id, options=[
                ButtonOption(value=name, label=name, style="primary" if index == 0 else "default")
                for index, name in enumerate(options)])])
    assert approval.decided_at is not None
    if approval.status == "stale":  # nobody picked in time, or its run ended
        ended = _ended(approval)
        return Message(title=ended, tone="warning", parts=[
            Text(text=approval.summary), Note(text=f"{ended} by {approval.decided_by} at {when(approval.decided_at)}")
        ]).naming(approval.decided_by)
    return Message(title="Chosen", tone="success", parts=[
        Text(text=approval.summary),
        Note(text=f"{approval.decided_by} chose `{approval.choice}` at {when(approval.decided_at)}"),
    ]).naming(approval.decided_by)


def model_error(error: BaseException) -> Message:
    """A model that is missing or failing: say so plainly, with what to do."""
    if isinstance(error, ModelRequired):
        return Message.text(str(error), tone="warning", title="A model is needed")
    cause = error.__cause__
    if cause is not None and str(cause):
        line = f"{type(cause).__name__}: {cause}"
    else:  # Baton's own words ("no answer within 60s"); without them the cause's name, not Baton's wrapper's
        line = str(error) or type(cause if cause is not None else error).__name__
    line = cut(line.splitlines()[0], 300)
    return Message.text(f"The language model did not answer ({line}). The run stopped; try again later.",
                        tone="error", title="Model error")


_TASK_NOTE = re.compile(r"During task with name '([^']+)'")  # LangGraph's note on a node's exception
FAILURE_LINES, FAILURE_CHARS = 3, 300


def failure(graph: str, error: BaseException) -> Message:
    """A node's exception: the node LangGraph notes on it, and its first lines ("1 validation error for Deploy"
    alone said nothing of what was wrong), storable, as a file name read with ``os.listdir`` or a command's output
    may not be (the reply was lost for "Something went wrong"). The lines are code: an error often quotes what
    someone wrote (pydantic's ``input_value``), which as prose was markup (a masked link, a mention, a heading)."""
    said = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    lines = "\n".join([line for line in said.splitlines() if line.strip()][:FAILURE_LINES])[:FAILURE_CHARS]
    node = next((found.group(1) for note in getattr(error, "__notes__", None) or []
                 if isinstance(note, str) and (found := _TASK_NOTE.match(note))), None)
    where = f" in `{node}`" if node and node != graph else ""
    return Message(tone="error", title="Run failed", parts=[Text(text=f"`{graph}` failed{where}:"),
                                                             Code(text=storable(lines))])


# A line that opens a fenced block, as ``adapters.contract.FENCE_OPEN`` reads it (bot imports no adapter).
_FENCE_OPEN = re.compile(r" {0,3}```[\w+#.-]{0,32}[ \t]{0,8}$")


def cut_line(text: str, limit: int) -> str:
    """``text`` cut at ``limit`` characters, saying how many more there were. A ``` block or `code` the cut leaves
    open is closed first: the note, and the progress lines after it, showed inside the block, and a later line's
    block was turned inside out (its log shown as prose, its closing fence opening a block never closed)."""
    if len(text) <= limit:
        return text
    kept, more = text[:limit], f"{CUT_MARK} ({len(text) - limit:,} more characters)"  # the redaction knows it
    inside = False
    for line in kept.split("\n"):
        if not inside:
            inside = bool(_FENCE_OPEN.match(line))
        elif line.rstrip().endswith("```") and line.count("```") == 1:
            inside = False
    if inside:
        return f"{kept}\n```\n{more}"
    return f"{kept}`{more}" if kept.rpartition("\n")[2].count("`") % 2 else kept + more


def in_doubt(asked: str, effect: str) -> Message:
    """A run taken over whose side effect had started: told in words, not as "failed: EffectInDoubt: ...".
    ``asked``: the request as written (``run restart service=web``): a thread whose requests were each cut off by a
    stop got as many notes, each "`runbook` stopped", and none said which one to check."""
    return Message(tone="error", title="Run stopped", parts=[
        Text(text=f"`{quoted_code(asked, 120)}` stopped: its step `{quoted_code(effect)}` had been started by a Baton that stopped "
                  "(or lost this thread) while it ran, so its outcome is unknown, and it was not run again. Check "
                  "what it did before asking for it again."),
    ])


def database_unusable(graph: str, reason: str, *, unreachable: bool) -> Message:
    """A run stopped because Baton's database (or its checkpoints file) could not be written or reached: said in
    words, not as "OperationalError: database or disk is full", with what was kept and what to do."""
    cannot = "reach its database" if unreachable else f"write to its database ({reason})"
    return Message(tone="error", title="Run stopped", parts=[
        Text(text=f"`{graph}` stopped: Baton could not {cannot} just now, so it could not keep this run's progress "
                  "and went no further. A step it had already made is not made again. Please ask again in a few "
                  "minutes; Baton's log says what its operator can do."),
    ])


def timed_out(graph: str, limit: float) -> Message:
    return Message(tone="error", title="Run stopped", parts=[
        Text(text=f"`{graph}` ran longer than its limit of {duration(limit)}, so I stopped it. Nothing more of it will run; "
                  "a step it was in the middle of may have been cut off partway."),
        Note(text="A graph sets its own limit with TIMEOUT; the default is BATON_RUN_TIMEOUT_SECONDS."),
    ])


def cancelled(graph: str, user: str, seconds: float, *, at_cards: bool = False, at_choice: bool = False,
              cut_off: str | None = None, in_doubt: str | None = None) -> Message:
    """``at_choice``: ``graph`` is the request a "Which one?" card asked about, which ran nothing yet. ``cut_off``:
    the side effect the cancel stopped while it ran (a runbook's is its ``command``, the assistant's ``tool:...``);
    without one, no command was said to be killed (a graph with none, a runbook before or after its command).
    ``in_doubt``: the side effect under way when the run's replica stopped, which the cancel could not stop (it
    was told "so I stopped it", the command having run on to its end)."""
    if at_choice:
        return Message(tone="warning", title="Choice cancelled", parts=[
            Text(text=f"{user} cancelled the choice for `{graph}` after {duration(seconds)}: none of its graphs "
                      "was run.")]).naming(user)
    how = "I stopped it: nothing more of it will run"
    if in_doubt is not None:
        return Message(tone="warning", title="Run cancelled", parts=[Text(
            text=f"{user} cancelled `{graph}` after {duration(seconds)}: nothing more of it will run. Its step "
                 f"`{quoted_code(in_doubt)}` had been started by a Baton that stopped while it ran, so it may have "
                 "run on or finished: its outcome is unknown. Check what it did.")]).naming(user)
    if at_cards:
        how = "it was waiting for approvals, which are closed now: nothing more of it will run"
    elif cut_off == "command" or (cut_off or "").startswith("tool:"):
        how += ", and a command it was running was killed"
    elif cut_off:
        how += f", and its side effect `{quoted_code(cut_off)}` was cut off partway"
    return Message(tone="warning", title="Run cancelled", parts=[
        Text(text=f"{user} cancelled `{graph}` after {duration(seconds)}, so {how}. What it did before is not undone."),
    ]).naming(user)


def cancel_refused(requested_by: str, others: list[str]) -> Message:
    # "carol, who asked for it, or alice or bob" read as a list gone wrong: several others are the approvers.
    besides = (f", or {others[0]}" if len(others) == 1 else
               f", or an approver ({approvals.one_of(others)})" if others else ",")
    who = f"{requested_by}, who asked for it{besides}"
    return Message.text(f"Only {who} can cancel this run. It goes on.", tone="warning").naming(requested_by, *others)


def cancelled_already(by: str) -> Message:
    return Message.text(f"{by} cancelled this run already.", tone="info").naming(by)


def rejected_already(by: str, word: str = "cancel") -> Message:
    """``word``: what the cancel was written with (``cancel`` or ``stop``), as in the next answers."""
    return Message.text(f"{by} rejected this request already: nothing was left for your `{word}` to stop.",
                        tone="info").naming(by)


def cancel_too_late(word: str = "cancel") -> Message:
    return Message.text(f"The run was over before your `{word}` reached it: nothing was stopped.", tone="warning")


def withdrawn(user: str, requests: int) -> Message:
    what = "this request" if requests == 1 else f"{requests} requests"
    return Message.text(f"{user} cancelled {what} before it started: nothing of it ran.", tone="warning").naming(user)


def nothing_to_cancel(in_thread: bool, word: str = "cancel") -> Message:
    if not in_thread:
        does = "ends" if word == "stop" else "stops"
        return Message.text(f"`{word}` {does} a run that is going on: write it in that run's thread.", tone="warning")
    return Message.text(f"Nothing is running in this thread, so there is nothing to {word}.", tone="warning")


def decide_on_the_card(word: str, cards: list[Approval], user: str) -> Message:
    """The answer to ``approve`` or ``reject`` (``word``) that ``user`` typed in a thread instead of clicking,
    ``cards`` the thread's cards waiting for a decision: typed text decides nothing, the card's buttons do (they
    check who may decide, and the first decision wins)."""
    approval = next((card for card in cards if card.kind == "approval"), None)
    if approval is not None:
        line = first_line(approval.summary)
        card = f'the approval card above ("{quoted(line)}")' if line else "the approval card above"
        who = approvals.waiting_for(approval.approvers, approval.requested_by, approval.risk)
        yours = " You asked for it: its Reject button (or `cancel`) withdraws it." if user == approval.requested_by \
            else ""
        return Message.text(f"A typed `{word}` decides nothing: use the Approve or Reject button on {card}. It is "
                            f"waiting for {who}.{yours}", tone="info").naming(approval.requested_by,
                                                                              *approval.approvers)
    if cards:  # a "Which one?" card: nothing waits for an approval
        return Message.text(f"Nothing here waits for an approval: the \"Which one?\" card above asks "
                            f"{cards[0].requested_by} which graph they meant, and they pick one with its buttons.",
                            tone="info").naming(cards[0].requested_by)
    return Message.text(f"Nothing in this thread waits for a decision now, so a typed `{word}` changes nothing. "
                        "When a run needs an approval, it posts a card: decide with its Approve or Reject button.",
                        tone="info")


def graph_gone(graph: str) -> Message:
    return Message.text(f"This run cannot go on: the `{graph}` graph is not installed on this Baton any more. "
                        "Nothing more of it runs.", tone="error", title="Run failed")


def question_gone(graph: str) -> Message:
    """A card clicked after its graph changed (a node renamed in a new version): its saved state asks nothing."""
    return Message.text(f"This run cannot go on: the `{graph}` graph's saved state no longer holds the question on "
                        "its card (the graph changed since it asked, or its checkpoints are gone). Nothing more of it "
                        "runs; please ask again.", tone="error", title="Run failed")


def approval_expired(approval: Approval, waited: str) -> Message:
    """A card nobody decided on in time (``BATON_APPROVAL_EXPIRY_SECONDS``): the run ended without doing it."""
    if approval.kind == "choice":  # "Which one did you mean?": nothing was asked to be approved
        return Message.text(f"Nobody picked one of the choices within {waited}, so I did not run any of them. "
                            "Ask again if it is still needed.", tone="warning", title="Choice expired")
    line = first_line(approval.summary)
    what = f'"{quoted(line)}"' if line else "this"
    return Message.text(f"Nobody decided on {what} within {waited}, so it expired and nothing more of this run "
                        "was done. Ask again if it is still needed.", tone="warning", title="Approval expired")


def approval_card_not_posted(approval: Approval, said: str) -> Message:
    """A card the platform refused for good: nobody could click it, so the run ended without doing it."""
    asked = "the choices" if approval.kind == "choice" else "the approval card"
    return Message.text(f"I could not post {asked} here (the platform said `{said}`), so nobody could decide on "
                        "it and nothing more of this run was done. Ask again once I can post here.", tone="warning",
                        title="Approval not posted")


def stopped_too_often(graph: str, times: int) -> Message:
    return Message(tone="error", title="Run failed", parts=[
        Text(text=f"Baton stopped {times} times while this `{graph}` run was under way, so I am not taking it up "
                  "again: it may be what stops Baton. A step it was in the middle of may have been cut off partway."),
        Note(text="Ask again once the cause is found (Baton's log says when it stopped)."),
    ])


def duplicate(link_channel: str, link_thread: str, status: str, *, here: bool = False) -> Message:
    """The answer to a request made again while its twin runs or shortly after; ``here``: the twin is in the
    thread the request was made in (typed again while it ran, it was queued behind itself)."""
    force = Note(text="Add `force` as the first or last word of your request to run it anyway.")
    if here:
        doing = "is still going" if status in ("running", "waiting") else "finished just above"
        return Message(tone="info", parts=[
            Text(text=f"The same request {doing} in this thread, so I did not run it again."), force])
    doing = {"running": "is running", "waiting": "is waiting for approval"}.get(status, "finished recently")
    return Message(
        tone="info",
        parts=[
            Text(text=f"The same request {doing} in another thread, so I did not start it again:"),
            ThreadLink(label="open that thread", channel=link_channel, thread=link_thread),
            force,
        ],
    )


def rejected_above(by: str) -> Message:
    """The answer to a request typed again in its thread while its card waited, once the card was rejected."""
    return Message(tone="info", parts=[
        Text(text=f"{by} rejected the same request just above in this thread, so I did not ask for it again."),
        Note(text="Add `force` as the first or last word of your request to ask anyway.")]).naming(by)


# What may follow an opening ``` on its line: a language (```bash), shown by no platform as part of the code.
FENCE_LANGUAGE = re.compile(r"[\w+#.-]{1,32}[ \t]*")


def _text_with_code(text: str, tone: Any) -> Message:
    """Split ```fenced``` blocks out of plain text into code parts (and text too long for a few messages). A
    block's language (```bash) is no line of its code: it was shown as the output's first line."""
    parts: list[Any] = []
    for index, chunk in enumerate(text.split("```")):
        language, newline, code = chunk.partition("\n")
        if index % 2 and newline and FENCE_LANGUAGE.fullmatch(language):
            chunk = code
        chunk = chunk.strip("\n")
        if not chunk:
            continue
        parts.append(Code(text=chunk) if index % 2 or len(chunk) > LONG_TEXT_CHARS else Text(text=chunk))
    return Message(tone=tone, parts=parts or [Text(text=text)])


def _detail_line(key: str, value: Any) -> str:
    """A card's detail: ``key: value``, a value's further lines indented, so that only a detail starts a line. An
    agent's argument ``"a\nb: c"`` (the model writes arguments) was shown as two details, ``note: a`` and ``b: c``."""
    return f"{key}: " + shown_value(value).replace("\n", "\n  ")
