"""The host's refusals, each with a stable numeric code, an HTTP status and a title.

The same code appears in the RFC 9457 problem document a terminal receives,
in the host's log line and on the operator's screen. Codes below 2000 are the
shared core errors (:mod:`tallypurse.core.errors`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tallypurse.core.errors import TallypurseError


@dataclass(frozen=True, slots=True)
class Code:
    code: int
    status: int
    title: str
    slug: str


# fmt: off
BAD_REQUEST          = Code(2001, 400, "Bad request", "bad-request")
VALIDATION           = Code(2002, 422, "Request body does not validate", "validation")
TOO_LARGE            = Code(2003, 413, "Request body too large", "too-large")
NOT_FOUND            = Code(2004, 404, "Not found", "not-found")
METHOD_NOT_ALLOWED   = Code(2005, 405, "Method not allowed", "method-not-allowed")
RATE_LIMITED         = Code(2006, 429, "Too many requests; retry after Retry-After seconds",
                            "rate-limited")
SIGNATURE_MISSING    = Code(2101, 401, "Request signature missing", "signature-missing")
SIGNATURE_INVALID    = Code(2102, 401, "Request signature invalid", "signature-invalid")
SIGNATURE_STALE      = Code(2103, 401, "Request signature too old or in the future",
                            "signature-stale")
REPLAY               = Code(2104, 401, "Replayed request (nonce already seen)", "replay")
UNKNOWN_TERMINAL     = Code(2105, 401, "Unknown terminal", "unknown-terminal")
TERMINAL_REVOKED     = Code(2106, 403, "Terminal revoked", "terminal-revoked")
TERMINAL_MISMATCH    = Code(2107, 403, "Body names another terminal", "terminal-mismatch")
TOKEN_MISSING        = Code(2111, 401, "Bearer token missing", "token-missing")
TOKEN_INVALID        = Code(2112, 401, "Bearer token invalid or revoked", "token-invalid")
FORBIDDEN            = Code(2113, 403, "Role not allowed here", "forbidden")
UNKNOWN_CARD         = Code(2201, 422, "Unknown card", "unknown-card")
CARD_BLOCKED         = Code(2202, 422, "Card blocked or blacklisted", "card-blocked")
RECORD_INVALID       = Code(2203, 422, "Card record or signature does not verify",
                            "record-invalid")
RECORD_MISMATCH      = Code(2204, 422, "Card record does not match the request",
                            "record-mismatch")
CURRENCY_MISMATCH    = Code(2205, 422, "Currency does not match", "currency-mismatch")
NO_ONLINE_ACCOUNT    = Code(2206, 422, "Card has no online account", "no-online-account")
IDEMPOTENCY_CONFLICT = Code(2301, 409, "Idempotency key reused with another payload",
                            "idempotency-conflict")
CONFLICT             = Code(2302, 409, "Conflicts with the current state", "conflict")
ENROLMENT_REFUSED    = Code(2401, 403, "Enrolment token invalid, used or expired",
                            "enrolment-refused")
CSR_INVALID          = Code(2402, 422, "Certificate request invalid", "csr-invalid")
INSUFFICIENT_FUNDS   = Code(2501, 422, "Insufficient funds", "insufficient-funds")
CHALLENGE_INVALID    = Code(2502, 422, "Host challenge unknown, used or expired",
                            "challenge-invalid")
LIMIT_EXCEEDED       = Code(2503, 422, "Amount over a limit", "limit-exceeded")
BATCH_SIGNATURE      = Code(2601, 422, "Batch signature does not verify", "batch-signature")
BATCH_TOO_LARGE      = Code(2602, 413, "Batch has too many entries", "batch-too-large")
LOAD_UNKNOWN         = Code(2701, 404, "Unknown load", "load-unknown")
LOAD_CONFIRMED       = Code(2702, 409, "Load already confirmed", "load-confirmed")
LOAD_CLEARED         = Code(2703, 409, "Clearing has seen this load", "load-cleared")
LOAD_VOIDED          = Code(2704, 409, "Load already voided", "load-voided")
LEDGER_REFUSED       = Code(2801, 500, "Ledger refused the transaction", "ledger-refused")
UNAVAILABLE          = Code(2901, 503, "Database unavailable; retry", "unavailable")
INTERNAL             = Code(2999, 500, "Internal error", "internal")
# fmt: on

PROBLEM_BASE = "https://tallypurse.dev/problems/"


class HostError(TallypurseError):
    """A definitive refusal by the host; nothing was changed."""

    def __init__(self, what: Code, detail: str = "") -> None:
        super().__init__(detail or what.title)
        self.what = what
        self.code = what.code
        self.detail = detail

    @property
    def status(self) -> int:
        return self.what.status
