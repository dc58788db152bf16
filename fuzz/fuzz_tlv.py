"""Fuzz the BER-TLV decoder: core.tlv.decode, decode_map, decode_one and children.

Invariants: only DecodeError on bad input; a decoded sequence re-encodes to
exactly the input (one encoding per value: shortest lengths only).
"""

from __future__ import annotations

import harness

with harness.instrumented(__name__):
    from tallypurse.core import tlv
    from tallypurse.core.errors import DecodeError


def _walk(items: list[tlv.Tlv], depth: int) -> None:
    for item in items:
        if item.constructed and depth < tlv.MAX_DEPTH:
            try:
                _walk(item.children(), depth + 1)
            except DecodeError:
                pass


def TestOneInput(data: bytes) -> None:  # noqa: N802
    try:
        items = tlv.decode(data)
    except DecodeError:
        items = None
    if items is not None:
        assert tlv.encode_many((i.tag, i.value) for i in items) == data, data.hex()
        _walk(items, 0)
    try:
        fields = tlv.decode_map(data, required=(0x5A,), allowed=(0x5A, 0x9F02, 0x7F4E))
    except DecodeError:
        pass
    else:
        assert 0x5A in fields and set(fields) <= {0x5A, 0x9F02, 0x7F4E}
    try:
        tlv.decode_one(data, 0x7F21)
    except DecodeError:
        pass


if __name__ == "__main__":
    harness.main(TestOneInput)
