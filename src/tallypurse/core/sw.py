"""ISO 7816-4 status words used by tallypurse cards."""

from __future__ import annotations

OK = 0x9000
WRONG_LENGTH = 0x6700
SECURITY_NOT_SATISFIED = 0x6982
AUTH_METHOD_BLOCKED = 0x6983
REF_DATA_NOT_USABLE = 0x6984
CONDITIONS_NOT_SATISFIED = 0x6985
COMMAND_NOT_ALLOWED = 0x6986
SM_DATA_MISSING = 0x6987
SM_DATA_INCORRECT = 0x6988
WRONG_DATA = 0x6A80
FUNC_NOT_SUPPORTED = 0x6A81
FILE_NOT_FOUND = 0x6A82
RECORD_NOT_FOUND = 0x6A83
NOT_ENOUGH_MEMORY = 0x6A84
INCORRECT_P1P2 = 0x6A86
REF_DATA_NOT_FOUND = 0x6A88
WRONG_P1P2 = 0x6B00
INS_NOT_SUPPORTED = 0x6D00
CLA_NOT_SUPPORTED = 0x6E00
UNKNOWN = 0x6F00
# Application-specific (ISO 7816-4 leaves 0x9xxx to applications).
INSUFFICIENT_FUNDS = 0x9401
CAP_EXCEEDED = 0x9402
CARD_BLOCKED = 0x9403
CARD_EXPIRED = 0x9404
CREDIT_NOT_ALLOWED = 0x9405
NO_FREE_DEBT_SLOT = 0x9406
COUNTER_EXHAUSTED = 0x9407
INVALID_SIGNATURE = 0x9408
INVALID_CERTIFICATE = 0x9409
REPLAY = 0x940A
OFFLINE_LIMIT_EXCEEDED = 0x940B

_NAMES = {
    OK: "success",
    WRONG_LENGTH: "wrong length",
    SECURITY_NOT_SATISFIED: "security status not satisfied",
    AUTH_METHOD_BLOCKED: "authentication method blocked",
    REF_DATA_NOT_USABLE: "referenced data not usable",
    CONDITIONS_NOT_SATISFIED: "conditions of use not satisfied",
    COMMAND_NOT_ALLOWED: "command not allowed",
    SM_DATA_MISSING: "secure messaging data missing",
    SM_DATA_INCORRECT: "secure messaging data incorrect",
    WRONG_DATA: "wrong data",
    FUNC_NOT_SUPPORTED: "function not supported",
    FILE_NOT_FOUND: "application not found",
    RECORD_NOT_FOUND: "record not found",
    NOT_ENOUGH_MEMORY: "not enough memory",
    INCORRECT_P1P2: "incorrect P1-P2",
    REF_DATA_NOT_FOUND: "referenced data not found",
    WRONG_P1P2: "wrong P1-P2",
    INS_NOT_SUPPORTED: "instruction not supported",
    CLA_NOT_SUPPORTED: "class not supported",
    UNKNOWN: "no precise diagnosis",
    INSUFFICIENT_FUNDS: "insufficient funds",
    CAP_EXCEEDED: "purse cap exceeded",
    CARD_BLOCKED: "card blocked",
    CARD_EXPIRED: "card expired",
    CREDIT_NOT_ALLOWED: "credit not allowed by the credit record",
    NO_FREE_DEBT_SLOT: "no free debt slot",
    COUNTER_EXHAUSTED: "counter exhausted",
    INVALID_SIGNATURE: "invalid signature",
    INVALID_CERTIFICATE: "invalid certificate",
    REPLAY: "replayed or stale message",
    OFFLINE_LIMIT_EXCEEDED: "per-tap offline limit exceeded",
}


def describe(sw: int) -> str:
    """A short English description of a status word."""
    if sw in _NAMES:
        return _NAMES[sw]
    if sw & 0xFF00 == 0x6100:
        return f"{sw & 0xFF} response bytes still available"
    if sw & 0xFF00 == 0x6C00:
        return f"wrong Le; exact length is {sw & 0xFF}"
    return "unknown status"


class ISOException(Exception):
    """Raised inside card code to answer a command with a status word.

    The card OS turns it into the response and rolls back the command's
    persistent changes, so an error never changes state.
    """

    def __init__(self, sw: int, reason: str = "") -> None:
        super().__init__(f"{sw:04X} {describe(sw)}{': ' + reason if reason else ''}")
        self.sw = sw
        self.reason = reason
