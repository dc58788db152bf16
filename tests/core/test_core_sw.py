"""ISO 7816-4 status words and their descriptions."""

from __future__ import annotations

import pytest

from tallypurse.core import sw
from tallypurse.core.errors import CardError


@pytest.mark.parametrize(
    ("word", "text"),
    [
        (0x9000, "success"),
        (0x6700, "wrong length"),
        (0x6982, "security status not satisfied"),
        (0x6A82, "application not found"),
        (0x6D00, "instruction not supported"),
        (0x6E00, "class not supported"),
        (0x9401, "insufficient funds"),
        (0x9408, "invalid signature"),
        (0x940A, "replayed or stale message"),
        (0x940B, "per-tap offline limit exceeded"),
    ],
)
def test_sw_describe_names_known_status_words(word: int, text: str) -> None:
    assert sw.describe(word) == text


def test_sw_every_named_constant_has_a_description() -> None:
    words = {v for k, v in vars(sw).items() if k.isupper() and isinstance(v, int)}
    assert len(words) > 30
    for word in words:
        assert sw.describe(word) != "unknown status", hex(word)


def test_sw_application_status_words_are_distinct() -> None:
    names = [k for k, v in vars(sw).items() if k.isupper() and isinstance(v, int)]
    values = [getattr(sw, k) for k in names]
    assert len(set(values)) == len(values)


@pytest.mark.parametrize(("word", "n"), [(0x6100, 0), (0x6110, 16), (0x61FF, 255)])
def test_sw_describe_reports_remaining_response_bytes_for_61xx(word: int, n: int) -> None:
    assert sw.describe(word) == f"{n} response bytes still available"


@pytest.mark.parametrize(("word", "n"), [(0x6C00, 0), (0x6C08, 8), (0x6CFF, 255)])
def test_sw_describe_reports_the_exact_length_for_6cxx(word: int, n: int) -> None:
    assert sw.describe(word) == f"wrong Le; exact length is {n}"


@pytest.mark.parametrize("word", [0x0000, 0x1234, 0x6A00, 0x6F01, 0x9001, 0x94FF, 0xFFFF])
def test_sw_describe_calls_unknown_words_unknown(word: int) -> None:
    assert sw.describe(word) == "unknown status"


def test_sw_iso_exception_carries_the_word_and_a_readable_message() -> None:
    exc = sw.ISOException(sw.INSUFFICIENT_FUNDS, "balance 3.00")
    assert exc.sw == 0x9401
    assert exc.reason == "balance 3.00"
    assert str(exc) == "9401 insufficient funds: balance 3.00"
    assert str(sw.ISOException(sw.WRONG_LENGTH)) == "6700 wrong length"


def test_sw_card_error_describes_the_status_word() -> None:
    err = CardError(0x6A82, "SELECT purse")
    assert err.sw == 0x6A82
    assert str(err) == "card refused: 6A82 application not found (SELECT purse)"
    assert str(CardError(0x1234)) == "card refused: 1234 unknown status"
