"""Prepared statements on SQLite: a hot Core statement compiled once, then run on ``sqlite3`` itself.

SQLAlchemy spends ~60 µs of CPU to execute an already compiled statement (execution context,
parameter and result processing, events); ``sqlite3`` runs Baton's small indexed statements in
~10 µs. A request runs ~20 of them, so on the request path this was the larger part of Baton's
own cost (bench/results/request_path.md). A statement marked with ``storage.db.prepared`` is
compiled by SQLAlchemy once per set of parameter names, with the column types' own bind and
result processors taken from it, so values go in and come out exactly as through SQLAlchemy
(timezone-aware datetimes, JSON). PostgreSQL keeps SQLAlchemy's path for the same statements.

What a prepared statement may be: a Core INSERT/UPDATE/DELETE (with or without RETURNING) or a
SELECT of columns or of one table model, without expanding ``IN`` parameters and without Python
column defaults left for SQLAlchemy to fill in (the callers give every column).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import UpdateBase
from sqlmodel.sql.expression import SelectOfScalar

from storage.models import loaded

PREPARED = "baton_prepared"  # the execution option that marks a statement (see ``storage.db.prepared``)
_DIALECT = SQLiteDialect_pysqlite(paramstyle="named")
Processor = Callable[[Any], Any]


class PreparedResult:
    """What Baton's code reads from a result: ``rowcount``, ``first``, ``one``, ``all``."""

    __slots__ = ("rowcount", "_rows")

    def __init__(self, rows: list[Any], rowcount: int = -1) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if not self._rows:
            raise NoResultFound("No row was found when one was required")
        if len(self._rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when exactly one was required")
        return self._rows[0]

    def all(self) -> list[Any]:
        return list(self._rows)


class Plan:
    """One statement compiled for one set of parameter names."""

    __slots__ = ("sql", "_static", "_binds", "_decoders", "_scalar", "_entity", "_names", "_returns_rows")

    def __init__(self, statement: Any, names: frozenset[str]) -> None:
        compiled = statement.compile(dialect=_DIALECT, column_keys=sorted(names))
        if compiled.insert_prefetch or compiled.update_prefetch or "POSTCOMPILE" in compiled.string:
            raise ValueError("a prepared statement needs every column given and no expanding IN parameter: "
                             f"{compiled.string}")
        self.sql = compiled.string
        self._static: dict[str, Any] = {}
        self._binds: list[tuple[str, Processor]] = []
        for name, value in compiled.params.items():
            bind = compiled.binds[name]
            if name not in names:
                if bind.required:
                    raise ValueError(f"prepared statement parameter '{name}' has no value: {compiled.string}")
                self._static[name] = value
            processor = bind.type.dialect_impl(_DIALECT).bind_processor(_DIALECT)
            if processor is not None:
                self._binds.append((name, processor))
        self._scalar = isinstance(statement, SelectOfScalar)
        self._entity: type[Any] | None = None
        columns: Sequence[Any] = ()
        if isinstance(statement, Select):
            columns = list(statement.selected_columns)
            described = statement.column_descriptions
            if len(described) == 1 and isinstance(described[0]["expr"], type):
                self._entity = described[0]["expr"]  # select(Model): rows become model instances
        elif isinstance(statement, UpdateBase):
            columns = [described["expr"] for described in statement.returning_column_descriptions]
        self._returns_rows = isinstance(statement, Select) or bool(columns)
        self._names = [column.key for column in columns]
        self._decoders = [(index, processor) for index, column in enumerate(columns)
                          if (processor := column.type.dialect_impl(_DIALECT).result_processor(_DIALECT, None))]

    def run(self, connection: sqlite3.Connection, params: dict[str, Any] | None) -> PreparedResult:
        values = {**self._static, **params} if params else dict(self._static)
        for name, process in self._binds:
            values[name] = process(values[name])
        cursor = connection.execute(self.sql, values)
        if not self._returns_rows:
            return PreparedResult([], cursor.rowcount)
        rows = cursor.fetchall()
        if self._decoders:
            rows = [self._decoded(row) for row in rows]
        if self._entity is not None:
            entity, names = self._entity, self._names
            return PreparedResult([loaded(entity, dict(zip(names, row))) for row in rows], len(rows))
        if self._scalar:
            return PreparedResult([row[0] for row in rows], len(rows))
        return PreparedResult(rows, len(rows))

    def _decoded(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        values = list(row)
        for index, process in self._decoders:
            values[index] = process(values[index])
        return tuple(values)


_plans: dict[tuple[Any, frozenset[str]], Plan] = {}


def plan_for(statement: Any, params: dict[str, Any] | None) -> Plan:
    """The statement's plan for these parameter names, compiled on first use.

    Prepared statements are module-level constants (or cached builders), so this stays small.
    """
    key = (statement, frozenset(params or ()))
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = Plan(statement, key[1])
    return plan
