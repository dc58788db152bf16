"""`tallypurse bench clearing` and `tallypurse bench agent`: the host's two speed aims.

Both print their figure beside the floor that this machine allows for the same
work, measured in the same run (the speed aims in docs/benchmarks.md):

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

import datetime as dt
import gc
import json
import multiprocessing as mp
import os
import random
import secrets
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .benchutil import percentile
from .keys import fail

if TYPE_CHECKING:
    from tallypurse.host.service import Host
    from tallypurse.sam import Sam

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
    """The floor: verify (public key, TAC, signed data) triples; the CPU seconds taken."""
    from tallypurse.core import crypto

    triples, _ = job
    keys = {pub: crypto.decode_public_key(pub) for pub, _, _ in triples}
    t0 = time.process_time()
    for pub, tac, data in triples:
        if not crypto.verify(keys[pub], tac, data):
            raise AssertionError("a TAC did not verify")
    return time.process_time() - t0


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
    from tallypurse.core.hostapi import BatchUpload, JournalEntry, Totals, canonical
    from tallypurse.core.httpsig import batch_signed_bytes
    from tallypurse.core.messages import CardEvent, SignedEvent
    from tallypurse.core.protocol import CertRole, EventKind
    from tallypurse.core.samproto import PURPOSE_BATCH, PURPOSE_JOURNAL
    from tallypurse.host.db.models import Account, Card, CardEventRow, table
    from tallypurse.host.ledger import Acct, Entry, Kind, Ledger

    started = time.perf_counter()
    rng = random.Random(seed)
    merchants = max(1, terminals // 5)
    mids = [host.registry.create_merchant(f"Bench merchant {i}", iban="DE89370400440532013000",
                                          bic="COBADEFFXXX", fee_basis_points=100,
                                          merchant_id=f"bench-m{i:04d}")
            for i in range(merchants)]
    sams: list[Any] = enrol_sams(host, mids, terminals, 0x7465_0000_0000_0000,
                                 tmp / "sam", now)

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
                               rng.randbytes(8), 0xFF, 0))
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
                      rng.randbytes(8), 0xFF, 0)
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
                         "blacklisted": False, "replaced_by": None})
        for i in range(0, len(rows), 5000):
            s.execute(sa.insert(table(Card)), rows[i:i + 5000])
            s.execute(sa.insert(table(Account)), [
                {"kind": "purse_float", "owner": r["card_id"], "currency": "EUR", "balance": 0,
                 "created": now} for r in rows[i:i + 5000]])
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
            txns = ledger.post_many(entries[i:i + 5000])
            s.execute(sa.insert(table(CardEventRow)), [
                {**row, "transaction_id": txn}
                for row, txn in zip(event_rows[i:i + 5000], txns, strict=True)])
        uow.commit()
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
        # The day's batches wait in memory here (a server holds one request at a time):
        # kept out of the garbage collector's walks, as everything loaded so far.
        gc.freeze()
        barrier.wait()
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        accepted = rejected = 0
        for b in batches:
            ack = host.clearing.upload(b.terminal_id, b)
            accepted += len(ack.accepted)
            rejected += len(ack.rejected)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0  # this process's threads, the verifying ones too
        results.put({"seconds": elapsed, "cpu": cpu, "accepted": accepted,
                     "rejected": rejected, "batches": len(batches)})
        barrier.wait()  # the parent reads the database server's CPU before connections close
        host.db.dispose()
    except BaseException as exc:  # reported to the parent, which fails the bench
        results.put({"error": f"{exc.__class__.__name__}: {exc}"})
        raise


def _floor(triples: Sequence[tuple[bytes, bytes, bytes]], processes: int
           ) -> tuple[float, float]:
    """Verifies per second: the same TACs, alone, in ``processes`` processes at once; and
    the seconds the processes spent verifying, in all."""
    shares = [(list(triples[p::processes]), p) for p in range(processes)]
    with mp.get_context("spawn").Pool(processes) as pool:
        pool.map(_verify_share, [(s[:50], p) for s, p in shares])  # warm the workers up
        t0 = time.perf_counter()
        spent = pool.map(_verify_share, shares, chunksize=1)
        return len(triples) / (time.perf_counter() - t0), sum(spent)


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
            floor_before, verify_s_before = _floor(setup.triples, processes)

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
            db_cpu0 = _postgres_cpu_seconds() if bdb.schema else None
            outs = [results.get(timeout=3600) for _ in workers]
            wall = time.perf_counter() - t0
            db_cpu1 = _postgres_cpu_seconds() if bdb.schema else None
            errors = [o["error"] for o in outs if "error" in o]
            if errors:
                barrier.abort()  # a worker still waiting there ends
            else:
                barrier.wait(timeout=600)
            for w in workers:
                w.join()
            if errors:
                raise RuntimeError("; ".join(errors))

            floor_after, verify_s_after = _floor(setup.triples, processes)
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
        # Where the time goes, in CPU microseconds per debit: the uploading processes (their
        # verifying threads included), the same TACs verified alone (the floor's), and on
        # PostgreSQL the database server; ``busy``: the uploading processes' CPU over their
        # wall time times the cores they could use (1.0: never waiting).
        "cpu_us_per_debit": {
            "clearing": round(sum(o["cpu"] for o in outs) / events * 1e6, 1),
            "verify_alone": round(min(verify_s_before, verify_s_after) / events * 1e6, 1),
            "database": (round((db_cpu1 - db_cpu0) / events * 1e6, 1)
                         if db_cpu0 is not None and db_cpu1 is not None else None),
        },
        "busy": round(sum(o["cpu"] for o in outs) / (wall * min(processes, os.cpu_count() or 1)),
                      2),
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
    cpu = result["cpu_us_per_debit"]
    database = f", database {cpu['database']}" if cpu["database"] is not None else ""
    typer.echo(f"  CPU per debit: clearing {cpu['clearing']} us (verify alone "
               f"{cpu['verify_alone']}{database}); uploaders busy {result['busy']}")
    typer.echo(f"  checks: {c['accepted']} accepted, {c['rejected']} rejected, "
               f"{c['card_events_stored']} stored, ledger balanced: {c['ledger_balanced']}, "
               f"alerts: {c['alerts']}")


# --- agent debits over HTTP -------------------------------------------------------------------
@dataclass
class AgentSetup:
    requests: list[bytes]  # complete HTTP/1.1 requests, signed by the terminals' SAMs
    direct: list[dict[str, Any]]  # what each request writes, for the direct-statements floor
    cards: int
    terminals: int
    merchants: int


def _prepare_agent(host: Any, lab: Any, tmp: Path, *, requests: int, port: int, now: int,
                   seed: int) -> AgentSetup:
    """Merchants, enrolled terminals, cardholders with funded online accounts and cards,
    and one signed HTTP request per split remainder."""
    import sqlalchemy as sa

    from tallypurse.core import crypto
    from tallypurse.core.hostapi import ROUTES, AgentDebitRequest
    from tallypurse.core.httpsig import sign_request
    from tallypurse.core.messages import CardEvent
    from tallypurse.core.protocol import (
        CVR_DEBT_OUTSTANDING,
        CVR_SPLIT,
        CertRole,
        EventKind,
        TxType,
    )
    from tallypurse.core.samproto import PURPOSE_REQUEST
    from tallypurse.host.db.models import Account, Card, table

    rng = random.Random(seed)
    terminals = 16
    merchants = 8
    cards = max(10, requests // 5)
    mids = [host.registry.create_merchant(f"Canteen {i}", iban="DE89370400440532013000",
                                          bic="COBADEFFXXX", merchant_id=f"bench-c{i:03d}")
            for i in range(merchants)]
    sams = enrol_sams(host, mids, terminals, 0x6167_0000_0000_0000, tmp / "agent-sam", now)
    holders = []
    for i in range(cards):
        holder = host.registry.create_cardholder(f"Holder {i}", cardholder_id=f"bench-h{i:06d}")
        host.registry.fund_online_account(holder, 1_000_000, f"bench-fund-{i}")
        holders.append(holder)
    keys = [crypto.private_key_from_seed(rng.randbytes(40)) for _ in range(cards)]
    serials = [(0x4000_0000_0000_0000 + seed * 10_000_000 + i).to_bytes(8, "big")
               for i in range(cards)]
    not_after = now + 4 * 365 * DAY
    with host.uow() as uow:
        rows = []
        for serial, key, holder in zip(serials, keys, holders, strict=True):
            pub = crypto.encode_public_key(key.public_key())
            cert = lab.keystore.issue_certificate(holder=serial, role=CertRole.CARD,
                                                  public_key=pub, not_before=now - DAY,
                                                  not_after=not_after)
            rows.append({"card_id": serial.hex(), "cardholder_id": holder, "status": "active",
                         "currency": "EUR", "certificate": cert.encode().hex(),
                         "public_key": pub.hex(), "issued": now - DAY, "expiry": not_after,
                         "cap": 100_000, "app_key_version": 1, "writeback_seq": 0,
                         "online_counter": 0, "credit_version": 1, "blacklisted": False,
                         "replaced_by": None})
        uow.session.execute(sa.insert(table(Card)), rows)
        uow.session.execute(sa.insert(table(Account)), [
            {"kind": "purse_float", "owner": r["card_id"], "currency": "EUR", "balance": 0,
             "created": now} for r in rows])
        uow.commit()

    path = ROUTES["agent_debit"]
    url = f"http://127.0.0.1:{port}{path}"
    atc = [0] * cards
    out: list[bytes] = []
    direct: list[dict[str, Any]] = []
    for n in range(requests):
        c, t = rng.randrange(cards), rng.randrange(terminals)
        atc[c] += 1
        split = rng.randrange(100, 500)
        event = CardEvent(int(EventKind.DEBIT), serials[c], atc[c], 1, 200, split, EUR,
                          int(TxType.CANTEEN), 5_000, 4_800, sams[t].terminal_id, n + 1,
                          now - 60, rng.randbytes(8), rng.randbytes(8), 0,
                          CVR_SPLIT | CVR_DEBT_OUTSTANDING)
        record = event.to_bytes() + crypto.sign(keys[c], event.signed_data())
        tid = sams[t].terminal_id.hex()
        body = AgentDebitRequest(
            idempotency_key=f"bench-{tid}-{n:08d}", terminal_id=tid, card_id=serials[c].hex(),
            atc=atc[c], amount=split, currency="EUR", tx_type="canteen",
            record=record.hex()).model_dump_json().encode()
        headers = sign_request("POST", url, body, key_id=tid, created=now,
                               signer=partial(sams[t].sign, purpose=PURPOSE_REQUEST))
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n")
        out.append(head.encode() + body)
        direct.append({"terminal_id": tid, "merchant_id": mids[t % merchants],
                       "card_id": serials[c].hex(), "holder": holders[c],
                       "atc": atc[c] + 1_000_000,  # beside, not over, what HTTP wrote
                       "amount": split, "key": f"direct-{tid}-{n:08d}", "record": record.hex(),
                       "nonce": secrets.token_hex(16), "time": now - 60, "key_id": tid,
                       "created": now})
    for sam in sams:
        sam.close()
    return AgentSetup(out, direct, cards, terminals, merchants)


async def _send_all(port: int, requests: list[bytes], concurrency: int
                    ) -> tuple[list[float], dict[int, int], float]:
    """Send every request over ``concurrency`` keep-alive connections; latencies in
    seconds, a count per status code, and the wall time."""
    import asyncio

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = list(reversed(requests))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                raw = queue.pop()
                t0 = time.perf_counter()
                writer.write(raw)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                code = int(status_line.split()[1])
                statuses[code] = statuses.get(code, 0) + 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return latencies, statuses, time.perf_counter() - t0


def _wait_ready(port: int, proc: Any, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"host serve exited with status {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("host serve did not become ready")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The statements a group of agent debits sends to the database (online accounts that hold
# enough, so each debit: debt opened, merchant paid, collected online, write-back
# published), as the host's group writer issues them (tallypurse.host.agent_groups): one
# transaction per group, each kind of row in one statement whatever the group's size,
# then, at most every PUBLISH_EVERY_S per process, the publisher's transaction that
# numbers the committed list entries. The statements' text is the host's own.
PUBLISH = [
    "SELECT name, version FROM list_heads WHERE name IN ('actions') ORDER BY name "
    "FOR UPDATE SKIP LOCKED",
    "UPDATE list_entries e SET version = n.v FROM (SELECT id, %(head)s + row_number() "
    "OVER (ORDER BY id) AS v FROM list_entries WHERE list_name = 'actions' AND version "
    "IS NULL) n WHERE e.id = n.id",
    "UPDATE list_heads SET version = (SELECT max(version) FROM list_entries WHERE "
    "list_name = 'actions') WHERE name = 'actions'",
]

DIRECT_IDS = (
    "SELECT (SELECT id FROM accounts WHERE kind = 'credit_receivable' AND owner = '' "
    "AND currency = 'EUR') AS receivable_id, (SELECT id FROM accounts WHERE kind = "
    "'merchant_payable' AND owner = :merchant_id AND currency = 'EUR') AS payable_id, "
    "(SELECT id FROM accounts WHERE kind = 'online' AND owner = :holder "
    "AND currency = 'EUR') AS online_id")


def _driver(sql: str) -> str:
    """SQLAlchemy's :name as psycopg's %(name)s (what the host's db.bulk.plain does)."""
    import re

    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql.replace("%", "%%"))


def _insert(cur: Any, table: str, columns: list[tuple[str, str]],
            rows: list[tuple[Any, ...]], returning: str = "") -> list[Any]:
    """The host's db.bulk.insert on PostgreSQL: one INSERT from arrays, or COPY for many."""
    _insert_all(cur, [(table, columns, rows)], returning)
    return list(cur.fetchall()) if returning else []


def _insert_all(cur: Any, parts: list[tuple[str, list[tuple[str, str]],
                                           list[tuple[Any, ...]]]],
                returning: str = "") -> None:
    """The host's db.bulk.insert_all on PostgreSQL: its one statement, or COPY for many."""
    from tallypurse.host.db.bulk import pg_insert

    statement = pg_insert(parts, returning=returning)
    if statement is not None:
        cur.execute(*statement)
        return
    for table, columns, rows in parts:  # table by table, as the host's insert does
        one = pg_insert([(table, columns, rows)])
        if one is not None:
            cur.execute(*one)
            continue
        with cur.copy(f"COPY {table} ({', '.join(c for c, _ in columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


def _direct_group(cur: Any, group: list[dict[str, Any]]) -> None:
    """One group's statements, in the host's order, with the host's statement text."""
    from tallypurse.host.agent_groups import (
        CREDIT_EVENT_COLUMNS,
        DEBT_COLUMNS,
        GROUP_READ,
        LOCK_ONLINE_PG,
        NONCES_PG,
        READ_COLUMNS,
    )
    from tallypurse.host.db.bulk import array_literal
    from tallypurse.host.ledger import POSTING_COLUMNS, TXN_COLUMNS
    from tallypurse.host.lists import ENTRY_COLUMNS
    from tallypurse.host.writeback import ACTION_COLUMNS, LOCK_CARDS, NEXT_SEQS

    read_cols = ", ".join(c for c, _ in READ_COLUMNS)
    cur.execute(f"WITH v({read_cols}) AS (SELECT * FROM unnest("
                + ", ".join(f"%s::{t}[]" for _, t in READ_COLUMNS) + f")) {GROUP_READ}",
                tuple(array_literal(c) for c in (
                    list(range(len(group))), [w["terminal_id"] for w in group],
                    [w["card_id"] for w in group], [w["key"] for w in group],
                    [w["atc"] for w in group])))
    cur.fetchall()
    cur.execute(_driver(NONCES_PG), {"keys": array_literal([w["key_id"] for w in group]),
                                     "nonces": array_literal([w["nonce"] for w in group]),
                                     "created": array_literal([w["created"] for w in group])})
    cur.fetchall()
    cards: dict[str, int] = {}
    for w in group:
        cards[w["card_id"]] = cards.get(w["card_id"], 0) + 1
    ordered = sorted(cards.items())
    cur.execute(_driver(LOCK_CARDS), {"ids": array_literal([c for c, _ in ordered])})
    cur.fetchall()
    cur.execute(_driver(LOCK_ONLINE_PG),
                {"ids": array_literal(sorted({w["online_id"] for w in group}))})
    cur.fetchall()
    day = dt.date.fromtimestamp(group[0]["time"])
    txns = []
    for w in group:
        txns.append(("debt_open", w["key"], w["time"], w["time"], day, w["merchant_id"],
                     w["card_id"], "split remainder"))
        txns.append(("debt_collect_online", w["key"], w["time"], w["time"], day, None,
                     w["card_id"], ""))
    ids = {(k, r): i for i, k, r in _insert(cur, "ledger_transactions", TXN_COLUMNS, txns,
                                              "id, kind, reference")}
    postings = []
    balances: dict[int, int] = {}
    for w in group:
        opened, collected = ids[("debt_open", w["key"])], ids[("debt_collect_online", w["key"])]
        postings += [(opened, w["receivable_id"], w["amount"], "EUR"),
                     (opened, w["payable_id"], -w["amount"], "EUR"),
                     (collected, w["online_id"], w["amount"], "EUR"),
                     (collected, w["receivable_id"], -w["amount"], "EUR")]
        balances[w["payable_id"]] = balances.get(w["payable_id"], 0) - w["amount"]
        balances[w["online_id"]] = balances.get(w["online_id"], 0) + w["amount"]
    _insert(cur, "postings", POSTING_COLUMNS, postings)
    cur.execute(_driver(NEXT_SEQS), {"ids": array_literal([c for c, _ in ordered]),
                                     "ns": array_literal([n for _, n in ordered])})
    cur.fetchall()
    # the debts, credit events, write-backs and list entries in one statement (WITH ...)
    _insert_all(cur, [
        ("debts", DEBT_COLUMNS, [
            (w["key"], w["card_id"], w["atc"], w["amount"], "EUR", w["terminal_id"],
             w["merchant_id"], w["holder"], 1, w["key"], w["key"], "settled", "agent",
             w["time"], w["time"], w["time"], 0) for w in group]),
        ("credit_events", CREDIT_EVENT_COLUMNS, [
            (w["holder"], w["card_id"], "debt_settled_online", w["amount"], w["key"],
             w["time"]) for w in group]),
        ("writeback_actions", ACTION_COLUMNS, [
            (w["key"], w["card_id"], "settle_debt", w["atc"], w["record"], w["record"],
             "pending", w["key"], w["time"]) for w in group]),
        ("list_entries", ENTRY_COLUMNS, [
            ("actions", w["card_id"], "add", "", w["key"], "settle_debt", w["atc"],
             w["record"], w["time"]) for w in group])])
    changes = sorted((i, d) for i, d in balances.items() if d)
    if len(changes) == 1:
        cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s",
                    (changes[0][1], changes[0][0]))
    elif changes:
        cur.execute("SELECT id FROM accounts WHERE id = ANY(CAST(%s AS bigint[])) "
                    "ORDER BY id FOR NO KEY UPDATE", (array_literal([i for i, _ in changes]),))
        cur.execute("UPDATE accounts SET balance = accounts.balance + v.balance FROM "
                    "unnest(%s::bigint[], %s::bigint[]) AS v(id, balance) "
                    "WHERE accounts.id = v.id",
                    (array_literal([i for i, _ in changes]),
                     array_literal([d for _, d in changes])))


def _direct_floor(host: Any, work: list[dict[str, Any]], writers: int,
                  group: int = 1) -> float | None:
    """Agent debits per second with their database statements issued directly (the
    driver's own cursor, no HTTP, no service code): ``writers`` connections at once (the
    host has one group writer per process), each issuing groups of ``group`` debits."""
    import threading

    import sqlalchemy as sa

    from tallypurse.host.lists import PUBLISH_EVERY_S

    if not host.db.postgres:
        return None  # the statements are PostgreSQL's (the aim is on PostgreSQL)
    with host.uow() as uow:  # the ids the host's one read finds
        for params in work:
            params.update(uow.session.execute(sa.text(DIRECT_IDS), params).mappings().one())
    size = max(1, group)
    queue = [work[i:i + size] for i in range(0, len(work), size)][::-1]
    lock = threading.Lock()
    last_publish = [0.0]
    errors: list[BaseException] = []

    def run() -> None:
        raw = host.db.engine.raw_connection()
        try:
            cur = raw.cursor()
            while True:
                with lock:
                    if not queue:
                        return
                    debits = queue.pop()
                _direct_group(cur, debits)
                raw.commit()
                with lock:
                    due = time.monotonic() - last_publish[0] >= PUBLISH_EVERY_S
                    if due:
                        last_publish[0] = time.monotonic()
                if due:
                    cur.execute(PUBLISH[0])
                    heads = cur.fetchall()
                    if heads:
                        cur.execute(PUBLISH[1], {"head": heads[0][1]})
                        cur.execute(PUBLISH[2])
                    raw.commit()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            raw.close()

    threads = [threading.Thread(target=run) for _ in range(writers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return len(work) / (time.perf_counter() - t0)


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) of a process and its children that still run (Linux)."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        pids = [pid]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    pids.append(int(entry))
        total = 0
        for p in pids:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / tick
    except (OSError, ValueError):
        return None


def _postgres_cpu_seconds() -> float | None:
    """CPU time of every PostgreSQL server process on this machine (Linux; the bench's
    server is local): what the database spent, beside the host's and the client's."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            name, rest = stat.split("(", 1)[1].rsplit(")", 1)
            if name.startswith("postgres"):
                fields = rest.split()
                total += int(fields[11]) + int(fields[12])
        return total / tick
    except (OSError, ValueError):
        return None


def _groups_logged(log: Path, start: int) -> tuple[int, int, float]:
    """(groups, debits in them, milliseconds they took) from the host's
    ``agent_debit_group`` log lines written after byte ``start`` of its log."""
    groups = debits = 0
    ms = 0.0
    with log.open("rb") as f:
        f.seek(start)
        for line in f:
            if b'"event": "agent_debit_group"' in line:
                group = json.loads(line)
                groups += 1
                debits += int(group["debits"])
                ms += float(group["ms"])
    return groups, debits, ms


def run_agent_bench(*, requests: int, concurrency: int, workers: int, db_url: str | None,
                    seed: int = 1) -> dict[str, Any]:
    import asyncio
    import subprocess
    import sys

    from tallypurse.lab import Lab

    port = _free_port()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "host"
        lab = Lab.create(data, passphrase=LAB_PASSPHRASE)  # the keystore serve opens
        now = int(time.time())
        with bench_database(db_url, tmp) as bdb:
            host = _open_host(bdb, data, now, data)
            setup = _prepare_agent(host, lab, tmp, requests=requests, port=port, now=now,
                                   seed=seed)
            host.db.dispose()
            env = {**os.environ, "TALLYPURSE_KEYSTORE_PASSPHRASE": LAB_PASSPHRASE}
            log = (tmp / "serve.log").open("w")
            proc = subprocess.Popen(
                [sys.executable, "-m", "tallypurse.cli.main", "host", "serve",
                 "--db", bdb.server_url(), "--data-dir", str(data), "--port", str(port),
                 "--workers", str(workers)], env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                try:
                    _wait_ready(port, proc)
                except RuntimeError as exc:
                    log.flush()
                    tail = (tmp / "serve.log").read_text()[-2000:]
                    raise RuntimeError(f"{exc}:\n{tail}") from None
                warm = min(200, max(1, requests // 10))
                asyncio.run(_send_all(port, setup.requests[:warm], concurrency))
                log.flush()
                log_start = (tmp / "serve.log").stat().st_size
                server0, client0 = _cpu_seconds(proc.pid), time.process_time()
                db0 = _postgres_cpu_seconds()
                latencies, statuses, wall = asyncio.run(
                    _send_all(port, setup.requests[warm:], concurrency))
                server1, client1 = _cpu_seconds(proc.pid), time.process_time()
                db1 = _postgres_cpu_seconds()
                groups = _groups_logged(tmp / "serve.log", log_start)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log.close()
            host = _open_host(bdb, data, now, data)
            # as the host grouped them: one writer per process, its mean group size
            raw_per_s = _direct_floor(host, setup.direct, workers,
                                      round(groups[1] / groups[0]) if groups[0] else 1)
            audit = host.reports.audit()
            host.db.dispose()
    timed = len(latencies)
    per_s = timed / wall
    server_ms = (None if server0 is None or server1 is None
                 else round((server1 - server0) / timed * 1000, 2))
    return {
        "database": bdb.kind,
        "requests": timed,
        "warm_up": warm,
        "concurrency": concurrency,
        "workers": workers,
        "cards": setup.cards,
        "terminals": setup.terminals,
        "merchants": setup.merchants,
        "seconds": round(wall, 3),
        "per_s": round(per_s, 1),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
        "raw_db_per_s": None if raw_per_s is None else round(raw_per_s, 1),
        "ratio_to_raw_db": None if raw_per_s is None else round(per_s / raw_per_s, 3),
        "server_cpu_ms_per_debit": server_ms,
        "client_cpu_ms_per_debit": round((client1 - client0) / timed * 1000, 2),
        "db_cpu_ms_per_debit": (None if db0 is None or db1 is None or bdb.kind != "postgresql"
                                else round((db1 - db0) / timed * 1000, 2)),
        "groups": groups[0],
        "group_mean": round(groups[1] / groups[0], 1) if groups[0] else None,
        "group_mean_ms": round(groups[2] / groups[0], 2) if groups[0] else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "ledger_balanced": bool(audit["balanced"]),
    }


def bench_agent(
    requests: Annotated[int, typer.Option(help="Agent debits to send.", min=100)] = 5_000,
    concurrency: Annotated[int, typer.Option(help="Connections sending at once.",
                                             min=1, max=512)] = 32,
    workers: Annotated[int, typer.Option(help="host serve worker processes.",
                                         min=1, max=64)] = os.cpu_count() or 1,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Agent debits per second and p50/p99 over HTTP (RFC 9421, real SAMs) to a
    `tallypurse host serve` on 127.0.0.1, beside the same statements issued directly."""
    result = run_agent_bench(requests=requests, concurrency=concurrency, workers=workers,
                             db_url=db)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"agent debits over HTTP on {result['database']}: {result['requests']} requests "
               f"(after {result['warm_up']} to warm up), {result['concurrency']} connections, "
               f"{result['workers']} workers, {result['cards']} cards, "
               f"{result['terminals']} terminals")
    typer.echo(f"  rate          {result['per_s']:>10,.0f} /s   (aim: at least 1,000)")
    typer.echo(f"  latency       p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms  "
               f"max {result['max_ms']} ms   (aim: p99 under 50 ms)")
    if result["raw_db_per_s"] is None:
        typer.echo("  floor: measured on PostgreSQL only (--db postgresql://...)")
    else:
        typer.echo(f"  floor: the same statements issued directly  "
                   f"{result['raw_db_per_s']:,.0f} /s   ratio {result['ratio_to_raw_db']}")
    if result["server_cpu_ms_per_debit"] is not None:
        database = (f", database {result['db_cpu_ms_per_debit']} ms"
                    if result["db_cpu_ms_per_debit"] is not None else "")
        typer.echo(f"  CPU per debit: host serve {result['server_cpu_ms_per_debit']} ms, "
                   f"client {result['client_cpu_ms_per_debit']} ms{database}")
    if result["groups"]:
        typer.echo(f"  written in {result['groups']:,} groups of {result['group_mean']} debits "
                   f"on average, {result['group_mean_ms']} ms each")
    typer.echo(f"  answers {result['statuses']}, ledger balanced: {result['ledger_balanced']}")


def enrol_sams(host: Host, merchants: list[str], count: int, first_id: int, stem: Path,
               now: int) -> list[Sam]:
    """``count`` real SAMs enrolled with ``host`` (terminal ids from ``first_id``), spread
    over ``merchants``; each SAM's file is ``<stem>-<i>.json``."""
    from tallypurse.core.cert import KeyRef
    from tallypurse.core.hostapi import EnrolRequest
    from tallypurse.sam import Sam

    sams = []
    for i in range(count):
        tid = f"{first_id + i:016x}"
        _, token = host.tms.create_terminal(merchants[i % len(merchants)], tid)
        sam = Sam.create(stem.parent / f"{stem.name}-{i}.json", "sam",
                         terminal_id=bytes.fromhex(tid))
        answer = host.tms.enrol(EnrolRequest(terminal_id=tid,
                                             csr=sam.certificate_request().hex(), token=token))
        sam.install_certificate(bytes.fromhex(answer.certificate),
                                {KeyRef.decode(k.encode()): bytes.fromhex(v)
                                 for k, v in answer.roots.items()}, at=now)
        sams.append(sam)
    return sams
