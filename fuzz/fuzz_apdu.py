"""Fuzz the command APDU parser: core.apdu.Command.parse.

Invariants: only DecodeError on bad input; whatever parses re-encodes to bytes
that parse to the same command; a response always parses from >= 2 bytes.
"""

from __future__ import annotations

import harness

with harness.instrumented(__name__):
    from tallypurse.core.apdu import Command, Response
    from tallypurse.core.errors import DecodeError


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    try:
        command = Command.parse(data)
    except DecodeError:
        pass
    else:
        assert Command.parse(command.to_bytes()) == command, data.hex()
        assert len(command.data) <= 65535
    try:
        response = Response.parse(data)
    except DecodeError:
        assert len(data) < 2
    else:
        assert response.to_bytes() == data


if __name__ == "__main__":
    harness.main(TestOneInput)
