"""The operator audit log's hash chain: appended one link at a time whatever the
concurrency, verified by ``tallypurse host audit``, and a changed, removed or
added row named by its id. On SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from tallypurse.cli.main import app
from tallypurse.core.errors import BadInput
from tallypurse.host.audit import GENESIS, row_hash
from tallypurse.host.db.engine import Database
from tallypurse.host.db.migrate import head_revision, upgrade
from tallypurse.host.db.models import AuditHead, AuditRecord
from tallypurse.host.errors import INTERNAL, HostError
from tallypurse.host.service import Host
from tallypurse.lab import Lab

from .test_cli import db_url

runner = CliRunner()
SQLITE_TRIGGER = """CREATE TRIGGER audit_log_no_{op} BEFORE {OP} ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"""


@contextmanager
def triggers_off(db: Database) -> Iterator[sa.Connection]:
    """What someone with the database's keys could do: hold off the append-only triggers."""
    with db.engine.begin() as conn:
        if db.postgres:
            conn.execute(sa.text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
        else:
            conn.execute(sa.text("DROP TRIGGER audit_log_no_update"))
            conn.execute(sa.text("DROP TRIGGER audit_log_no_delete"))
        yield conn
        if db.postgres:
            conn.execute(sa.text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))
        else:
            for op in ("update", "delete"):
                conn.execute(sa.text(SQLITE_TRIGGER.format(op=op, OP=op.upper())))


def fill(host: Host, n: int) -> list[int]:
    return [host.audit.record(actor=f"olga{i}", role="operator", action="card.block",
                              target=f"{i:016x}", reason=f"lost, call {i}",
                              detail=f"status blocked {i}", source="test") for i in range(n)]


def test_each_row_links_to_the_one_before_and_the_chain_verifies(host: Host) -> None:
    assert host.audit.verify().to_json() == {"ok": True, "records": 0, "first_broken": None,
                                             "problem": "", "head": GENESIS}
    ids = fill(host, 5)
    assert ids == [1, 2, 3, 4, 5]
    with host.uow() as uow:
        rows = uow.session.execute(sa.select(AuditRecord.prev_hash, AuditRecord.hash)
                                   .order_by(AuditRecord.id)).all()
        head = uow.session.execute(sa.select(AuditHead.last_id, AuditHead.last_hash)).one()
    assert rows[0].prev_hash == GENESIS
    for before, row in itertools.pairwise(rows):
        assert row.prev_hash == before.hash
    assert tuple(head) == (5, rows[-1].hash)
    report = host.audit.verify()
    assert (report.ok, report.records, report.first_broken, report.head) == (
        True, 5, None, rows[-1].hash)
    with pytest.raises(BadInput):
        host.audit.record(actor="olga", role="operator", action="x", outcome="maybe")


def test_a_changed_field_is_reported_with_the_row_id(host: Host) -> None:
    fill(host, 6)
    with triggers_off(host.db) as conn:
        conn.execute(sa.update(AuditRecord).where(AuditRecord.id == 4)
                     .values(reason="nothing happened"))
    report = host.audit.verify()
    assert not report.ok and report.first_broken == 4
    assert "id 4" in report.problem and "altered" in report.problem


def test_a_rehashed_row_still_breaks_the_link_of_the_next(host: Host) -> None:
    """Whoever recomputes the changed row's own hash breaks the next row's prev_hash."""
    fill(host, 6)
    with host.uow() as uow:
        row = uow.session.get(AuditRecord, 3)
        assert row is not None
        values = {f: getattr(row, f) for f in ("id", "at", "actor", "role", "action", "target",
                                                "reason", "outcome", "detail", "source")}
        prev_hash = row.prev_hash
    values["actor"] = "mallory"
    with triggers_off(host.db) as conn:
        conn.execute(sa.update(AuditRecord).where(AuditRecord.id == 3).values(
            actor="mallory", hash=row_hash(prev_hash, values)))
    report = host.audit.verify()
    assert not report.ok and report.first_broken == 4 and "prev_hash" in report.problem


@pytest.mark.parametrize("deleted", [1, 3, 6])
def test_a_deleted_row_is_reported_with_its_id(host: Host, deleted: int) -> None:
    fill(host, 6)
    with triggers_off(host.db) as conn:
        conn.execute(sa.delete(AuditRecord).where(AuditRecord.id == deleted))
    report = host.audit.verify()
    assert not report.ok and report.first_broken == deleted, report
    assert report.records == (deleted if deleted < 6 else 5)


def test_a_row_slipped_in_past_the_service_is_reported(host: Host) -> None:
    fill(host, 3)
    with host.uow() as uow:
        last = uow.session.get(AuditRecord, 3)
        assert last is not None
        values = {"id": 4, "at": 0, "actor": "mallory", "role": "operator",
                  "action": "card.unblock", "target": "x", "reason": "", "outcome": "done",
                  "detail": "", "source": ""}
        uow.session.add(AuditRecord(**values, prev_hash=last.hash,
                                    hash=row_hash(last.hash, values)))
        uow.commit()
    report = host.audit.verify()
    assert not report.ok and report.first_broken == 4 and "head" in report.problem


def test_a_deleted_head_is_reported_and_not_made_again_by_the_next_append(
        host: Host) -> None:
    """Cutting rows off the end and deleting the head with them must not be healed by the
    next operator action: the append refuses, and the audit names the missing head."""
    fill(host, 3)
    with host.uow() as uow:
        uow.session.execute(sa.delete(AuditHead))
        uow.commit()
    report = host.audit.verify()
    assert not report.ok and "head" in report.problem
    with pytest.raises(HostError) as refused:
        host.audit.record(actor="olga", role="operator", action="card.block", target="x")
    assert refused.value.what is INTERNAL and "head" in refused.value.message
    assert host.audit.count() == 3  # nothing appended
    with host.uow() as uow:
        assert uow.session.execute(sa.select(AuditHead)).first() is None


def test_concurrent_appenders_never_fork_the_chain(host: Host) -> None:
    """Eight threads, each on its own connection, append at once: one chain, ids 1..N."""
    threads, each = 8, 25
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def appender(n: int) -> None:
        try:
            start.wait()
            for i in range(each):
                host.audit.record(actor=f"worker{n}", role="operator", action="settlement.run",
                                  target=str(i), source="test")
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=appender, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    with host.uow() as uow:
        rows = uow.session.execute(sa.select(AuditRecord.id, AuditRecord.prev_hash,
                                             AuditRecord.hash).order_by(AuditRecord.id)).all()
    assert [r.id for r in rows] == list(range(1, threads * each + 1))
    assert len({r.prev_hash for r in rows}) == len(rows)  # no two rows share a predecessor
    report = host.audit.verify()
    assert report.ok and report.records == threads * each


def test_host_audit_checks_the_chain_too_and_exits_1_when_broken(host: Host,
                                                                  tmp_path: Path) -> None:
    fill(host, 4)
    args = ["host", "audit", "--json", "--db", db_url(host.db), "--data-dir",
            str(tmp_path / "ops")]
    env = {"TALLYPURSE_KEYSTORE_PASSPHRASE": "a long passphrase"}
    ok = runner.invoke(app, args, env=env)
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["audit_log"] | {"head": ""} == {
        "ok": True, "records": 4, "first_broken": None, "problem": "", "head": ""}
    with triggers_off(host.db) as conn:
        conn.execute(sa.delete(AuditRecord).where(AuditRecord.id == 2))
    broken = runner.invoke(app, args, env=env)
    assert broken.exit_code == 1
    report = json.loads(broken.output)
    assert report["balanced"] is True  # the ledger is fine: the chain alone fails
    assert report["audit_log"]["ok"] is False and report["audit_log"]["first_broken"] == 2
    text = runner.invoke(app, args[:2] + args[3:], env=env)
    assert text.exit_code == 1 and "chain BROKEN at id 2" in text.output


# --- the migration chains the rows already there ----------------------------------------------
ROWS = [(i, 1_700_000_000 + i, f"olga{i}", "operator", "card.block", f"{i:016x}", "lost",
         "done", "", "console") for i in (1, 2, 4, 7)]  # gaps, as a sequence leaves them



def test_the_migration_chains_the_rows_already_there(at_0004: Database, lab: Lab) -> None:
    db = at_0004
    with db.engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO audit_log (id, at, actor, role, action, target, reason, outcome, "
            "detail, source) VALUES (:id, :at, :actor, :role, :action, :target, :reason, "
            ":outcome, :detail, :source)"),
            [dict(zip(("id", "at", "actor", "role", "action", "target", "reason", "outcome",
                       "detail", "source"), r, strict=True)) for r in ROWS])
    assert upgrade(db) == head_revision()
    migrated = Host(db, lab.keystore)
    report = migrated.audit.verify()
    assert report.ok and report.records == 4, report
    assert migrated.audit.record(actor="olga", role="operator", action="card.unblock") == 8
    assert migrated.audit.verify().ok
    with db.engine.begin() as conn, pytest.raises(sa.exc.DBAPIError):  # triggers back on
        conn.execute(sa.text("DELETE FROM audit_log"))
