"""The demo: a small city's day, told step by step, and checked against the rules.

Two merchants (a campus canteen and a transit kiosk), two terminals, four
cardholders, real cards personalised by an embedded host (SQLite in a
temporary folder) served over loopback HTTP.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tallypurse.card.card import Card
from tallypurse.card.storage import Eeprom
from tallypurse.core.money import Currency, currency, format_minor
from tallypurse.core.protocol import DebtState
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient
from tallypurse.host.bank import SandboxBank
from tallypurse.terminal.errors import Declined
from tallypurse.terminal.receipts import Receipt
from tallypurse.terminal.receipts import text as receipt_text

from . import EmbeddedHost, Till, enrol_till, issue_card
from . import invariants as rules

EUR: Currency = currency("EUR")
FAILING_IBAN = "DE02120300000000202051"  # the sandbox bank refuses every debit on it


def eur(minor: int) -> str:
    return format_minor(minor, EUR)


@dataclass
class Story:
    say: Callable[[str, str, dict[str, Any]], None]
    receipts: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)

    def step(self, name: str, text: str, **facts: Any) -> None:
        self.steps.append({"step": name, "text": text, **facts})
        self.say(name, text, facts)

    def receipt(self, r: Receipt | None) -> None:
        if r is not None:
            self.receipts.append(receipt_text(r))


def purse_of(card: Card) -> PurseClient:
    p = PurseClient(ApduClient(card))
    p.select()
    return p


def slots(card: Card) -> list[str]:
    names = {DebtState.PENDING: "pending", DebtState.FAILED: "failed"}
    return [f"{names[DebtState(s.state)]} {eur(s.amount)} (ATC {s.ref})"
            for s in purse_of(card).debts() if s.state != DebtState.FREE]


def run(workdir: Path, story: Story, *,
        serve: Callable[[EmbeddedHost, dict[str, str]], None] | None = None) -> dict[str, Any]:
    """Tell the story; with ``serve``, hand the running host (and console logins) to it
    before stopping."""
    bank = SandboxBank(failing_ibans=frozenset({FAILING_IBAN}))
    eh = EmbeddedHost(workdir / "host", bank=bank)
    tills: list[Till] = []
    try:
        result = _run(eh, workdir, story, tills)
        if serve is not None:
            import secrets

            from tallypurse.host.console import create_user

            logins = {}
            for user, role, merchant in (("operator", "operator", None),
                                         ("auditor", "auditor", None),
                                         ("canteen", "merchant", "campus-canteen")):
                password = secrets.token_urlsafe(12)
                create_user(eh.host, user, password, role, merchant_id=merchant)
                logins[user] = password
            serve(eh, logins)
        return result
    finally:
        for t in tills:
            t.close()
        eh.stop()


def _run(eh: EmbeddedHost, workdir: Path, story: Story, tills: list[Till]) -> dict[str, Any]:
    host = eh.host
    reg = host.registry
    story.step("host", f"Started the host at {eh.url}: SQLite database, keystore with the "
               "issuer root, host list and load keys, and ISD/SD/APP master keys.")

    canteen = reg.create_merchant("Campus Canteen", iban="DE89370400440532013000",
                                  bic="COBADEFFXXX", fee_basis_points=150,
                                  merchant_id="campus-canteen")
    kiosk = reg.create_merchant("City Transit Kiosk", iban="FR1420041010050500013M02606",
                                bic="PSSTFRPPXXX", fee_basis_points=100,
                                merchant_id="transit-kiosk")
    till1 = enrol_till(eh, workdir / "till1", name="Campus Canteen", merchant_id=canteen,
                       terminal_id=bytes.fromhex("00000000000000c1"))
    tills.append(till1)
    till2 = enrol_till(eh, workdir / "till2", name="City Transit Kiosk", merchant_id=kiosk,
                       terminal_id=bytes.fromhex("00000000000000d1"))
    tills.append(till2)
    story.step("enrol", "Enrolled two terminals: each SAM generated its key inside, signed its "
               "enrolment request, and got a certificate, parameters and signed lists.")

    alice = reg.create_cardholder("Alice", "EUR")
    reg.fund_online_account(alice, 5_000, "demo-fund-alice")
    bob = reg.create_cardholder("Bob", "EUR")
    reg.link_bank_account(bob, iban="DE75512108001245126199", bic="SOGEDEFFXXX",
                          holder_name="Bob")
    carol = reg.create_cardholder("Carol", "EUR")
    reg.link_bank_account(carol, iban=FAILING_IBAN, bic="COBADEFFXXX", holder_name="Carol")
    dave = reg.create_cardholder("Dave", "EUR")
    cards = {
        name: issue_card(eh, bytes.fromhex(serial), cardholder_id=holder,
                         path=workdir / f"{name.lower()}.card")
        for name, serial, holder in (("Alice", "00000000000000a1", alice),
                                     ("Bob", "00000000000000b1", bob),
                                     ("Carol", "00000000000000c9", carol),
                                     ("Dave", "00000000000000d9", dave))
    }
    story.step("issue", "Issued four cards through their own APDUs: transport keys replaced by "
               "diversified ISD keys, operator domain, purse, on-card key pair, issuer "
               "certificate, credit record. Alice has 50.00 in her online account; Bob and "
               "Carol have linked bank accounts (Carol's will refuse direct debits).")

    def tap(till: Till, who: str, amount: int, tx_type: str) -> Any:
        result = till.terminal.purchase(till.reader(cards[who]), amount, tx_type=tx_type)
        story.receipt(result.receipt)
        till.terminal.receipt_delivered(result.receipt)  # printed: the next tap is a new one
        return result

    for who, amount in (("Alice", 2_000), ("Bob", 1_000), ("Carol", 500), ("Dave", 3_000)):
        r = till1.terminal.load(till1.reader(cards[who]), amount, funding="cash")
        story.receipt(r.receipt)
        till1.terminal.receipt_delivered(r.receipt)
    story.step("load", "Loaded the purses at the canteen till, online with host-signed load "
               "authorisations: Alice 20.00, Bob 10.00, Carol 5.00, Dave 30.00.")

    r = tap(till1, "Alice", 1_250, "canteen")
    story.step("purchase", f"Alice paid {eur(1_250)} for lunch offline: the card checked the "
               f"SAM-signed order and signed the debit; balance {eur(r.receipt.balance_after)}.",
               balance=r.receipt.balance_after)

    r = tap(till1, "Alice", 1_200, "canteen")
    story.step("split", f"Alice's purse was short for {eur(1_200)}: the card paid "
               f"{eur(r.receipt.purse_amount)} and recorded {eur(r.receipt.online_amount)} as a "
               "debt in the same atomic step; the till queued an agent debit.",
               purse=r.receipt.purse_amount, online=r.receipt.online_amount)

    till1.network.online = False
    r = tap(till1, "Bob", 1_300, "canteen")
    queued = till1.terminal.status()["outbox"]
    story.step("offline", f"The canteen till lost its network. Bob paid {eur(1_300)} anyway: "
               f"{eur(r.receipt.purse_amount)} from his purse, {eur(r.receipt.online_amount)} "
               "as a debt; the agent debits wait in the till's outbox.", outbox=queued)

    till1.network.online = True
    flushed = till1.terminal.flush()
    host.agent.process_bank()
    story.step("forward", f"The network came back: the till forwarded {flushed.acked} agent "
               "debit(s) with idempotency keys. The host paid the canteen at once, took "
               "Alice's 4.50 from her online account and Bob's 3.00 by direct debit on his "
               "linked bank account.", acked=flushed.acked)

    r = tap(till2, "Carol", 700, "transit")
    till2.terminal.flush()
    host.agent.process_bank()
    story.step("collection", f"Carol bought a {eur(700)} ticket with {eur(200)} on credit: her "
               "online account was empty and her bank refused the direct debit, so the debt "
               "went to collection (the kiosk is paid all the same).")

    for till in (till1, till2):
        till.terminal.sync()
    before = slots(cards["Alice"])
    r = till2.terminal.load(till2.reader(cards["Alice"]), 1_000, funding="online_account")
    story.receipt(r.receipt)
    till2.terminal.receipt_delivered(r.receipt)
    after = slots(cards["Alice"])
    tap(till2, "Alice", 200, "transit")
    story.step("write-back", "Alice topped up 10.00 from her online account at the transit "
               "kiosk: before the load the kiosk applied the host's outcome to her card "
               f"(debts: {', '.join(before) or 'none'} -> {', '.join(after) or 'none'}) and "
               "reported it; then she bought a 2.00 ticket offline.", before=before,
               after=after)

    carol_before = slots(cards["Carol"])
    grade_before = purse_of(cards["Carol"]).credit_record().record
    try:
        tap(till1, "Carol", 800, "canteen")
        refused = ""
    except Declined as exc:
        refused = f"{exc.reason.label} {exc.reason.name}"
    grade_after = purse_of(cards["Carol"]).credit_record().record
    story.step("downgrade", "Carol's next tap at the canteen: the till wrote the failed "
               f"collection onto her card ({', '.join(carol_before)} -> "
               f"{', '.join(slots(cards['Carol']))}) and her credit record (grade "
               f"{grade_before.grade_letter} v{grade_before.version} -> "
               f"{grade_after.grade_letter} v{grade_after.version}, per-tap overdraft "
               f"{eur(grade_after.per_tap_overdraft)}); the card refused more credit: "
               f"declined {refused or 'NOT declined'}.", declined=refused,
               grade_before=grade_before.grade_letter, grade_after=grade_after.grade_letter)

    copied_at = purse_of(cards["Dave"]).counters()
    clone = Card(Eeprom.from_image(cards["Dave"].eeprom.to_image()))
    tap(till1, "Dave", 900, "canteen")
    till2.terminal.purchase(till2.reader(clone), 1_100, tx_type="transit")
    story.step("clone", "Someone copied Dave's card memory. The original paid 9.00 at the "
               "canteen and the copy 11.00 at the kiosk, both offline, both with valid "
               "signatures and the same counter.")

    reports = [till.terminal.close_day() for till in (till1, till2)]
    story.step("close", "Day-end close: each till uploaded a SAM-signed batch of its journal; "
               "the host's totals matched: " + ", ".join(
                   f"{r.entries} entries{' MISMATCH' if r.mismatch else ''}" for r in reports),
               mismatches=sum(1 for r in reports if r.mismatch))
    clones = host.reports.clones()
    for till in (till1, till2):
        till.terminal.sync()
    try:
        till2.terminal.purchase(till2.reader(clone), 100, tx_type="transit")
        clone_refused = ""
    except Declined as exc:
        clone_refused = f"{exc.reason.label} {exc.reason.name}"
    story.step("clearing", f"Clearing verified every TAC, took each (card, ATC) once and caught "
               f"the clone ({len(clones)} conflict); Dave's card is blacklisted and the next "
               f"tap of the copy was declined: {clone_refused or 'NOT declined'}.",
               clones=len(clones))

    for till in (till1, till2):
        till.terminal.sync()
    final_sync_at = host.now()
    for who in ("Alice", "Bob", "Carol"):
        till2.terminal.resolve(till2.reader(cards[who]))
    till2.terminal.flush()
    for till in (till1, till2):
        till.terminal.close_day()
    bob = ", ".join(slots(cards["Bob"])) or "no debt left"
    story.step("next tap", "Every card tapped once more at the synced kiosk, which wrote back "
               f"what was still pending (Bob's bank paid his debt: {bob}) and reported it; "
               "the tills uploaded what their journals still held.")

    today = dt.datetime.fromtimestamp(host.now(), dt.UTC).date()
    views = host.settlement.run(today)
    payout = host.settlement.payout_file(today)
    pain001 = workdir / "pain001.xml"
    if payout:
        pain001.write_bytes(payout)
    table = [v.to_json() for v in views]
    story.step("settle", "Settlement: merchants paid for the day, payout file in ISO 20022 "
               f"pain.001 ({len(payout or b'')} bytes).", settlements=table)

    checks = rules.check(rules.DemoDay(
        host, list(cards.values()),
        [rules.Copied(cards["Dave"], clone, copied_at.atc + copied_at.load_counter)],
        {t.terminal.terminal_id.hex(): (t.merchant_id, t.terminal) for t in (till1, till2)},
        final_sync_at))
    return {
        "settlement": table,
        "invariants": {k: v[0] for k, v in checks.items()},
        "details": {k: v[1] for k, v in checks.items()},
        "receipts": story.receipts,
    }
