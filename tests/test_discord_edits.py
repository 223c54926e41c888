"""Discord: a message edited to add a mention of Baton is a request, as if it had been sent with the mention (the
README's Discord section; Slack's own is in ``tests/test_slack_hunt.py``), and it is taken once: edited again, the
same edit delivered again, an edit of a request Baton took, an edit that removes the mention: nothing new."""

from __future__ import annotations

from tests.fake_discord import ALICE, BOB, OPS, FakeMessage, member_json, shown_text, snowflake
from tests.support import runs_in, wait_for
from tests.test_discord import (  # noqa: F401 (fixtures)
    THREADS,
    Discord,
    chat,
    config_path,
    fake_discord,
    fake_discord_without_content,
    start_discord,
)


def answers(chat: Discord, contains: str, channel: str) -> int:
    return sum(contains in shown_text(message) for message in chat.fake.messages(channel))


def test_an_edit_adding_the_mention_in_a_baton_thread_is_a_request_once(chat: Discord, counter):
    """In a Baton thread, "help me out here" without the mention is people talking (no answer); edited by its
    writer to mention Baton, it is a request there. Discord sends an edit as the whole message again (no event id
    of its own), after every edit, and again after a gateway resume: the message is taken once."""
    fake = chat.fake
    thread = fake.say("run uptime", channel=OPS)["id"]
    chat.reply("did uptime", thread)
    plain = fake.say("help me out here", channel=thread, mention=False, user=BOB)
    wait_for(lambda: chat.rows("SELECT outcome FROM inbound_events WHERE event_id = ?", plain["id"])
             == [("conversation",)], what="the talk passed over")
    edited = fake.edit(plain, "help")
    chat.reply("Here is what I can do", thread)
    fake.dispatch("MESSAGE_UPDATE", edited)  # the same edit delivered again
    fake.edit(plain, "help, please")  # edited again, the mention kept
    fake.edit(plain, "never mind", mention=False)  # the mention taken out
    asked = fake.say("run uptime force", channel=thread)  # a request taken, then edited: not run again
    wait_for(lambda: runs_in(counter) == ["uptime", "uptime"], what="the forced uptime")
    fake.edit(asked, "run uptime force now")
    fake.say("help", channel=thread)  # answered after everything above was handed in
    wait_for(lambda: answers(chat, "Here is what I can do", thread) == 2, what="the last help")
    wait_for(lambda: not chat.rows("SELECT 1 FROM inbound_events WHERE status = 'pending'"), what="all handled")
    assert runs_in(counter) == ["uptime", "uptime"]
    assert chat.stored_events() == [thread, plain["id"], plain["id"] + ":mention-added", asked["id"],
                                    chat.stored_events()[-1]]
    assert len(fake.threads()) == 1


def test_an_edit_adding_the_mention_in_a_channel_opens_its_thread_once(chat: Discord, counter):
    """In a channel, "run uptime" without the mention is chatter Baton never sees again; edited to mention Baton,
    Baton opens its thread on it and runs it there, as for a new mention. The edit delivered again (its thread
    not yet in it) meets Discord's "already has a thread" and is a duplicate; a later edit carries the thread's
    flag and costs no call."""
    fake = chat.fake
    plain = fake.say("run uptime", channel=OPS, mention=False)
    edited = fake.edit(plain, "run uptime")
    thread = plain["id"]  # a thread started on a message has the message's id
    chat.reply("did uptime", thread)
    (opened,) = fake.threads()
    assert (opened["id"], opened["parent_id"], opened["name"]) == (thread, OPS, "run uptime")
    fake.dispatch("MESSAGE_UPDATE", edited)
    wait_for(lambda: len(fake.calls(THREADS)) >= 2, what="the second attempt at the thread")
    fake.edit(plain, "run uptime please")
    fake.say("help", channel=thread)
    chat.reply("Here is what I can do", thread)
    assert chat.stored_events()[0] == thread and len(chat.stored_events()) == 2
    assert runs_in(counter) == ["uptime"] and len(fake.threads()) == 1 and fake.messages(OPS) == []
    # discord.py updates the message it cached in place, so the first edit may reach on_message too when its
    # MESSAGE_CREATE is handled after it: a third try at the thread, refused too. None for the last edit.
    opening = fake.calls(THREADS)
    assert {c.body["name"] for c in opening} == {"run uptime"} and [c.status for c in opening][:2] == [201, 400]
    assert {c.status for c in opening[1:]} == {400}


def test_an_edit_in_a_direct_message_is_nothing_new(chat: Discord, counter):
    """A direct message needs no mention: it was a request already, and an edit adding one runs nothing again."""
    fake = chat.fake
    direct = fake.direct_channel(ALICE)
    asked = fake.say("run uptime", channel=direct, mention=False)
    chat.reply("did uptime", direct)
    fake.edit(asked, "run uptime")
    fake.say("help", channel=direct, mention=False)
    chat.reply("Here is what I can do", direct)
    assert runs_in(counter) == ["uptime"] and len(chat.stored_events()) == 2 and fake.threads() == []


def test_an_edit_of_a_message_baton_never_saw_is_read_too(chat: Discord, counter):
    """discord.py's ``on_message_edit`` fires only for the messages in its cache (those it saw since it started,
    the last 1,000): a message written while Baton was away, edited to mention it, is a request all the same."""
    fake = chat.fake
    written = FakeMessage(id=snowflake(), channel_id=OPS, author_id=BOB, content="run uptime")
    fake._messages[written.id] = written  # written before Baton connected: no MESSAGE_CREATE reached it
    said = written.json() | {"member": {key: value for key, value in member_json(BOB).items() if key != "user"}}
    fake.edit(said, "run uptime")
    chat.reply("did uptime", written.id)
    assert runs_in(counter) == ["uptime"] and chat.stored_events() == [written.id]


def test_without_the_message_content_intent_an_edit_adding_the_mention_is_read(
        fake_discord_without_content, start_baton, sqlite_url, counter):
    """Without the Message Content Intent, a message in a Baton thread that does not mention Baton comes with no
    text (the thread is told once why); Discord sends the text of its edit that mentions Baton: a request."""
    chat = start_discord(start_baton, fake_discord_without_content, sqlite_url)
    fake = chat.fake
    thread = fake.say("run uptime", channel=OPS)["id"]
    chat.reply("did uptime", thread)
    plain = fake.say("help", channel=thread, mention=False)
    chat.reply("Message Content Intent", thread)
    fake.edit(plain, "help")
    chat.reply("Here is what I can do", thread)
    assert chat.stored_events() == [thread, plain["id"]]
