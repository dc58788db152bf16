"""What a terminal says when it cannot do what was asked.

A :class:`Declined` carries a :class:`DeclineCode`: a stable number that names
the reason on the screen, on the receipt printer, in the logs and in tests.
Codes are never renumbered; new reasons get new numbers.
"""

from __future__ import annotations

from enum import IntEnum

from tallypurse.core.errors import TallypurseError


class DeclineCode(IntEnum):
    """Why a transaction was not done. The numbers are stable (see docs/terminal.md)."""

    # the request itself
    AMOUNT_INVALID = 10  # zero, negative, not a whole number of minor units, too large
    UNKNOWN_TX_TYPE = 11
    CURRENCY_MISMATCH = 12
    OVER_OFFLINE_LIMIT = 13
    # the terminal
    NOT_ENROLLED = 20
    NO_PARAMETERS = 21
    JOURNAL_FULL = 22
    LISTS_TOO_OLD = 23
    # the card
    CARD_UNKNOWN_ISSUER = 30
    CARD_EXPIRED = 31
    CARD_BLOCKED = 32
    CARD_BLACKLISTED = 33
    CARD_NOT_PERSONALISED = 34
    CARD_ERROR = 35
    TAC_INVALID = 36
    CARD_REFUSED = 37
    # money
    INSUFFICIENT_FUNDS = 40
    CREDIT_TYPE_NOT_ALLOWED = 41
    NO_ONLINE_ACCOUNT = 42
    CREDIT_RECORD_INVALID = 43
    CREDIT_RECORD_EXPIRED = 44
    OVERDRAFT_LIMIT = 45
    MAX_OUTSTANDING = 46
    NO_FREE_DEBT_SLOT = 47
    FAILED_DEBT_OUTSTANDING = 48
    CAP_EXCEEDED = 49
    # the host
    HOST_UNAVAILABLE = 50
    HOST_DECLINED = 51
    ONLINE_TIMEOUT_REVERSED = 52
    HOST_REJECTED = 53
    # cancel
    NOTHING_TO_CANCEL = 60
    CANCEL_WINDOW_PASSED = 61
    # tearing
    NOT_APPLIED = 70  # an interrupted command that the card never carried out
    # receipts
    RECEIPT_NOT_DELIVERED = 80  # this card's last transaction went through, receipt never printed

    @property
    def label(self) -> str:
        return f"D{int(self):02d}"

    @property
    def text(self) -> str:
        return self.name.lower().replace("_", " ")


class TerminalError(TallypurseError):
    """A terminal that cannot work as asked (not enrolled, bad data dir, ...)."""

    code = 1400


class Declined(TerminalError):
    """The transaction was not done; nothing was charged."""

    code = 1401

    def __init__(self, reason: DeclineCode, detail: str = "") -> None:
        tail = f": {detail}" if detail else ""
        super().__init__(f"declined {reason.label} {reason.text}{tail}")
        self.reason = reason
        self.detail = detail


class TapInterrupted(TerminalError):
    """The card went away (or its answer was lost) in the middle of the tap.

    When ``attempt`` is set, a money command may or may not have reached the card:
    the journal keeps the attempt *uncertain* until the same card is tapped again.
    """

    code = 1402

    def __init__(self, message: str, attempt: int | None = None) -> None:
        super().__init__(message)
        self.attempt = attempt


class JournalCorrupt(TerminalError):
    """The journal does not verify (broken hash chain, bad signature, damaged file)."""

    code = 1403


class JournalFull(Declined):
    code = 1404

    def __init__(self, detail: str) -> None:
        super().__init__(DeclineCode.JOURNAL_FULL, detail)


class ListRejected(TerminalError):
    """A list or parameter set from the host that does not verify or does not apply."""

    code = 1405


class IdempotencyConflict(TerminalError):
    """An idempotency key offered again with another payload: never allowed."""

    code = 1406


class CardLost(TerminalError):
    """The reader lost the card: no answer to a command (pulled, power lost, timeout)."""

    code = 1407
