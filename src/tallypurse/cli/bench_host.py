"""`tallypurse bench clearing` and `tallypurse bench agent`: the host's two speed aims.

Both print their figure beside the floor that this machine allows for the same
work, measured in the same run (DESIGN.md section 10):

* clearing: real card-signed debits (every card has its own P-256 key, certified
  by the issuer root, and signs each of its events as the purse applet does;
  every journal entry and batch is signed by a real SAM) uploaded in day-end
  batches by ``--processes`` processes at once, into the database with their
  ledger postings; the floor is the same signatures verified alone by the same
  number of processes.
* agent: split remainders forwarded over real HTTP (RFC 9421, signed by real
  SAMs) to a ``tallypurse host serve`` on 127.0.0.1 with PostgreSQL; the floor is
  the same database statements issued directly, with the same driver.

Each bench works in a database of its own: a temporary SQLite file, or a
private schema in the PostgreSQL database named by ``--db`` that is dropped at
the end (nothing else in that database is touched).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from .benchutil import percentile

DAY = 86400
TEN_MILLION = 10_000_000
EUR = 978
START_BALANCE = 90_000  # what each card holds at the start of the day (cap 100,000)
LAB_PASSPHRASE = "lab"

DbOpt = Annotated[str | None, typer.Option(
    "--db", help="PostgreSQL URL (a private schema is made there and dropped after); "
                 "default: SQLite in a temporary directory.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


# --- a database of the bench's own ----------------------------------------------------------
@dataclass(frozen=True)
class BenchDb:
    url: str  # what Database.connect takes
    schema: str | None  # PostgreSQL: the private schema

    @property
    def kind(self) -> str:
        return "postgresql" if self.schema else "sqlite"

    def server_url(self) -> str:
        """A URL that selects the schema by itself (for a server in another process)."""
        if not self.schema:
            return self.url
        from sqlalchemy.engine import make_url

        from tallypurse.host.db.engine import normalise_url

        url = make_url(normalise_url(self.url))
        url = url.update_query_dict({"options": f"-csearch_path={self.schema}"})
        return url.render_as_string(hide_password=False)


@contextmanager
def bench_database(db_url: str | None, tmp: Path) -> Iterator[BenchDb]:
    """A migrated database for one bench run; dropped afterwards."""
    import sqlalchemy as sa

    from tallypurse.host.db.engine import Database, normalise_url
    from tallypurse.host.db.migrate import upgrade

    from .keys import fail

    if db_url is None:
        url = f"sqlite:///{tmp / 'bench.sqlite3'}"
        db = Database.connect(url)
        upgrade(db)
        db.dispose()
        yield BenchDb(url, None)
        return
    url = normalise_url(db_url)
    if not url.startswith("postgresql"):
        fail("--db takes a PostgreSQL URL (SQLite is the default, in a temporary directory)")
    schema = f"tp_bench_{os.getpid()}_{secrets.token_hex(3)}"
    admin = sa.create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    except sa.exc.OperationalError as exc:
        fail(f"PostgreSQL at {db_url} does not answer: {exc.__class__.__name__}")
    try:
        db = Database.connect(url, schema=schema)
        upgrade(db)
        db.dispose()
        yield BenchDb(url, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def _open_host(bdb: BenchDb, lab_dir: Path, now: int, data_dir: Path) -> Any:
    from tallypurse.host.config import HostSettings
    from tallypurse.host.db.engine import Database
    from tallypurse.host.service import Host
    from tallypurse.keystore.software import SoftwareKeyStore

    keys = SoftwareKeyStore.open(lab_dir / "keystore", LAB_PASSPHRASE)
    return Host(Database.connect(bdb.url, schema=bdb.schema), keys,
                settings=HostSettings(data_dir=data_dir), clock=lambda: now)


# --- card keys and card-signed events --------------------------------------------------------
def _sign_cards(job: tuple[list[bytes], list[list[bytes]]]) -> list[tuple[bytes, list[bytes]]]:
    """For each card (a 40-byte key seed): its public key and its events' TACs."""
    from tallypurse.core import crypto

    seeds, events = job
    out = []
    for seed, datas in zip(seeds, events, strict=True):
        key = crypto.private_key_from_seed(seed)
        out.append((crypto.encode_public_key(key.public_key()),
                    [crypto.sign(key, d) for d in datas]))
    return out


def _verify_share(job: tuple[list[tuple[bytes, bytes, bytes]], int]) -> float:
    """The floor: verify (public key, TAC, signed data) triples; seconds taken."""
    from tallypurse.core import crypto

    triples, _ = job
    keys = {pub: crypto.decode_public_key(pub) for pub, _, _ in triples}
    t0 = time.perf_counter()
    for pub, tac, data in triples:
        if not crypto.verify(keys[pub], tac, data):
            raise AssertionError("a TAC did not verify")
    return time.perf_counter() - t0


@dataclass
class ClearingSetup:
    batches: list[list[str]]  # per uploading process: BatchUpload JSON documents
    triples: list[tuple[bytes, bytes, bytes]]  # every debit's (public key, TAC, signed data)
    cards: int
    terminals: int
    merchants: int
    generate_s: float


def _prepare_clearing(host: Any, lab: Any, tmp: Path, *, events: int, processes: int,
                      cards: int, terminals: int, batch_size: int, now: int,
                      seed: int) -> ClearingSetup:
    """Cards (keys certified by the issuer, registered with a cleared load each),
    merchants, enrolled terminals with real SAMs, and the day's batches."""
    import sqlalchemy as sa

    from tallypurse.core import crypto
    from tallypurse.core.hostapi import BatchUpload, EnrolRequest, JournalEntry, Totals, canonical
    from tallypurse.core.httpsig import batch_signed_bytes
    from tallypurse.core.messages import CardEvent
    from tallypurse.core.protocol import CertRole, EventKind
    from tallypurse.core.samproto import PURPOSE_BATCH, PURPOSE_JOURNAL
    from tallypurse.core.cert import KeyRef
    from tallypurse.host.clearing import Clearing
    from tallypurse.host.db.models import Account, Card, CardEventRow, table
    from tallypurse.host.ledger import Acct, Entry, Kind, Ledger
    from tallypurse.sam import Sam

    started = time.perf_counter()
    rng = random.Random(seed)
    merchants = max(1, terminals // 5)
    mids = [host.registry.create_merchant(f"Bench merchant {i}", iban="DE89370400440532013000",
                                          bic="COBADEFFXXX", fee_basis_points=100,
                                          merchant_id=f"bench-m{i:04d}")
            for i in range(merchants)]
    sams: list[Any] = []
    for i in range(terminals):
        tid = f"{0x7465_0000_0000_0000 + i:016x}"
        _, token = host.tms.create_terminal(mids[i % merchants], tid)
        sam = Sam.create(tmp / f"sam-{i}.json", "sam", terminal_id=bytes.fromhex(tid))
        answer = host.tms.enrol(EnrolRequest(terminal_id=tid,
                                             csr=sam.certificate_request().hex(), token=token))
        sam.install_certificate(bytes.fromhex(answer.certificate),
                                {KeyRef.decode(k.encode()): bytes.fromhex(v)
                                 for k, v in answer.roots.items()}, at=now)
        sams.append(sam)

    # The day: each debit by a random card at a random terminal, in time order.
    serials = [(0x3000_0000_0000_0000 + seed * 10_000_000 + i).to_bytes(8, "big")
               for i in range(cards)]
    atc = [0] * cards
    balance = [START_BALANCE] * cards
    day_start = now - DAY
    seeds = [rng.randbytes(40) for _ in range(cards)]
    per_card: list[list[CardEvent]] = [[] for _ in range(cards)]
    loads = []
    for c, serial in enumerate(serials):
        loads.append(CardEvent(int(EventKind.LOAD), serial, 0, 1, START_BALANCE, 0, EUR, 0, 0,
                               START_BALANCE, b"\0" * 8, 0, day_start - DAY, rng.randbytes(8),
                               rng.randbytes(8), 0xFF))
        per_card[c].append(loads[-1])
    day: list[tuple[int, int, CardEvent]] = []  # (terminal, card, event)
    tseq = [0] * terminals
    for n in range(events):
        c = rng.randrange(cards)
        t = rng.randrange(terminals)
        amount = rng.randrange(50, 400)
        if balance[c] < amount:
            amount = balance[c]
        atc[c] += 1
        tseq[t] += 1
        e = CardEvent(int(EventKind.DEBIT), serials[c], atc[c], 1, amount, 0, EUR, 0,
                      balance[c], balance[c] - amount, bytes.fromhex(sams[t].terminal_id.hex()),
                      tseq[t], day_start + n * DAY // max(events, 1), rng.randbytes(8),
                      rng.randbytes(8), 0xFF)
        balance[c] -= amount
        per_card[c].append(e)
        day.append((t, c, e))

    # Card keys and TACs, in as many processes as the bench uses.
    datas = [[e.signed_data() for e in evs] for evs in per_card]
    chunk = max(1, cards // (processes * 4))
    jobs = [(seeds[i:i + chunk], datas[i:i + chunk]) for i in range(0, cards, chunk)]
    with mp.get_context("spawn").Pool(processes) as pool:
        signed = [r for part in pool.map(_sign_cards, jobs) for r in part]
    publics = [pub for pub, _ in signed]
    tacs = {id(e): tac for evs, (_, ts) in zip(per_card, signed, strict=True)
            for e, tac in zip(evs, ts, strict=True)}

    # Register the cards (their certificates issued by the issuer root) with yesterday's load
    # cleared, in bulk: the measured part is the day's debits.
    ks = lab.keystore
    not_after = now + 4 * 365 * DAY
    with host.uow() as uow:
        s = uow.session
        rows = []
        for serial, pub in zip(serials, publics, strict=True):
            cert = ks.issue_certificate(holder=serial, role=CertRole.CARD, public_key=pub,
                                        not_before=day_start - 2 * DAY, not_after=not_after)
            rows.append({"card_id": serial.hex(), "cardholder_id": None, "status": "active",
                         "currency": "EUR", "certificate": cert.encode().hex(),
                         "public_key": pub.hex(), "issued": day_start - 2 * DAY,
                         "expiry": not_after, "cap": 100_000, "app_key_version": 1,
                         "writeback_seq": 0, "online_counter": 0, "credit_version": 0,
                         "contiguous_seqno": 1, "max_seqno": 1, "gap_since": None,
                         "blacklisted": False, "replaced_by": None})
        for i in range(0, len(rows), 5000):
            s.execute(sa.insert(table(Card)), rows[i:i + 5000])
            s.execute(sa.insert(table(Account)), [
                {"kind": "purse_float", "owner": r["card_id"], "currency": "EUR", "balance": 0,
                 "created": now} for r in rows[i:i + 5000]])
        from tallypurse.host.clearing import Incoming  # noqa: F401 - the row layout below
        from tallypurse.core.messages import SignedEvent

        event_rows = []
        entries = []
        for e in loads:
            signed_event = SignedEvent(e, tacs[id(e)])
            cid = e.card_id.hex()
            event_rows.append({
                "card_id": cid, "seqno": 1, "kind": e.kind, "atc": 0, "load_counter": 1,
                "amount": e.amount, "split": 0, "currency": "EUR", "tx_type": 0,
                "balance_before": 0, "balance_after": e.balance_after,
                "terminal_id": "00" * 8, "terminal_seq": 0, "time": e.time,
                "record": signed_event.to_bytes().hex(), "cleared_at": now - DAY})
            entries.append(Entry("clear_load", f"{cid}:1", [
                (Acct.system(Kind.LOAD_SUSPENSE, "EUR"), e.amount),
                (Acct(Kind.PURSE_FLOAT, cid, "EUR"), -e.amount)], value_time=e.time,
                card_id=cid, memo="bench: yesterday's load"))
        ledger = Ledger(s, now - DAY)
        for i in range(0, len(event_rows), 5000):
            s.execute(sa.insert(table(CardEventRow)), event_rows[i:i + 5000])
            ledger.post_many(entries[i:i + 5000])
        uow.commit()
    del Clearing

    # Each terminal's journal (hash-chained, every entry signed by its SAM), cut into
    # day-end batches; each terminal uploads through one of the processes.
    journals: list[list[JournalEntry]] = [[] for _ in range(terminals)]
    heads = ["00" * 32] * terminals
    triples: list[tuple[bytes, bytes, bytes]] = []
    for t, c, e in day:
        record = e.to_bytes() + tacs[id(e)]
        triples.append((publics[c], tacs[id(e)], e.signed_data()))
        fields = {"seq": e.terminal_seq, "kind": "debit", "time": e.time,
                  "card_id": e.card_id.hex(), "tx_type": "general", "amount": e.amount,
                  "split": 0, "currency": "EUR", "record": record.hex(), "reference": "",
                  "prev_hash": heads[t]}
        entry_hash = crypto.sha256(canonical(fields)).hex()
        journals[t].append(JournalEntry.model_validate({
            **fields, "entry_hash": entry_hash,
            "sam_signature": sams[t].sign(bytes.fromhex(entry_hash),
                                          purpose=PURPOSE_JOURNAL).hex()}))
        heads[t] = entry_hash
    batches: list[list[str]] = [[] for _ in range(processes)]
    per_process: list[list[list[str]]] = [[] for _ in range(processes)]
    for t, journal in enumerate(journals):
        docs = []
        for i in range(0, len(journal), batch_size):
            part = journal[i:i + batch_size]
            totals = {"debit": Totals(count=len(part), amount=sum(x.amount for x in part))}
            unsigned = BatchUpload(batch_id=f"{sams[t].terminal_id.hex()}-{i // batch_size:05d}",
                                   terminal_id=sams[t].terminal_id.hex(), entries=part,
                                   totals=totals, signature="")
            batch = unsigned.model_copy(update={"signature": sams[t].sign(
                batch_signed_bytes(unsigned), purpose=PURPOSE_BATCH).hex()})
            docs.append(batch.model_dump_json())
        per_process[t % processes].append(docs)
        sams[t].close()
    for p, lists in enumerate(per_process):  # interleave the terminals of one process
        longest = max((len(x) for x in lists), default=0)
        batches[p] = [docs[i] for i in range(longest) for docs in lists if i < len(docs)]
    return ClearingSetup(batches, triples, cards, terminals, merchants,
                         time.perf_counter() - started)


def _clear_worker(bdb: BenchDb, lab_dir: Path, data_dir: Path, now: int, docs: list[str],
                  barrier: Any, results: Any) -> None:
    """One uploading process: parse its batches, wait for the others, upload, report."""
    from tallypurse.core.hostapi import BatchUpload

    try:
        host = _open_host(bdb, lab_dir, now, data_dir)
        batches = [BatchUpload.model_validate_json(d) for d in docs]
        host.db.ping()
        barrier.wait()
        t0 = time.perf_counter()
        accepted = rejected = 0
        for b in batches:
            ack = host.clearing.upload(b.terminal_id, b)
            accepted += len(ack.accepted)
            rejected += len(ack.rejected)
        elapsed = time.perf_counter() - t0
        host.db.dispose()
        results.put({"seconds": elapsed, "accepted": accepted, "rejected": rejected,
                     "batches": len(batches)})
    except BaseException as exc:  # reported to the parent, which fails the bench
        results.put({"error": f"{exc.__class__.__name__}: {exc}"})
        raise


def _floor(triples: Sequence[tuple[bytes, bytes, bytes]], processes: int) -> float:
    """Verifies per second: the same TACs, alone, in ``processes`` processes at once."""
    shares = [(list(triples[p::processes]), p) for p in range(processes)]
    with mp.get_context("spawn").Pool(processes) as pool:
        pool.map(_verify_share, [(s[:50], p) for s, p in shares])  # warm the workers up
        t0 = time.perf_counter()
        pool.map(_verify_share, shares, chunksize=1)
        return len(triples) / (time.perf_counter() - t0)


def run_clearing_bench(*, events: int, processes: int, db_url: str | None, batch_size: int,
                       cards: int | None = None, terminals: int | None = None,
                       seed: int = 1) -> dict[str, Any]:
    import sqlalchemy as sa

    from tallypurse.host.db.models import CardEventRow
    from tallypurse.lab import Lab

    cards = cards or max(10, events // 4)
    terminals = terminals or max(processes, min(500, events // 2000))
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp_name:
        tmp = Path(tmp_name)
        lab = Lab.create(tmp / "lab", passphrase=LAB_PASSPHRASE)
        now = lab.now + 3 * DAY
        with bench_database(db_url, tmp) as bdb:
            host = _open_host(bdb, tmp / "lab", now, tmp)
            setup = _prepare_clearing(host, lab, tmp, events=events, processes=processes,
                                      cards=cards, terminals=terminals,
                                      batch_size=batch_size, now=now, seed=seed)
            host.db.dispose()
            floor_before = _floor(setup.triples, processes)

            ctx = mp.get_context("spawn")
            barrier = ctx.Barrier(processes + 1)
            results = ctx.Queue()
            workers = [ctx.Process(target=_clear_worker, args=(
                bdb, tmp / "lab", tmp, now, setup.batches[p], barrier, results))
                for p in range(processes)]
            for w in workers:
                w.start()
            barrier.wait(timeout=600)
            t0 = time.perf_counter()
            outs = [results.get(timeout=3600) for _ in workers]
            wall = time.perf_counter() - t0
            for w in workers:
                w.join()
            errors = [o["error"] for o in outs if "error" in o]
            if errors:
                raise RuntimeError("; ".join(errors))

            floor_after = _floor(setup.triples, processes)
            host = _open_host(bdb, tmp / "lab", now, tmp)
            audit = host.reports.audit()
            with host.uow() as uow:
                stored = uow.session.scalar(
                    sa.select(sa.func.count()).select_from(CardEventRow)) or 0
            alerts = host.reports.alerts()
            host.db.dispose()
    accepted = sum(o["accepted"] for o in outs)
    cleared = events / wall
    floor = max(floor_before, floor_after)
    return {
        "database": bdb.kind,
        "events": events,
        "processes": processes,
        "cards": setup.cards,
        "terminals": setup.terminals,
        "merchants": setup.merchants,
        "batch_size": batch_size,
        "batches": sum(len(b) for b in setup.batches),
        "seconds": round(wall, 3),
        "cleared_per_s": round(cleared, 1),
        "verify_per_s": round(floor, 1),
        "verify_per_s_before_after": [round(floor_before, 1), round(floor_after, 1)],
        "ratio": round(cleared / floor, 3),
        "projected_10m_minutes": round(TEN_MILLION / cleared / 60, 1),
        "checks": {
            "accepted": accepted,
            "rejected": sum(o["rejected"] for o in outs),
            "card_events_stored": stored - setup.cards,
            "ledger_balanced": bool(audit["balanced"]),
            "alerts": len(alerts),
        },
        "generate_s": round(setup.generate_s, 1),
    }


def bench_clearing(
    events: Annotated[int, typer.Option(help="Offline debits to clear.", min=100)] = 50_000,
    processes: Annotated[int, typer.Option(
        help="Uploading processes (and verifying processes for the floor).", min=1, max=64)
    ] = os.cpu_count() or 1,
    db: DbOpt = None,
    batch_size: Annotated[int, typer.Option(help="Journal entries per day-end batch.",
                                            min=1, max=5000)] = 500,
    cards: Annotated[int | None, typer.Option(help="Cards (default: events / 4).",
                                              show_default=False)] = None,
    terminals: Annotated[int | None, typer.Option(
        help="Terminals (default: events / 2000, at least --processes).",
        show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Offline debits cleared per second (verified, taken once, booked on the ledger)
    beside the rate at which the same number of processes verify the same TACs alone."""
    result = run_clearing_bench(events=events, processes=processes, db_url=db,
                                batch_size=batch_size, cards=cards, terminals=terminals)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    c = result["checks"]
    typer.echo(f"clearing on {result['database']}: {result['events']} card-signed debits of "
               f"{result['cards']} cards at {result['terminals']} terminals, "
               f"{result['batches']} batches of up to {result['batch_size']}, "
               f"{result['processes']} processes")
    typer.echo(f"  cleared        {result['cleared_per_s']:>10,.0f} /s   "
               f"({result['seconds']} s)")
    typer.echo(f"  floor: verify  {result['verify_per_s']:>10,.0f} /s   "
               f"(the same TACs alone, {result['processes']} processes; before/after "
               f"{result['verify_per_s_before_after']})")
    typer.echo(f"  ratio          {result['ratio']:>10}      (aim: at least 0.5)")
    typer.echo(f"  10 million     {result['projected_10m_minutes']:>10} min  (aim: under 15)")
    typer.echo(f"  checks: {c['accepted']} accepted, {c['rejected']} rejected, "
               f"{c['card_events_stored']} stored, ledger balanced: {c['ledger_balanced']}, "
               f"alerts: {c['alerts']}")


__all__ = ["bench_clearing", "percentile", "run_clearing_bench", "shutil"]
