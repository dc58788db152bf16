"""ISO 7816-4 command and response APDUs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tallypurse.core import sw
from tallypurse.core.apdu import Command, Response
from tallypurse.core.errors import DecodeError

HDR = bytes.fromhex("80420102")


def round_trip(cmd: Command) -> bytes:
    raw = cmd.to_bytes()
    assert Command.parse(raw) == cmd
    return raw


# --- the four cases, short form ----------------------------------------------


def test_apdu_case_1_is_the_bare_header() -> None:
    raw = round_trip(Command(0x80, 0x42, 0x01, 0x02))
    assert raw == HDR


@pytest.mark.parametrize(("le", "le_byte"), [(1, 0x01), (0x10, 0x10), (255, 0xFF), (256, 0x00)])
def test_apdu_case_2_short_carries_one_le_byte_where_zero_means_256(le: int, le_byte: int) -> None:
    raw = round_trip(Command(0x80, 0x42, 0x01, 0x02, b"", le))
    assert raw == HDR + bytes([le_byte])


def test_apdu_case_2_short_le_zero_is_encoded_as_256() -> None:
    raw = Command(0x00, 0xB0, 0, 0, b"", 0).to_bytes()
    assert raw == bytes.fromhex("00b0000000")
    assert Command.parse(raw).le == 256


@pytest.mark.parametrize("nc", [1, 2, 0x7F, 0x80, 255])
def test_apdu_case_3_short_carries_lc_and_data(nc: int) -> None:
    data = bytes(range(nc))
    raw = round_trip(Command(0x80, 0x42, 0x01, 0x02, data))
    assert raw == HDR + bytes([nc]) + data


@pytest.mark.parametrize(("nc", "le"), [(1, 1), (5, 256), (255, 255), (255, 256), (16, 0x20)])
def test_apdu_case_4_short_carries_lc_data_and_le(nc: int, le: int) -> None:
    data = b"\xaa" * nc
    raw = round_trip(Command(0x80, 0x42, 0x01, 0x02, data, le))
    assert raw == HDR + bytes([nc]) + data + bytes([le & 0xFF])


# --- the four cases, extended form -------------------------------------------


@pytest.mark.parametrize(
    ("le", "le_hex"), [(257, "0101"), (0x1234, "1234"), (65535, "ffff"), (65536, "0000")]
)
def test_apdu_case_2_extended_carries_a_zero_byte_and_two_le_bytes(le: int, le_hex: str) -> None:
    raw = round_trip(Command(0x80, 0x42, 0x01, 0x02, b"", le))
    assert raw == HDR + b"\x00" + bytes.fromhex(le_hex)


@pytest.mark.parametrize("nc", [256, 300, 0x1000, 65535])
def test_apdu_case_3_extended_carries_a_zero_byte_two_lc_bytes_and_data(nc: int) -> None:
    data = bytes(i & 0xFF for i in range(nc))
    raw = round_trip(Command(0x80, 0x42, 0x01, 0x02, data))
    assert raw == HDR + b"\x00" + nc.to_bytes(2, "big") + data


@pytest.mark.parametrize(
    ("nc", "le", "le_hex"),
    [
        (256, 1, "0001"),
        (300, 256, "0100"),
        (1, 257, "0101"),
        (10, 65536, "0000"),
        (65535, 65535, "ffff"),
    ],
)
def test_apdu_case_4_extended_carries_two_lc_and_two_le_bytes(
    nc: int, le: int, le_hex: str
) -> None:
    data = b"\x5a" * nc
    raw = round_trip(Command(0x80, 0x42, 0x01, 0x02, data, le))
    assert raw == HDR + b"\x00" + nc.to_bytes(2, "big") + data + bytes.fromhex(le_hex)


# --- encoder refusals --------------------------------------------------------


@pytest.mark.parametrize("field", ["cla", "ins", "p1", "p2"])
@pytest.mark.parametrize("value", [-1, 0x100])
def test_apdu_to_bytes_refuses_a_header_byte_out_of_range(field: str, value: int) -> None:
    args = {"cla": 0, "ins": 0xA4, "p1": 4, "p2": 0} | {field: value}
    with pytest.raises(ValueError, match="out of range"):
        Command(**args).to_bytes()


def test_apdu_to_bytes_refuses_more_than_65535_data_bytes() -> None:
    with pytest.raises(ValueError, match="too long"):
        Command(0, 0xD6, 0, 0, b"\x00" * 65536).to_bytes()


@pytest.mark.parametrize("le", [-1, 65537, 70000])
def test_apdu_to_bytes_refuses_an_le_that_does_not_fit_rather_than_truncating_it(le: int) -> None:
    with pytest.raises(ValueError, match="Le out of range"):
        Command(0, 0xB0, 0, 0, b"", le).to_bytes()


# --- malformed lengths -------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\x00\xa4", b"\x00\xa4\x04"])
def test_apdu_parse_refuses_a_command_shorter_than_a_header(raw: bytes) -> None:
    with pytest.raises(DecodeError, match="shorter than a header"):
        Command.parse(raw)


@pytest.mark.parametrize(
    "tail_hex",
    [
        "0501",  # Lc 5, one byte of data
        "0201",  # Lc 2, one byte
        "01aabbcc",  # Lc 1, three bytes after Lc
        "02aabbccdd",  # Lc 2, data and two trailing bytes
    ],
)
def test_apdu_parse_refuses_a_short_lc_that_does_not_match_the_length(tail_hex: str) -> None:
    with pytest.raises(DecodeError, match="Lc does not match") as info:
        Command.parse(HDR + bytes.fromhex(tail_hex))
    assert info.value.offset == 4


def test_apdu_parse_refuses_a_truncated_extended_length() -> None:
    with pytest.raises(DecodeError, match="truncated extended length"):
        Command.parse(HDR + bytes.fromhex("0001"))


def test_apdu_parse_refuses_an_extended_lc_of_zero() -> None:
    with pytest.raises(DecodeError, match="Lc of zero"):
        Command.parse(HDR + bytes.fromhex("000000aa"))


@pytest.mark.parametrize(
    "tail",
    [
        bytes.fromhex("000005") + b"\x01",  # Lc 5, one byte
        bytes.fromhex("000100") + b"\x00" * 255,  # Lc 256, 255 bytes
        bytes.fromhex("000001") + b"\x01\x02",  # Lc 1, one byte plus one stray byte
        bytes.fromhex("000001") + b"\x01\x02\x03\x04",  # Lc 1, data, Le, one stray byte
    ],
)
def test_apdu_parse_refuses_an_extended_lc_that_does_not_match_the_length(tail: bytes) -> None:
    with pytest.raises(DecodeError, match="extended Lc does not match") as info:
        Command.parse(HDR + tail)
    assert info.value.offset == 5


def test_apdu_secure_messaging_follows_the_cla_bit() -> None:
    assert Command(0x84, 0x42, 0, 0).secure_messaging
    assert Command(0x0C, 0xB0, 0, 0).secure_messaging
    assert not Command(0x80, 0x42, 0, 0).secure_messaging
    assert not Command(0x00, 0xA4, 4, 0).secure_messaging


def test_apdu_header_is_the_four_header_bytes() -> None:
    assert Command(0x80, 0x42, 0x01, 0x02, b"xyz", 5).header() == HDR


# --- properties --------------------------------------------------------------

commands = st.builds(
    Command,
    cla=st.integers(0, 0xFF),
    ins=st.integers(0, 0xFF),
    p1=st.integers(0, 0xFF),
    p2=st.integers(0, 0xFF),
    data=st.one_of(st.binary(max_size=255), st.binary(min_size=256, max_size=600)),
    le=st.one_of(st.none(), st.integers(1, 256), st.integers(257, 65536)),
)


@given(commands)
def test_apdu_every_well_formed_command_round_trips(cmd: Command) -> None:
    assert Command.parse(cmd.to_bytes()) == cmd


@given(st.binary(max_size=300))
@settings(max_examples=1000)
def test_apdu_parse_of_random_bytes_raises_only_decode_error(raw: bytes) -> None:
    try:
        cmd = Command.parse(raw)
    except DecodeError:
        return
    # whatever parses re-encodes to bytes that mean the same command (the encoder
    # picks the short form where it can, so the bytes themselves may differ)
    assert Command.parse(cmd.to_bytes()) == cmd


@given(st.binary(min_size=4, max_size=4), st.binary(max_size=70))
def test_apdu_parse_of_a_header_and_random_tail_raises_only_decode_error(
    header: bytes, tail: bytes
) -> None:
    # tails biased towards the interesting length bytes
    for lead in (b"", b"\x00", b"\x00\x00", b"\x00\x01"):
        try:
            Command.parse(header + lead + tail)
        except DecodeError:
            pass


def test_apdu_parse_accepts_the_extended_form_for_small_data_and_re_encodes_it_short() -> None:
    raw = HDR + bytes.fromhex("000005") + b"abcde" + bytes.fromhex("0010")
    cmd = Command.parse(raw)
    assert cmd == Command(0x80, 0x42, 0x01, 0x02, b"abcde", 0x10)
    assert cmd.to_bytes() == HDR + b"\x05abcde\x10"


# --- responses ---------------------------------------------------------------


def test_apdu_response_parse_splits_data_and_status_word() -> None:
    r = Response.parse(bytes.fromhex("0102039000"))
    assert r == Response(b"\x01\x02\x03", sw.OK)
    assert r.ok
    assert r.to_bytes() == bytes.fromhex("0102039000")


def test_apdu_response_parse_of_a_bare_status_word_has_no_data() -> None:
    r = Response.parse(bytes.fromhex("6a82"))
    assert r.data == b""
    assert r.sw == sw.FILE_NOT_FOUND
    assert not r.ok


@pytest.mark.parametrize("raw", [b"", b"\x90"])
def test_apdu_response_parse_refuses_fewer_than_two_bytes(raw: bytes) -> None:
    with pytest.raises(DecodeError, match="shorter than a status word") as info:
        Response.parse(raw)
    assert info.value.offset == len(raw)


def test_apdu_response_status_builds_a_data_less_response() -> None:
    assert Response.status(sw.INSUFFICIENT_FUNDS).to_bytes() == bytes.fromhex("9401")


@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_apdu_response_round_trips(data: bytes, word: int) -> None:
    assert Response.parse(Response(data, word).to_bytes()) == Response(data, word)
