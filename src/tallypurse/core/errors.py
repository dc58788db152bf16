"""Errors shared by every component, each with a stable numeric code.

The same code names the same failure on a card's status word mapping, in a
terminal's log, in an HTTP problem document and on an operator's screen.
"""

from __future__ import annotations


class TallypurseError(Exception):
    """Base of every error tallypurse raises on purpose."""

    code: int = 1000

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(TallypurseError):
    """Malformed or out-of-range input; nothing was changed."""

    code = 1001


class DecodeError(BadInput):
    """Bytes that do not parse; carries the byte offset where parsing failed."""

    code = 1002

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(f"{message} (at byte {offset})")
        self.offset = offset


class CryptoError(TallypurseError):
    """A signature, MAC, certificate or key that does not verify."""

    code = 1101


class CertificateError(CryptoError):
    code = 1102


class KeystoreError(TallypurseError):
    """The keystore cannot be opened or used (wrong passphrase, corrupt file, missing key)."""

    code = 1201


class CardError(TallypurseError):
    """A card answered with a status word other than success."""

    code = 1301

    def __init__(self, sw: int, message: str = "") -> None:
        from tallypurse.core.sw import describe

        super().__init__(
            f"card refused: {sw:04X} {describe(sw)}" + (f" ({message})" if message else "")
        )
        self.sw = sw


class CardFileError(TallypurseError):
    """A card image file that is missing, truncated or corrupt."""

    code = 1302
