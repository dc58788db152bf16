"""Bulk statements for the hot paths (clearing and the ledger).

Many rows per statement, in the caller's transaction, without the ORM and
without compiling SQL per row: on PostgreSQL rows are inserted with ``COPY``
(one round trip, no per-row statement work in the server) and looked up or
updated as one array per column (``unnest``), so that a thousand rows are one
statement and one round trip; on SQLite (in-process, no round trips) they go
through ``executemany``.
Rows are sequences of plain Python values in the order of ``columns``; a
column is ``(name, PostgreSQL type)``.

:func:`plain` and :func:`plain_many` run single statements the same way (the
agent debit's hot path), with ``:name`` parameters on either database.

These functions run on the session's connection, in its transaction, through
the driver's own cursor (no SQLAlchemy result objects per row), and do not
flush the session: callers flush first when pending ORM changes matter.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

Column = tuple[str, str]
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


def plain_many(s: Session, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """:func:`plain` once per row (``executemany``: one round trip on PostgreSQL)."""
    cur = _cursor(s)
    cur.executemany(_driver_sql(cur.dialect.name, sql), rows)


def _driver_sql(dialect: str, sql: str) -> str:
    driver_sql = _DRIVER_SQL.get((dialect, sql))
    if driver_sql is None:
        # psycopg takes %(name)s (and a literal % doubled); sqlite3 takes :name itself
        driver_sql = (_NAMED.sub(r"%(\1)s", sql.replace("%", "%%")) if dialect == "postgresql"
                      else sql)
        _DRIVER_SQL[(dialect, sql)] = driver_sql
    return driver_sql


def _arrays(width: int, rows: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
    """One array per column: as PostgreSQL's array literal (``{1,2,3}``) when the column
    holds only integers, or only strings that need no quoting (card ids, kinds, hex:
    checked on the joined text at once), else a list that psycopg sends as an array
    (element by element, in Python: several microseconds a row for a wide statement)."""
    return tuple(_array([row[i] for row in rows]) for i in range(width))


_ARRAY_UNSAFE = re.compile(r'[\s"{}\\]|^$|,,|,$|^,')  # quoting needed, or an empty element


def _array(values: list[Any]) -> Any:
    kinds = set(map(type, values))
    if kinds == {int}:
        return "{" + ",".join(map(str, values)) + "}"
    if kinds == {str}:
        text = ",".join(values)
        if (text.count(",") == len(values) - 1 and not _ARRAY_UNSAFE.search(text)
                and "NULL" not in text.upper()):
            return "{" + text + "}"
    return values


def _unnest(columns: Sequence[Column]) -> str:
    return "unnest(" + ", ".join(f"%s::{t}[]" for _, t in columns) + ")"


def insert(s: Session, table: str, columns: Sequence[Column], rows: Sequence[Sequence[Any]],
           *, returning: str = "") -> list[tuple[Any, ...]]:
    """INSERT the rows; with ``returning`` (PostgreSQL only) the returned rows, in no
    particular order."""
    if not rows:
        return []
    names = ", ".join(c for c, _ in columns)
    cur = _cursor(s)
    if is_postgres(s):
        if not returning:
            cur.copy(f"COPY {table} ({names}) FROM STDIN", rows)
            return []
        cur.execute(f"INSERT INTO {table} ({names}) SELECT * FROM {_unnest(columns)} "
                    f"RETURNING {returning}", _arrays(len(columns), rows))
        return [tuple(r) for r in cur.fetchall()]
    if returning:
        raise ValueError("RETURNING is for PostgreSQL; assign ids under SQLite's write lock")
    marks = ", ".join("?" for _ in columns)
    cur.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
    return []


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
