"""Scripted chat models for tests: LangChain's ``GenericFakeChatModel``, taught ``bind_tools``.

``BATON_MODEL=python:tests.fake_models:scripted`` makes a ``baton run`` process use it. The script
is a JSON list in the file named by ``BATON_TEST_MODEL_SCRIPT``: each entry is the reply to one
call (``content``, optional ``tool_calls``, optional ``invalid_tool_calls`` (arguments that are not JSON, as
text), optional ``usage`` {input_tokens, output_tokens}) or
``{"error": "..."}`` to raise, or ``{"hang": seconds}`` to answer nothing for that long. The position in the script and every call's last message (and the start of each of its messages, ``said``) are kept
in ``<script>.calls`` (with
the number of messages and their characters, and the tools bound to the call), so the script continues across a restart and tests can count the calls.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult


class ToolCallingFakeModel(GenericFakeChatModel):
    """``GenericFakeChatModel`` that accepts ``bind_tools`` (and so ``with_structured_output``)."""

    tools: list[Any] = []

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ToolCallingFakeModel:
        return self.model_copy(update={"tools": list(tools)})


class ScriptedModel(ToolCallingFakeModel):
    script_path: str

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        script = json.loads(Path(self.script_path).read_text())
        calls = Path(self.script_path + ".calls")
        done = calls.read_text().splitlines() if calls.exists() else []
        if len(done) >= len(script):
            raise AssertionError(f"the model was called {len(done) + 1} times; the script has {len(script)} replies")
        entry = script[len(done)]
        with calls.open("a") as log:
            log.write(json.dumps({"last": str(messages[-1].content)[:4000], "count": len(messages),
                                  "chars": sum(len(str(m.content)) for m in messages),
                                  "said": [f"{m.type}: {str(m.content)[:300]}" for m in messages],
                                  "tools": [tool.get("function", tool) for tool in self.tools if isinstance(tool, dict)]},
                                 default=str) + "\n")
        if "error" in entry:
            raise RuntimeError(entry["error"])
        if "hang" in entry:  # a provider that never answers
            threading.Event().wait(entry["hang"])
        message = AIMessage(content=entry.get("content", ""), tool_calls=[
            {"name": call["name"], "args": call["args"], "id": call["id"], "type": "tool_call"}
            for call in entry.get("tool_calls", [])], invalid_tool_calls=[
            {"name": call["name"], "args": call["args"], "id": call["id"], "error": call.get("error"),
             "type": "invalid_tool_call"} for call in entry.get("invalid_tool_calls", [])],
            usage_metadata=_usage(entry.get("usage")))
        return ChatResult(generations=[ChatGeneration(message=message)])


def _usage(usage: dict[str, int] | None) -> Any:
    if not usage:
        return None
    return {"input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"],
            "total_tokens": usage["input_tokens"] + usage["output_tokens"]}


def scripted() -> ScriptedModel:
    return ScriptedModel(messages=iter(()), script_path=os.environ["BATON_TEST_MODEL_SCRIPT"])


def script(path: Path, replies: list[dict[str, Any]]) -> dict[str, str]:
    """Write a script; return the environment that makes ``baton run`` use it."""
    path.write_text(json.dumps(replies))
    return {"BATON_MODEL": "python:tests.fake_models:scripted", "BATON_TEST_MODEL_SCRIPT": str(path)}


def calls(path: Path) -> list[dict[str, Any]]:
    log = Path(str(path) + ".calls")
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


