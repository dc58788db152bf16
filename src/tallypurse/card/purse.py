"""The purse applet: the offline wallet on the card.

Commands and byte layouts are specified in docs/protocol.md. Every state
change happens inside the card OS's per-command transaction, so an error
status word leaves the purse exactly as it was, and a power cut leaves it
either before or after the command.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives.asymmetric import ec

from tallypurse.core import cert, crypto, tlv
from tallypurse.core import sw as SW
from tallypurse.core.apdu import Command
from tallypurse.core.errors import CertificateError, CryptoError
from tallypurse.core.messages import (
    FREE_SLOT,
    SIGNED_CREDIT_RECORD_LEN,
    CancelOrder,
    CardEvent,
    CreditRecord,
    DebitOrder,
    DebtOutcome,
    DebtSlot,
    LoadAuthorisation,
    OnlineRequest,
    SignedEvent,
    WriteBackReceipt,
    open_writeback,
    receipt_mac,
)
from tallypurse.core.protocol import (
    CLA_PROPRIETARY,
    CVR_DEBT_NEAR_LIMIT,
    CVR_DEBT_OUTSTANDING,
    CVR_FAILED_DEBT,
    CVR_LOW_BALANCE,
    CVR_NEAR_LIMIT_PERCENT,
    CVR_OFFLINE_AMOUNT,
    CVR_OFFLINE_COUNT,
    CVR_OFFLINE_COUNT_LIMIT,
    CVR_RECORD_AGE_LIMIT,
    CVR_RECORD_AGED,
    CVR_SPLIT,
    DATA_BALANCE,
    DATA_CARD,
    DATA_CERTIFICATE,
    DATA_CREDIT_RECORD,
    DATA_DEBTS,
    FLAG_BLOCKED,
    FLAG_FAILED_DEBT,
    FLAG_HAS_CREDIT,
    FLAG_PERSONALISED,
    T_APP_KEY,
    T_ATC,
    T_BALANCE,
    T_CANCEL_WINDOW,
    T_CAP,
    T_CARD_ID,
    T_CERTIFICATE,
    T_CHALLENGE,
    T_CREDIT_RECORD,
    T_CURRENCY,
    T_DEBT_SLOTS,
    T_DEBTS,
    T_EXPIRY,
    T_FCI,
    T_FCI_AID,
    T_FCI_PROPRIETARY,
    T_FLAGS,
    T_ISSUER_ROOT,
    T_LOAD_COUNTER,
    T_LOG_SIZE,
    T_OFFLINE_LIMIT,
    T_ONLINE_COUNTER,
    T_PUBLIC_KEY,
    T_WRITEBACK_SEQ,
    CertRole,
    DebtState,
    EventKind,
    Ins,
    WriteBackAction,
)
from tallypurse.core.sw import ISOException

from .applet import Applet

DEBT_SLOTS = 4
MIN_LOG, MAX_LOG = 10, 32
U32 = 0xFFFFFFFF
NO_SLOT = 0xFF

_CFG = struct.Struct(">8sHIIIHB")
_CTR = struct.Struct(">IIIIIIBB")
_OFFLINE = struct.Struct(">II")  # debits, and their total, since the last host contact


@dataclass(frozen=True, slots=True)
class Config:
    card_id: bytes
    currency: int
    cap: int
    offline_limit: int
    expiry: int
    cancel_window: int
    log_size: int


@dataclass(frozen=True, slots=True)
class Counters:
    balance: int
    atc: int
    load_counter: int
    online_counter: int
    writeback_seq: int
    last_time: int  # latest host-signed time seen (loads); terminal clocks never move it
    log_next: int
    blocked: int


class BalanceReader:
    """The purse's one exported interface: a read-only view of balance and card id
    for applets the purse trusts (see PurseApplet.shareable)."""

    __slots__ = ("__purse",)

    def __init__(self, purse: PurseApplet) -> None:
        self.__purse = purse

    def balance(self) -> tuple[int, int]:
        """(balance in minor units, ISO 4217 numeric currency)."""
        return self.__purse._counters().balance, self.__purse._config().currency


class PurseApplet(Applet):
    # clients allowed to read the balance through the firewall
    BALANCE_CLIENTS: frozenset[bytes] = frozenset()

    def __init__(self, ctx):  # type: ignore[no-untyped-def]
        super().__init__(ctx)
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._reset_session()

    def _reset_session(self) -> None:
        self._challenge: bytes | None = None
        self._mode: str | None = None
        self._terminal_key: bytes | None = None
        self._terminal_id: bytes | None = None

    # --- persistent state ---------------------------------------------------------------
    def _config(self) -> Config:
        raw = self.ctx.store.get("cfg")
        if raw is None:
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "purse not personalised")
        return Config(*_CFG.unpack(raw))

    def _counters(self) -> Counters:
        raw = self.ctx.store.get("ctr")
        if raw is None:
            return Counters(0, 0, 0, 0, 0, 0, 0, 0)
        return Counters(*_CTR.unpack(raw))

    def _put_counters(self, c: Counters) -> None:
        self.ctx.store.put(
            "ctr",
            _CTR.pack(c.balance, c.atc, c.load_counter, c.online_counter, c.writeback_seq,
                      c.last_time, c.log_next, c.blocked),
        )

    def _personalised(self) -> bool:
        return self.ctx.store.get("perso") == b"\x01"

    def _require_personalised(self) -> Config:
        if not self._personalised():
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "purse not personalised")
        return self._config()

    def _slots(self) -> list[DebtSlot]:
        out = []
        for i in range(DEBT_SLOTS):
            raw = self.ctx.store.get(f"debt{i}")
            out.append(DebtSlot.parse(raw) if raw else FREE_SLOT)
        return out

    def _put_slot(self, i: int, slot: DebtSlot) -> None:
        self.ctx.store.put(f"debt{i}", slot.to_bytes())

    def _credit(self) -> tuple[CreditRecord, bytes] | None:
        raw = self.ctx.store.get("credit")
        if raw is None:
            return None
        return CreditRecord.parse(raw[: CreditRecord.size()]), raw

    def _root(self) -> dict[cert.KeyRef, bytes]:
        raw = self.ctx.store.get("root")
        if raw is None:
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "no issuer root")
        f = tlv.decode_map(raw, required=(0x42, 0x86))
        return {cert.KeyRef.decode(f[0x42]): f[0x86]}

    def _signing_key(self) -> ec.EllipticCurvePrivateKey:
        if self._key is None:
            raw = self.ctx.store.get("skey")
            if raw is None:
                raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "no card key")
            self._key = crypto.private_key_from_scalar(raw)
        return self._key

    def _app_key(self) -> bytes:
        raw = self.ctx.store.get("app")
        if raw is None:
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "no APP key")
        return raw[1:]

    def _flags(self, ctr: Counters) -> int:
        flags = 0
        if ctr.blocked:
            flags |= FLAG_BLOCKED
        if self._personalised():
            flags |= FLAG_PERSONALISED
        if self.ctx.store.get("credit") is not None:
            flags |= FLAG_HAS_CREDIT
        if any(s.state == DebtState.FAILED for s in self._slots()):
            flags |= FLAG_FAILED_DEBT
        return flags

    def _log(self, cfg: Config, ctr: Counters, record: SignedEvent) -> Counters:
        self.ctx.store.put(f"log{ctr.log_next}", record.to_bytes())
        return replace(ctr, log_next=(ctr.log_next + 1) % cfg.log_size)

    def _records(self, cfg: Config, ctr: Counters) -> list[SignedEvent]:
        """Log records, most recent first."""
        out = []
        for k in range(cfg.log_size):
            i = (ctr.log_next - 1 - k) % cfg.log_size
            raw = self.ctx.store.get(f"log{i}")
            if raw is None:
                break
            out.append(SignedEvent.parse(raw))
        return out

    def _sign_event(self, event: CardEvent) -> SignedEvent:
        return SignedEvent(event, crypto.sign(self._signing_key(), event.signed_data()))

    # --- card verification results (docs/protocol.md 11.11) --------------------------------
    def _offline(self) -> tuple[int, int]:
        """(debits, their purse and split total) since the last host contact: the last
        committed CREDIT or applied WRITE-BACK. Each saturates at FFFFFFFF."""
        raw = self.ctx.store.get("ofl")
        if raw is None:
            return 0, 0
        count, total = _OFFLINE.unpack(raw)
        return count, total

    def _put_offline(self, count: int, total: int) -> None:
        if count == 0 and total == 0:
            self.ctx.store.delete("ofl")
        else:
            self.ctx.store.put("ofl", _OFFLINE.pack(min(count, U32), min(total, U32)))

    def _cvr(self, cfg: Config, slots: list[DebtSlot], *, time: int, offline: tuple[int, int],
             debit: DebitOrder | None = None, balance_after: int = 0) -> int:
        """The card's evaluation of an event, from the state after it: ``slots`` and
        ``offline`` as they stand after the event, ``time`` the event's time; for a
        DEBIT its order and the balance it leaves."""
        cvr = 0
        if debit is not None:
            if debit.split:
                cvr |= CVR_SPLIT
            if balance_after < debit.amount + debit.split:
                cvr |= CVR_LOW_BALANCE
        used = [s for s in slots if s.state != DebtState.FREE]
        if used:
            cvr |= CVR_DEBT_OUTSTANDING
        if any(s.state == DebtState.FAILED for s in used):
            cvr |= CVR_FAILED_DEBT
        credit = self._credit()
        if credit is not None:
            record = credit[0]
            outstanding = sum(s.amount for s in used)
            usable = min(DEBT_SLOTS, record.max_slots)
            if used and (
                outstanding * 100 >= record.max_outstanding * CVR_NEAR_LIMIT_PERCENT
                or all(s.state != DebtState.FREE for s in slots[:usable])
            ):
                cvr |= CVR_DEBT_NEAR_LIMIT
            if time > record.expires or time - record.issued > CVR_RECORD_AGE_LIMIT:
                cvr |= CVR_RECORD_AGED
        count, total = offline
        if count >= CVR_OFFLINE_COUNT_LIMIT:
            cvr |= CVR_OFFLINE_COUNT
        if total > cfg.cap:
            cvr |= CVR_OFFLINE_AMOUNT
        return cvr

    # --- applet life ---------------------------------------------------------------------
    def select(self) -> bytes:
        self._reset_session()
        prop = b""
        if self.ctx.store.get("cfg") is not None:
            cfg = self._config()
            prop = tlv.encode_many(
                [
                    (T_CARD_ID, cfg.card_id),
                    (T_CURRENCY, cfg.currency.to_bytes(2, "big")),
                    (T_FLAGS, bytes([self._flags(self._counters())])),
                ]
            )
        return tlv.encode(
            T_FCI, tlv.encode(T_FCI_AID, self.ctx.aid) + tlv.encode(T_FCI_PROPRIETARY, prop)
        )

    def deselect(self) -> None:
        self._reset_session()

    def shareable(self, client_aid: bytes, name: str) -> object | None:
        if name == "balance" and client_aid in self.BALANCE_CLIENTS:
            return BalanceReader(self)
        return None

    # --- dispatch ---------------------------------------------------------------------------
    def process(self, cmd: Command) -> bytes:
        if cmd.cla not in (0x00, CLA_PROPRIETARY):
            raise ISOException(SW.CLA_NOT_SUPPORTED)
        handler = _HANDLERS.get((cmd.cla, cmd.ins))
        if handler is None:
            raise ISOException(SW.INS_NOT_SUPPORTED)
        return handler(self, cmd)

    # --- reads -------------------------------------------------------------------------------
    def _get_data(self, cmd: Command) -> bytes:
        tag = (cmd.p1 << 8) | cmd.p2
        if cmd.data:
            raise ISOException(SW.WRONG_LENGTH)
        cfg = self._require_personalised()
        ctr = self._counters()
        if tag == DATA_CARD:
            return tlv.encode_many(
                [
                    (T_CARD_ID, cfg.card_id),
                    (T_CURRENCY, cfg.currency.to_bytes(2, "big")),
                    (T_CAP, cfg.cap.to_bytes(4, "big")),
                    (T_OFFLINE_LIMIT, cfg.offline_limit.to_bytes(4, "big")),
                    (T_EXPIRY, cfg.expiry.to_bytes(4, "big")),
                    (T_CANCEL_WINDOW, cfg.cancel_window.to_bytes(2, "big")),
                    (T_LOG_SIZE, bytes([cfg.log_size])),
                    (T_DEBT_SLOTS, bytes([DEBT_SLOTS])),
                    (T_FLAGS, bytes([self._flags(ctr)])),
                    (T_APP_KEY, (self.ctx.store.get("app") or b"\x00")[:1]),
                ]
            )
        if tag == DATA_BALANCE:
            return tlv.encode_many(
                [
                    (T_BALANCE, ctr.balance.to_bytes(4, "big")),
                    (T_ATC, ctr.atc.to_bytes(4, "big")),
                    (T_LOAD_COUNTER, ctr.load_counter.to_bytes(4, "big")),
                    (T_ONLINE_COUNTER, ctr.online_counter.to_bytes(4, "big")),
                    (T_WRITEBACK_SEQ, ctr.writeback_seq.to_bytes(4, "big")),
                ]
            )
        if tag == DATA_CERTIFICATE:
            raw = self.ctx.store.get("cert")
            if raw is None:
                raise ISOException(SW.REF_DATA_NOT_FOUND, "no certificate")
            return raw
        if tag == DATA_CREDIT_RECORD:
            credit = self._credit()
            if credit is None:
                raise ISOException(SW.REF_DATA_NOT_FOUND, "no credit record")
            return credit[1]
        if tag == DATA_DEBTS:
            return b"".join(s.to_bytes() for s in self._slots())
        raise ISOException(SW.REF_DATA_NOT_FOUND)

    def _read_record(self, cmd: Command) -> bytes:
        if cmd.p2 != 0x04 or cmd.p1 == 0 or cmd.data:
            raise ISOException(SW.INCORRECT_P1P2)
        cfg = self._require_personalised()
        records = self._records(cfg, self._counters())
        if cmd.p1 > len(records):
            raise ISOException(SW.RECORD_NOT_FOUND)
        return records[cmd.p1 - 1].to_bytes()

    def _transaction_proof(self, cmd: Command) -> bytes:
        if cmd.p1 or cmd.p2:
            raise ISOException(SW.INCORRECT_P1P2)
        if len(cmd.data) != 4:
            raise ISOException(SW.WRONG_LENGTH)
        atc = int.from_bytes(cmd.data, "big")
        cfg = self._require_personalised()
        for rec in self._records(cfg, self._counters()):
            if rec.event.kind in (EventKind.DEBIT, EventKind.CANCEL) and rec.event.atc == atc:
                return rec.to_bytes()
        raise ISOException(SW.RECORD_NOT_FOUND, "no such ATC in the log")

    # --- purchase ------------------------------------------------------------------------------
    def _initialize_purchase(self, cmd: Command) -> bytes:
        self._reset_session()
        if cmd.p1 or cmd.p2:
            raise ISOException(SW.INCORRECT_P1P2)
        cfg = self._require_personalised()
        ctr = self._counters()
        try:
            # The card has no clock: it cannot judge a not-before date, only refuse a
            # certificate that expired before the latest time it has seen.
            parsed = cert.parse(cmd.data)
            c = cert.verify(parsed, self._root(), role=CertRole.TERMINAL,
                            at=max(ctr.last_time, parsed.not_before))
        except CertificateError:
            raise ISOException(SW.INVALID_CERTIFICATE) from None
        if len(c.holder) != 8:
            raise ISOException(SW.INVALID_CERTIFICATE, "terminal id must be 8 bytes")
        self._terminal_key = c.public_key
        self._terminal_id = c.holder
        self._challenge = self.ctx.random(8)
        self._mode = "purchase"
        items = [
            (T_CARD_ID, cfg.card_id),
            (T_ATC, ctr.atc.to_bytes(4, "big")),
            (T_LOAD_COUNTER, ctr.load_counter.to_bytes(4, "big")),
            (T_BALANCE, ctr.balance.to_bytes(4, "big")),
            (T_CURRENCY, cfg.currency.to_bytes(2, "big")),
            (T_CHALLENGE, self._challenge),
            (T_FLAGS, bytes([self._flags(ctr)])),
            (T_OFFLINE_LIMIT, cfg.offline_limit.to_bytes(4, "big")),
            (T_EXPIRY, cfg.expiry.to_bytes(4, "big")),
            (T_DEBTS, b"".join(s.to_bytes() for s in self._slots())),
        ]
        credit = self._credit()
        if credit is not None:
            items.append((T_CREDIT_RECORD, credit[1]))
        return tlv.encode_many(items)

    def _check_order(
        self, cmd: Command, layout: type[DebitOrder]
    ) -> tuple[Config, Counters, DebitOrder]:
        if cmd.p1 or cmd.p2:
            raise ISOException(SW.INCORRECT_P1P2)
        if self._mode != "purchase" or self._terminal_key is None:
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "no INITIALIZE PURCHASE")
        if self._challenge is None:
            raise ISOException(SW.REPLAY, "this session's challenge is already spent")
        size = layout.size()
        if len(cmd.data) != size + crypto.SIG_LEN:
            raise ISOException(SW.WRONG_LENGTH)
        order = layout.parse(cmd.data[:size])
        if not crypto.verify(self._terminal_key, cmd.data[size:], order.signed_data()):
            raise ISOException(SW.INVALID_SIGNATURE)
        cfg = self._config()
        ctr = self._counters()
        if (
            order.card_id != cfg.card_id
            or order.atc != ctr.atc
            or not crypto.constant_time_equal(order.card_challenge, self._challenge)
        ):
            raise ISOException(SW.REPLAY, "order not bound to this card session")
        if order.terminal_id != self._terminal_id:
            raise ISOException(SW.SECURITY_NOT_SATISFIED, "order from another terminal")
        if order.currency != cfg.currency:
            raise ISOException(SW.WRONG_DATA, "currency")
        if ctr.blocked:
            raise ISOException(SW.CARD_BLOCKED)
        if order.time > cfg.expiry:
            raise ISOException(SW.CARD_EXPIRED)
        if ctr.atc >= U32:
            raise ISOException(SW.COUNTER_EXHAUSTED)
        return cfg, ctr, order

    def _debit(self, cmd: Command) -> bytes:
        cfg, ctr, order = self._check_order(cmd, DebitOrder)
        amount, split = order.amount, order.split
        if amount + split == 0:
            raise ISOException(SW.WRONG_DATA, "zero amount")
        if amount > cfg.offline_limit:
            raise ISOException(SW.OFFLINE_LIMIT_EXCEEDED)
        if amount > ctr.balance:
            raise ISOException(SW.INSUFFICIENT_FUNDS)
        slot_index = NO_SLOT
        slots = self._slots()
        if split:
            slot_index = self._credit_check(order, ctr, slots)
            slots[slot_index] = DebtSlot(DebtState.PENDING, ctr.atc + 1, split)
        count, total = self._offline()
        offline = (count + 1, min(total + amount + split, U32))
        cvr = self._cvr(cfg, slots, time=order.time, offline=offline, debit=order,
                        balance_after=ctr.balance - amount)
        new_atc = ctr.atc + 1
        event = CardEvent(
            kind=EventKind.DEBIT,
            card_id=cfg.card_id,
            atc=new_atc,
            load_counter=ctr.load_counter,
            amount=amount,
            split=split,
            currency=cfg.currency,
            tx_type=order.tx_type,
            balance_before=ctr.balance,
            balance_after=ctr.balance - amount,
            terminal_id=order.terminal_id,
            terminal_seq=order.terminal_seq,
            time=order.time,
            card_challenge=order.card_challenge,
            terminal_challenge=order.terminal_challenge,
            debt_slot=slot_index,
            cvr=cvr,
        )
        record = self._sign_event(event)
        if slot_index != NO_SLOT:
            self._put_slot(slot_index, slots[slot_index])
        self._put_offline(*offline)
        ctr = replace(ctr, balance=event.balance_after, atc=new_atc)
        self._put_counters(self._log(cfg, ctr, record))
        self._challenge = None
        return (
            new_atc.to_bytes(4, "big")
            + event.balance_after.to_bytes(4, "big")
            + bytes([slot_index])
            + cvr.to_bytes(2, "big")
            + record.tac
        )

    def _credit_check(self, order: DebitOrder, ctr: Counters, slots: list[DebtSlot]) -> int:
        """The card's own enforcement of its credit record for a split debit."""
        credit = self._credit()
        if credit is None:
            raise ISOException(SW.CREDIT_NOT_ALLOWED, "no credit record")
        record = credit[0]
        if order.amount != ctr.balance:
            raise ISOException(SW.WRONG_DATA, "a split debit takes the whole purse")
        if (
            record.grade == 0
            or order.time > record.expires
            or not (record.allowed_types >> order.tx_type) & 1
            or order.tx_type > 31
            or order.split > record.per_tap_overdraft
        ):
            raise ISOException(SW.CREDIT_NOT_ALLOWED)
        if any(s.state == DebtState.FAILED for s in slots):
            raise ISOException(SW.CREDIT_NOT_ALLOWED, "a failed debt is outstanding")
        outstanding = sum(s.amount for s in slots if s.state != DebtState.FREE)
        if outstanding + order.split > record.max_outstanding:
            raise ISOException(SW.CREDIT_NOT_ALLOWED, "maximum outstanding debt")
        usable = min(DEBT_SLOTS, record.max_slots)
        for i in range(usable):
            if slots[i].state == DebtState.FREE:
                return i
        raise ISOException(SW.NO_FREE_DEBT_SLOT)

    def _cancel(self, cmd: Command) -> bytes:
        cfg, ctr, order = self._check_order(cmd, CancelOrder)
        records = self._records(cfg, ctr)
        last = records[0].event if records else None
        if (
            last is None
            or last.kind != EventKind.DEBIT
            or last.atc != ctr.atc
            or last.terminal_id != order.terminal_id
            or last.amount != order.amount
            or last.split != order.split
        ):
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "not this terminal's last debit")
        if not last.time <= order.time <= last.time + cfg.cancel_window:
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "cancel window has passed")
        slots = self._slots()
        if last.debt_slot != NO_SLOT:
            slot = slots[last.debt_slot]
            if slot.state != DebtState.PENDING or slot.ref != last.atc:
                raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "the debt has an outcome")
            self._put_slot(last.debt_slot, FREE_SLOT)
            slots[last.debt_slot] = FREE_SLOT
        count, total = self._offline()  # the cancelled debit no longer counts
        offline = (max(count - 1, 0), max(total - last.amount - last.split, 0))
        self._put_offline(*offline)
        cvr = self._cvr(cfg, slots, time=order.time, offline=offline)
        new_atc = ctr.atc + 1
        event = CardEvent(
            kind=EventKind.CANCEL,
            card_id=cfg.card_id,
            atc=new_atc,
            load_counter=ctr.load_counter,
            amount=last.amount,
            split=last.split,
            currency=cfg.currency,
            tx_type=last.tx_type,
            balance_before=ctr.balance,
            balance_after=ctr.balance + last.amount,
            terminal_id=order.terminal_id,
            terminal_seq=order.terminal_seq,
            time=order.time,
            card_challenge=order.card_challenge,
            terminal_challenge=order.terminal_challenge,
            debt_slot=last.debt_slot,
            cvr=cvr,
        )
        record = self._sign_event(event)
        ctr = replace(ctr, balance=event.balance_after, atc=new_atc)
        self._put_counters(self._log(cfg, ctr, record))
        self._challenge = None
        return (
            new_atc.to_bytes(4, "big")
            + event.balance_after.to_bytes(4, "big")
            + cvr.to_bytes(2, "big")
            + record.tac
        )

    def _online_authorise(self, cmd: Command) -> bytes:
        if cmd.p1 or cmd.p2:
            raise ISOException(SW.INCORRECT_P1P2)
        if self._mode != "purchase" or self._terminal_id is None:
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "no INITIALIZE PURCHASE")
        if len(cmd.data) != 27:
            raise ISOException(SW.WRONG_LENGTH)
        amount, currency, tx_type, time = struct.unpack(">IHBI", cmd.data[:11])
        host_challenge = cmd.data[11:]
        cfg = self._config()
        ctr = self._counters()
        if amount == 0 or currency != cfg.currency:
            raise ISOException(SW.WRONG_DATA)
        if ctr.blocked:
            raise ISOException(SW.CARD_BLOCKED)
        if time > cfg.expiry:
            raise ISOException(SW.CARD_EXPIRED)
        if ctr.online_counter >= U32:
            raise ISOException(SW.COUNTER_EXHAUSTED)
        request = OnlineRequest(
            card_id=cfg.card_id,
            online_counter=ctr.online_counter + 1,
            amount=amount,
            currency=currency,
            tx_type=tx_type,
            terminal_id=self._terminal_id,
            time=time,
            host_challenge=host_challenge,
        )
        self._put_counters(replace(ctr, online_counter=request.online_counter))
        signature = crypto.sign(self._signing_key(), request.signed_data())
        return request.online_counter.to_bytes(4, "big") + signature

    # --- load ---------------------------------------------------------------------------------
    def _initialize_load(self, cmd: Command) -> bytes:
        self._reset_session()
        if cmd.p1 or cmd.p2:
            raise ISOException(SW.INCORRECT_P1P2)
        if cmd.data:
            raise ISOException(SW.WRONG_LENGTH)
        cfg = self._require_personalised()
        ctr = self._counters()
        self._challenge = self.ctx.random(8)
        self._mode = "load"
        return tlv.encode_many(
            [
                (T_CARD_ID, cfg.card_id),
                (T_ATC, ctr.atc.to_bytes(4, "big")),
                (T_LOAD_COUNTER, ctr.load_counter.to_bytes(4, "big")),
                (T_BALANCE, ctr.balance.to_bytes(4, "big")),
                (T_CURRENCY, cfg.currency.to_bytes(2, "big")),
                (T_CHALLENGE, self._challenge),
                (T_CAP, cfg.cap.to_bytes(4, "big")),
                (T_FLAGS, bytes([self._flags(ctr)])),
                (T_DEBTS, b"".join(s.to_bytes() for s in self._slots())),
            ]
        )

    def _credit_load(self, cmd: Command) -> bytes:
        if cmd.p1 or cmd.p2:
            raise ISOException(SW.INCORRECT_P1P2)
        if self._mode != "load" or self._challenge is None:
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "no INITIALIZE LOAD")
        size = LoadAuthorisation.size()
        if len(cmd.data) < size + crypto.SIG_LEN + 1:
            raise ISOException(SW.WRONG_LENGTH)
        auth = LoadAuthorisation.parse(cmd.data[:size])
        signature = cmd.data[size : size + crypto.SIG_LEN]
        try:
            load_cert = cert.verify(
                cmd.data[size + crypto.SIG_LEN :], self._root(), role=CertRole.HOST_LOAD,
                at=auth.time,
            )
        except CertificateError:
            raise ISOException(SW.INVALID_CERTIFICATE) from None
        if not crypto.verify(load_cert.public_key, signature, auth.signed_data()):
            raise ISOException(SW.INVALID_SIGNATURE)
        cfg = self._config()
        ctr = self._counters()
        if (
            auth.card_id != cfg.card_id
            or auth.load_counter != ctr.load_counter
            or not crypto.constant_time_equal(auth.card_challenge, self._challenge)
        ):
            raise ISOException(SW.REPLAY, "authorisation not bound to this card session")
        if auth.currency != cfg.currency or auth.amount == 0:
            raise ISOException(SW.WRONG_DATA)
        if ctr.blocked:
            raise ISOException(SW.CARD_BLOCKED)
        if auth.time > cfg.expiry:
            raise ISOException(SW.CARD_EXPIRED)
        if ctr.load_counter >= U32:
            raise ISOException(SW.COUNTER_EXHAUSTED)
        # A load repays failed debts first, oldest slot first.
        remaining = auth.amount
        repaid = 0
        slots = self._slots()
        for i, slot in enumerate(slots):
            if slot.state == DebtState.FAILED and remaining:
                pay = min(remaining, slot.amount)
                remaining -= pay
                repaid += pay
                left = slot.amount - pay
                slots[i] = replace(slot, amount=left) if left else FREE_SLOT
                self._put_slot(i, slots[i])
        after = ctr.balance + remaining
        if after > cfg.cap:
            raise ISOException(SW.CAP_EXCEEDED)
        # A load is a host contact: the offline counters start again.
        self._put_offline(0, 0)
        cvr = self._cvr(cfg, slots, time=auth.time, offline=(0, 0))
        event = CardEvent(
            kind=EventKind.LOAD,
            card_id=cfg.card_id,
            atc=ctr.atc,
            load_counter=ctr.load_counter + 1,
            amount=auth.amount,
            split=repaid,
            currency=cfg.currency,
            tx_type=0,
            balance_before=ctr.balance,
            balance_after=after,
            terminal_id=b"\x00" * 8,
            terminal_seq=0,
            time=auth.time,
            card_challenge=auth.card_challenge,
            terminal_challenge=auth.auth_id,
            debt_slot=NO_SLOT,
            cvr=cvr,
        )
        record = self._sign_event(event)
        ctr = replace(ctr, balance=after, load_counter=event.load_counter,
                      last_time=max(ctr.last_time, auth.time))
        self._put_counters(self._log(cfg, ctr, record))
        self._reset_session()
        return record.to_bytes()

    # --- write-back ------------------------------------------------------------------------------
    def _write_back(self, cmd: Command) -> bytes:
        if cmd.p1 or cmd.p2:
            raise ISOException(SW.INCORRECT_P1P2)
        cfg = self._require_personalised()
        app_key = self._app_key()
        try:
            header, payload = open_writeback(app_key, cmd.data)
        except CryptoError:
            raise ISOException(SW.SECURITY_NOT_SATISFIED, "write-back MAC") from None
        ctr = self._counters()
        if header.card_id != cfg.card_id:
            raise ISOException(SW.WRONG_DATA, "write-back for another card")
        if header.seq <= ctr.writeback_seq:
            last = self.ctx.store.get("wbr")
            if header.seq == ctr.writeback_seq and last is not None:
                # The last write-back again (its answer was lost): answer the same receipt.
                if WriteBackReceipt.parse(last[: WriteBackReceipt.size()]).seq == header.seq:
                    return last
            raise ISOException(SW.REPLAY, "write-back already applied")
        action = WriteBackAction(header.action)
        result = 0
        if action in (WriteBackAction.SETTLE_DEBT, WriteBackAction.FAIL_DEBT):
            outcome = DebtOutcome.parse(payload)
            result = 1
            for i, slot in enumerate(self._slots()):
                if (
                    slot.state == DebtState.FREE
                    or slot.ref != outcome.ref
                    or slot.amount != outcome.amount
                ):
                    continue
                if action == WriteBackAction.SETTLE_DEBT:
                    self._put_slot(i, FREE_SLOT)
                    result = 0
                elif slot.state == DebtState.PENDING:
                    self._put_slot(i, DebtSlot(DebtState.FAILED, slot.ref, slot.amount))
                    result = 0
        elif action == WriteBackAction.CREDIT_RECORD:
            if len(payload) != SIGNED_CREDIT_RECORD_LEN:
                raise ISOException(SW.WRONG_LENGTH)
            record = CreditRecord.parse(payload[: CreditRecord.size()])
            if record.card_id != cfg.card_id or record.currency != cfg.currency:
                raise ISOException(SW.WRONG_DATA)
            current = self._credit()
            if current is not None and record.version <= current[0].version:
                result = 1
            else:
                self.ctx.store.put("credit", payload)
        elif action in (WriteBackAction.BLOCK, WriteBackAction.UNBLOCK):
            if len(payload) > 1:
                raise ISOException(SW.WRONG_LENGTH)
            ctr = replace(ctr, blocked=1 if action == WriteBackAction.BLOCK else 0)
        ctr = replace(ctr, writeback_seq=header.seq)
        self._put_counters(ctr)
        self._put_offline(0, 0)  # an applied write-back is a host contact
        receipt = WriteBackReceipt(cfg.card_id, header.seq, header.action, result, ctr.atc,
                                   ctr.balance)
        answer = receipt.to_bytes() + receipt_mac(app_key, receipt)
        self.ctx.store.put("wbr", answer)
        return answer

    # --- personalisation (STORE DATA through the purse's security domain) -------------------
    _ONCE = frozenset({T_CARD_ID, T_CURRENCY, T_LOG_SIZE})

    def personalize(self, data: bytes, last: bool) -> bytes:
        items = tlv.decode(data)
        done = self._personalised()
        out = b""
        staged: dict[int, bytes] = {}
        for item in items:
            if item.tag in staged:
                raise ISOException(SW.WRONG_DATA, "duplicate tag")
            staged[item.tag] = item.value
        if done and self._ONCE & staged.keys():
            raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "fixed at personalisation")
        cfg_raw = self.ctx.store.get("cfg")
        cfg = (
            Config(*_CFG.unpack(cfg_raw))
            if cfg_raw
            else Config(b"\x00" * 8, 0, 0, 0, 0, 0, MIN_LOG)
        )
        fields = {
            T_CARD_ID: ("card_id", 8),
            T_CURRENCY: ("currency", 2),
            T_CAP: ("cap", 4),
            T_OFFLINE_LIMIT: ("offline_limit", 4),
            T_EXPIRY: ("expiry", 4),
            T_CANCEL_WINDOW: ("cancel_window", 2),
            T_LOG_SIZE: ("log_size", 1),
        }
        changes: dict[str, int | bytes] = {}
        for tag, (name, size) in fields.items():
            if tag in staged:
                value = staged.pop(tag)
                if len(value) != size:
                    raise ISOException(SW.WRONG_LENGTH, name)
                changes[name] = value if tag == T_CARD_ID else int.from_bytes(value, "big")
        if changes:
            cfg = replace(cfg, **changes)  # type: ignore[arg-type]
            if not MIN_LOG <= cfg.log_size <= MAX_LOG:
                raise ISOException(SW.WRONG_DATA, "log size")
            self.ctx.store.put("cfg", _CFG.pack(cfg.card_id, cfg.currency, cfg.cap,
                                                cfg.offline_limit, cfg.expiry,
                                                cfg.cancel_window, cfg.log_size))
        if T_ISSUER_ROOT in staged:
            raw = staged.pop(T_ISSUER_ROOT)
            f = tlv.decode_map(raw, required=(0x42, 0x86), allowed=())
            cert.KeyRef.decode(f[0x42])
            crypto.decode_public_key(f[0x86])
            self.ctx.store.put("root", raw)
        if T_APP_KEY in staged:
            raw = staged.pop(T_APP_KEY)
            if len(raw) != 17:
                raise ISOException(SW.WRONG_LENGTH, "APP key is a version and 16 bytes")
            self.ctx.store.put("app", raw)
        if T_PUBLIC_KEY in staged:
            if staged.pop(T_PUBLIC_KEY):
                raise ISOException(SW.WRONG_DATA, "key generation takes no data")
            key = crypto.private_key_from_seed(self.ctx.random(40))
            self.ctx.store.put("skey", crypto.private_scalar(key))
            self.ctx.store.delete("cert")
            self._key = key
            out += tlv.encode(T_PUBLIC_KEY, crypto.encode_public_key(key.public_key()))
        if T_CERTIFICATE in staged:
            raw = staged.pop(T_CERTIFICATE)
            skey = self.ctx.store.get("skey")
            if skey is None:
                raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "generate the key first")
            own = crypto.encode_public_key(crypto.private_key_from_scalar(skey).public_key())
            try:
                c = cert.parse(raw)
                cert.verify(c, self._root(), role=CertRole.CARD, at=c.not_before,
                            holder=self._config().card_id)
            except CertificateError:
                raise ISOException(SW.INVALID_CERTIFICATE) from None
            if c.public_key != own:
                raise ISOException(SW.INVALID_CERTIFICATE, "certificate for another key")
            self.ctx.store.put("cert", raw)
        if T_CREDIT_RECORD in staged:
            raw = staged.pop(T_CREDIT_RECORD)
            if len(raw) != SIGNED_CREDIT_RECORD_LEN:
                raise ISOException(SW.WRONG_LENGTH, "credit record")
            record = CreditRecord.parse(raw[: CreditRecord.size()])
            cfg = self._config()
            if record.card_id != cfg.card_id or record.currency != cfg.currency:
                raise ISOException(SW.WRONG_DATA, "credit record for another card or currency")
            self.ctx.store.put("credit", raw)
        if staged:
            raise ISOException(SW.WRONG_DATA, f"unknown tag {min(staged):X}")
        if last and not done:
            for name in ("cfg", "root", "app", "skey", "cert"):
                if self.ctx.store.get(name) is None:
                    raise ISOException(SW.CONDITIONS_NOT_SATISFIED, f"missing {name}")
            cfg = self._config()
            if cfg.currency == 0 or cfg.cap == 0 or cfg.card_id == b"\x00" * 8:
                raise ISOException(SW.CONDITIONS_NOT_SATISFIED, "incomplete configuration")
            self.ctx.store.put("perso", b"\x01")
            self._put_counters(self._counters())
        return out


_HANDLERS: dict[tuple[int, int], Callable[[PurseApplet, Command], bytes]] = {
    (0x00, Ins.GET_DATA): PurseApplet._get_data,
    (CLA_PROPRIETARY, Ins.GET_DATA): PurseApplet._get_data,
    (0x00, Ins.READ_RECORD): PurseApplet._read_record,
    (CLA_PROPRIETARY, Ins.INITIALIZE_PURCHASE): PurseApplet._initialize_purchase,
    (CLA_PROPRIETARY, Ins.DEBIT): PurseApplet._debit,
    (CLA_PROPRIETARY, Ins.GET_TRANSACTION_PROOF): PurseApplet._transaction_proof,
    (CLA_PROPRIETARY, Ins.CANCEL_LAST_DEBIT): PurseApplet._cancel,
    (CLA_PROPRIETARY, Ins.ONLINE_AUTHORISE): PurseApplet._online_authorise,
    (CLA_PROPRIETARY, Ins.INITIALIZE_LOAD): PurseApplet._initialize_load,
    (CLA_PROPRIETARY, Ins.CREDIT): PurseApplet._credit_load,
    (CLA_PROPRIETARY, Ins.WRITE_BACK): PurseApplet._write_back,
}
