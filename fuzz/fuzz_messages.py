"""Fuzz the fixed message layouts (core.messages *.parse) and write-back sealing
(open_writeback).

The first byte picks a layout; the rest is parsed. Invariants: only
DecodeError on bad input; what parses re-encodes to exactly the input.
Write-backs: random data to open_writeback raises only DecodeError or
CryptoError; a payload sealed with seal_writeback opens to the same header and
payload, and any one flipped bit makes it fail the MAC.
"""

from __future__ import annotations

import harness

with harness.instrumented(__name__):
    from tallypurse.core import messages as m
    from tallypurse.core.errors import CryptoError, DecodeError
    from tallypurse.core.protocol import WriteBackAction

LAYOUTS: list[type] = [
    m.DebitOrder,
    m.CancelOrder,
    m.CardEvent,
    m.SignedEvent,
    m.LoadAuthorisation,
    m.OnlineRequest,
    m.CreditRecord,
    m.DebtSlot,
    m.WriteBackHeader,
    m.DebtOutcome,
    m.WriteBackReceipt,
]
APP_KEY = bytes(range(16))
ACTIONS = [int(a) for a in WriteBackAction]


def _writeback(r: harness.Reader) -> None:
    selector = r.byte()
    if selector & 1:
        try:
            m.open_writeback(APP_KEY, r.rest())
        except (DecodeError, CryptoError):
            pass
        return
    header = m.WriteBackHeader(
        r.take(8).ljust(8, b"\0"),
        int.from_bytes(r.take(4).ljust(4, b"\0"), "big"),
        ACTIONS[r.byte() % len(ACTIONS)],
    )
    flip = int.from_bytes(r.take(2).ljust(2, b"\0"), "big")
    payload = r.rest()[:512]
    sealed = m.seal_writeback(APP_KEY, header, payload)
    assert m.open_writeback(APP_KEY, sealed) == (header, payload)
    position = flip % (len(sealed) * 8)
    damaged = bytearray(sealed)
    damaged[position // 8] ^= 1 << (position % 8)
    try:
        m.open_writeback(APP_KEY, bytes(damaged))
    except CryptoError:
        return
    raise AssertionError(f"a write-back with bit {position} flipped opened")


def TestOneInput(data: bytes) -> None:  # noqa: N802
    r = harness.Reader(data)
    selector = r.byte()
    if selector >= len(LAYOUTS):
        _writeback(r)
        return
    layout = LAYOUTS[selector]
    raw = r.rest()
    try:
        obj = layout.parse(raw)  # type: ignore[attr-defined]
    except DecodeError:
        return
    assert obj.to_bytes() == raw, (layout.__name__, raw.hex())
    if hasattr(obj, "signed_data"):
        assert obj.signed_data()[4:] == raw


if __name__ == "__main__":
    harness.main(TestOneInput)
