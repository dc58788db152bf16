"""Fuzz the host API's message models (core.hostapi): what the host reads from
terminals (batches, enrolment, loads, online authorisations...) and what
terminals read from the host (signed lists and parameters, acknowledgements).

pydantic validates in compiled code that atheris cannot see, so coverage gives
little guidance here; the harness therefore also mutates valid bodies itself.
The first byte picks a model and a mode: raw (the rest of the input is the JSON
body) or structured (a valid template of the model with fuzz-chosen fields
deleted, added or replaced by values of the wrong type, size or range).

Invariants: only pydantic's ValidationError on bad input; what validates dumps
to JSON that validates to an equal model; signed lists and parameters give
their signed bytes without error.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import harness

with harness.instrumented(__name__):
    from pydantic import BaseModel, ValidationError

    from tallypurse.core import hostapi

MODELS: list[type[BaseModel]] = sorted(
    (
        obj
        for obj in vars(hostapi).values()
        if isinstance(obj, type) and issubclass(obj, hostapi.Model) and obj is not hostapi.Model
    ),
    key=lambda cls: cls.__name__,
)
NOW = 1_767_225_600
_ENTRY = {
    "seq": 1,
    "kind": "debit",
    "time": NOW,
    "card_id": "1000000000000001",
    "tx_type": "canteen",
    "amount": 250,
    "currency": "EUR",
    "record": "00" * 133,
    "prev_hash": "00" * 32,
    "entry_hash": "11" * 32,
    "sam_signature": "22" * 64,
}
TEMPLATES: dict[str, dict[str, Any]] = {
    "SyncRequest": {"blacklist_version": 1, "actions_version": 0, "parameters_version": 2},
    "BatchUpload": {
        "batch_id": "batch-0001",
        "terminal_id": "5445524d30303031",
        "entries": [_ENTRY],
        "totals": {"debit": {"count": 1, "amount": 250}},
        "signature": "33" * 64,
    },
    "SignedList": {
        "kind": "blacklist",
        "from_version": 0,
        "to_version": 3,
        "full": True,
        "blacklist": [{"card_id": "1000000000000002", "op": "add", "reason": "lost"}],
        "actions": [{"action_id": "a1", "card_id": "1000000000000002", "kind": "block", "seq": 4}],
        "issued": NOW,
        "key": "host-list/1",
        "signature": "44" * 64,
    },
    "SignedParameters": {
        "parameters": {
            "version": 3,
            "currency": "EUR",
            "offline_limit": 5000,
            "online_threshold": 10000,
            "credit_types": ["canteen"],
            "max_list_age_s": 86400,
            "cancel_window_s": 600,
            "fee_basis_points": {"canteen": 120},
        },
        "issued": NOW,
        "key": "host-list/1",
        "signature": "55" * 64,
    },
    "EnrolRequest": {"terminal_id": "5445524d30303031", "csr": "7f21", "token": "enrol-token"},
    "Problem": {"title": "bad", "status": 400, "code": 1001},
}
_NAMES = [m.__name__ for m in MODELS]
_TEMPLATE_NAMES = sorted(TEMPLATES)
_ODD_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    2**32,
    2**64,
    -(2**63),
    1e308,
    "",
    "zz",
    "0" * 5000,
    "\u0000",
    "\ud7ff",
    [],
    {},
    [[[[[]]]]],
    {"__proto__": 1},
]


def _containers(doc: Any) -> list[Any]:
    out: list[Any] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict | list):
            out.append(node)
            for child in node.values() if isinstance(node, dict) else node:
                walk(child)

    walk(doc)
    return out


def _mutate(doc: Any, r: harness.Reader) -> None:
    for _ in range(1 + r.byte() % 4):
        nodes = _containers(doc)
        node = nodes[r.byte() % len(nodes)]
        keys: list[Any] = list(node) if isinstance(node, dict) else list(range(len(node)))
        choice = r.byte()
        if choice % 5 == 0 and keys:  # delete a field or item
            del node[keys[r.byte() % len(keys)]]
            continue
        if choice % 5 == 1:  # a raw fuzzed value
            value: Any = r.take(r.byte() % 40).decode("latin-1")
        elif choice % 5 == 2:
            value = int.from_bytes(r.take(9), "big", signed=True)
        else:
            value = copy.deepcopy(_ODD_VALUES[r.byte() % len(_ODD_VALUES)])
        if isinstance(node, dict):
            key = (
                keys[r.byte() % len(keys)]
                if keys and choice % 3
                else r.take(r.byte() % 12).decode("latin-1")
            )
            node[key] = value
        elif keys:
            node[keys[r.byte() % len(keys)]] = value
        else:
            node.append(value)


def TestOneInput(data: bytes) -> None:  # noqa: N802
    r = harness.Reader(data)
    selector = r.byte()
    if selector & 1:
        name = _TEMPLATE_NAMES[(selector >> 1) % len(_TEMPLATE_NAMES)]
        model = MODELS[_NAMES.index(name)]
        doc = copy.deepcopy(TEMPLATES[name])
        _mutate(doc, r)
        body = json.dumps(doc).encode()
    else:
        model = MODELS[(selector >> 1) % len(MODELS)]
        body = r.rest()
    try:
        obj = model.model_validate_json(body)
    except ValidationError:
        return
    again = model.model_validate_json(obj.model_dump_json())
    assert again == obj, (model.__name__, body)
    signed_bytes = getattr(obj, "signed_bytes", None)
    if signed_bytes is not None:
        assert isinstance(signed_bytes(), bytes)


if __name__ == "__main__":
    harness.main(TestOneInput)
