"""Model features as a demanding user meets them: odd tool calls, odd models, odd BATON_MODEL values."""

from __future__ import annotations

import sys

import pytest

from bot.models import ModelSetupError, create_model
from tests.fake_models import calls
from tests.support import has_buttons, runs_in, wait_for
from tests.test_models import final, model_script, tool_call  # noqa: F401 (a fixture)


def card_with(pg, thread: str, text: str) -> dict:
    return wait_for(lambda: next((m for m in pg.bot_replies(thread) if has_buttons(m) and text in m["text"]), None),
                    20, f"an approval card with {text}")


def test_a_reused_tool_call_id_still_needs_its_own_approval(start_baton, sqlite_url, counter, model_script):
    """Some models (OpenAI-compatible local servers) number tool calls per reply: `call_0` again in the next
    turn. The approval given for `restart web` was taken for `restart api`, which ran with nobody asked."""
    env = model_script(tool_call("restart", "call_0", service="web"), tool_call("restart", "call_0", service="api"),
                       final("Restarted both."))
    pg = start_baton(sqlite_url, env=env).client()
    thread = pg.ask("@baton assistant restart web, then api", user="alice")
    first = pg.wait_card(thread)
    assert '"service": "web"' in first["text"]
    pg.click(first, "bob")
    second = card_with(pg, thread, '"service": "api"')
    assert runs_in(counter) == ["restart web"]
    pg.click(second, "bob", action="reject")
    pg.wait_reply(thread, "Restarted both.")
    assert runs_in(counter) == ["restart web"]
    assert calls(model_script.path)[2]["last"] == "Not run: bob rejected running `restart`."


def test_two_high_risk_calls_with_one_id_in_a_reply_each_get_a_card(start_baton, sqlite_url, counter, model_script):
    both = {"content": "", "tool_calls": [{"name": "restart", "id": "0", "args": {"service": "web"}},
                                          {"name": "restart", "id": "0", "args": {"service": "api"}}],
            "usage": {"input_tokens": 10, "output_tokens": 5}}
    pg = start_baton(sqlite_url, env=model_script(both, final("Done."))).client()
    thread = pg.ask("@baton assistant restart web and api", user="alice")
    first = pg.wait_card(thread)
    pg.click(first, "bob")
    second = card_with(pg, thread, '"service": "api"')
    pg.click(second, "bob", action="reject")
    pg.wait_reply(thread, "Done.")
    assert runs_in(counter) == ["restart web"]


@pytest.mark.parametrize("spec, said", [
    ("python:nosuchmodule", "must look like python:package.module:factory"),
    ("python:json:loads", "json:loads failed"),
    ("python:os:getcwd", "is not a chat model"),
])
def test_a_python_model_that_cannot_be_built_is_a_clear_start_error(spec, said):
    """`python:nosuchmodule` said only 'Empty module name'; a factory that raised was a traceback; one that
    returned something else (a string) started Baton, which failed at the first model call."""
    with pytest.raises(ModelSetupError) as error:
        create_model(spec, timeout=1, retries=0)
    assert said in str(error.value) and spec in str(error.value)


def test_a_secret_in_a_tools_output_does_not_reach_the_model(start_baton, sqlite_url, config_path, model_script):
    """The chat showed `tok=[redacted]`, but the model's provider was sent the token itself."""
    config_path.write_text(config_path.read_text().replace("runbooks:\n", f"""runbooks:
  envdump:
    description: Prints a token.
    command: [{sys.executable!r}, "-c", "import os; print('tok=' + os.environ['GITHUB_TOKEN'])"]
    risk: low
    timeout: 10
""", 1))
    env = {**model_script(tool_call("envdump"), final("I saw a token.")), "GITHUB_TOKEN": "ghp_verysecretvalue12345"}
    pg = start_baton(sqlite_url, env=env).client()
    pg.wait_reply(pg.ask("@baton assistant what does envdump print?"), "I saw a token.")
    told = calls(model_script.path)[1]["last"]
    assert "ghp_verysecretvalue12345" not in told and "tok=[redacted]" in told


def test_a_tool_call_without_an_id_is_answered(start_baton, sqlite_url, counter, model_script):
    """A model that gives its tool calls no id (some local servers): the run failed on a ValidationError."""
    no_id = {"content": "", "tool_calls": [{"name": "uptime", "id": None, "args": {}},
                                           {"name": "nope", "id": None, "args": {}}]}
    pg = start_baton(sqlite_url, env=model_script(no_id, final("Up and fine."))).client()
    pg.wait_reply(pg.ask("@baton assistant uptime?"), "Up and fine.")
    assert runs_in(counter) == ["uptime"]


def test_a_provider_that_refuses_to_build_is_a_clear_start_error(monkeypatch):
    """`openai:gpt-4.1-mini` without OPENAI_API_KEY: the provider's client raises its own error (openai.OpenAIError,
    not a ValueError) and `baton run` ended in a traceback."""
    import langchain.chat_models

    class OpenAIError(Exception):
        pass

    def refuse(*_args, **_kwargs):
        raise OpenAIError("The api_key client option must be set either by passing api_key to the client or by "
                          "setting the OPENAI_API_KEY environment variable")

    monkeypatch.setattr(langchain.chat_models, "init_chat_model", refuse)
    with pytest.raises(ModelSetupError) as error:
        create_model("openai:gpt-4.1-mini", timeout=1, retries=0)
    assert "BATON_MODEL=openai:gpt-4.1-mini" in str(error.value) and "OPENAI_API_KEY" in str(error.value)


def test_a_summary_of_a_long_thread_says_it_covers_only_its_last_messages(baton):
    """A thread of 60 messages was summarised from its last 50 under the title "summary of this thread"."""
    pg = baton.client()
    thread = pg.ask("@baton run uptime")
    pg.wait_reply(thread, "did uptime")
    for number in range(60):
        pg.say(f"note {number}", thread=thread, user="bob")
    pg.say("@baton summarize", thread=thread)
    summary = pg.wait_reply(thread, "Extractive summary of")
    assert summary["text"].startswith("*Extractive summary of this thread's last 50 messages*"), summary["text"][:80]
    short = pg.ask("@baton summarize Channel 1", user="carol")  # was this (new) thread, without a word
    pg.wait_reply(short, "Extractive summary of the channel's last 1 message*")


def test_tool_arguments_that_are_not_text_are_not_turned_into_text(start_baton, sqlite_url, config_path, counter,
                                                                   model_script):
    """A model sent `null` for an argument with a default: the runbook ran with the word `None`
    (`greet None`); a list was run as its Python spelling. Null now means the default; a list or a dict is refused."""
    script = "import sys; open(sys.argv[1], 'a').write('greet ' + sys.argv[2] + '\\n')"
    config_path.write_text(config_path.read_text().replace("runbooks:\n", f"""runbooks:
  greet:
    description: Greets someone.
    command: [{sys.executable!r}, "-c", {script!r}, {str(counter)!r}, "{{name}}"]
    args:
      name:
        pattern: "^[A-Za-z\\\\[\\\\]' ]+$"
        default: world
    risk: low
    timeout: 10
""", 1))
    odd = {"content": "", "tool_calls": [{"name": "greet", "id": "a", "args": {"name": None}},
                                         {"name": "greet", "id": "b", "args": {"name": ["ann"]}}]}
    pg = start_baton(sqlite_url, env=model_script(odd, final("Greeted."))).client()
    pg.wait_reply(pg.ask("@baton assistant greet"), "Greeted.")
    assert runs_in(counter) == ["greet world"]
    assert calls(model_script.path)[1]["last"] == "Not run: `name` must be text, not a list."
    greet = next(tool for tool in calls(model_script.path)[0]["tools"] if tool["name"] == "greet")
    assert greet["parameters"]["required"] == []  # it has a default: the model was told to make one up
