"""BER-TLV (ISO 7816-4 / ISO 8825-1) encoding and strict decoding.

Tags are up to three bytes, lengths use the definite form only (short form
or 0x81/0x82/0x83). Decoding errors raise :class:`DecodeError` with the
byte offset where parsing failed.

>>> encode(0x5A, b"\\x01\\x02").hex()
'5a020102'
>>> [(hex(t.tag), t.value) for t in decode(bytes.fromhex("5a0101"))]
[('0x5a', b'\\x01')]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tallypurse.core.errors import DecodeError

MAX_DEPTH = 8


@dataclass(frozen=True, slots=True)
class Tlv:
    tag: int
    value: bytes

    @property
    def constructed(self) -> bool:
        return _first_tag_byte(self.tag) & 0x20 != 0

    def children(self) -> list[Tlv]:
        if not self.constructed:
            raise DecodeError(f"tag {self.tag:X} is primitive", 0)
        return decode(self.value)


def _first_tag_byte(tag: int) -> int:
    if tag > 0xFFFF:
        return tag >> 16
    if tag > 0xFF:
        return tag >> 8
    return tag


def tag_bytes(tag: int) -> bytes:
    if tag <= 0:
        raise ValueError("tag must be positive")
    if tag <= 0xFF:
        if tag & 0x1F == 0x1F:
            raise ValueError(f"one-byte tag {tag:X} announces more tag bytes")
        return bytes([tag])
    if tag <= 0xFFFF:
        raw = tag.to_bytes(2, "big")
    elif tag <= 0xFFFFFF:
        raw = tag.to_bytes(3, "big")
    else:
        raise ValueError("tags longer than three bytes are not supported")
    # Refuse what decode() would read as a different tag (or refuse outright).
    if (
        raw[0] in (0x00, 0xFF)
        or raw[0] & 0x1F != 0x1F
        or any(b & 0x80 == 0 for b in raw[1:-1])
        or raw[-1] & 0x80
    ):
        raise ValueError(f"{tag:X} is not a valid {len(raw)}-byte BER tag")
    return raw


def length_bytes(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n <= 0xFF:
        return bytes([0x81, n])
    if n <= 0xFFFF:
        return b"\x82" + n.to_bytes(2, "big")
    if n <= 0xFFFFFF:
        return b"\x83" + n.to_bytes(3, "big")
    raise ValueError("value too long for TLV")


def encode(tag: int, value: bytes) -> bytes:
    """Encode one TLV object."""
    return tag_bytes(tag) + length_bytes(len(value)) + value


def encode_many(items: Iterable[tuple[int, bytes]]) -> bytes:
    return b"".join(encode(t, v) for t, v in items)


def _iter(data: bytes, base: int) -> Iterator[Tlv]:
    i = 0
    n = len(data)
    while i < n:
        start = i
        first = data[i]
        if first in (0x00, 0xFF):
            raise DecodeError("padding or invalid tag byte", base + i)
        i += 1
        tag = first
        if first & 0x1F == 0x1F:
            for count in range(2):
                if i >= n:
                    raise DecodeError("truncated tag", base + start)
                b = data[i]
                i += 1
                tag = (tag << 8) | b
                if b & 0x80 == 0:
                    break
                if count == 1:
                    raise DecodeError("tag longer than three bytes", base + start)
        if i >= n:
            raise DecodeError("missing length", base + i)
        lb = data[i]
        i += 1
        if lb < 0x80:
            length = lb
        elif lb in (0x81, 0x82, 0x83):
            k = lb - 0x80
            if i + k > n:
                raise DecodeError("truncated length", base + i)
            length = int.from_bytes(data[i : i + k], "big")
            if (k == 1 and length < 0x80) or (k > 1 and length < 1 << (8 * (k - 1))):
                raise DecodeError("length not in shortest form", base + i - 1)
            i += k
        else:
            raise DecodeError(f"unsupported length byte {lb:02X}", base + i - 1)
        if i + length > n:
            raise DecodeError(f"value of tag {tag:X} runs past the end", base + i)
        yield Tlv(tag, bytes(data[i : i + length]))
        i += length


def decode(data: bytes, *, base: int = 0) -> list[Tlv]:
    """Decode a sequence of TLV objects (one level)."""
    return list(_iter(data, base))


def decode_map(
    data: bytes,
    *,
    required: Iterable[int] = (),
    allowed: Iterable[int] | None = None,
) -> dict[int, bytes]:
    """Decode one level into a tag→value map; refuse duplicates, missing and unknown tags."""
    out: dict[int, bytes] = {}
    allowed_set = None if allowed is None else set(allowed) | set(required)
    for item in decode(data):
        if item.tag in out:
            raise DecodeError(f"duplicate tag {item.tag:X}", 0)
        if allowed_set is not None and item.tag not in allowed_set:
            raise DecodeError(f"unexpected tag {item.tag:X}", 0)
        out[item.tag] = item.value
    for tag in required:
        if tag not in out:
            raise DecodeError(f"missing tag {tag:X}", 0)
    return out


def decode_one(data: bytes, tag: int) -> bytes:
    """Decode exactly one TLV with the given tag and nothing after it."""
    items = decode(data)
    if len(items) != 1 or items[0].tag != tag:
        raise DecodeError(f"expected exactly one {tag:X} object", 0)
    return items[0].value


def uint(value: bytes, size: int, what: str) -> int:
    """An unsigned big-endian integer field of an exact size."""
    if len(value) != size:
        raise DecodeError(f"{what} must be {size} bytes, got {len(value)}", 0)
    return int.from_bytes(value, "big")
