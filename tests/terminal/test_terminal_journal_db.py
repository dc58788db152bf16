"""The journal's SQLite file: pragmas, the numbered migration runner, crash injection."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tallypurse.terminal import journal as journal_mod
from tallypurse.terminal.errors import TerminalError
from tallypurse.terminal.journal import CrashAt, Database, SimulatedCrash


def test_a_new_journal_is_wal_with_synchronous_full_at_the_newest_schema(tmp_path: Path) -> None:
    db = Database(tmp_path / "j.db")
    assert db.one("PRAGMA journal_mode") == "wal"
    assert db.one("PRAGMA synchronous") == 2  # FULL
    assert db.schema_version == journal_mod.MIGRATIONS[-1][0]
    db.close()


def test_migrations_run_once_in_order_and_a_newer_schema_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Database(tmp_path / "j.db").close()
    newest = journal_mod.MIGRATIONS[-1][0]
    extra = (newest + 1, "a test column", ["ALTER TABLE meta ADD COLUMN note TEXT"])
    monkeypatch.setattr(journal_mod, "MIGRATIONS", [*journal_mod.MIGRATIONS, extra])
    db = Database(tmp_path / "j.db")
    assert db.schema_version == newest + 1
    db.close()
    Database(tmp_path / "j.db").close()  # nothing to do the second time
    monkeypatch.setattr(journal_mod, "MIGRATIONS", journal_mod.MIGRATIONS[:-1])
    with pytest.raises(TerminalError, match="newer than this software"):
        Database(tmp_path / "j.db")


def test_a_failing_migration_leaves_the_schema_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Database(tmp_path / "j.db").close()
    newest = journal_mod.MIGRATIONS[-1][0]
    bad = (newest + 1, "broken", ["CREATE TABLE ok (a)", "THIS IS NOT SQL"])
    monkeypatch.setattr(journal_mod, "MIGRATIONS", [*journal_mod.MIGRATIONS, bad])
    with pytest.raises(TerminalError, match=rf"migration {newest + 1} .broken. failed"):
        Database(tmp_path / "j.db")
    conn = sqlite3.connect(tmp_path / "j.db")
    assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == newest
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'ok'").fetchone()[0] == 0
    conn.close()


def test_a_crash_inside_a_transaction_loses_exactly_that_transaction(tmp_path: Path) -> None:
    hook = CrashAt()
    db = Database(tmp_path / "j.db", hook=hook)
    with db.write() as tx:
        Database.set_meta(tx, "a", "1")
    hook.n = hook.count + 1  # the second write of the next transaction
    with pytest.raises(SimulatedCrash), db.write() as tx:
        Database.set_meta(tx, "b", "2")
        Database.set_meta(tx, "c", "3")
    db.close()
    again = Database(tmp_path / "j.db")
    assert (again.get_meta("a"), again.get_meta("b"), again.get_meta("c")) == ("1", None, None)
    again.close()


def test_a_database_error_rolls_back_and_is_reported(tmp_path: Path) -> None:
    db = Database(tmp_path / "j.db")
    with pytest.raises(TerminalError, match="refused a write"), db.write() as tx:
        Database.set_meta(tx, "a", "1")
        tx.execute("INSERT INTO nowhere VALUES (1)")
    assert db.get_meta("a") is None
    db.close()
