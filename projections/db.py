"""The views' database: one small interface over SQLite (sqlite3) and PostgreSQL (psycopg 3).

Views live in the same database as the events by default (LEDGER_DATABASE_URL), in their own
tables. Every write goes through `transaction()`, so a batch of view rows and the position it
reached commit together or not at all. SQL is written once with `?` placeholders and
translated for psycopg.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg
from psycopg import sql as pg_sql
from psycopg_pool import ConnectionPool

from ledger.config import ConfigError
from ledger.storage import bulk

Row = tuple[Any, ...]
Params = Sequence[Any]


class Cursor(Protocol):
    """What a projection may do inside a transaction."""

    def execute(self, statement: str, params: Params = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        ...

    def executemany(self, statement: str, rows: Sequence[Params]) -> None: ...

    def query(self, statement: str, params: Params = ()) -> list[Row]: ...


class ViewDatabase(Protocol):
    dialect: str

    def transaction(self) -> Any: ...

    def query(self, statement: str, params: Params = ()) -> list[Row]: ...

    def close(self) -> None: ...


class _SQLiteCursor:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, statement: str, params: Params = ()) -> int:
        return self._connection.execute(statement, params).rowcount

    def executemany(self, statement: str, rows: Sequence[Params]) -> None:
        self._connection.executemany(statement, rows)

    def query(self, statement: str, params: Params = ()) -> list[Row]:
        return list(self._connection.execute(statement, params).fetchall())


class SQLiteViews:
    """One connection, shared under a lock: SQLite takes one writer at a time anyway."""

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self._connection = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        if path != ":memory:":
            self._connection.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL loses at most the last commits on power loss, never the
            # file: views are derived, and their position commits with their rows.
            self._connection.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield _SQLiteCursor(self._connection)
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def query(self, statement: str, params: Params = ()) -> list[Row]:
        with self._lock:
            return list(self._connection.execute(statement, params).fetchall())

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def _pg(statement: str) -> str:
    # The views' SQL uses no literal '?' or '%', so this translation is exact.
    assert "%" not in statement, statement
    return statement.replace("?", "%s")


# Keys one "IN (...)" lookup names at most where the cursor has no array parameters (SQLite).
keys_per_lookup_max = 500


def insert_rows(
    cursor: Cursor,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Params],
    types: Sequence[str] | None = None,
) -> None:
    """Append rows to a table: by COPY where the cursor offers it (PostgreSQL), else by
    executemany. Only for rows that need no ON CONFLICT clause: a conflict fails the batch.
    The columns' SQL types, if given, spare COPY from working out each value's type."""
    if not rows:
        return
    copy_rows = getattr(cursor, "copy_rows", None)
    if copy_rows is not None:
        copy_rows(table, columns, rows, types)
        return
    placeholders = ", ".join("?" for _ in columns)
    cursor.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})", rows)


def upsert_rows(
    cursor: Cursor,
    table: str,
    columns: Sequence[tuple[str, str]],
    key_columns: Sequence[str],
    rows: Sequence[Params],
) -> None:
    """Insert rows, or update every non-key column of the row with the same key. `columns`
    are (name, SQL type) pairs. In bulk where the cursor offers it (PostgreSQL: COPY to a
    staging table, then one INSERT ... SELECT), else by executemany."""
    if not rows:
        return
    upsert = getattr(cursor, "upsert_rows", None)
    if upsert is not None:
        upsert(table, columns, key_columns, rows)
        return
    names = [name for name, _ in columns]
    cursor.executemany(
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"
        f" {_on_conflict_update(names, key_columns)}",
        rows,
    )


def add_rows(
    cursor: Cursor,
    table: str,
    columns: Sequence[tuple[str, str]],
    key_columns: Sequence[str],
    rows: Sequence[Params],
) -> None:
    """Add each row's non-key values to the row with its key, inserting the rows not there
    yet (counters written as deltas). The rows' keys must be distinct; `columns` are (name,
    SQL type) pairs in the rows' order. One statement where the cursor offers it
    (PostgreSQL), else executemany."""
    if not rows:
        return
    add = getattr(cursor, "add_rows", None)
    if add is not None:
        add(table, columns, key_columns, rows)
        return
    names = [name for name, _ in columns]
    cursor.executemany(
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"
        f" {_on_conflict_add(table, names, key_columns)}",
        rows,
    )


def _on_conflict_add(table: str, names: Sequence[str], key_columns: Sequence[str]) -> str:
    sums = ", ".join(
        f"{name} = {table}.{name} + excluded.{name}" for name in names if name not in key_columns
    )
    return f"ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET {sums}"


def _on_conflict_update(names: Sequence[str], key_columns: Sequence[str]) -> str:
    updates = ", ".join(f"{name} = excluded.{name}" for name in names if name not in key_columns)
    return f"ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET {updates}"


def select_in(
    cursor: Cursor, select: str, params: Params, column: str, keys: Sequence[Any]
) -> list[Row]:
    """Rows of `select` (which ends in WHERE or AND) restricted to `column` IN keys: one
    statement with an array where the cursor offers it (PostgreSQL), else chunks of IN lists."""
    if not keys:
        return []
    select_any = getattr(cursor, "select_any", None)
    if select_any is not None:
        rows: list[Row] = select_any(f"{select} {column} = ANY(?)", params, keys)
        return rows
    rows = []
    for start in range(0, len(keys), keys_per_lookup_max):
        chunk = keys[start : start + keys_per_lookup_max]
        marks = ", ".join("?" for _ in chunk)
        rows += cursor.query(f"{select} {column} IN ({marks})", (*params, *chunk))
    return rows


class _PostgresCursor:
    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    def execute(self, statement: str, params: Params = ()) -> int:
        self._cursor.execute(_pg(statement), params, prepare=True)
        return self._cursor.rowcount

    def executemany(self, statement: str, rows: Sequence[Params]) -> None:
        if rows:
            self._cursor.executemany(_pg(statement), rows)

    def query(self, statement: str, params: Params = ()) -> list[Row]:
        self._cursor.execute(_pg(statement), params, prepare=True)
        return list(self._cursor.fetchall())

    def copy_rows(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Params],
        types: Sequence[str] | None = None,
    ) -> None:
        """COPY rows into a table: far fewer round trips and less parsing than INSERTs."""
        statement = pg_sql.SQL("COPY {} ({}) FROM STDIN").format(
            pg_sql.Identifier(table), pg_sql.SQL(", ").join(map(pg_sql.Identifier, columns))
        )
        with self._cursor.copy(statement) as copy:
            if types is not None:
                copy.set_types(types)
            for row in rows:
                copy.write_row(row)

    def upsert_rows(
        self,
        table: str,
        columns: Sequence[tuple[str, str]],
        key_columns: Sequence[str],
        rows: Sequence[Params],
    ) -> None:
        """COPY the rows into a session-local staging table, then move them with one
        INSERT ... SELECT ... ON CONFLICT: far less work than binding each value. The move
        empties the staging table, so it holds nothing between calls."""
        names = [name for name, _ in columns]
        stage = f"stage_{table}"
        self._cursor.execute(
            pg_sql.SQL(
                "CREATE TEMPORARY TABLE IF NOT EXISTS {} (LIKE {}) ON COMMIT DELETE ROWS"
            ).format(pg_sql.Identifier(stage), pg_sql.Identifier(table))
        )
        self.copy_rows(stage, names, rows, [sql_type for _, sql_type in columns])
        listed = ", ".join(names)
        self.execute(
            f"WITH staged AS (DELETE FROM {stage} RETURNING {listed})"
            f" INSERT INTO {table} ({listed}) SELECT {listed} FROM staged"
            f" {_on_conflict_update(names, key_columns)}"
        )

    def add_rows(
        self,
        table: str,
        columns: Sequence[tuple[str, str]],
        key_columns: Sequence[str],
        rows: Sequence[Params],
    ) -> None:
        """The rows as one jsonb array of arrays, unpacked by one INSERT ... SELECT: a page
        of a batch load brings hundreds of counter rows, each bound and executed on its own
        by executemany, which made PostgreSQL the busiest part of the machine."""
        names = [name for name, _ in columns]
        values = ", ".join(
            f"(r->>{index})::{sql_type}" for index, (_, sql_type) in enumerate(columns)
        )
        self.execute(
            f"INSERT INTO {table} ({', '.join(names)})"
            f" SELECT {values} FROM jsonb_array_elements(?::jsonb) AS r"
            f" {_on_conflict_add(table, names, key_columns)}",
            bulk.rows_json(rows),
        )

    def select_any(self, statement: str, params: Params, keys: Sequence[Any]) -> list[Row]:
        return self.query(statement, (*params, list(keys)))


class PostgresViews:
    dialect = "postgresql"

    def __init__(self, conninfo: str, schema: str, pool_size_max: int = 8) -> None:
        def configure(connection: psycopg.Connection[Any]) -> None:
            if schema:
                connection.execute(
                    pg_sql.SQL("SET search_path TO {}").format(pg_sql.Identifier(schema))
                )
            # Views are derived from the log, and each view batch commits its rows with the
            # position it reached: a crash can lose the last few view commits (never tear
            # one), and the runner applies those events again. Not waiting for the WAL
            # flush keeps the views' commits out of the queue of the ledger's own, which
            # do wait: several projections commit for every page of events they follow.
            connection.execute("SET synchronous_commit TO off")
            connection.commit()

        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            conninfo, min_size=1, max_size=pool_size_max, configure=configure, open=True
        )

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with (
            self._pool.connection() as connection,
            connection.transaction(),
            connection.cursor() as cursor,
        ):
            yield _PostgresCursor(cursor)

    def query(self, statement: str, params: Params = ()) -> list[Row]:
        with self._pool.connection() as connection, connection.cursor() as cursor:
            cursor.execute(_pg(statement), params, prepare=True)
            return list(cursor.fetchall())

    def close(self) -> None:
        self._pool.close()


def open_views(database_url: str) -> SQLiteViews | PostgresViews:
    """The views' database for a LEDGER_DATABASE_URL (memory:// keeps views in memory too)."""
    url = urlsplit(database_url)
    if url.scheme == "memory":
        return SQLiteViews(":memory:")
    if url.scheme == "sqlite":
        path = unquote(url.path[1:] if url.path.startswith("/") else url.path)
        return SQLiteViews(path)
    if url.scheme in ("postgresql", "postgres"):
        schema = parse_qs(url.query).get("schema", [""])[0]
        conninfo = psycopg.conninfo.make_conninfo(
            dbname=unquote(url.path.lstrip("/")),
            host=url.hostname or "127.0.0.1",
            port=url.port or 5432,
            user=unquote(url.username or "postgres"),
            password=unquote(url.password or ""),
            connect_timeout=5,
        )
        return PostgresViews(conninfo, schema)
    raise ConfigError(f"no views database for URL scheme {url.scheme!r}")
