"""`tallypurse phone`: the phone as a card (wallet) and as a reader (read, top up).

As a card: ``phone new`` personalises a phone wallet file (the phone's secure
element or its host-card-emulation store) into the phone's own security domain;
``phone add-purse`` installs the purse over the air into a phone already in the
field; ``tallypurse card serve PHONE_FILE`` puts the phone in the virtual reader's
field, where a terminal pays with it exactly as with a card.

As a reader: ``phone read`` shows a card's balance, log, credit record and debts
through the purse's own APDUs, from a card file or through any PC/SC reader;
``phone topup`` tops the card up online: INITIALIZE LOAD on the card, the host's
load authorisation relayed to the card (CREDIT), the card's LOAD record confirmed
to the host (:func:`topup`, which takes any :class:`~tallypurse.core.hostapi.HostApi`).

pyscard (the ``pcsc`` extra) is imported only when ``--pcsc`` is used.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import typer

from tallypurse.card.card import Card
from tallypurse.core import sw as SW
from tallypurse.core.errors import BadInput, CardError, CryptoError, DecodeError, TallypurseError
from tallypurse.core.hostapi import (
    HostApi,
    HostRejected,
    HostUnavailable,
    LoadConfirm,
    LoadRequest,
)
from tallypurse.core.messages import LoadAuthorisation, SignedEvent
from tallypurse.core.money import Money, currency, currency_by_numeric, format_minor
from tallypurse.core.protocol import DebtState, EventKind, TxType
from tallypurse.core.purse_client import PurseClient
from tallypurse.core.transport import ApduClient, CardTransport
from tallypurse.host.tsm.membership import MembershipClient, MembershipPass, install_membership
from tallypurse.host.tsm.personalise import PursePolicy
from tallypurse.host.tsm.phone import install_phone_purse, issue_phone
from tallypurse.keystore.software import SoftwareKeyStore

from .card import parse_serial
from .keys import fail, passphrase_from_env_or_prompt

app = typer.Typer(
    help="The phone as a card (wallet: new, add-purse) and as a reader (read, topup).",
    no_args_is_help=True,
)

SAM_PASSPHRASE_ENV = "TALLYPURSE_SAM_PASSPHRASE"
DAY = 24 * 3600


# --- reader mode: reading a card ----------------------------------------------------------------
def _kind(kind: int) -> str:
    try:
        return EventKind(kind).name.lower()
    except ValueError:
        return str(kind)


def _tx_type(value: int) -> str:
    try:
        return TxType(value).name.lower()
    except ValueError:
        return str(value)


def read_card(transport: CardTransport) -> dict[str, Any]:
    """Everything `phone read` shows, read through the purse's own APDUs (and the
    membership pass's, when the card carries one)."""
    client = ApduClient(transport)
    purse = PurseClient(client)
    try:
        selected = purse.select()
    except CardError as exc:
        if exc.sw == SW.FILE_NOT_FOUND:
            raise BadInput("this card carries no purse (6A82): nothing to read") from None
        raise
    if not selected.card_id:
        raise BadInput("the purse on this card is not personalised")
    data = purse.card_data()
    ctr = purse.counters()
    cur = currency_by_numeric(data.currency)
    info: dict[str, Any] = {
        "card_id": data.card_id.hex(),
        "currency": cur.code,
        "balance": ctr.balance,
        "balance_text": format_minor(ctr.balance, cur),
        "cap": data.cap,
        "offline_limit": data.offline_limit,
        "expiry": data.expiry,
        "atc": ctr.atc,
        "load_counter": ctr.load_counter,
        "online_counter": ctr.online_counter,
        "blocked": bool(data.flags & 0x01),
    }
    info["log"] = [
        {
            "kind": _kind(e.event.kind),
            "atc": e.event.atc,
            "load_counter": e.event.load_counter,
            "amount": e.event.amount,
            "split": e.event.split,
            "tx_type": _tx_type(e.event.tx_type),
            "balance_before": e.event.balance_before,
            "balance_after": e.event.balance_after,
            "terminal_id": e.event.terminal_id.hex(),
            "time": e.event.time,
        }
        for e in purse.log()
    ]
    try:
        credit = purse.credit_record().record
    except CardError as exc:
        if exc.sw != SW.REF_DATA_NOT_FOUND:
            raise
        info["credit_record"] = None
    else:
        info["credit_record"] = {
            "version": credit.version,
            "grade": credit.grade_letter,
            "per_tap_overdraft": credit.per_tap_overdraft,
            "max_outstanding": credit.max_outstanding,
            "max_slots": credit.max_slots,
            "allowed_types": [t.name.lower() for t in TxType if credit.allowed_types >> t & 1],
            "expires": credit.expires,
        }
    info["debts"] = [
        {"slot": i, "state": DebtState(s.state).name.lower(), "ref": s.ref, "amount": s.amount}
        for i, s in enumerate(purse.debts())
        if s.state != DebtState.FREE
    ]
    info["membership"] = _read_membership(client)
    return info


def _read_membership(client: ApduClient) -> dict[str, Any] | None:
    member = MembershipClient(client)
    try:
        member.select()
        state = member.read()
    except CardError as exc:
        if exc.sw in (SW.FILE_NOT_FOUND, SW.CONDITIONS_NOT_SATISFIED):
            return None
        raise
    return {
        "holder": state.holder.decode("utf-8", "replace"),
        "not_before": state.not_before,
        "not_after": state.not_after,
        "points": state.points,
        "entitlements": [bit for bit in range(32) if state.entitled(bit)],
    }


# --- reader mode: topping a card up through the host ---------------------------------------
@dataclass(frozen=True, slots=True)
class PendingLoad:
    """A load authorisation handed to the card whose answer never came back."""

    idempotency_key: str
    authorisation: LoadAuthorisation


class TopupInterrupted(TallypurseError):
    """The card's answer to CREDIT was lost: tap again and call :func:`finish_topup`."""

    code = 1401

    def __init__(self, pending: PendingLoad) -> None:
        super().__init__("the card's answer to the load was lost: tap the card again")
        self.pending = pending


@dataclass(frozen=True, slots=True)
class TopupResult:
    event: SignedEvent  # the card's LOAD record
    idempotency_key: str
    confirmed: bool  # the host acknowledged the record
    note: str = ""  # why it is not confirmed


def topup(
    transport: CardTransport,
    host: HostApi,
    amount: int,
    *,
    funding: Literal["cash", "online_account"] = "online_account",
    idempotency_key: str | None = None,
) -> TopupResult:
    """Top the card up online: INITIALIZE LOAD → host.load_authorisation → CREDIT →
    host.confirm_load. The phone relays; only the host signs, and the card checks the
    host's signature and that the authorisation is bound to its own challenge.

    Raises HostUnavailable / HostRejected when no authorisation came (nothing was
    loaded), CardError when the card refused it (nothing was loaded), and
    :class:`TopupInterrupted` when the card's answer was lost (it may have loaded).
    """
    if not 0 < amount <= 0xFFFFFFFF:
        raise BadInput("amount must be positive")
    purse = PurseClient(ApduClient(transport))
    purse.select()
    session = purse.initialize_load()
    key = idempotency_key or f"phone:{session.card_id.hex()}:{secrets.token_hex(8)}"
    answer = host.load_authorisation(
        LoadRequest(
            idempotency_key=key,
            card_id=session.card_id.hex(),
            load_counter=session.load_counter,
            card_challenge=session.challenge.hex(),
            amount=amount,
            currency=currency_by_numeric(session.currency).code,
            funding=funding,
        )
    )
    try:
        auth = LoadAuthorisation.parse(bytes.fromhex(answer.authorisation))
        signature = bytes.fromhex(answer.signature)
        certificate = bytes.fromhex(answer.load_certificate)
    except (ValueError, DecodeError) as exc:
        raise CryptoError(f"the host's load authorisation does not parse: {exc}") from None
    if (auth.card_id, auth.load_counter, auth.card_challenge, auth.amount, auth.currency) != (
        session.card_id, session.load_counter, session.challenge, amount, session.currency
    ):
        raise CryptoError("the host's load authorisation is not for this card, session "
                          "or amount; not relayed")
    try:
        event = purse.credit(auth, signature, certificate)
    except CardError:
        raise
    except Exception as exc:  # the answer was lost on the way back: it may have loaded
        raise TopupInterrupted(PendingLoad(key, auth)) from exc
    return _confirm(host, key, event)


def _confirm(host: HostApi, key: str, event: SignedEvent) -> TopupResult:
    try:
        host.confirm_load(LoadConfirm(idempotency_key=key, record=event.to_bytes().hex()))
    except (HostUnavailable, HostRejected) as exc:
        return TopupResult(event, key, False, str(exc))
    return TopupResult(event, key, True)


def find_load(transport: CardTransport, auth: LoadAuthorisation) -> SignedEvent | None:
    """The card's LOAD record for this authorisation, if the card took it (its log)."""
    purse = PurseClient(ApduClient(transport))
    purse.select()
    for record in purse.log():
        e = record.event
        if (e.kind == EventKind.LOAD and e.card_id == auth.card_id
                and e.terminal_challenge == auth.auth_id
                and e.card_challenge == auth.card_challenge):
            return record
    return None


def finish_topup(transport: CardTransport, host: HostApi,
                 pending: PendingLoad) -> TopupResult | None:
    """After :class:`TopupInterrupted`, at the next tap: the LOAD record when the card
    took the load (confirmed to the host), None when it did not (nothing was loaded;
    the authorisation is bound to a spent challenge and can never load)."""
    record = find_load(transport, pending.authorisation)
    if record is None:
        return None
    return _confirm(host, pending.idempotency_key, record)


# --- transports ----------------------------------------------------------------------------------
@contextlib.contextmanager
def open_transport(card_file: Path | None, pcsc: bool,
                   reader: str | None) -> Iterator[tuple[CardTransport, str]]:
    """The card to talk to: a card file in process, or the card in a PC/SC reader."""
    if (card_file is None) == (not pcsc):
        raise BadInput("give either --card CARD_FILE or --pcsc")
    if card_file is not None:
        yield Card.open(card_file), str(card_file)
        return
    from .bench_pcsc import PcscTransport, PcscUnavailable, connect_reader, release

    try:
        connection = connect_reader(reader or "", timeout=10.0)
    except ImportError:
        raise BadInput("--pcsc needs pyscard (the 'pcsc' extra)") from None
    except PcscUnavailable as exc:
        raise BadInput(str(exc)) from None
    try:
        yield PcscTransport(connection), str(connection.getReader())
    finally:
        release(connection)


# --- commands: phone as a card ------------------------------------------------------------------
def _entitlement_mask(text: str) -> int:
    mask = 0
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            bit = int(part)
        except ValueError:
            raise typer.BadParameter("entitlements are bit numbers 0..31, e.g. 0,3") from None
        if not 0 <= bit <= 31:
            raise typer.BadParameter("entitlement bits are 0..31")
        mask |= 1 << bit
    return mask


@app.command("new")
def new(
    keystore: Annotated[Path, typer.Option(help="Keystore directory (tallypurse keys init).")],
    serial: Annotated[str, typer.Option(help="Phone serial: 16 hex digits; its card id.")],
    out: Annotated[Path, typer.Option(help="Phone wallet file to write.")],
    with_purse: Annotated[bool, typer.Option(
        "--with-purse/--without-purse", help="Install the purse now (or later: add-purse).")
    ] = True,
    currency_code: Annotated[str, typer.Option("--currency", help="ISO 4217 code.")] = "EUR",
    cap: Annotated[str, typer.Option(help="Purse cap, e.g. 1000.00.")] = "1000.00",
    offline_limit: Annotated[str, typer.Option(help="Per-tap offline limit.")] = "100.00",
    member: Annotated[str | None, typer.Option(
        help="Also install a membership pass for this holder id (1-16 bytes of UTF-8).")
    ] = None,
    entitlements: Annotated[str, typer.Option(
        help="Membership entitlement bits, comma-separated (0..31).")] = "0",
    valid_days: Annotated[int, typer.Option(min=1, help="Membership validity in days.")] = 365,
) -> None:
    """Personalise a phone wallet: own domain, card id and keys; purse; optional pass.

    The purse goes into the phone's own security domain unless --without-purse (add it
    later over the air with `phone add-purse`); --member also installs a membership pass.
    """
    phone_serial = parse_serial(serial)
    mask = _entitlement_mask(entitlements)
    if out.exists():
        fail(f"{out} already exists; choose another phone file")
    if not with_purse and member is None:
        typer.echo("note: a phone without purse or pass: add one later (phone add-purse)",
                   err=True)
    now = int(time.time())
    try:
        cur = currency(currency_code)
        policy = PursePolicy(cur, cap=Money.parse(cap, cur.code).minor,
                             offline_limit=Money.parse(offline_limit, cur.code).minor)
        issued_pass = None
        if member is not None:
            issued_pass = MembershipPass(member.encode(), now, now + valid_days * DAY, mask)
        ks = SoftwareKeyStore.open(keystore, passphrase_from_env_or_prompt(confirm=False))
        phone = Card.manufacture(phone_serial, path=out)
        try:
            issued = issue_phone(phone, ks, serial=phone_serial, now=now, policy=policy,
                                 with_purse=with_purse)
            if issued_pass is not None:
                install_membership(phone, ks, phone_serial, issued_pass)
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    except TallypurseError as exc:
        fail(exc.message)
    parts = ["purse" if issued.purse else "no purse"]
    if issued_pass is not None:
        parts.append(f"membership pass for {member}")
    typer.echo(f"personalised phone wallet {phone_serial.hex()} into {out} "
               f"({', '.join(parts)}); serve it with `tallypurse card serve {out}`")


@app.command("add-purse")
def add_purse(
    phone_file: Annotated[Path, typer.Argument(help="Phone wallet file.")],
    keystore: Annotated[Path, typer.Option(help="Keystore directory.")],
    currency_code: Annotated[str, typer.Option("--currency", help="ISO 4217 code.")] = "EUR",
    cap: Annotated[str, typer.Option(help="Purse cap, e.g. 1000.00.")] = "1000.00",
    offline_limit: Annotated[str, typer.Option(help="Per-tap offline limit.")] = "100.00",
) -> None:
    """Install the purse over the air into a phone already in the field."""
    try:
        phone = Card.open(phone_file)
        cur = currency(currency_code)
        policy = PursePolicy(cur, cap=Money.parse(cap, cur.code).minor,
                             offline_limit=Money.parse(offline_limit, cur.code).minor)
        ks = SoftwareKeyStore.open(keystore, passphrase_from_env_or_prompt(confirm=False))
        issued = install_phone_purse(phone, ks, serial=phone.serial, now=int(time.time()),
                                     policy=policy)
    except TallypurseError as exc:
        fail(exc.message)
    typer.echo(f"installed the purse on phone {issued.card_id.hex()} ({phone_file})")


# --- commands: phone as a reader ------------------------------------------------------------------
CardFileOpt = Annotated[Path | None, typer.Option(
    "--card", exists=True, dir_okay=False, help="Read a card file in process.")]
PcscOpt = Annotated[bool, typer.Option("--pcsc", help="Read the card in a PC/SC reader.")]
ReaderOpt = Annotated[str | None, typer.Option(
    "--reader", help="PC/SC reader name (prefix); default: the first with a card.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _print_read(info: dict[str, Any]) -> None:
    typer.echo(f"card {info['card_id']}  balance {info['balance_text']}"
               + ("  BLOCKED" if info["blocked"] else ""))
    typer.echo(f"  ATC {info['atc']}  loads {info['load_counter']}  "
               f"cap {info['cap']}  offline limit {info['offline_limit']}")
    cr = info["credit_record"]
    if cr:
        typer.echo(f"  credit grade {cr['grade']} v{cr['version']}: per tap "
                   f"{cr['per_tap_overdraft']}, max outstanding {cr['max_outstanding']}, "
                   f"types {', '.join(cr['allowed_types']) or '-'}")
    else:
        typer.echo("  no credit record")
    for d in info["debts"]:
        typer.echo(f"  debt slot {d['slot']}: ref {d['ref']} amount {d['amount']} "
                   f"{d['state'].upper()}")
    typer.echo(f"  last transactions ({len(info['log'])}):")
    for e in info["log"]:
        split = f" + {e['split']} online" if e["split"] and e["kind"] == "debit" else ""
        typer.echo(f"    {e['kind']:<6} ATC {e['atc']:<5} {e['amount']}{split}  "
                   f"balance {e['balance_before']} -> {e['balance_after']}  "
                   f"terminal {e['terminal_id']}  time {e['time']}")
    m = info["membership"]
    if m:
        typer.echo(f"  membership {m['holder']}: points {m['points']}, valid "
                   f"{m['not_before']}..{m['not_after']}, entitlements {m['entitlements']}")


@app.command("read")
def read(
    card_file: CardFileOpt = None,
    pcsc: PcscOpt = False,
    reader: ReaderOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a card's balance, last transactions, credit record and debts (reader mode)."""
    try:
        with open_transport(card_file, pcsc, reader) as (transport, where):
            info = read_card(transport)
    except TallypurseError as exc:
        fail(exc.message)
    info["reader"] = where
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        _print_read(info)


# The HTTP transport HttpHostClient uses (None: the network); tests substitute one.
http_transport: httpx.BaseTransport | None = None


def _http_host(url: str, sam_file: Path | None) -> tuple[HostApi, Callable[[], None]]:
    """The host service over HTTP, requests signed (RFC 9421) by the SAM the phone app
    was enrolled with at the host (as a terminal is)."""
    from tallypurse.core.httpsig import sign_request
    from tallypurse.sam import PURPOSE_REQUEST, Sam
    from tallypurse.terminal.http_client import HttpHostClient

    sam = None
    sign = None
    if sam_file is not None:
        passphrase = os.environ.get(SAM_PASSPHRASE_ENV) or typer.prompt(
            "SAM passphrase", hide_input=True)
        sam = Sam.open(sam_file, passphrase)
        signer = sam

        def sign(method: str, target: str, body: bytes) -> dict[str, str]:
            return sign_request(method, target, body, key_id=signer.terminal_id.hex(),
                                signer=lambda base: signer.sign(base, purpose=PURPOSE_REQUEST),
                                created=int(time.time()))

    client = HttpHostClient(url, sign_request=sign, transport=http_transport)

    def close() -> None:
        client.close()
        if sam is not None:
            sam.close()

    return client, close


@app.command("topup")
def topup_command(
    amount: Annotated[str, typer.Option("--amount", help="Amount, e.g. 20.00.")],
    host: Annotated[str, typer.Option("--host", help="Host service URL (http/https).")],
    sam: Annotated[Path | None, typer.Option(
        "--sam", exists=True, dir_okay=False,
        help="The enrolled SAM file that signs requests (e.g. a terminal's sam.json); "
             f"passphrase from ${SAM_PASSPHRASE_ENV}.")] = None,
    card_file: CardFileOpt = None,
    pcsc: PcscOpt = False,
    reader: ReaderOpt = None,
    funding: Annotated[str, typer.Option(help="cash or online_account.")] = "online_account",
    as_json: JsonOpt = False,
) -> None:
    """Top a card up online through the host (the phone relays the host-signed load).

    INITIALIZE LOAD on the card, the host's load authorisation relayed to the card
    (CREDIT), the card's load record confirmed to the host.
    """
    if funding not in ("cash", "online_account"):
        fail("--funding is cash or online_account")
    try:
        api, close = _http_host(host, sam)
    except (ValueError, TallypurseError) as exc:
        fail(exc.message if isinstance(exc, TallypurseError) else str(exc))
    try:
        with open_transport(card_file, pcsc, reader) as (transport, _):
            purse = PurseClient(ApduClient(transport))
            selected = purse.select()
            if not selected.card_id:
                raise BadInput("the purse on this card is not personalised")
            cur = currency_by_numeric(selected.currency)
            minor = Money.parse(amount, cur.code).minor
            result = topup(transport, api, minor, funding=funding)  # type: ignore[arg-type]
    except TopupInterrupted as exc:
        fail(f"{exc.message} (authorisation {exc.pending.authorisation.auth_id.hex()})")
    except (HostUnavailable, HostRejected) as exc:
        fail(f"host: {exc}; nothing was loaded")
    except TallypurseError as exc:
        fail(exc.message)
    finally:
        close()
    e = result.event.event
    out = {
        "card_id": e.card_id.hex(),
        "amount": e.amount,
        "repaid_debts": e.split,
        "balance": e.balance_after,
        "balance_text": format_minor(e.balance_after, cur),
        "load_counter": e.load_counter,
        "idempotency_key": result.idempotency_key,
        "confirmed": result.confirmed,
        "note": result.note,
    }
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"loaded {format_minor(e.amount, cur)} onto card {out['card_id']}: "
               f"balance {out['balance_text']}")
    if not result.confirmed:
        typer.echo(f"warning: the host has not acknowledged the load yet ({result.note})",
                   err=True)
