"""Fuzz the host API's message models (core.hostapi): what the host reads from
terminals (batches, enrolment, loads, online authorisations...) and what
terminals read from the host (signed lists and parameters, acknowledgements).

The first byte picks a model; the rest goes to model_validate_json. Invariants:
only pydantic's ValidationError on bad input; what validates dumps to JSON that
validates to an equal model; signed lists and parameters give their signed
bytes without error.
"""

from __future__ import annotations

import harness

with harness.instrumented(__name__):
    from pydantic import BaseModel, ValidationError

    from tallypurse.core import hostapi

MODELS: list[type[BaseModel]] = sorted(
    (
        obj
        for obj in vars(hostapi).values()
        if isinstance(obj, type)
        and issubclass(obj, hostapi.Model)
        and obj is not hostapi.Model
    ),
    key=lambda cls: cls.__name__,
)


def TestOneInput(data: bytes) -> None:  # noqa: N802
    if not data:
        return
    model = MODELS[data[0] % len(MODELS)]
    try:
        obj = model.model_validate_json(data[1:])
    except ValidationError:
        return
    again = model.model_validate_json(obj.model_dump_json())
    assert again == obj, (model.__name__, data[1:])
    signed_bytes = getattr(obj, "signed_bytes", None)
    if signed_bytes is not None:
        assert isinstance(signed_bytes(), bytes)


if __name__ == "__main__":
    harness.main(TestOneInput)
