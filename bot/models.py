"""The chat model: built once from ``BATON_MODEL`` through LangChain's ``init_chat_model``.

Offline by default: with no ``BATON_MODEL`` there is no model, and whatever needs one says so in
chat with the exact setting to add (``ModelRequired``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from pydantic import ValidationError

from bot.config import Price

SETUP_HINT = ("set `BATON_MODEL=provider:model` (for example `openai:gpt-4.1-mini` with `OPENAI_API_KEY`, "
              "or `anthropic:claude-sonnet-4-5` with `ANTHROPIC_API_KEY`) and install the provider's extra, "
              "e.g. `pip install -e '.[openai]'`")


class ModelRequired(RuntimeError):
    """Raised by graphs that need a model when none is configured."""

    def __init__(self, what: str = "This") -> None:
        super().__init__(f"{what} needs a language model, and none is configured: {SETUP_HINT}.")


class ModelFailed(RuntimeError):
    """The model call raised (after its own retries) or timed out; the cause is chained."""


MODEL_ERRORS = (ModelRequired, ModelFailed)


class ModelSetupError(ValueError):
    """``BATON_MODEL`` names something that cannot be built; Baton refuses to start."""


def create_model(spec: str | None, *, timeout: float, retries: int) -> BaseChatModel | None:
    if not spec:
        return None
    if spec.startswith("python:"):
        return _python_model(spec)
    provider, sep, name = spec.partition(":")
    if not sep or not provider or not name:
        raise ModelSetupError(f"BATON_MODEL={spec} must look like provider:model, e.g. openai:gpt-4.1-mini")
    from langchain.chat_models import init_chat_model

    try:
        try:
            return init_chat_model(name, model_provider=provider, timeout=timeout, max_retries=retries)  # type: ignore[return-value]
        except (TypeError, ValidationError):
            # Not every provider class takes these; the kit's own deadline (``bot.kit.chat``) still applies.
            return init_chat_model(name, model_provider=provider)  # type: ignore[return-value]
    except ImportError as exc:
        if provider in _baton_extras():
            raise ModelSetupError(f"BATON_MODEL={spec} needs the {provider} package: pip install -e '.[{provider}]' "
                                  f"({exc})") from None
        raise ModelSetupError(f"BATON_MODEL={spec} needs a package that is not installed: {exc}") from None
    except ValueError as exc:
        raise ModelSetupError(f"BATON_MODEL={spec}: {exc}") from None
    except Exception as exc:  # the provider's client refused (openai.OpenAIError without OPENAI_API_KEY, ...)
        raise ModelSetupError(f"BATON_MODEL={spec}: the {provider} model could not be set up "
                              f"({type(exc).__name__}: {exc})") from None


def _baton_extras() -> set[str]:
    """The extras Baton's package offers (``pip install -e '.[openai]'``). A provider without one was sent to
    ``.[groq]``, which pip answers with a warning and installs nothing for: LangChain's own words name its package."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        return set(metadata("baton").get_all("Provides-Extra") or ())
    except PackageNotFoundError:  # a checkout that was never installed has no extras to offer
        return set()


def _python_model(spec: str) -> BaseChatModel:
    """``python:package.module:factory``: the chat model the factory returns, or a clear start error."""
    module_name, _, factory = spec.removeprefix("python:").rpartition(":")
    if not module_name or not factory:
        raise ModelSetupError(f"BATON_MODEL={spec} must look like python:package.module:factory")
    try:
        build = importlib.import_module(module_name).__dict__[factory]
    except (ImportError, KeyError) as exc:
        raise ModelSetupError(f"BATON_MODEL={spec}: cannot load {module_name}:{factory} ({exc})") from None
    try:
        model = build()
    except Exception as exc:  # the factory is the user's code: whatever it raises, Baton refuses to start
        raise ModelSetupError(f"BATON_MODEL={spec}: {module_name}:{factory} failed ({type(exc).__name__}: {exc})") from None
    if not isinstance(model, BaseChatModel):
        raise ModelSetupError(f"BATON_MODEL={spec}: {module_name}:{factory} returned a {type(model).__name__}, "
                              "which is not a chat model (a LangChain BaseChatModel)")
    return model


def usage_of(message: Any) -> tuple[int, int]:
    """(input, output) tokens a model reply reports, (0, 0) when it reports none."""
    usage = getattr(message, "usage_metadata", None) if isinstance(message, AIMessage) else None
    if not usage:
        return 0, 0
    return int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))


def named(ls_params: Mapping[str, Any]) -> str:
    """``provider:model`` (as ``BATON_MODEL`` and ``models: prices:`` write it) of a chat model as LangChain names it
    to its callbacks: its ``ls_provider`` and ``ls_model_name`` (``ChatOpenAI(model="gpt-4o")``: ``openai:gpt-4o``)."""
    return f"{ls_params.get('ls_provider') or ''}:{ls_params.get('ls_model_name') or ''}"


def model_key(model: BaseChatModel) -> str | None:
    """``named`` of ``model``, ``None`` when it cannot say (a class of one's own whose ``_get_ls_params`` fails)."""
    try:
        return named(model._get_ls_params())
    except Exception:  # the model's own code: its price is then BATON_MODEL's alone, as before
        return None


def cost_of(price: Price | None, input_tokens: int, output_tokens: int) -> float | None:
    """Dollars for these tokens; ``None`` without a price, and without tokens (no model call, or a reply
    that reported no usage): a run that used no model, or whose usage is unknown, has no cost, not $0."""
    if price is None or not (input_tokens or output_tokens):
        return None
    return (input_tokens * price.input + output_tokens * price.output) / 1_000_000


def clipped(text: str, limit: int) -> str:
    """``text`` in at most about ``limit`` characters for a model's prompt: its start and its end (where a
    command's output says how it ended), with how much was cut between them. A runbook's output or a
    long reply in a thread would otherwise fill the model's context, and the provider refuses the call."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[… {len(text) - 2 * half:,} characters cut …]\n{text[-half:]}"
