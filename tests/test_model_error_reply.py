"""What the thread is told when the language model fails: the provider's own error, named even when it has no
message (an ``httpx.ReadTimeout()``, a ``RuntimeError()`` from a ``python:`` model), which read
"(ModelFailed)", the name of Baton's own wrapper."""

from __future__ import annotations

import httpx

from bot.models import ModelFailed
from bot.replies import model_error


def _failed(cause: BaseException) -> ModelFailed:
    try:
        raise ModelFailed(str(cause)) from cause
    except ModelFailed as error:
        return error


def test_a_model_error_without_a_message_is_named_by_its_cause() -> None:
    for cause, named in ((httpx.ReadTimeout(""), "ReadTimeout"), (RuntimeError(), "RuntimeError")):
        text = model_error(_failed(cause)).plain_text()
        assert f"The language model did not answer ({named}). The run stopped; try again later." in text, text


def test_a_model_error_with_a_message_shows_its_first_line() -> None:
    text = model_error(_failed(httpx.ConnectError("connection refused\nmore"))).plain_text()
    assert "did not answer (ConnectError: connection refused)." in text
    assert "did not answer (the model server said no)." in model_error(ModelFailed("the model server said no")).plain_text()


def test_baton_s_own_words_about_a_model_error_are_kept_over_its_causes_name() -> None:
    try:
        raise ModelFailed("no answer within 60s") from TimeoutError()
    except ModelFailed as error:
        assert "did not answer (no answer within 60s)." in model_error(error).plain_text()
