"""The run context Baton gives a graph that declares a ``context_schema`` (LangGraph's ``Runtime.context``).

LangGraph's own docs pass a context with each call (``graph.invoke(input, context={"user_id": ...})``) and
read it in a node as ``runtime.context.user_id``, in a LangChain tool as ``ToolRuntime.context``. Baton
passed none: ``runtime.context`` was ``None`` and the run failed on ``'NoneType' object has no attribute``.

Baton fills the schema's fields named as a request's (``bot.kit.Request``): ``platform``, ``channel``,
``thread``, ``user`` (who asked), ``text`` and ``private``, on every start and resume of the run (LangGraph
keeps no context in its checkpoints). A field it cannot fill must have a default.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from langgraph.graph import StateGraph
from langgraph.pregel import Pregel
from pydantic import BaseModel

from bot.kit import Request

GIVEN = tuple(field.name for field in dataclasses.fields(Request))


def schema_of(graph: StateGraph | Pregel) -> type | None:
    """The ``context_schema`` a graph (a builder, a compiled graph, an ``@entrypoint``) declares, or ``None``."""
    schema = getattr(graph, "context_schema", None)
    return schema if isinstance(schema, type) else None


def _fields(schema: type) -> dict[str, bool] | None:
    """The schema's fields, each with whether it must be given; ``None`` for a kind LangGraph does not take."""
    if dataclasses.is_dataclass(schema):
        return {field.name: field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
                for field in dataclasses.fields(schema) if field.init}
    if issubclass(schema, BaseModel):
        return {name: field.is_required() for name, field in schema.model_fields.items()}
    if typing.is_typeddict(schema):
        required = schema.__required_keys__  # type: ignore[attr-defined]
        return {name: name in required for name in (*required, *schema.__optional_keys__)}  # type: ignore[attr-defined]
    return None


def refusal(graph: StateGraph | Pregel) -> str | None:
    """Why Baton cannot give ``graph`` the context its ``context_schema`` asks for, or ``None``."""
    schema = schema_of(graph)
    if schema is None:
        return None
    fields = _fields(schema)
    if fields is None:
        return None  # not a schema LangGraph coerces a dict to: the dict is given as it is
    lacking = [name for name, required in fields.items() if required and name not in GIVEN]
    if not lacking:
        return None
    named = ", ".join(f"`{name}`" for name in lacking)
    return (f"its context_schema {schema.__name__} requires {named}, which Baton cannot give: it fills the fields "
            f"named {', '.join(GIVEN[:-1])} or {GIVEN[-1]} from the request (`user`: who asked); give {named} a "
            "default or one of those names")


class ContextRefused(TypeError):
    """A graph's ``context_schema`` requires a field Baton cannot fill."""


def context_for(graph: StateGraph | Pregel, request: Request) -> dict[str, Any] | None:
    """The context of a run of ``graph`` for ``request`` (LangGraph makes the schema's object of it), or ``None``
    for a graph that declares no ``context_schema``."""
    schema = schema_of(graph)
    if schema is None:
        return None
    why = refusal(graph)
    if why is not None:
        raise ContextRefused(why)
    fields = _fields(schema)
    wanted = GIVEN if fields is None else [name for name in GIVEN if name in fields]
    return {name: getattr(request, name) for name in wanted}
