"""BER-TLV: encoding, strict decoding with byte offsets, maps, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tallypurse.core import tlv
from tallypurse.core.errors import BadInput, DecodeError
from tallypurse.core.tlv import Tlv, decode, decode_map, decode_one, encode, encode_many


def decode_error(data: bytes, **kw: int) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(data, **kw)
    return info.value


# --- round trips of tags and lengths -----------------------------------------


@pytest.mark.parametrize(
    ("tag", "tag_hex"),
    [
        (0x5A, "5a"),
        (0x01, "01"),
        (0xC1, "c1"),
        (0x5F20, "5f20"),
        (0x9F02, "9f02"),
        (0x7F21, "7f21"),
        (0x1F00, "1f00"),
        (0x5F8A01, "5f8a01"),
        (0xDF8101, "df8101"),
        (0x7FFF7F, "7fff7f"),
    ],
)
def test_tlv_round_trips_one_two_and_three_byte_tags(tag: int, tag_hex: str) -> None:
    raw = encode(tag, b"\xab")
    assert raw.hex() == tag_hex + "01ab"
    assert decode(raw) == [Tlv(tag, b"\xab")]


@pytest.mark.parametrize(
    ("length", "length_hex"),
    [
        (0, "00"),
        (1, "01"),
        (0x7F, "7f"),
        (0x80, "8180"),
        (0xFF, "81ff"),
        (0x100, "820100"),
        (0x1234, "821234"),
        (0xFFFF, "82ffff"),
        (0x10000, "83010000"),
    ],
)
def test_tlv_round_trips_short_0x81_0x82_and_0x83_lengths(length: int, length_hex: str) -> None:
    value = bytes(i & 0xFF for i in range(length))
    raw = encode(0x5A, value)
    assert raw[1 : 1 + len(length_hex) // 2].hex() == length_hex
    assert len(raw) == 1 + len(length_hex) // 2 + length
    assert decode(raw) == [Tlv(0x5A, value)]


def test_tlv_length_bytes_refuses_a_length_beyond_three_bytes() -> None:
    assert tlv.length_bytes(0xFFFFFF).hex() == "83ffffff"
    with pytest.raises(ValueError, match="too long"):
        tlv.length_bytes(0x1000000)


def test_tlv_decodes_a_sequence_of_objects_in_order() -> None:
    raw = encode_many([(0xC1, b"\x01"), (0x5F20, b""), (0xC1, b"\x02\x03")])
    assert decode(raw) == [Tlv(0xC1, b"\x01"), Tlv(0x5F20, b""), Tlv(0xC1, b"\x02\x03")]
    assert decode(b"") == []


def test_tlv_constructed_objects_expose_their_children() -> None:
    inner = encode_many([(0x5F29, b"\x01"), (0x42, b"ROOT/1")])
    outer = encode(0x7F21, encode(0x7F4E, inner) + encode(0x5F37, b"sig"))
    (cert,) = decode(outer)
    assert cert.constructed
    body, sig = cert.children()
    assert body.tag == 0x7F4E and body.constructed
    assert sig == Tlv(0x5F37, b"sig")
    assert not sig.constructed
    assert body.children() == [Tlv(0x5F29, b"\x01"), Tlv(0x42, b"ROOT/1")]


@pytest.mark.parametrize(
    ("tag", "constructed"),
    [
        (0x6F, True),
        (0xA5, True),
        (0xE1, True),
        (0x84, False),
        (0x5A, False),
        (0x7F21, True),
        (0x5F20, False),
        (0xBF8101, True),
        (0x9F8101, False),
    ],
)
def test_tlv_constructed_flag_comes_from_bit_six_of_the_first_tag_byte(
    tag: int, constructed: bool
) -> None:
    assert Tlv(tag, b"").constructed is constructed


def test_tlv_children_of_a_primitive_object_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="primitive"):
        Tlv(0x5A, encode(0x5A, b"")).children()


def test_tlv_children_propagate_errors_in_the_nested_encoding() -> None:
    with pytest.raises(DecodeError, match="runs past the end"):
        Tlv(0x6F, b"\x84\x05\x01").children()


# --- encoder refusals --------------------------------------------------------


@pytest.mark.parametrize("tag", [0, -1, 0x1F, 0x3F, 0xFF, 0x1000000])
def test_tlv_encoder_refuses_impossible_tags(tag: int) -> None:
    with pytest.raises(ValueError):
        encode(tag, b"")


@pytest.mark.parametrize(
    "tag",
    [
        0x0101,  # first byte does not announce a second byte
        0x5A01,
        0x5F80,  # last byte announces another byte
        0x5F0101,  # middle byte does not announce the third byte
        0x5F8080,  # last byte announces a fourth byte
        0xFF01,  # 0xFF first byte is padding to the decoder
        0x010101,
    ],
)
def test_tlv_encoder_refuses_multibyte_tags_that_would_not_decode_to_themselves(
    tag: int,
) -> None:
    with pytest.raises(ValueError, match="not a valid"):
        encode(tag, b"\x00")


# --- strict decoding errors and their offsets --------------------------------


def test_tlv_rejects_a_truncated_two_byte_tag() -> None:
    err = decode_error(bytes.fromhex("5f"))
    assert "truncated tag" in err.message
    assert err.offset == 0


def test_tlv_rejects_a_truncated_three_byte_tag_at_the_offset_where_the_tag_starts() -> None:
    err = decode_error(bytes.fromhex("5a005f81"))
    assert "truncated tag" in err.message
    assert err.offset == 2


def test_tlv_rejects_a_tag_longer_than_three_bytes() -> None:
    err = decode_error(bytes.fromhex("c1005f81810100"))
    assert "longer than three bytes" in err.message
    assert err.offset == 2


def test_tlv_rejects_a_tag_with_no_length() -> None:
    err = decode_error(bytes.fromhex("5a"))
    assert "missing length" in err.message
    assert err.offset == 1
    err = decode_error(bytes.fromhex("5a005f20"))
    assert "missing length" in err.message
    assert err.offset == 4


@pytest.mark.parametrize(
    ("hexdata", "offset"), [("5a81", 2), ("5a8201", 2), ("5a830100", 2), ("5f2082", 3)]
)
def test_tlv_rejects_a_truncated_long_form_length(hexdata: str, offset: int) -> None:
    err = decode_error(bytes.fromhex(hexdata))
    assert "truncated length" in err.message
    assert err.offset == offset


@pytest.mark.parametrize(
    "hexdata",
    ["5a8100", "5a817f", "5a820000", "5a8200ff", "5a83000000", "5a8300ffff"],
)
def test_tlv_rejects_a_length_not_in_its_shortest_form(hexdata: str) -> None:
    raw = bytes.fromhex(hexdata) + b"\x00" * 0x10000
    err = decode_error(raw)
    assert "shortest form" in err.message
    assert err.offset == 1


@pytest.mark.parametrize("length_byte", [0x80, 0x84, 0x85, 0x8F, 0xFF])
def test_tlv_rejects_indefinite_and_over_long_length_forms(length_byte: int) -> None:
    err = decode_error(bytes([0x5A, length_byte]) + b"\x00" * 8)
    assert "unsupported length byte" in err.message
    assert err.offset == 1


def test_tlv_rejects_a_length_that_runs_past_the_end() -> None:
    err = decode_error(bytes.fromhex("5a030102"))
    assert "runs past the end" in err.message
    assert err.offset == 2
    err = decode_error(bytes.fromhex("c1005f2081ff") + b"\x00" * 0xFE)
    assert "runs past the end" in err.message
    assert err.offset == 6


@pytest.mark.parametrize("bad", [0x00, 0xFF])
def test_tlv_rejects_a_zero_or_ff_tag_byte(bad: int) -> None:
    err = decode_error(bytes([bad, 0x00]))
    assert err.offset == 0
    err = decode_error(bytes.fromhex("5a0101") + bytes([bad]))
    assert "invalid tag byte" in err.message
    assert err.offset == 3


def test_tlv_offsets_are_shifted_by_the_base_argument() -> None:
    err = decode_error(bytes.fromhex("5a0301"), base=100)
    assert err.offset == 102
    assert "at byte 102" in str(err)


def test_tlv_decode_error_is_a_bad_input_error() -> None:
    with pytest.raises(BadInput):
        decode(b"\x00")


# --- decode_map, decode_one, uint --------------------------------------------


def test_tlv_decode_map_returns_values_by_tag() -> None:
    raw = encode_many([(0xC1, b"card"), (0xC2, b"\x00\x01")])
    assert decode_map(raw, required=[0xC1, 0xC2]) == {0xC1: b"card", 0xC2: b"\x00\x01"}


def test_tlv_decode_map_refuses_a_duplicate_tag() -> None:
    raw = encode_many([(0xC1, b"a"), (0xC2, b""), (0xC1, b"b")])
    with pytest.raises(DecodeError, match="duplicate tag C1"):
        decode_map(raw)


def test_tlv_decode_map_refuses_a_missing_required_tag() -> None:
    raw = encode(0xC1, b"a")
    with pytest.raises(DecodeError, match="missing tag C2"):
        decode_map(raw, required=[0xC1, 0xC2])
    with pytest.raises(DecodeError, match="missing tag C1"):
        decode_map(b"", required=[0xC1])


def test_tlv_decode_map_refuses_an_unexpected_tag_when_allowed_is_given() -> None:
    raw = encode_many([(0xC1, b"a"), (0xC9, b"b")])
    with pytest.raises(DecodeError, match="unexpected tag C9"):
        decode_map(raw, required=[0xC1], allowed=[0xC2])


def test_tlv_decode_map_always_allows_the_required_tags() -> None:
    raw = encode_many([(0xC1, b"a"), (0xC2, b"b")])
    assert decode_map(raw, required=[0xC1], allowed=[0xC2]) == {0xC1: b"a", 0xC2: b"b"}
    assert decode_map(encode(0xC1, b""), required=[0xC1], allowed=[]) == {0xC1: b""}


def test_tlv_decode_map_accepts_any_tag_when_allowed_is_not_given() -> None:
    assert decode_map(encode(0xDF01, b"x")) == {0xDF01: b"x"}


def test_tlv_decode_map_propagates_structural_errors() -> None:
    with pytest.raises(DecodeError, match="runs past the end"):
        decode_map(bytes.fromhex("c105"))


def test_tlv_decode_one_wants_exactly_one_object_of_the_tag() -> None:
    assert decode_one(encode(0xC1, b"x"), 0xC1) == b"x"
    with pytest.raises(DecodeError, match="exactly one C1"):
        decode_one(encode(0xC2, b"x"), 0xC1)
    with pytest.raises(DecodeError, match="exactly one C1"):
        decode_one(encode(0xC1, b"x") + encode(0xC1, b"y"), 0xC1)
    with pytest.raises(DecodeError, match="exactly one C1"):
        decode_one(b"", 0xC1)


def test_tlv_uint_reads_a_big_endian_field_of_exact_size() -> None:
    assert tlv.uint(b"\x01\x02", 2, "atc") == 0x0102
    assert tlv.uint(b"\xff\xff\xff\xff", 4, "amount") == 0xFFFFFFFF
    with pytest.raises(DecodeError, match="atc must be 2 bytes, got 3"):
        tlv.uint(b"\x00\x01\x02", 2, "atc")
    with pytest.raises(DecodeError, match="got 0"):
        tlv.uint(b"", 1, "role")


# --- properties --------------------------------------------------------------

_FIRST_OF_MULTI = [b | 0x1F for b in range(0, 0x100, 0x20) if b | 0x1F != 0xFF]

one_byte_tags = st.integers(1, 0xFE).filter(lambda t: t & 0x1F != 0x1F)
two_byte_tags = st.builds(
    lambda a, b: (a << 8) | b, st.sampled_from(_FIRST_OF_MULTI), st.integers(0, 0x7F)
)
three_byte_tags = st.builds(
    lambda a, b, c: (a << 16) | (b << 8) | c,
    st.sampled_from(_FIRST_OF_MULTI),
    st.integers(0x80, 0xFF),
    st.integers(0, 0x7F),
)
tags = st.one_of(one_byte_tags, two_byte_tags, three_byte_tags)
values = st.one_of(st.binary(max_size=0x7F), st.binary(min_size=0x80, max_size=0x180))


@given(st.lists(st.tuples(tags, values), max_size=8))
def test_tlv_encode_then_decode_round_trips_any_list_of_tags_and_values(
    items: list[tuple[int, bytes]],
) -> None:
    raw = encode_many(items)
    assert [(t.tag, t.value) for t in decode(raw)] == items


@given(st.binary(max_size=64))
@settings(max_examples=1000)
def test_tlv_decode_of_random_bytes_returns_or_raises_only_decode_error(data: bytes) -> None:
    try:
        items = decode(data)
    except DecodeError as exc:
        assert 0 <= exc.offset <= len(data)
    else:
        # strictness: whatever decodes is the one canonical encoding of its items
        assert encode_many((t.tag, t.value) for t in items) == data


@given(st.binary(max_size=40), st.integers(0, 1000))
def test_tlv_decode_error_offsets_are_relative_to_the_base(data: bytes, base: int) -> None:
    try:
        decode(data)
    except DecodeError as exc:
        with pytest.raises(DecodeError) as shifted:
            decode(data, base=base)
        assert shifted.value.offset == exc.offset + base
    else:
        assert decode(data, base=base) == decode(data)
