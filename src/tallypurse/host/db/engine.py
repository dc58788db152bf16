"""Database engines and the unit of work.

SQLite (a file in the data directory) is the default; PostgreSQL is reached
through a URL (``postgresql+psycopg://user@host:5432/db``). On SQLite every
transaction starts with ``BEGIN IMMEDIATE`` (WAL, synchronous FULL) so that
several processes serialise their writes instead of failing to upgrade a
read lock; on PostgreSQL the services lock what they read-then-write with
``SELECT ... FOR UPDATE`` and let unique constraints decide races.

A :class:`UnitOfWork` is one database transaction: it commits only when asked
to, and anything not committed is rolled back when the block ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from tallypurse.core.errors import BadInput

SQLITE_FILE = "host.sqlite3"
READ_ONLY = "tallypurse_read_only"  # execution option: a transaction that only reads
AFTER_COMMIT = "tallypurse_after_commit"  # Session.info: work to run once the commit is done
IDLE_SINCE = "tallypurse_idle_since"  # pool record info: when the connection was checked in
PING_AFTER_IDLE_S = 5.0  # a pooled connection idle longer than this is pinged before use


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(Path(data_dir) / SQLITE_FILE).resolve()}"


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` as the psycopg 3 driver."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise BadInput(f"not a database URL: {url!r}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("postgresql+psycopg", "sqlite", "sqlite+pysqlite"):
        raise BadInput(f"unsupported database {parsed.drivername!r} (use sqlite or postgresql)")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, *, schema: str | None = None, pool_size: int = 10) -> Engine:
    """An engine for ``url``; ``schema`` puts PostgreSQL tables in that schema."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            read_only = conn.get_execution_options().get(READ_ONLY, False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    connect_args: dict[str, Any] = {}
    if schema:
        connect_args["options"] = f"-csearch_path={schema}"
    engine = create_engine(
        url,
        connect_args=connect_args,
        pool_size=pool_size,
        max_overflow=pool_size,
    )

    # A connection that sat idle in the pool is pinged before use (the server may have
    # restarted meanwhile); one in constant use is not, which saves a round trip per
    # transaction on a busy host.
    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get(IDLE_SINCE, 0.0) <= PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception:
            raise DisconnectionError("the pooled connection is gone") from None

    return engine


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


class Database:
    """An engine and its session factory."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False, autoflush=True)
        self.postgres = is_postgres(engine)

    @classmethod
    def connect(cls, url: str, *, schema: str | None = None) -> Database:
        return cls(make_engine(url, schema=schema))

    def uow(self) -> UnitOfWork:
        return UnitOfWork(self)

    @contextmanager
    def reader(self) -> Iterator[Session]:
        """A session for reading only, rolled back at the end. On SQLite it begins
        deferred (BEGIN), so that it waits for no writer and holds up none (WAL)."""
        with self.engine.connect() as conn:
            conn.execution_options(**{READ_ONLY: True})
            with Session(bind=conn) as session:
                yield session

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def after_commit(session: Session, key: str, work: Callable[[], None]) -> None:
    """Run ``work`` once this session's unit of work has committed (once per ``key``;
    never if it rolls back). It runs outside the transaction, in the committing thread."""
    session.info.setdefault(AFTER_COMMIT, {})[key] = work


class UnitOfWork:
    """One transaction. ``commit()`` makes it durable; leaving the block without
    committing (or with an exception) rolls it back."""

    session: Session

    def __init__(self, db: Database) -> None:
        self.db = db

    def __enter__(self) -> UnitOfWork:
        self.session = self.db.sessions()
        self.session.info.pop(AFTER_COMMIT, None)
        self.session.begin()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.session.in_transaction():
                self.session.rollback()
        finally:
            self.session.close()

    def commit(self) -> None:
        self.session.commit()
        pending: dict[str, Callable[[], None]] = self.session.info.pop(AFTER_COMMIT, None) or {}
        for work in pending.values():
            work()

    def lock(self, stmt: Any) -> Any:
        """``stmt`` with FOR UPDATE on PostgreSQL (SQLite transactions are already exclusive)."""
        return stmt.with_for_update() if self.db.postgres else stmt
