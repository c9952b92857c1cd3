"""PostgreSQL index writes of many rows as one statement per table, the rows sent as JSON.

Row by row, a batch of 100 transfers is about 600 statement executions (accounts,
transfers, each account's list, requests, chain). Here each table takes one statement whose
one parameter is the rows as a JSON array of arrays, unpacked by `jsonb_array_elements`
(jsonb is parsed once; each `->>` on json text would parse the row again). The standard
library's C encoder makes that parameter, where psycopg would build arrays or rows value by
value in Python (measured in load_tests/RESULTS.md, "Index writes").
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import cache
from typing import Any

from ledger.storage import schema
from ledger.storage.sql import Dialect

_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*)\)$", re.S)
_COLUMN = re.compile(r",\s*(\w+) (TEXT|BIGINT|BOOLEAN)\b")

_encode = json.JSONEncoder(ensure_ascii=False, check_circular=False, allow_nan=False).encode


@cache
def column_types() -> dict[str, dict[str, str]]:
    """Each table's column types, read from our own DDL so that it stays the one source."""
    types: dict[str, dict[str, str]] = {}
    for statement in schema.statements("", "BYTEA"):
        match = _TABLE.match(statement)
        if match:
            found = _COLUMN.findall("," + match[2])
            types[match[1]] = {column: kind.lower() for column, kind in found}
    return types


def _value(table: str, column: str, index: int) -> str:
    """Element `index` of a row `r`, as the column's type (JSON null is SQL NULL)."""
    kind = column_types()[table][column]
    return f"r->>{index}" if kind == "text" else f"(r->>{index})::{kind}"


@cache
def insert_statement(
    dialect: Dialect, table: str, columns: tuple[str, ...], keys: tuple[str, ...] = ()
) -> str:
    """INSERT of rows; with `keys`, an upsert that replaces the row's other columns.

    An upsert's rows must have distinct keys (PostgreSQL refuses to change a row twice in
    one statement): the index writes one row per bank, account and transfer, as it is now.
    """
    values = ", ".join(_value(table, column, i) for i, column in enumerate(columns))
    statement = (
        f"INSERT INTO {dialect.table(table)} ({', '.join(columns)})"
        f" SELECT {values} FROM jsonb_array_elements(%s::jsonb) AS r"
    )
    if keys:
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
        statement += f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    return statement


@cache
def update_statement(
    dialect: Dialect, table: str, columns: tuple[str, ...], keys: tuple[str, ...]
) -> str:
    """UPDATE of existing rows, matched on `keys` (the rows' first columns), of the others.

    An UPDATE that leaves every indexed column as it was can stay on its page (a HOT update,
    given the free space the table's fillfactor keeps), which an upsert's insert attempt
    does not: the accounts' balances change in every batch, their indexed columns rarely.
    """
    assert columns[: len(keys)] == keys, "the keys come first"
    sets = ", ".join(
        f"{column} = {_value(table, column, i)}"
        for i, column in enumerate(columns)
        if column not in keys
    )
    matches = " AND ".join(f"t.{key} = {_value(table, key, i)}" for i, key in enumerate(keys))
    return (
        f"UPDATE {dialect.table(table)} AS t SET {sets}"
        f" FROM jsonb_array_elements(%s::jsonb) AS r WHERE {matches}"
    )


def rows_json(rows: Sequence[Sequence[Any]]) -> tuple[str]:
    """The one parameter of the statements above."""
    return (_encode(rows),)
