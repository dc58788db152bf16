"""Bulk statements for the hot paths (clearing and the ledger).

Many rows per statement, in the caller's transaction, without the ORM and
without compiling SQL per row: on PostgreSQL rows are inserted with ``COPY``
(one round trip, no per-row statement work in the server) and looked up or
updated as one array per column (``unnest``), so that a thousand rows are one
statement and one round trip; on SQLite (in-process, no round trips) they go
through ``executemany``.
Rows are sequences of plain Python values in the order of ``columns``; a
column is ``(name, PostgreSQL type)``.

:func:`plain` runs single statements the same way (the agent debit's hot path), with
``:name`` parameters on either database.

These functions run on the session's connection, in its transaction, through
the driver's own cursor (no SQLAlchemy result objects per row), and do not
flush the session: callers flush first when pending ORM changes matter.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

Column = tuple[str, str]
# PostgreSQL: fewer rows than this go in one INSERT from arrays (a COPY costs about half
# a millisecond of setup, more than a few rows' worth of INSERT), more with COPY.
COPY_FROM = 100
SQLITE_MAX_PARAMS = 30_000  # below SQLite's 32,766 bound variables per statement


def is_postgres(s: Session) -> bool:
    return s.get_bind().dialect.name == "postgresql"


class _Cursor:
    """A driver cursor on the session's connection (its transaction begun) whose errors
    are SQLAlchemy's (``IntegrityError``...), as if the statement had gone through it."""

    def __init__(self, s: Session) -> None:
        self.dialect = s.get_bind().dialect
        self.cursor = s.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]

    def _run(self, method: Any, sql: str, params: Any) -> None:
        error = self.dialect.loaded_dbapi.Error
        try:
            method(sql, params)
        except error as exc:
            raise DBAPIError.instance(sql, None, exc, error) from exc

    def execute(self, sql: str, params: Any) -> None:
        self._run(self.cursor.execute, sql, params)

    def executemany(self, sql: str, params: Any) -> None:
        self._run(self.cursor.executemany, sql, params)

    def copy(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """PostgreSQL: ``COPY ... FROM STDIN`` with these rows."""
        error = self.dialect.loaded_dbapi.Error
        try:
            with self.cursor.copy(sql) as copy:
                for row in rows:
                    copy.write_row(row)
        except error as exc:
            raise DBAPIError.instance(sql, None, exc, error) from exc

    def fetchall(self) -> list[Any]:
        return list(self.cursor.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self.cursor.rowcount)

    def scalar(self) -> Any:
        """The first column of the first row (a statement that returns exactly one row)."""
        row = self.cursor.fetchone()
        if row is None:
            raise LookupError("the statement returned no row")
        return row[0]

    def first(self) -> Any:
        """The first row with its columns as attributes, or None."""
        row = self.cursor.fetchone()
        if row is None:
            return None
        return SimpleNamespace(**{d[0]: v for d, v in zip(self.cursor.description, row,
                                                          strict=True)})


def _cursor(s: Session) -> _Cursor:
    return _Cursor(s)


_NAMED = re.compile(r"(?<![:\w]):(\w+)")
_DRIVER_SQL: dict[tuple[str, str], str] = {}


def plain(s: Session, sql: str, params: Mapping[str, Any]) -> _Cursor:
    """One statement with ``:name`` parameters (as ``sqlalchemy.text`` writes them) on the
    driver's own cursor, in the session's transaction: none of SQLAlchemy's per-statement
    work (compiling, parameter processing, result objects), for the hot paths. Values go
    to the driver as they are (ints, strings, None). Does not flush the session."""
    cur = _cursor(s)
    cur.execute(_driver_sql(cur.dialect.name, sql), params)
    return cur


def _driver_sql(dialect: str, sql: str) -> str:
    driver_sql = _DRIVER_SQL.get((dialect, sql))
    if driver_sql is None:
        # psycopg takes %(name)s (and a literal % doubled); sqlite3 takes :name itself
        driver_sql = (_NAMED.sub(r"%(\1)s", sql.replace("%", "%%")) if dialect == "postgresql"
                      else sql)
        _DRIVER_SQL[(dialect, sql)] = driver_sql
    return driver_sql


def _arrays(width: int, rows: Sequence[Sequence[Any]]) -> tuple[str, ...]:
    """One PostgreSQL array literal per column (cast by the statement: ``%s::bigint[]``)."""
    return tuple(array_literal([row[i] for row in rows]) for i in range(width))


def array_literal(values: Sequence[Any]) -> str:
    """A PostgreSQL array literal (``{1,NULL,"a \\"b\\""}``) of ints, strings, dates and
    None: every string quoted, its backslashes and double quotes escaped, so that any
    text comes back as it was. It is a bound parameter's value, never SQL: this only
    spares psycopg's per-element Python when it turns a list into an array (a third of
    the CPU for a bulk statement's parameters). A column of plain ints, or of strings
    with no quote or backslash (card ids, kinds, hex), is joined in one step."""
    if not values:
        return "{}"
    kinds = set(map(type, values))
    if kinds == {int}:
        return "{" + ",".join(map(str, values)) + "}"
    if kinds == {str}:
        joined = "".join(values)
        if '"' not in joined and "\\" not in joined:
            return '{"' + '","'.join(values) + '"}'
    parts: list[str] = []
    for v in values:
        if v is None:
            parts.append("NULL")
        elif isinstance(v, bool):
            parts.append("t" if v else "f")
        elif isinstance(v, int):
            parts.append(str(int(v)))  # an IntEnum as its number
        else:
            text = v.isoformat() if isinstance(v, dt.date) else v
            if not isinstance(text, str):
                raise TypeError(f"no array literal for {type(v).__name__}")
            if "\\" in text or '"' in text:
                text = text.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'"{text}"')
    return "{" + ",".join(parts) + "}"


def _unnest(columns: Sequence[Column]) -> str:
    return "unnest(" + ", ".join(f"%s::{t}[]" for _, t in columns) + ")"


Part = tuple[str, Sequence[Column], Sequence[Sequence[Any]]]  # (table, columns, rows)


def pg_insert(parts: Sequence[Part], *, returning: str = "") -> tuple[str, list[str]] | None:
    """PostgreSQL: the one statement that inserts these tables' rows, in this order, and its
    parameters (one array literal per column): each table but the last an INSERT in a
    ``WITH`` (foreign keys are checked when the whole statement ends, so a row may refer to
    one inserted beside it); ``returning`` is the last table's. None when a table has
    ``COPY_FROM`` rows or more and no ``returning``: COPY them, table by table."""
    if not returning and any(len(rows) >= COPY_FROM for _, _, rows in parts):
        return None
    statements: list[str] = []
    params: list[str] = []
    for table, columns, rows in parts:
        names = ", ".join(c for c, _ in columns)
        statements.append(f"INSERT INTO {table} ({names}) SELECT * FROM {_unnest(columns)}")
        params.extend(_arrays(len(columns), rows))
    *first, last = statements
    ctes = ("WITH " + ", ".join(f"w{i} AS ({sql})" for i, sql in enumerate(first)) + " "
            if first else "")
    return ctes + last + (f" RETURNING {returning}" if returning else ""), params


def insert(s: Session, table: str, columns: Sequence[Column], rows: Sequence[Sequence[Any]],
           *, returning: str = "") -> list[tuple[Any, ...]]:
    """INSERT the rows; with ``returning`` (PostgreSQL only) the returned rows, in no
    particular order."""
    if not rows:
        return []
    names = ", ".join(c for c, _ in columns)
    cur = _cursor(s)
    if is_postgres(s):
        statement = pg_insert([(table, columns, rows)], returning=returning)
        if statement is None:
            cur.copy(f"COPY {table} ({names}) FROM STDIN", rows)
            return []
        cur.execute(*statement)
        return [tuple(r) for r in cur.fetchall()] if returning else []
    if returning:
        raise ValueError("RETURNING is for PostgreSQL; assign ids under SQLite's write lock")
    marks = ", ".join("?" for _ in columns)
    cur.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
    return []


def insert_all(s: Session, tables: Sequence[Part]) -> None:
    """:func:`insert` into several tables, in this order: on PostgreSQL one statement
    (:func:`pg_insert`), one round trip; elsewhere, or for many rows, table by table."""
    parts = [(t, c, r) for t, c, r in tables if r]
    statement = pg_insert(parts) if parts and is_postgres(s) else None
    if statement is None:
        for table, columns, rows in parts:
            insert(s, table, columns, rows)
        return
    _cursor(s).execute(*statement)


def update(s: Session, table: str, key: Column, columns: Sequence[tuple[str, str, str]],
           rows: Sequence[Sequence[Any]]) -> None:
    """UPDATE ``table`` row by row: each row is (key value, value per column). A column is
    (name, PostgreSQL type, expression) where the expression uses ``{t}`` for the table's
    current value and ``{v}`` for the new one (``"{v}"`` sets it, ``"{t} + {v}"`` adds)."""
    if not rows:
        return
    cur = _cursor(s)
    if is_postgres(s):
        names = [key[0]] + [c for c, _, _ in columns]
        sets = ", ".join(f"{c} = " + e.format(t=f"{table}.{c}", v=f"v.{c}")
                         for c, _, e in columns)
        source = _unnest([key, *((c, t) for c, t, _ in columns)])
        cur.execute(
            f"UPDATE {table} SET {sets} FROM {source} AS v({', '.join(names)}) "
            f"WHERE {table}.{key[0]} = v.{key[0]}",
            _arrays(len(names), rows))
        return
    sets = ", ".join(f"{c} = " + e.format(t=c, v="?") for c, _, e in columns)
    cur.executemany(f"UPDATE {table} SET {sets} WHERE {key[0]} = ?",
                    [(*r[1:], r[0]) for r in rows])


def _chunks(rows: Sequence[Sequence[Any]], width: int) -> Iterator[Sequence[Sequence[Any]]]:
    size = max(1, SQLITE_MAX_PARAMS // max(width, 1))
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


def select_with(s: Session, columns: Sequence[Column], rows: Sequence[Sequence[Any]],
                query: str) -> list[tuple[Any, ...]]:
    """Run ``query``, which reads a table ``v`` with ``columns`` holding ``rows`` (joined
    against, typically): ``WITH v(columns) AS (the rows) <query>``."""
    if not rows:
        return []
    names = ", ".join(c for c, _ in columns)
    cur = _cursor(s)
    if is_postgres(s):
        sql = f"WITH v({names}) AS (SELECT * FROM {_unnest(columns)}) {query}"
        cur.execute(sql, _arrays(len(columns), rows))
        return [tuple(r) for r in cur.fetchall()]
    out: list[tuple[Any, ...]] = []
    one = "(" + ", ".join("?" for _ in columns) + ")"
    for part in _chunks(rows, len(columns)):
        sql = f"WITH v({names}) AS (VALUES {', '.join(one for _ in part)}) {query}"
        cur.execute(sql, [x for r in part for x in r])
        out += cur.fetchall()
    return out
