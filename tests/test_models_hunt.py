"""Model features as a demanding user meets them: odd tool calls, odd models, odd BATON_MODEL values."""

from __future__ import annotations

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
